"""Callbacks a :class:`~keras_kd.Distiller` adds to its own ``fit``.

They are added by ``Distiller.fit`` (users never construct them): the
epoch hook of epoch-dependent objectives and the guard that stops training
on a NaN or infinite loss with its cause.
"""

import keras
import numpy as np

from keras_kd import checks


class ObjectiveEpochHook(keras.callbacks.Callback):
    """Tells epoch-dependent objectives (e.g. DKD's warm-up) the epoch.

    Example:

    >>> class Warm:
    ...     def on_epoch_begin(self, epoch):
    ...         self.epoch = epoch
    >>> warm = Warm()
    >>> ObjectiveEpochHook([warm]).on_epoch_begin(3)
    >>> warm.epoch
    3
    """

    def __init__(self, objectives):
        super().__init__()
        self.objectives = objectives

    def on_epoch_begin(self, epoch, logs=None):
        for objective in self.objectives:
            objective.on_epoch_begin(epoch)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops ``fit`` at the end of an epoch whose loss is NaN or infinite,
    with the cause (:func:`keras_kd.checks.explain_non_finite`): inputs,
    cached teacher outputs or a teacher's, naming the rows or batch, else
    the student's own divergence at its learning rate. A ``tf.data``
    training set is read again for at most the epoch's steps (Keras's
    ``params["steps"]``), so ``fit(ds.repeat(), steps_per_epoch=n)`` ends.

    Example:

    >>> guard = NonFiniteLossGuard([], None, None, batch_size=32)
    >>> guard.on_epoch_end(0, {"loss": 0.5})  # finite: nothing happens
    """

    def __init__(self, teachers, x, y, batch_size):
        super().__init__()
        self.teachers, self.x, self.y = teachers, x, y
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        self.model.stop_training = True
        raise FloatingPointError(checks.explain_non_finite(
            self.teachers, self.x, self.y, self.batch_size, epoch,
            steps=(self.params or {}).get("steps"),
            optimizer=getattr(self.model, "optimizer", None)))


def check_before_fit(distiller, x, y, cached, on_policy=None,
                     validation_data=None, first=True):
    """What ``Distiller.fit`` checks before any step runs.

    * on-policy distillation runs the teacher live: cached teacher outputs
      (a soft-label cache) are refused;
    * cached teacher outputs must come from this Distiller's teacher
      (:func:`keras_kd.soft_labels.guards.check_cached_teacher`);
    * on the first ``fit`` (``first``): NumPy labels are read in full
      (:func:`keras_kd.checks.check_labels`), NumPy inputs must be finite
      (:func:`keras_kd.checks.check_finite_inputs`) and the teacher is
      measured on a first batch
      (:func:`keras_kd.checks.warn_if_teacher_untrained`).

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> def mlp(name):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)],
    ...                             name=name)
    >>> distiller = kd.Distiller(mlp("teacher"), mlp("student"))
    >>> check_before_fit(distiller, np.zeros((8, 4)), np.array([0, 1] * 4),
    ...                  cached=False)
    >>> check_before_fit(distiller, np.zeros((8, 4)), np.array([0, 3] * 4),
    ...                  cached=False)
    Traceback (most recent call last):
    ...
    ValueError: the labels go up to 3, but the models have 3 classes (0 to 2). ...
    """
    if on_policy is not None and on_policy.lmbda > 0 and cached:
        raise ValueError(
            "on_policy samples new tokens at each step, so the teacher "
            "must run live: cached teacher outputs score the data's "
            "tokens, not the student's. Pass the plain inputs and labels, "
            "or compile with on_policy=None to train from the cache.")
    if cached:  # a soft-label cache's teacher?
        from keras_kd.soft_labels.guards import check_cached_teacher
        check_cached_teacher(distiller, x, y)
    if not first:
        return
    if isinstance(y, np.ndarray):  # NumPy labels: all of them
        checks.check_labels(y, checks.class_count(distiller.student))
    checks.check_finite_inputs(x)
    checks.warn_if_teacher_untrained(distiller.teachers, x, y,
                                     validation_data, stacklevel=4)
