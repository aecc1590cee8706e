"""One-forward views of functional models that also return named layers' outputs.

Feature objectives need a model's intermediate outputs. Calling the model and
then a second "feature extractor" runs it twice per step (twice the cost, two
dropout masks, BatchNorm statistics updated twice). A *tap view* is a
functional ``keras.Model`` built on the same layers and weights that returns
``[model outputs, feature_1, ..., feature_k]`` from a single forward pass.
"""

import keras


def _is_graph_model(model):
    """True for Functional and Sequential models (those with a layer graph),
    keras-hub tasks and backbones included (Keras makes a model built with
    the functional API inside a subclass's ``__init__`` a ``Functional``)."""
    return isinstance(model, keras.Sequential) or any(
        cls.__name__ == "Functional" for cls in type(model).__mro__)


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


def _nested_models(model):
    """The graph models among ``model``'s layers (a keras-hub backbone)."""
    return [layer for layer in model.layers if _is_graph_model(layer)]


def _locate(model, name, role):
    """``[layer]`` for a top-level layer, ``[submodel, ...]`` down to a nested
    one; ``name`` is a layer name or a ``"submodel/layer"`` path."""
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
    head, _, rest = name.partition("/")
    top = {layer.name: layer for layer in model.layers}
    if rest:
        if head in top and _is_graph_model(top[head]):
            return [top[head]] + _locate(top[head], rest, role)
    elif head in top:
        return [top[head]]
    else:
        found = [[sub] + _locate(sub, name, role) for sub in
                 _nested_models(model) if _contains(sub, name)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            paths = ["/".join(layer.name for layer in chain)
                     for chain in found]
            raise ValueError(
                f"Layer '{name}' is in several nested models of the {role} "
                f"'{model.name}': {paths}. Pass one of these paths.")
    names = [layer.name for layer in model.layers] + [
        f"{sub.name}/{layer.name}" for sub in _nested_models(model)
        for layer in sub.layers]
    raise ValueError(
        f"No layer named '{name}' in the {role} '{model.name}'. Its "
        f"layers are: {names}. Pass one of these names "
        f"(see {role}.summary())."
    )


def _contains(model, name):
    return any(layer.name == name or (
        _is_graph_model(layer) and _contains(layer, name))
        for layer in model.layers)


def layer_output(model, name, role):
    """The symbolic output of layer ``name`` in ``model``, with a clear error.

    Args:
        model: a Functional or Sequential model with defined inputs.
        name: a layer name, found among the model's layers or, when unique,
            inside its nested models (a keras-hub task's backbone); or a
            path ``"backbone_name/layer_name"``.
        role: ``"teacher"`` or ``"student"``, for the error message.
    """
    if _is_graph_model(model) and (
            not model.built or not getattr(model, "inputs", None)):
        raise ValueError(
            f"The {role} '{model.name}' is not built, so its layers have no "
            "outputs to tap. Give it an input shape (keras.Input(shape=...) "
            f"as its first layer) or call {role}.build(input_shape) first."
        )
    layer = _locate(model, name, role)[-1]
    out = layer.output
    if isinstance(out, (list, tuple, dict)):
        raise ValueError(
            f"Layer '{name}' of the {role} has several outputs; tap a layer "
            "with a single output."
        )
    return out


def make_view(model, layer_names, role, _nested=False):
    """A functional model computing ``[model outputs, *named layer outputs]``.

    The view shares every layer and weight with ``model``; calling it runs
    each layer once. Layers of nested models (a keras-hub task's backbone)
    are tapped too: the nested model is called through its own view, inside
    a copy of the outer graph that reuses every layer
    (``keras.models.clone_model`` with ``clone_function=lambda l: l``). With
    no layer names, ``model`` itself is returned.

    Args:
        model: a built Functional or Sequential model.
        layer_names: names (or ``"submodel/layer"`` paths) of the layers to
            tap, in order.
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
    for name in layer_names:
        layer_output(model, name, role)  # checks every name first
    if _nested:  # a backbone: its outputs as they are (a dict, say)
        head = model.output
    elif len(model.outputs) != 1:
        raise ValueError(
            f"The {role} '{model.name}' has {len(model.outputs)} outputs; "
            "keras-kd distils models with a single logits output."
        )
    else:
        head = model.outputs[0]
    chains = [_locate(model, name, role) for name in layer_names]
    if all(len(chain) == 1 for chain in chains):
        features = [chain[0].output for chain in chains]
        return keras.Model(model.inputs, [head] + features,
                           name=f"{model.name}_taps")
    # Nested taps: each nested model runs through its own view, once.
    inner = {}
    for i, chain in enumerate(chains):
        if len(chain) > 1:
            inner.setdefault(id(chain[0]), (chain[0], []))[1].append(
                (i, "/".join(layer.name for layer in chain[1:])))
    views = {key: make_view(sub, [n for _, n in names], role, _nested=True)
             for key, (sub, names) in inner.items()}
    top = {id(chain[0]): [] for chain in chains if len(chain) == 1}
    for i, chain in enumerate(chains):
        if len(chain) == 1:
            top[id(chain[0])].append(i)
    features = [None] * len(chains)

    def call(layer, *args, **kwargs):
        key = id(layer)
        if key in views:
            out = views[key](*args, **kwargs)
            for (i, _), feature in zip(inner[key][1], out[1:]):
                features[i] = feature
            out = out[0]
        else:
            out = layer(*args, **kwargs)
        for i in top.get(key, []):
            if features[i] is None:
                features[i] = out
        return out

    copy = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                    call_function=call)
    head = copy.output if _nested else copy.outputs[0]
    return keras.Model(copy.inputs, [head] + features,
                       name=f"{model.name}_taps")


def tapped_layers(objectives, role):
    """The layer names the feature ``objectives`` tap in the ``role`` model.

    A single-pair objective taps ``teacher_layer`` / ``student_layer``; a
    multi-layer one (several stages, e.g. ReviewKD or FSP) taps its
    ``teacher_layers`` / ``student_layers`` lists. The names come in order,
    objective after objective: the tap views return the features in this
    order (see ``keras_kd.composition.grouped``).

    Example:

    >>> import keras_kd as kd
    >>> tapped_layers([kd.FitNet("t1", "s1")], "teacher")
    ['t1']
    """
    names = []
    for objective in objectives:
        several = getattr(objective, f"{role}_layers", None)
        names.extend(several if several is not None
                     else [getattr(objective, f"{role}_layer")])
    return names


def build_objectives(objectives, teacher, student):
    """Calls each objective's ``build_for`` with the tapped layers' shapes:
    two shapes for a single-pair objective, two lists of shapes for a
    multi-layer one (``teacher_layers`` / ``student_layers``)."""
    for objective in objectives:
        t_shapes = [tuple(layer_output(teacher, name, "teacher").shape)
                    for name in tapped_layers([objective], "teacher")]
        s_shapes = [tuple(layer_output(student, name, "student").shape)
                    for name in tapped_layers([objective], "student")]
        if getattr(objective, "teacher_layers", None) is None:
            objective.build_for(t_shapes[0], s_shapes[0])
        else:
            objective.build_for(t_shapes, s_shapes)


def is_graph_model(model):
    """True for models whose layers can be tapped: Functional and
    Sequential models (keras-hub tasks and backbones included).

    Example:

    >>> import keras
    >>> is_graph_model(keras.Sequential([keras.Input((2,)),
    ...                                  keras.layers.Dense(1)]))
    True
    """
    return _is_graph_model(model)
