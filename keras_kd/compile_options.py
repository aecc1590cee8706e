"""What ``Distiller.compile`` accepts: objectives, on-policy, loss scaling.

The compile-time decisions of a :class:`~keras_kd.Distiller` that do not need
the Distiller itself: which objectives may be combined
(:func:`check_objectives`), whether an :class:`~keras_kd.OnPolicy` fits the
student and the objectives (:func:`check_on_policy`), and whether the
optimizer must scale the loss because the student computes in float16
(:func:`loss_scaled`). Each error names the fix.
"""

import keras

from keras_kd.objectives.base import Objective
from keras_kd.on_policy import OnPolicy


def check_objectives(objective, feature_losses, has_hard_loss):
    """The compile-time objectives: feature ones in ``feature_losses``,
    something to train on, distinct names.

    Example:

    >>> import keras_kd as kd
    >>> check_objectives(kd.KD(), [], has_hard_loss=True)
    >>> check_objectives(None, [], has_hard_loss=False)
    Traceback (most recent call last):
    ...
    ValueError: Nothing to train on: pass distillation_loss='kd' (the default), feature_losses=[...], or a hard-label loss.
    """
    for f in feature_losses:
        if not isinstance(f, Objective) or f.kind == "logits":
            raise ValueError(
                f"feature_losses takes feature objectives such as "
                f"kd.FitNet('teacher_layer', 'student_layer'), got {f!r}; "
                "logit objectives go in distillation_loss=."
            )
    if objective is None and not feature_losses and not has_hard_loss:
        raise ValueError(
            "Nothing to train on: pass distillation_loss='kd' (the "
            "default), feature_losses=[...], or a hard-label loss."
        )
    names = [f.name for f in feature_losses]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Feature objectives need distinct names to be logged apart, "
            f"got {names}; pass name='...' to each."
        )


def check_on_policy(on_policy, student, feature_losses):
    """Refuses an ``on_policy`` that is not a :class:`~keras_kd.OnPolicy`,
    a student that cannot sample, or feature objectives next to it.

    Feature taps read the forward pass on the data, not on the sampled
    tokens, so on-policy distillation takes logit objectives only.

    Example:

    >>> check_on_policy(None, student=None, feature_losses=[])  # off-policy
    >>> check_on_policy("gkd", student=None, feature_losses=[])
    Traceback (most recent call last):
    ...
    TypeError: on_policy must be a kd.OnPolicy(...), got str; e.g. on_policy=kd.OnPolicy(lmbda=0.5, prompt_length=16).
    """
    if on_policy is None:
        return
    if not isinstance(on_policy, OnPolicy):
        raise TypeError(
            f"on_policy must be a kd.OnPolicy(...), got "
            f"{type(on_policy).__name__}; e.g. on_policy=kd.OnPolicy("
            "lmbda=0.5, prompt_length=16).")
    on_policy.check_student(student)
    if feature_losses:
        raise ValueError(
            "on_policy works with logit objectives only: feature taps "
            "would read the forward pass on the data, not on the sampled "
            "tokens. Drop feature_losses or on_policy.")


def computes_in_float16(model):
    """True when ``model`` or one of its layers computes in float16.

    Gradients of float16 computations underflow without loss scaling, so
    ``Distiller.compile`` then wraps the optimizer in a ``LossScaleOptimizer``
    (bfloat16 has float32's exponent range and needs none).

    Example:

    >>> computes_in_float16(keras.Sequential([keras.Input((2,)),
    ...                                       keras.layers.Dense(1)]))
    False
    """
    layers = [model] + list(getattr(model, "layers", []))
    return any(getattr(layer, "compute_dtype", None) == "float16"
               for layer in layers)


def loss_scaled(optimizer, student, policy_name, auto_scale_loss=True):
    """``optimizer``, wrapped in a ``LossScaleOptimizer`` when the student
    computes in float16 and Keras would not wrap it.

    Keras wraps the optimizer for loss scaling only when the model's own
    dtype policy (``policy_name``, the Distiller's) is ``mixed_float16``;
    for a Distiller the student's policy decides.

    Example:

    >>> student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> loss_scaled("adam", student, "float32")
    'adam'
    """
    if not (auto_scale_loss and computes_in_float16(student)
            and policy_name != "mixed_float16"):
        return optimizer
    optimizer = keras.optimizers.get(optimizer)
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
