"""Activation ranges from data: :func:`calibrate`."""

import numpy as np

from keras_kd.quantization.layers import quantizers

__all__ = ["calibrate"]


def calibrate(model, data, batch_size=64, steps=None):
    """Sets each activation range to the min and max seen on ``data``.

    Runs the quantization-aware ``model`` on ``data`` with float
    activations (quantizers pass values through while they record; weights
    are already int8), so that every range
    ``[a, b]`` becomes ``[min(x, 0), max(x, 0)]`` over all the batches, as
    post-training calibration does; training then moves the ranges by their
    moving average (Krishnamoorthi 2018, section 3). Runs eagerly.

    Args:
        model: a model from :func:`quantize_model`.
        data: inputs: an array (split into ``batch_size`` batches), or an
            iterable of batches (``x`` or ``(x, y)``), e.g. a ``tf.data``
            dataset.
        batch_size: batch size for an array.
        steps: at most this many batches (None: all).

    Returns:
        ``model``.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((3,))
    >>> qat = kd.quantization.quantize_model(
    ...     keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    >>> x = np.array([[-1.0, 0.5, 2.0]], "float32")
    >>> _ = kd.quantization.calibrate(qat, x)
    >>> [float(v) for v in kd.quantization.quantizers(qat)[0].get_weights()]
    [-1.0, 2.0, 1.0]
    """
    layers = quantizers(model)
    if not layers:
        raise ValueError(f"Model '{model.name}' has no activation quantizers; "
                         "make it with kd.quantization.quantize_model first.")
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not \
            hasattr(data, "as_numpy_iterator"):
        data = np.asarray(data)
        batches = (data[i:i + batch_size]
                   for i in range(0, len(data), batch_size))
    else:
        batches = (data.as_numpy_iterator()
                   if hasattr(data, "as_numpy_iterator") else iter(data))
    for layer in layers:
        layer.calibrated.assign(0.0)
        layer.calibrating = True
    try:
        for step, batch in enumerate(batches):
            if steps is not None and step >= steps:
                break
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            model(batch, training=False)
    finally:
        for layer in layers:
            layer.calibrating = False
    return model
