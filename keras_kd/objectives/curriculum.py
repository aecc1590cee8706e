"""CTKD: a temperature learned adversarially, on a curriculum.

The temperature is a trainable variable of the objective, trained by the
Distiller's optimizer through a gradient reversal: the student descends the
KD loss while the temperature ascends it, with a reversal strength λ that
grows along a cosine schedule from easy (λ = 0) to hard (λ = λ_max).
"""

import math

import keras
from keras import ops

from keras_kd.checks import check_number, check_teacher_weights, is_number
from keras_kd.objectives.base import Objective, check_temperature
from keras_kd.objectives.distributions import float32_tensor
from keras_kd.objectives.logits import kd_loss


def reverse_gradient(x, strength):
    """Identity in the forward pass; the gradient times ``−strength`` back.

    The gradient reversal layer of Ganin & Lempitsky (ICML 2015), written as
    ``sg(x) − strength · (x − sg(x))`` with ``sg`` = ``stop_gradient``: the
    value is exactly ``x`` (``x − sg(x)`` is exactly 0) and the derivative
    is ``−strength``, on every backend without a custom-gradient rule.

    Example:

    >>> import numpy as np
    >>> float(reverse_gradient(np.float32(3.0), 0.5))
    3.0
    """
    x = ops.convert_to_tensor(x)
    frozen = ops.stop_gradient(x)
    return frozen - ops.cast(strength, x.dtype) * (x - frozen)


def ctkd_lambda(epoch, decay_epochs=10, lambda_max=1.0, lambda_min=0.0):
    """The reversal strength λ at ``epoch`` (0-based): a cosine ramp.

        λ_e = λ_min + (λ_max − λ_min) · (1 − cos(π · min(e, E) / E)) / 2

    from λ_min at epoch 0 to λ_max at epoch E = ``decay_epochs`` and after
    (Li et al., AAAI 2023, eq. 9; the authors' ``CosineDecay`` with
    ``decay_max=0, decay_min=−1, decay_loops=10`` gives −λ_e with λ_max=1,
    multiplied into the gradient).

    Example:

    >>> [round(ctkd_lambda(e, decay_epochs=4), 3) for e in range(6)]
    [0.0, 0.146, 0.5, 0.854, 1.0, 1.0]
    """
    if decay_epochs <= 0:
        return float(lambda_max)
    progress = min(max(int(epoch), 0), decay_epochs) / decay_epochs
    return lambda_min + (lambda_max - lambda_min) * 0.5 * (
        1.0 - math.cos(math.pi * progress))


def ctkd_temperature(parameter, t_start=1.0, t_end=20.0):
    """``T = t_start + t_end · sigmoid(θ)``: the learned temperature, in
    ``(t_start, t_start + t_end)`` whatever θ (the authors' code).

    Example:

    >>> round(float(ctkd_temperature(0.0)), 3)
    11.0
    """
    return t_start + t_end * ops.sigmoid(
        ops.cast(ops.convert_to_tensor(parameter), "float32"))


@keras.saving.register_keras_serializable(package="keras_kd")
class CTKD(Objective):
    """Curriculum temperature KD (``distillation_loss="ctkd"``).

    Hinton KD at a learned global temperature ``T = t_start + t_end ·
    sigmoid(θ)`` (Li et al., "Curriculum Temperature for Knowledge
    Distillation", AAAI 2023, arXiv:2211.16231):

        loss_i = T² · KL(softmax(t/T) ‖ softmax(s/T))
        min over the student, max over θ:  θ's gradient is reversed,
        times λ_e = ctkd_lambda(epoch)   (0 → λ_max on a cosine ramp)

    θ is a trainable variable of the objective, so the Distiller's optimizer
    trains it with the student (the paper uses the same optimizer), and
    ``.keras`` files save and restore it; λ is a non-trainable variable set
    by :meth:`on_epoch_begin`, which ``Distiller.fit`` calls each epoch.
    The Distiller's own ``temperature`` is not used. The global-temperature
    variant is implemented; the instance-wise one (an MLP predicting T per
    sample) is not.

    Usual settings (authors' CIFAR-100 script): t_start=1, t_end=20, θ₀=1
    (T₀ ≈ 15.6), λ from 0 to 1 over 10 epochs, CE weight 0.1 and KD weight
    0.9 (``compile(alpha=0.1)``).

    Args:
        t_start: the lowest temperature.
        t_end: the span of temperatures above ``t_start``.
        initial_parameter: θ₀, the initial value of θ.
        decay_epochs: epochs of the cosine ramp of λ.
        lambda_max: λ at the end of the ramp.
        lambda_min: λ at epoch 0.
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the term.

    Example:

    >>> import keras_kd as kd
    >>> ctkd = kd.objectives.CTKD(decay_epochs=10)
    >>> round(ctkd.temperature, 2)
    15.62
    >>> ctkd.on_epoch_begin(5)
    >>> ctkd.reversal_strength
    0.5
    """

    def __init__(self, t_start=1.0, t_end=20.0, initial_parameter=1.0,
                 decay_epochs=10, lambda_max=1.0, lambda_min=0.0,
                 teacher_weights=None, weight=1.0, name="ctkd", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.t_start = check_temperature(t_start, strict=True,
                                         what="t_start")
        self.t_end = check_number("t_end", t_end,
                                  "the usual CTKD value is t_end=20.0.")
        check_temperature(self.t_start + self.t_end, strict=True,
                          what="t_start + t_end")
        if not is_number(initial_parameter) or not math.isfinite(
                initial_parameter):
            raise ValueError(
                f"initial_parameter must be a finite number, got "
                f"{initial_parameter!r}; the usual CTKD value is 1.0.")
        self.initial_parameter = float(initial_parameter)
        if not isinstance(decay_epochs, int) or isinstance(
                decay_epochs, bool) or decay_epochs < 0:
            raise ValueError(
                f"decay_epochs must be an integer >= 0, got "
                f"{decay_epochs!r}; the usual CTKD value is 10.")
        self.decay_epochs = decay_epochs
        self.lambda_max = check_number("lambda_max", lambda_max,
                                       "the usual CTKD value is 1.0.")
        self.lambda_min = check_number("lambda_min", lambda_min,
                                       "the usual CTKD value is 0.0.")
        self.teacher_weights = check_teacher_weights(teacher_weights)
        self._parameter = self.add_weight(
            shape=(), dtype="float32", trainable=True,
            name="temperature_parameter",
            initializer=keras.initializers.Constant(self.initial_parameter))
        self._lambda = self.add_weight(
            shape=(), dtype="float32", trainable=False, name="reversal",
            initializer=keras.initializers.Constant(self._lambda_at(0)))

    def _lambda_at(self, epoch):
        return ctkd_lambda(epoch, self.decay_epochs, self.lambda_max,
                           self.lambda_min)

    @property
    def temperature(self):
        """The current learned temperature (a float)."""
        theta = float(ops.convert_to_numpy(
            ops.stop_gradient(self._parameter.value)))
        return self.t_start + self.t_end / (1.0 + math.exp(-theta))

    @property
    def reversal_strength(self):
        """The current λ (a float)."""
        return float(ops.convert_to_numpy(self._lambda.value))

    def on_epoch_begin(self, epoch):
        """Sets λ for ``epoch`` (0-based, as in Keras)."""
        self._lambda.assign(self._lambda_at(int(epoch)))

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=None):
        theta = reverse_gradient(self._parameter.value, self._lambda.value)
        T = ctkd_temperature(theta, self.t_start, self.t_end)
        # Tensors first: NumPy logits divided by a tensor T fail on PyTorch.
        if isinstance(teacher_logits, (list, tuple)):
            teacher_logits = [float32_tensor(t) for t in teacher_logits]
        else:
            teacher_logits = float32_tensor(teacher_logits)
        return kd_loss(teacher_logits, float32_tensor(student_logits), T,
                       self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(t_start=self.t_start, t_end=self.t_end,
                      initial_parameter=self.initial_parameter,
                      decay_epochs=self.decay_epochs,
                      lambda_max=self.lambda_max,
                      lambda_min=self.lambda_min,
                      teacher_weights=self.teacher_weights)
        return config
