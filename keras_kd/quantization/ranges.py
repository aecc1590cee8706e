"""Activation ranges from data: :func:`calibrate`."""

import numpy as np

from keras_kd import inputs
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

    The read is bounded: an infinite data set (``ds.repeat()``) needs
    ``steps``, and is refused without it. Nothing changes unless the
    calibration completes: an empty data set, or an error on any batch,
    raises and leaves every range and ``calibrated`` flag as it was.

    Args:
        model: a model from :func:`~keras_kd.quantization.quantize_model`.
        data: inputs: an array (split into ``batch_size`` batches), or an
            iterable of batches (``x`` or ``(x, y)``), e.g. a ``tf.data``
            dataset.
        batch_size: batch size for an array.
        steps: at most this many batches (None: all; required for an
            infinite data set).

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
    if steps is not None and (isinstance(steps, bool) or not isinstance(
            steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps must be None or an int >= 1, got {steps!r}.")
    if steps is None:
        inputs.refuse_infinite(
            data, "calibration data",
            "pass steps=..., e.g. calibrate(model, ds, steps=100), or a "
            "finite data set, e.g. ds.take(100)")
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not \
            hasattr(data, "as_numpy_iterator"):
        data = np.asarray(data)
        batches = (data[i:i + batch_size]
                   for i in range(0, len(data), batch_size))
    else:
        batches = (data.as_numpy_iterator()
                   if hasattr(data, "as_numpy_iterator") else iter(data))
    saved = [layer.get_weights() for layer in layers]
    for layer in layers:
        layer.calibrated.assign(0.0)
        layer.calibrating = True
    seen = 0
    try:
        for batch in inputs.bounded(batches, steps, "calibration data"):
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if len(batch) == 0:
                continue
            model(batch, training=False)
            seen += 1
        if not seen:
            raise ValueError(
                f"The calibration data for '{model.name}' is empty (no "
                "samples); the ranges were left as they were. Pass a few "
                "hundred training inputs, e.g. calibrate(model, x_train[:512]).")
    except BaseException:
        for layer, weights in zip(layers, saved):
            layer.set_weights(weights)
        raise
    finally:
        for layer in layers:
            layer.calibrating = False
    return model
