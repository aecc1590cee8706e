"""Dependency groups: the channels of a model that must be removed together.

Every channel (last axis, ``channels_last``) of every tensor of the model gets
an id. A layer that makes new channels (Dense, Conv1D/2D/3D, the pointwise
part of SeparableConv, Embedding) gives its outputs fresh ids; a layer that
keeps channels in place (BatchNormalization, activations, pooling, padding,
Dropout, global pooling) passes its input ids on; DepthwiseConv with depth
multiplier ``m`` repeats each input id ``m`` times; ``Concatenate`` on the
channel axis concatenates the id lists (offsets); ``Flatten`` of a
``(..., C)`` tensor tiles them over the spatial positions (position ``i`` of
the flat vector is channel ``i mod C``); ``Add``, ``Subtract``, ``Multiply``,
``Average``, ``Maximum``, ``Minimum`` unite the ids of their inputs position by
position (a union-find), as residual connections and squeeze-and-excitation
gates tie the channels they combine. Two channels with one id after the
unions are one *class*: they live or die together.

A *group* (the dependency graph of Fang et al., CVPR 2023, "DepGraph:
Towards Any Structural Pruning") is the set of classes made by one set of
producing layers; its members are the ``(layer, weight, axis)`` slices that
lose the same channels. Channels that reach a model output, the model
inputs, a layer in ``never_prune`` or a layer that mixes channels in a way
a cut would change (LayerNormalization, softmax over channels) are *frozen*:
never removed. Any other layer is refused, naming it and the fix.
"""

import dataclasses

import keras
import numpy as np

from keras_kd.pruning import nodes as nodes_lib

L = keras.layers
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_MERGE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_PASS = tuple(getattr(L, name) for name in (
    "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D") if hasattr(L, name))
_CHANNEL_MIXING = ("softmax", "log_softmax")
_SUPPORTED = ("Dense, Conv1D/2D/3D (groups=1), DepthwiseConv1D/2D, "
              "SeparableConv1D/2D, Embedding, BatchNormalization, "
              "LayerNormalization, Normalization, Rescaling, Reshape (keeping the "
              "last axis), Activation, ReLU, LeakyReLU, ELU, Softmax, "
              "pooling, ZeroPadding, Cropping, UpSampling, Dropout, Flatten, "
              "Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate")


@dataclasses.dataclass
class Slice:
    """One channel-indexed axis of one weight: ``ids[p]`` is the channel id
    of position ``p`` along ``axis`` of ``layer.weights[weight]``. ``role``:
    ``"filter"`` (a producer's output axis), ``"bias"``, ``"input"`` (a
    consumer's input axis), ``"norm"`` (BatchNormalization)."""

    layer: str
    weight: int
    name: str
    axis: int
    role: str
    ids: np.ndarray


@dataclasses.dataclass
class Group:
    """Channels that must lose the same indices: ``size`` classes, ordered by
    the first producer's channel order; ``producers`` are the layers whose
    output channels they are; ``members`` the ``(layer, weight, axis)``
    slices that shrink when a class is removed."""

    name: str
    producers: list
    size: int
    roots: np.ndarray
    members: list


class DependencyGraph:
    """The channel classes and groups of a model; see the module docstring.

    Args:
        model: a built Functional or Sequential model (``channels_last``).
        never_prune: names of layers whose output channels are kept whole;
            an unsupported layer named here is kept whole on both sides (its
            input channels are frozen too).

    >>> import keras
    >>> from keras_kd.pruning import DependencyGraph
    >>> i = keras.Input((8, 8, 3))
    >>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(i)
    >>> b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    >>> x = keras.layers.Add()([a, b])
    >>> x = keras.layers.Conv2D(6, 1, name="c")(x)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> m = keras.Model(i, keras.layers.Dense(2, name="head")(x))
    >>> [(g.name, g.producers, g.size) for g in DependencyGraph(m).groups]
    [('a', ['a', 'b'], 4), ('c', ['c'], 6)]
    """

    def __init__(self, model, never_prune=()):
        self.model = model
        self.never_prune = set(never_prune or ())
        self.nodes = nodes_lib.layer_nodes(model)
        names = {node.name for node in self.nodes}
        unknown = sorted(self.never_prune - names)
        if unknown:
            raise ValueError(f"never_prune names no layer of {model.name!r}: "
                             f"{unknown}; its layers are {sorted(names)}.")
        self._parent = []
        self._frozen = []
        self.slices = []
        self.out = {}          # layer name -> channel ids of its output
        self.producers = {}    # layer name -> fresh ids it made
        self.reshapes = {}     # Reshape layer name -> ids of its last axis
        self._walk()
        self.slice_roots = [self.roots(s.ids) for s in self.slices]
        self.groups = self._groups()

    # union-find over channel ids ------------------------------------
    def _fresh(self, n, frozen=False):
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._frozen.extend([frozen] * n)
        return np.arange(start, start + n)

    def _find(self, i):
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def roots(self, ids):
        """The class (root id) of each channel id in ``ids``."""
        return np.array([self._find(int(i)) for i in np.ravel(ids)], dtype=int)

    def _union(self, a, b):
        for i, j in zip(a, b):
            ri, rj = self._find(int(i)), self._find(int(j))
            if ri != rj:
                self._parent[rj] = ri
                self._frozen[ri] = self._frozen[ri] or self._frozen[rj]

    def _freeze(self, ids):
        for i in np.ravel(ids):
            self._frozen[self._find(int(i))] = True

    def is_frozen(self, root):
        """True when the class ``root`` may not be removed."""
        return self._frozen[self._find(int(root))]

    # walking the layers ------------------------------------------------
    def _add(self, layer, weight_name, axis, role, ids):
        index = [w.name for w in layer.weights].index(weight_name)
        self.slices.append(Slice(layer.name, index, weight_name, axis, role,
                                 np.asarray(ids)))

    def _check_weights(self, layer, allowed):
        names = [w.name for w in layer.weights]
        extra = sorted(set(names) - set(allowed))
        if extra or len(set(names)) != len(names):
            raise ValueError(
                f"Cannot prune the layer {layer.name!r} "
                f"({type(layer).__name__}): it has weights {names} where "
                f"{sorted(allowed)} were expected (LoRA or quantized?). Add "
                f"{layer.name!r} to never_prune=, or prune before quantizing.")

    def _walk(self):
        model = self.model
        for name in nodes_lib.input_names(model):
            if name == "__input__":
                self.out[name] = self._fresh(model.inputs[0].shape[-1], True)
        for node in self.nodes:
            layer = node.layer
            if isinstance(layer, L.InputLayer):
                self.out[node.name] = self._fresh(layer.output.shape[-1], True)
                continue
            ins = [self.out[n] for n in node.inputs]
            self.out[node.name] = self._layer(node, layer, ins)
            if node.name in self.never_prune:
                self._freeze(self.out[node.name])
        for name in nodes_lib.output_names(model):
            self._freeze(self.out[name])

    def _barrier(self, node, ins):
        for ids in ins:
            self._freeze(ids)
        return self._fresh(node.layer.output.shape[-1], True)

    def _producer(self, layer, n):
        ids = self._fresh(n)
        self.producers[layer.name] = ids
        activation = getattr(layer, "activation", None)
        if getattr(activation, "__name__", "") in _CHANNEL_MIXING:
            self._freeze(ids)
        return ids

    def _layer(self, node, layer, ins):
        fmt = getattr(layer, "data_format", "channels_last")
        if fmt != "channels_last":
            raise ValueError(
                f"Cannot prune the layer {layer.name!r}: data_format={fmt!r}; "
                "keras-kd prunes channels_last models. Rebuild it with "
                "data_format='channels_last' (or add it to never_prune=).")
        a = ins[0] if ins else None
        if type(layer) is L.Dense:
            self._check_weights(layer, ("kernel", "bias"))
            out = self._producer(layer, layer.units)
            self._add(layer, "kernel", 0, "input", a)
            self._add(layer, "kernel", 1, "filter", out)
            if layer.use_bias:
                self._add(layer, "bias", 0, "bias", out)
            return out
        if isinstance(layer, _CONV) and layer.groups == 1:
            self._check_weights(layer, ("kernel", "bias"))
            rank = len(layer.kernel.shape)
            out = self._producer(layer, layer.filters)
            self._add(layer, "kernel", rank - 2, "input", a)
            self._add(layer, "kernel", rank - 1, "filter", out)
            if layer.use_bias:
                self._add(layer, "bias", 0, "bias", out)
            return out
        if isinstance(layer, _DEPTHWISE):
            self._check_weights(layer, ("kernel", "bias"))
            rank = len(layer.kernel.shape)
            out = np.repeat(a, layer.depth_multiplier)
            self._add(layer, "kernel", rank - 2, "input", a)
            if layer.use_bias:
                self._add(layer, "bias", 0, "bias", out)
            return out
        if isinstance(layer, _SEPARABLE):
            self._check_weights(layer, ("depthwise_kernel", "pointwise_kernel",
                                        "bias"))
            rank = len(layer.depthwise_kernel.shape)
            out = self._producer(layer, layer.filters)
            self._add(layer, "depthwise_kernel", rank - 2, "input", a)
            self._add(layer, "pointwise_kernel", rank - 2, "input",
                      np.repeat(a, layer.depth_multiplier))
            self._add(layer, "pointwise_kernel", rank - 1, "filter", out)
            if layer.use_bias:
                self._add(layer, "bias", 0, "bias", out)
            return out
        if type(layer) is L.Embedding:
            self._check_weights(layer, ("embeddings",))
            out = self._producer(layer, layer.output_dim)
            self._add(layer, "embeddings", 1, "filter", out)
            return out
        if isinstance(layer, L.BatchNormalization):
            rank = len(layer.input.shape)
            if layer.axis not in (-1, rank - 1):
                raise ValueError(
                    f"Cannot prune the layer {layer.name!r}: "
                    f"BatchNormalization(axis={layer.axis}) normalizes an "
                    "axis that is not the channel axis; add it to "
                    "never_prune= to keep its input whole.")
            for w in layer.weights:
                self._add(layer, w.name, 0, "norm", a)
            return a
        if isinstance(layer, (L.LayerNormalization, L.Softmax)) or (
                type(layer) is L.Activation
                and getattr(layer.activation, "__name__", "") in _CHANNEL_MIXING):
            self._freeze(a)   # mixes channels: a cut would change the others
            return a
        if isinstance(layer, (L.Normalization, L.Rescaling)):
            # per-channel constants (usually on the input): kept whole
            if type(layer) is L.Rescaling and np.ndim(layer.scale) == 0 \
                    and np.ndim(layer.offset) == 0:
                return a
            self._freeze(a)
            return a
        if isinstance(layer, L.Reshape) \
                and layer.input.shape[-1] == layer.output.shape[-1]:
            # row-major: the last index of every element is unchanged;
            # its target_shape[-1] follows the kept channels
            self.reshapes[node.name] = a
            return a
        if type(layer) is L.Activation or isinstance(layer, _PASS):
            return a
        if isinstance(layer, _MERGE):
            width = layer.output.shape[-1]
            full = [ids for ids in ins if len(ids) == width]
            for ids in full[1:]:
                self._union(full[0], ids)
            return full[0]
        if isinstance(layer, L.Concatenate):
            rank = len(layer.output.shape)
            if layer.axis in (-1, rank - 1):
                return np.concatenate(ins)
            for ids in ins[1:]:
                self._union(ins[0], ids)
            return ins[0]
        if isinstance(layer, L.Flatten):
            spatial = layer.input.shape[1:-1]
            if any(d is None for d in spatial):
                return self._barrier(node, ins)
            return np.tile(a, int(np.prod(spatial, dtype=int)))
        if node.name in self.never_prune:
            return self._barrier(node, ins)
        raise ValueError(
            f"Cannot prune through the layer {layer.name!r} "
            f"({type(layer).__name__}): keras-kd does not know how it maps "
            f"channels. Add {layer.name!r} to never_prune= to keep its input "
            f"and output channels whole. Supported layers: {_SUPPORTED}.")

    # groups --------------------------------------------------------------
    def _groups(self):
        order = {node.name: i for i, node in enumerate(self.nodes)}
        owners = {}     # root -> producer layers, in graph order
        first = {}      # root -> (producer order, channel index)
        for name in sorted(self.producers, key=order.get):
            for index, root in enumerate(self.roots(self.producers[name])):
                if self._frozen[root]:
                    continue
                owners.setdefault(root, [])
                if name not in owners[root]:
                    owners[root].append(name)
                first.setdefault(root, (order[name], index))
        by_key = {}
        for root, names in owners.items():
            by_key.setdefault(tuple(names), []).append(root)
        groups = []
        for names, roots in by_key.items():
            roots = np.array(sorted(roots, key=first.get), dtype=int)
            members = []
            for s, slice_roots in zip(self.slices, self.slice_roots):
                if np.isin(slice_roots, roots).any():
                    members.append((s.layer, s.name, s.axis))
            groups.append(Group(names[0], list(names), len(roots), roots,
                                members))
        groups.sort(key=lambda g: first[g.roots[0]])
        return groups

    def class_scores(self, per_slice):
        """Sum per-position scores over each class.

        ``per_slice`` maps a :class:`Slice`'s index in ``self.slices`` to an
        array with one score per position; returns ``{root: score}``.
        """
        scores = {}
        for index, values in per_slice.items():
            for root, v in zip(self.slice_roots[index], values):
                scores[root] = scores.get(root, 0.0) + float(v)
        return scores

    def kept_positions(self, removed_roots):
        """``{layer: {weight index: {axis: kept positions}}}`` for the
        slices that lose at least one position when ``removed_roots`` go."""
        removed = np.asarray(list(removed_roots), dtype=int)
        kept = {}
        for s, roots in zip(self.slices, self.slice_roots):
            mask = ~np.isin(roots, removed)
            if mask.all():
                continue
            kept.setdefault(s.layer, {}).setdefault(s.weight, {})[s.axis] = \
                np.flatnonzero(mask)
        return kept
