"""Parameters and FLOPs of a model, for pruning reports.

FLOPs are counted per sample as 2 × the multiply-accumulates (MACs) of the
layers with kernels, biases and element-wise layers left out:

- Dense: ``MACs = n_in · n_out`` per position (every axis but the batch
  and the last);
- Conv1D/2D/3D: ``MACs = kernel.size`` per output position
  (``k_1·…·k_d · C_in/groups · C_out``);
- DepthwiseConv: ``MACs = kernel.size`` (``k_1·…·k_d · C · m``) per output
  position; SeparableConv: its depthwise plus its pointwise kernel, per
  output position.
"""

import keras
import numpy as np

L = keras.layers
_KERNEL = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D,
           L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)


def layer_flops(layer, shapes=None):
    """FLOPs per sample of one layer (0 for layers without a kernel, None
    when an output dimension is unknown). ``shapes`` maps weight indices to
    the shapes to count instead of the layer's own (a pruned candidate).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 3)])
    >>> layer_flops(m.layers[0])   # 2 * (2*2 positions) * (3*3*3*8)
    1728
    """
    shapes = shapes or {}
    names = [w.name for w in layer.weights]

    def size_of(name):
        index = names.index(name)
        return int(np.prod(shapes.get(index, layer.weights[index].shape)))

    if isinstance(layer, _SEPARABLE):
        size = size_of("depthwise_kernel") + size_of("pointwise_kernel")
    elif isinstance(layer, _KERNEL) and type(layer) is not L.Embedding:
        size = size_of("kernel")
    else:
        return 0
    positions = layer.output.shape[1:-1]
    if any(d is None for d in positions):
        return None
    return 2 * size * int(np.prod(positions, dtype=np.int64))


def count_flops(model, shapes=None):
    """FLOPs per sample of ``model``: the sum of :func:`layer_flops`
    (None when some layer's output size is unknown). ``shapes`` maps
    ``(layer name, weight index)`` to a shape to count instead."""
    shapes = shapes or {}
    total = 0
    for layer in model.layers:
        own = {w: s for (name, w), s in shapes.items() if name == layer.name}
        flops = layer_flops(layer, own)
        if flops is None:
            return None
        total += flops
    return total
