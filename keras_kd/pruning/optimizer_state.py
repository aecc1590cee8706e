"""The optimizer state follows the kept weights when a model is pruned.

Keras optimizers keep one slot variable per trainable weight and slot kind
(Adam's first and second moments ``m`` and ``v``, SGD's momentum, RMSprop's
mean square, ...), of the weight's shape, named
``{weight path with "/" as "_"}_{slot}`` (``add_variable_from_reference``),
plus scalars: the step count ``iterations`` and the learning rate.

After :func:`keras_kd.pruning.prune`, the pruned model's optimizer (a fresh
one of the same class and config, built on the new weights) has the same
variables in the same order. :func:`carry_optimizer_state` fills them from the
old one: a slot of a weight that lost positions becomes the old slot sliced
at the kept indices of that weight (``report["layers"][layer][weight]``,
``{axis: kept}``), exactly as the weight itself was sliced; every other
variable (the step count, the learning rate, the slots of unchanged weights)
is copied. A kept weight then continues with the moments it had: Adam's
bias correction (which reads the step count) and its per-weight step size
are unchanged by the cut.
"""

import keras
import numpy as np


def _slot_owners(model):
    """``{weight path with "/" as "_": (layer name, weight name)}``."""
    owners = {}
    for layer in model.layers:
        for w in layer.weights:
            owners[w.path.replace("/", "_")] = (layer.name, w.name)
    return owners


def _owner(name, owners):
    """The weight whose slot ``name`` is (the longest matching path)."""
    best = None
    for key in owners:
        if name.startswith(key + "_") and (best is None or len(key) > len(best)):
            best = key
    return owners[best] if best is not None else None


def carry_optimizer_state(old_optimizer, new_optimizer, pruned_model, report,
                          fresh=()):
    """Fill ``new_optimizer``'s variables from ``old_optimizer``'s, slicing
    the slots of pruned weights at the kept indices of ``report``.

    Variables are matched by name (positions when names repeat).

    Args:
        old_optimizer: the optimizer that trained the unpruned model (built).
        new_optimizer: an optimizer of the same class and config, built on
            the trainable weights of the model holding ``pruned_model`` (the
            pruned model itself, or a Distiller around it).
        pruned_model: the model :func:`~keras_kd.pruning.prune` returned.
        report: the report it returned (``report["layers"]``).
        fresh: new weights whose slots keep their initial value (weights
            created anew, such as a distillation adapter's).

    Returns:
        The names of the new optimizer's variables left at their initial
        value: the slots of ``fresh`` weights, and variables no old value
        maps onto.

    >>> import keras, numpy as np
    >>> from keras_kd.pruning import prune, carry_optimizer_state
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="a"),
    ...                       keras.layers.Dense(2, name="head")])
    >>> m.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    >>> _ = m.fit(np.ones((8, 3)), np.ones((8, 2)), epochs=1, verbose=0)
    >>> small, report = prune(m, ratio=0.5)
    >>> small.compile(optimizer=keras.optimizers.Adam.from_config(m.optimizer.get_config()),
    ...               loss="mse")
    >>> small.optimizer.build(small.trainable_variables)
    >>> carry_optimizer_state(m.optimizer, small.optimizer, small, report)
    []
    >>> int(keras.ops.convert_to_numpy(small.optimizer.iterations))
    1
    """
    if not new_optimizer.built:
        raise ValueError("carry_optimizer_state needs the new optimizer built "
                         "on the pruned weights: call "
                         "new_optimizer.build(model.trainable_variables) first.")
    old_vars, new_vars = list(old_optimizer.variables), list(new_optimizer.variables)
    if type(old_optimizer) is not type(new_optimizer):
        raise ValueError(
            f"Cannot carry the state of {type(old_optimizer).__name__} into "
            f"{type(new_optimizer).__name__}: build the new optimizer from the "
            "old one's config (type(old).from_config(old.get_config())) on "
            "the pruned model's trainable weights.")
    names = [v.name for v in old_vars]
    if len(set(names)) == len(names):
        by_name = dict(zip(names, old_vars))
        pairs = [(by_name.get(v.name), v) for v in new_vars]
    elif len(old_vars) == len(new_vars):
        pairs = list(zip(old_vars, new_vars))
    else:
        raise ValueError(
            f"Cannot match the {len(old_vars)} variables of the old "
            f"{type(old_optimizer).__name__} (their names repeat) with the "
            f"{len(new_vars)} of the new one.")
    owners = _slot_owners(pruned_model)
    skipped = {w.path.replace("/", "_") for w in fresh}
    layers = report["layers"]
    untouched = []
    for old, new in pairs:
        if old is None or any(new.name.startswith(key + "_") for key in skipped):
            untouched.append(new.name)
            continue
        value = keras.ops.convert_to_numpy(old)
        owner = _owner(new.name, owners)
        if owner is not None:
            for axis, kept in layers.get(owner[0], {}).get(owner[1], {}).items():
                value = np.take(value, kept, axis=int(axis))
        if tuple(value.shape) != tuple(new.shape):
            untouched.append(new.name)
            continue
        new.assign(value.astype(keras.backend.standardize_dtype(new.dtype)))
    return untouched
