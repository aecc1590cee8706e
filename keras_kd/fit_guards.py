"""What a :class:`~keras_kd.Distiller` checks and adds around ``fit``.

``Distiller.fit`` checks the data before any step (:func:`check_before_fit`)
and adds callbacks users never construct: the epoch hook of
epoch-dependent objectives (:class:`ObjectiveEpochHook`), the guard that
stops training on a NaN or infinite loss with its cause
(:class:`NonFiniteLossGuard`) and, with ``evaluate`` and ``predict`` too,
the keeper of the variables' values (:class:`StateGuard`): on JAX, Keras
takes the values out of the variables while the compiled steps run, so an
error raised inside a step would otherwise leave the teacher's and the
student's variables empty.
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
      (a soft-label cache) are refused, and its data must leave tokens to
      sample (:meth:`keras_kd.OnPolicy.check_data`);
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
    if on_policy is not None and on_policy.lmbda > 0:
        on_policy.check_data(x)  # before Keras traces a step
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


def _readable(variable):
    """Whether ``variable`` holds a value (JAX's trainer empties them while
    its compiled steps run; reading one then raises TypeError)."""
    try:
        variable.value
    except TypeError:
        return False
    return True


class StateGuard(keras.callbacks.Callback):
    """Keeps the variables' values as ``fit``/``evaluate``/``predict`` starts,
    to put them back if an error leaves them empty.

    On JAX, Keras's trainer passes the variables' values into each compiled
    step and empties the variables meanwhile (to save memory), putting the
    values back at the end of an epoch or when a step has run. An error
    raised inside a step (a ``ValueError`` at trace time, a bug in a custom
    objective) escapes before that, and the variables of the teacher and
    the student would stay empty: ``get_weights()`` raises ``TypeError`` and
    every later ``fit`` fails. This callback takes references to the values
    at ``on_train_begin`` / ``on_test_begin`` / ``on_predict_begin`` (JAX
    arrays are immutable: no copy is made) and lets them go when a second
    step begins (from then on Keras holds the last step's state), and
    :meth:`restore` refills every variable left empty: with the values
    kept when the first step failed, else with the state the last step
    returned (``jax_state_sync``). On other backends the variables are
    never emptied and :meth:`restore` changes nothing.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> guard = StateGuard()
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0,
    ...               callbacks=[guard])
    >>> guard.restore(model)  # nothing was emptied: nothing changes
    0
    """

    def __init__(self):
        super().__init__()
        self.saved = None
        self.steps_begun = 0

    def _save(self, logs=None):
        model = self.model
        variables = list(model.trainable_variables) + list(
            model.non_trainable_variables) + list(model.metrics_variables)
        if getattr(model, "optimizer", None) is not None:
            variables += list(model.optimizer.variables)
        unique = {id(v): v for v in variables}
        self.saved = [(v, v.value) for v in unique.values()]
        self.steps_begun = 0

    def _step_begins(self, batch, logs=None):
        # From the second step on, Keras holds the state the first returned
        # (``jax_state_sync`` restores it): the references are let go, so
        # that nothing is kept alive where Keras does not donate them.
        self.steps_begun += 1
        if self.steps_begun > 1:
            self.saved = None

    on_train_begin = on_test_begin = on_predict_begin = _save
    on_train_batch_begin = on_test_batch_begin = on_predict_batch_begin = \
        _step_begins

    def restore(self, model):
        """Refills the variables an interrupted step left empty; returns how
        many were refilled from the values kept."""
        if self.saved is None:
            # A step of this call returned: Keras holds its state.
            sync = getattr(model, "jax_state_sync", None)
            if sync is not None:
                sync()
            return 0
        refilled = 0
        for variable, value in self.saved:
            if _readable(variable):
                continue
            deleted = getattr(value, "is_deleted", None)
            if deleted is not None and deleted():
                continue  # donated to a step that ran: Keras synced it
            variable.assign(value)
            refilled += 1
        return refilled
