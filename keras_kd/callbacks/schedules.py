"""Temperature and alpha schedules: a Distiller option set epoch by epoch."""

import math

import keras
import numpy as np

from keras_kd import checks

__all__ = ["TemperatureSchedule", "AlphaSchedule"]

_KINDS = ("linear", "cosine", "exponential", "constant")


class _ParameterSchedule(keras.callbacks.Callback):
    """Sets one Distiller option each epoch from ``start`` to ``end``."""

    attribute = None  # "temperature" or "alpha"

    def __init__(self, start, end=None, epochs=1, kind="linear"):
        super().__init__()
        end = start if end is None else end
        self.start = self._check(start, "start")
        self.end = self._check(end, "end")
        if isinstance(epochs, bool) or not isinstance(
                epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(
                f"{type(self).__name__}: epochs must be an integer >= 1 (the "
                f"length of the ramp in epochs), got {epochs!r}."
            )
        self.epochs = int(epochs)
        if kind not in _KINDS:
            raise ValueError(
                f"{type(self).__name__}: kind must be one of {_KINDS}, got "
                f"{kind!r}."
            )
        if kind == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError(
                f"{type(self).__name__}: kind='exponential' interpolates "
                f"geometrically and needs start and end > 0, got "
                f"start={self.start}, end={self.end}. Use kind='linear' or "
                "'cosine'."
            )
        self.kind = kind
        self.current = None

    def _check(self, value, arg):
        raise NotImplementedError

    def value_at(self, epoch):
        """The value used during (0-based) ``epoch``.

        With progress ``p = min(epoch / epochs, 1)``:

        * ``linear``: ``start + (end − start) · p``
        * ``cosine``: ``start + (end − start) · (1 − cos(π p)) / 2``
        * ``exponential``: ``start · (end / start) ** p``
        * ``constant``: ``start``

        so epoch 0 uses ``start`` and every epoch from ``epochs`` on uses
        ``end``.
        """
        if self.kind == "constant":
            return self.start
        p = min(max(float(epoch), 0.0) / self.epochs, 1.0)
        if self.kind == "linear":
            value = self.start + (self.end - self.start) * p
        elif self.kind == "cosine":
            value = self.start + (self.end - self.start) * (
                1.0 - math.cos(math.pi * p)) / 2.0
        else:
            value = self.start * (self.end / self.start) ** p
        # Keep rounding from stepping outside the validated range.
        low, high = sorted((self.start, self.end))
        return min(max(value, low), high)

    def _check_model(self):
        model = self.model
        if not hasattr(type(model), self.attribute) or not hasattr(
                model, f"_{self.attribute}"):
            raise ValueError(
                f"{type(self).__name__} sets the Distiller's "
                f"{self.attribute}, but fit() was called on a "
                f"{type(model).__name__} without one. Use it in "
                "kd.Distiller(...).fit(..., callbacks=[...])."
            )

    def on_train_begin(self, logs=None):
        self._check_model()

    def on_epoch_begin(self, epoch, logs=None):
        self.current = self.value_at(epoch)
        # The Distiller's property setter assigns its non-trainable variable;
        # every backend's trainer reads variables afresh at the first step of
        # an epoch, so the new value is used for the whole epoch.
        setattr(self.model, self.attribute, self.current)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.current is not None:
            logs[self.attribute] = self.current

    def get_config(self):
        return {"start": self.start, "end": self.end, "epochs": self.epochs,
                "kind": self.kind}


class TemperatureSchedule(_ParameterSchedule):
    """Changes the Distiller's temperature T from epoch to epoch.

    At the start of each epoch sets ``distiller.temperature`` to
    :meth:`value_at` ``(epoch)`` and at its end logs it as
    ``logs["temperature"]`` (seen by ``History``, and by ``CSVLogger`` /
    ``TensorBoard`` when they come after the schedule in the callback list).
    Epoch 0 uses ``start``; the value moves to ``end`` over ``epochs`` epochs
    (``linear``, ``cosine`` or ``exponential``) and stays there. Annealing T
    from high to low, or the reverse curriculum, is studied in e.g. Li et
    al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023,
    arXiv:2211.16231).

    A logit objective given its own ``temperature`` (``kd.objectives.KD(
    temperature=...)``) ignores the Distiller's, so the schedule raises for it.

    Args:
        start: T during epoch 0, > 0.
        end: T from epoch ``epochs`` on, > 0 (default: ``start``).
        epochs: length of the ramp in epochs, >= 1.
        kind: ``"linear"``, ``"cosine"``, ``"exponential"`` or ``"constant"``.

    Example:

    >>> import keras_kd as kd
    >>> schedule = kd.callbacks.TemperatureSchedule(8.0, 2.0, epochs=4)
    >>> [schedule.value_at(e) for e in range(6)]
    [8.0, 6.5, 5.0, 3.5, 2.0, 2.0]
    """

    attribute = "temperature"

    def _check(self, value, arg):
        return checks.check_temperature(
            value, strict=True, what=f"TemperatureSchedule: {arg}")

    def _check_model(self):
        super()._check_model()
        objective = getattr(self.model, "distillation_objective", None)
        own = getattr(objective, "temperature", None)
        if own is not None:
            raise ValueError(
                f"TemperatureSchedule sets the Distiller's temperature, but "
                f"the distillation objective {objective.name!r} has its own "
                f"temperature={own}, which takes precedence. Create it "
                "without temperature= (it then follows the Distiller's)."
            )


class AlphaSchedule(_ParameterSchedule):
    """Changes the Distiller's alpha (weight of the hard-label loss) per epoch.

    The step loss is ``alpha · hard + (1 − alpha) · soft + Σ feature terms``;
    at the start of each epoch ``distiller.alpha`` is set to
    :meth:`value_at` ``(epoch)`` and at its end logged as ``logs["alpha"]``.
    A typical use leans on the teacher early and on the labels later, e.g.
    ``AlphaSchedule(0.0, 0.5, epochs=10)``.

    Args:
        start: alpha during epoch 0, in [0, 1].
        end: alpha from epoch ``epochs`` on, in [0, 1] (default: ``start``).
        epochs: length of the ramp in epochs, >= 1.
        kind: ``"linear"``, ``"cosine"``, ``"exponential"`` (start, end > 0)
            or ``"constant"``.

    Example:

    >>> import keras_kd as kd
    >>> schedule = kd.callbacks.AlphaSchedule(0.0, 0.5, epochs=2,
    ...                                       kind="cosine")
    >>> [round(schedule.value_at(e), 3) for e in range(3)]
    [0.0, 0.25, 0.5]
    """

    attribute = "alpha"

    def _check(self, value, arg):
        return checks.check_alpha(value, what=f"AlphaSchedule: {arg}")
