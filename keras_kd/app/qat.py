"""Quantization-aware fine-tunes of a trained float student, with or without
its teacher: what ``keras-kd run --qat`` and ``benchmarks/qat.py`` compare.

* **QAT**: :func:`keras_kd.quantization.quantize_model` of the float
  student (ranges calibrated on training inputs), fine-tuned on the labels;
* **QAD**: the same quantization-aware copy fine-tuned by
  :class:`keras_kd.Distiller` against the float teacher.

Both export as int8 from the ranges they learned
(``kd.export.to_tflite(model, path, quantize="int8")``).
"""


def fine_tune(float_student, x, y=None, *, calibration_data, teacher=None,
              epochs=1, learning_rate=1e-3, batch_size=None,
              validation_data=None, verbose=0, **distiller_options):
    """A quantization-aware copy of ``float_student``, fine-tuned.

    Args:
        float_student: a trained Functional or Sequential float student (left
            unchanged).
        x, y: the training data, as ``fit`` takes it (arrays, or a dataset of
            ``(inputs, labels)`` with ``y=None``).
        calibration_data: training inputs that set the initial activation
            ranges (e.g. 256 of them).
        teacher: ``None`` for QAT on the labels alone; the float teacher for
            QAD (the student distils from it).
        epochs, learning_rate, batch_size: the fine-tune's (Adam).
        validation_data, verbose: passed to ``fit``.
        **distiller_options: for QAD, passed to ``Distiller.compile`` (e.g.
            ``alpha``, ``temperature``, ``distillation_loss``, ``metrics``).

    Returns:
        ``(model, history)``: the quantization-aware student and the fit's
        ``History`` dict.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd.app.qat import fine_tune
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = np.arange(64) % 3
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> qat, history = fine_tune(student, x, y, calibration_data=x,
    ...                          batch_size=32)
    >>> from keras_kd.quantization import is_quantization_aware
    >>> is_quantization_aware(qat), len(history["loss"])
    (True, 1)
    """
    import keras

    from keras_kd.quantization import quantize_model

    model = quantize_model(float_student, calibration_data=calibration_data)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(learning_rate)
    if teacher is None:
        if distiller_options.keys() - {"metrics"}:
            raise TypeError(
                "QAT without a teacher takes no distillation options, got "
                f"{sorted(distiller_options)}; pass teacher=... for QAD.")
        model.compile(optimizer=optimizer, loss=loss,
                      metrics=distiller_options.get("metrics"))
        trainer = model
    else:
        from keras_kd.distiller import Distiller

        trainer = Distiller(teacher=teacher, student=model)
        trainer.compile(optimizer=optimizer, loss=loss, **distiller_options)
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size,
                          validation_data=validation_data, verbose=verbose,
                          shuffle=False if y is None else True)
    return model, {k: [float(v) for v in values]
                   for k, values in history.history.items()}
