"""One-forward views of functional models that also return named layers' outputs.

Feature objectives need a model's intermediate outputs. Calling the model and
then a second "feature extractor" runs it twice per step (twice the cost, two
dropout masks, BatchNorm statistics updated twice). A *tap view* is a
functional ``keras.Model`` built on the same layers and weights that returns
``[model outputs, feature_1, ..., feature_k]`` from a single forward pass.
"""

import keras


def _is_graph_model(model):
    """True for Functional and Sequential models (those with a layer graph)."""
    return isinstance(model, keras.Sequential) or type(model).__name__ == (
        "Functional")


def output_shape(model):
    """The (last) output shape of a built model, or None when unknown."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        shape = shape[-1]
    return tuple(shape)


def input_shape(model):
    """The input shape of a built graph model, or None when unknown."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        return None
    return tuple(shape)


def layer_output(model, name, role):
    """The symbolic output of layer ``name`` in ``model``, with a clear error.

    Args:
        model: a Functional or Sequential model with defined inputs.
        name: a layer name.
        role: ``"teacher"`` or ``"student"``, for the error message.
    """
    if not _is_graph_model(model):
        raise ValueError(
            f"Feature taps need a Functional or Sequential {role} model, but "
            f"the {role} '{model.name}' is a subclassed model "
            f"({type(model).__name__}), whose intermediate outputs are not "
            "reachable without running it twice. Rebuild the "
            f"{role} with the functional API (keras.Model(inputs, outputs)), "
            "or use a logits-only objective (logits KD works with subclassed "
            "models)."
        )
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"The {role} '{model.name}' is not built, so its layers have no "
            "outputs to tap. Give it an input shape (keras.Input(shape=...) "
            f"as its first layer) or call {role}.build(input_shape) first."
        )
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ValueError(
            f"No layer named '{name}' in the {role} '{model.name}'. Its "
            f"layers are: {names}. Pass one of these names "
            f"(see {role}.summary())."
        )
    layer = model.get_layer(name)
    out = layer.output
    if isinstance(out, (list, tuple)):
        raise ValueError(
            f"Layer '{name}' of the {role} has several outputs; tap a layer "
            "with a single output."
        )
    return out


def make_view(model, layer_names, role):
    """A functional model computing ``[model outputs, *named layer outputs]``.

    The view shares every layer and weight with ``model``; calling it runs
    each layer once. With no layer names, ``model`` itself is returned.

    Args:
        model: a built Functional or Sequential model.
        layer_names: names of the layers to tap, in order.
        role: ``"teacher"`` or ``"student"``, for error messages.

    Returns:
        ``model`` when ``layer_names`` is empty, else a ``keras.Model``.

    Example:

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> h = keras.layers.Dense(8, name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(3)(h))
    >>> view = make_view(model, ["hidden"], "student")
    >>> [tuple(t.shape) for t in view.outputs]
    [(None, 3), (None, 8)]
    """
    if not layer_names:
        return model
    features = [layer_output(model, n, role) for n in layer_names]
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(
            f"The {role} '{model.name}' has {len(outputs)} outputs; keras-kd "
            "distils models with a single logits output."
        )
    return keras.Model(model.inputs, [outputs[0]] + features,
                       name=f"{model.name}_taps")
