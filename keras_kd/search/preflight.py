"""What a search checks before it trains anything: its dependencies, the
student factory, the validation data and the metric it ranks by.

A search trains one student per setting; each of these checks would
otherwise fail only inside the first trial (keras-tuner then reports
"Number of consecutive failures exceeded"), after everything before it has
run.
"""

import warnings

import keras
import numpy as np

from keras_kd import inputs
from keras_kd.extras import require

__all__ = ["check_requirements", "check_students", "validation_examples",
           "logged_names", "check_metric", "MAX_VALIDATION_BATCHES"]

# A tf.data validation set of unknown length is read at most this many
# batches deep (to count it and check it for NaN).
MAX_VALIDATION_BATCHES = 100_000

PIP_LINE = 'pip install "keras-kd[search]"'


def check_requirements():
    """Imports what a search needs, or says what to install.

    keras-tuner runs the trials. On the TensorFlow backend it also imports
    TensorBoard's hparams API at every trial (which TensorFlow no longer
    installs), so TensorBoard is checked there too: without it every trial
    would fail, after the first trial's model was built.

    Returns:
        The ``keras_tuner`` module.

    Raises:
        ImportError: naming ``pip install "keras-kd[search]"``.

    >>> check_requirements().__name__
    'keras_tuner'
    """
    kt = require("keras_tuner")  # names the search extra
    if keras.backend.backend() == "tensorflow":
        try:
            require("tensorboard.plugins.hparams.api")
        except ImportError as error:
            raise ImportError(
                "keras-tuner imports TensorBoard at every trial on the "
                "TensorFlow backend, and tensorboard is not installed "
                f"({error.__cause__ or error}). Install it with: {PIP_LINE} "
                "(or pip install tensorboard).") from error
    return kt


def check_students(make_student):
    """Calls ``make_student`` twice and refuses what would make the trials
    cumulative: the same model twice, or two models sharing weights (each
    trial would go on training the previous trial's student).

    Returns:
        The first student (for the checks of layer names).

    Raises:
        TypeError: ``make_student`` is not a function, or returns something
            other than a ``keras.Model``.
        ValueError: the same model twice, or shared variables.

    >>> import keras
    >>> def mlp():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> check_students(mlp).name.startswith("sequential")
    True
    >>> shared = mlp()
    >>> check_students(lambda: shared)
    Traceback (most recent call last):
    ...
    ValueError: make_student returned the same model twice, so each trial would go on training the previous trial's student. Build a new model in make_student, e.g. make_student=lambda: build_student(), not make_student=lambda: student.
    """
    if isinstance(make_student, keras.Model) or not callable(make_student):
        raise TypeError(
            "make_student must be a function that builds a new student (each "
            "trial trains its own), e.g. make_student=lambda: build_student(); "
            f"got {type(make_student).__name__}.")
    first, second = make_student(), make_student()
    for student in (first, second):
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"make_student must return a keras.Model, got "
                f"{type(student).__name__}; e.g. make_student=lambda: "
                "keras.Sequential([...]).")
    if first is second:
        raise ValueError(
            "make_student returned the same model twice, so each trial would "
            "go on training the previous trial's student. Build a new model "
            "in make_student, e.g. make_student=lambda: build_student(), not "
            "make_student=lambda: student.")
    ids = {id(v) for v in first.weights}
    shared = [v.path for v in second.weights if id(v) in ids]
    if shared:
        raise ValueError(
            f"the models make_student returns share weights ({shared[:3]}), "
            "so each trial would go on training the previous trial's layers. "
            "Create new layers in make_student (a layer object used twice "
            "is the same weights).")
    return first


def _check_finite(arrays, where):
    for leaf in keras.tree.flatten(arrays):
        value = np.asarray(leaf)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1) \
            if value.ndim else ~np.isfinite(value.reshape(1))
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(
                f"validation_data holds NaN or infinite values ({where}, "
                f"rows {rows}): every trial would be scored on them, and the "
                "ranking would be meaningless. Drop or repair those samples, "
                "e.g. keep = np.isfinite(x_val).reshape(len(x_val), "
                "-1).all(axis=1).")


def validation_examples(validation_data):
    """The number of validation examples, checking each for NaN/infinity.

    ``(x_val, y_val)`` arrays are read whole; a ``tf.data`` dataset batch by
    batch (a finite one to its end, one of unknown length at most
    :data:`MAX_VALIDATION_BATCHES` deep; an infinite one is refused, since
    ``fit`` would never end its validation). Other data (a generator, a
    ``PyDataset``) are not read: None.

    Raises:
        ValueError: NaN or infinite inputs or labels (naming the rows), or an
            infinite dataset.

    >>> import numpy as np
    >>> validation_examples((np.zeros((5, 2)), np.zeros(5)))
    5
    """
    if isinstance(validation_data, (tuple, list)):
        if not validation_data:
            return None
        _check_finite(list(validation_data[:2]), "x or y")
        leaves = keras.tree.flatten(validation_data[0])
        return int(np.shape(leaves[0])[0]) if leaves else None
    if not inputs.is_tf_dataset(validation_data):
        return None
    inputs.refuse_infinite(
        validation_data, "validation_data",
        "fit() would never end its validation: pass a finite data set, "
        "e.g. validation_data.take(100)")
    length = inputs.cardinality(validation_data)
    limit = length if isinstance(length, int) else MAX_VALIDATION_BATCHES
    total, batches = 0, 0
    for batch in inputs.bounded(validation_data, limit, "validation_data"):
        parts = list(batch[:2]) if isinstance(batch, (tuple, list)) \
            else [batch]
        _check_finite(parts, f"batch {batches}")
        leaves = keras.tree.flatten(parts[0])
        total += int(np.shape(leaves[0])[0]) if leaves else 0
        batches += 1
    if length is None and batches >= MAX_VALIDATION_BATCHES:
        return None  # not read to its end
    return total


def _first_batch(validation_data, batch_size):
    """``(x, y)`` of the first validation batch, or None (unread data)."""
    if isinstance(validation_data, (tuple, list)) and \
            len(validation_data) >= 2:
        size = batch_size or 32
        take = lambda tree: keras.tree.map_structure(  # noqa: E731
            lambda a: a[:size], tree)
        return take(validation_data[0]), take(validation_data[1])
    if inputs.is_tf_dataset(validation_data):
        return validation_data.take(1), None
    return None


def logged_names(teacher, student, validation_data, batch_size=32, loss=None,
                 metrics=("accuracy",)):
    """The names a trial logs, measured on one validation batch.

    The search's baseline Distiller (the student alone) is compiled with
    ``loss`` and ``metrics`` and evaluated on the first validation batch;
    its keys and the same with ``"val_"`` in front are what a trial's
    ``fit()`` logs. Nothing is trained. None when the validation data
    cannot be read without using it up (a generator).

    >>> import keras, numpy as np
    >>> def mlp():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int32")
    >>> sorted(logged_names(mlp(), mlp(), (x, y)))[:3]
    ['accuracy', 'distillation_loss', 'loss']
    """
    from keras_kd.distiller import Distiller

    batch = _first_batch(validation_data, batch_size)
    if batch is None:
        return None
    distiller = Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer="adam", metrics=list(metrics), alpha=1.0, temperature=1.0,
        loss=(keras.losses.SparseCategoricalCrossentropy(from_logits=True)
              if loss is None else loss))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-batch teacher check
        logs = distiller.evaluate(*batch, verbose=0, return_dict=True)
    names = set(logs)
    return names | {f"val_{name}" for name in names}


def check_metric(metric, logged):
    """Refuses a ``metric`` (a name or ``keras_tuner.Objective``) that the
    trials do not log, naming those they do.

    >>> check_metric("val_auc", {"loss", "accuracy", "val_loss",
    ...                          "val_accuracy"})
    Traceback (most recent call last):
    ...
    ValueError: metric='val_auc' is not logged by the trials, which log ['val_accuracy', 'val_loss'] (and the same without 'val_'). Rank by one of those, or add the metric to metrics=, e.g. metrics=('accuracy', keras.metrics.AUC(name='auc')) for metric='val_auc'.
    """
    if logged is None:
        return
    for one in metric if isinstance(metric, (list, tuple)) else [metric]:
        name = one if isinstance(one, str) else one.name
        if name in logged:
            continue
        base = name.removeprefix("val_")
        example = (f"keras.metrics.AUC(name={base!r})" if "auc" in base
                   else f"a metric named {base!r}")
        raise ValueError(
            f"metric={name!r} is not logged by the trials, which log "
            f"{sorted(n for n in logged if n.startswith('val_'))} (and the "
            "same without 'val_'). Rank by one of those, or add the metric "
            f"to metrics=, e.g. metrics=('accuracy', {example}) for "
            f"metric={name!r}.")

