"""The layer graph of a Functional or Sequential model, read from its config.

Pruning and factorization rewrite a model by editing ``model.get_config()``
(the public serialization of Keras 3) and rebuilding it with
``from_config``; this module reads that config as a list of :class:`Node`
(one per layer, in topological order, with the names of the layers feeding
it) and turns an edited config back into a model.
"""

import dataclasses

import keras


@dataclasses.dataclass
class Node:
    """One layer of a model: its name, the layer object and its inputs.

    ``inputs`` lists the names of the layers whose outputs this layer
    consumes, in call order (the order matters for ``Concatenate``).
    """

    name: str
    layer: object
    inputs: list


def is_sequential(model):
    """True for a ``keras.Sequential`` model."""
    return isinstance(model, keras.Sequential)


def _tensor_refs(obj, out):
    """The ``keras_history`` entries inside a serialized call, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            out.append(obj["config"]["keras_history"])
            return out
        for value in obj.values():
            _tensor_refs(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensor_refs(value, out)
    return out


def check_model(model, what="prune"):
    """Refuse what cannot be read as a graph of layers, naming the fix."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Cannot {what} {type(model).__name__}: pass a keras.Model "
            "(Functional or Sequential).")
    if not is_sequential(model) and not _is_functional(model):
        raise ValueError(
            f"Cannot {what} the subclassed model {model.name!r}: keras-kd "
            "reads the layer graph from model.get_config(). Rebuild it as a "
            "Functional model (keras.Model(inputs, outputs)) or a "
            "keras.Sequential.")
    if not model.built or not model.inputs:
        raise ValueError(
            f"Cannot {what} the unbuilt model {model.name!r}: give it an "
            "input shape (keras.Input(shape) as its first layer) first.")


def _is_functional(model):
    config = model.get_config()
    return isinstance(config, dict) and "input_layers" in config \
        and "output_layers" in config and "layers" in config


def layer_nodes(model, what="prune"):
    """The model's layers as :class:`Node` entries, in topological order.

    A layer called more than once (shared weights), a layer with several
    outputs and a nested model are refused with a message naming them.
    """
    check_model(model, what)
    config = model.get_config()
    nodes = []
    if is_sequential(model):
        previous = "__input__"
        for layer in model.layers:
            nodes.append(Node(layer.name, layer, [previous]))
            previous = layer.name
        return nodes
    for entry in config["layers"]:
        name = entry["config"]["name"] if "name" not in entry else entry["name"]
        layer = model.get_layer(name)
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Cannot {what} through the nested model {name!r}: "
                f"keras-kd needs one flat graph. Call its layers directly in "
                "the outer model (or pass it in never_prune to keep it whole).")
        inbound = entry.get("inbound_nodes", [])
        if len(inbound) > 1:
            raise ValueError(
                f"Cannot {what} the layer {name!r}: it is called "
                f"{len(inbound)} times (shared weights), so its channels "
                "cannot be cut for one call only. Use one layer per call.")
        refs = _tensor_refs(inbound, []) if inbound else []
        for ref in refs:
            if ref[2] != 0:
                raise ValueError(
                    f"Cannot {what} the layer {name!r}: it reads output "
                    f"{ref[2]} of {ref[0]!r}; only single-output layers are "
                    "supported.")
        nodes.append(Node(name, layer, [ref[0] for ref in refs]))
    return nodes


def input_names(model):
    """Names of the model's input layers (``['__input__']`` for Sequential)."""
    if is_sequential(model):
        return ["__input__"]
    return [ref[0] for ref in _refs(model.get_config()["input_layers"])]


def _refs(refs):
    """A config's input or output references as a list of triples (Keras
    writes a single one as a bare ``[name, node, tensor]``)."""
    if refs and not isinstance(refs[0], (list, tuple)):
        return [refs]
    return refs


def output_names(model):
    """Names of the layers whose outputs are the model's outputs."""
    if is_sequential(model):
        return [model.layers[-1].name]
    return [ref[0] for ref in _refs(model.get_config()["output_layers"])]


def layer_entries(config):
    """``{layer name: its entry in config['layers']}`` of a model config."""
    return {entry["config"]["name"]: entry for entry in config["layers"]}


def zero_initializers(layer_config):
    """Replaces the initializers of one layer's config by ``"zeros"``, in
    place, and returns the originals (``{key: value}``).

    A rebuilt layer's weights are all set from the pruned arrays, so its
    initializers never matter; random ones cost a compile per new weight
    shape under JAX (seconds each), zeros almost nothing.
    """
    original = {key: value for key, value in layer_config.items()
                if key.endswith("_initializer") and value is not None}
    for key in original:
        layer_config[key] = "zeros"
    return original


def restore_initializers(layer, original):
    """Gives ``layer`` back the initializers ``zero_initializers`` took, so
    its config (and a later ``from_config``) is the original one."""
    for key, value in original.items():
        if hasattr(layer, key):
            setattr(layer, key, keras.initializers.get(value))


def rebuild(model, config, weights):
    """A new model of ``model``'s class from an edited ``config``.

    ``weights`` maps layer names to the list of arrays to set; layers not
    in it keep the weights of the layer of the same name in ``model``.
    Each layer's stored ``build_config`` (its old input shape) is dropped so
    that layers are built for their new inputs; layers are built with zero
    initializers (every weight is then set) and get their own back.
    """
    initializers = {}
    for entry in config["layers"]:
        entry.pop("build_config", None)
        initializers[entry["config"]["name"]] = zero_initializers(
            entry["config"])
    cls = keras.Sequential if is_sequential(model) else keras.Model
    new = cls.from_config(config)
    for layer in new.layers:
        restore_initializers(layer, initializers.get(layer.name, {}))
    for layer in new.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new
