"""Shared machinery of keras-kd's objectives.

Every objective is a pure function over ``keras.ops`` tensors (easy to test
against NumPy) plus a small serializable ``keras.layers.Layer`` that holds its
options and, for feature objectives, its trainable adapter. Being a Layer lets
the :class:`~keras_kd.Distiller` track the adapter's weights, train them and
save them with the model.

Conventions:

* A pure function returns a **per-sample** loss of shape ``(batch,)`` when the
  loss decomposes over samples, so that the Distiller can apply
  ``sample_weight`` and label masks. Relation objectives, which compare samples
  with each other, return a scalar and set ``per_sample = False``.
* Softmax, log-softmax and KL are computed in float32 whatever the dtype policy.
"""

import keras
from keras import ops

from keras_kd.checks import check_number, check_temperature  # noqa: F401


def to_float32(x):
    """Casts a tensor to float32 (a no-op when it already is).

    Distillation terms are computed in float32 so that a student running under
    ``mixed_float16`` or ``mixed_bfloat16`` still gets an exact soft loss.
    """
    if keras.backend.standardize_dtype(x.dtype) != "float32":
        return ops.cast(x, "float32")
    return x


class Objective(keras.layers.Layer):
    """Base class of keras-kd objectives.

    Subclasses set ``kind`` to ``"logits"`` (compares teacher and student
    logits) or ``"features"`` (compares the outputs of named intermediate
    layers, given by ``teacher_layer`` / ``student_layer``), and implement
    ``compute``. ``per_sample`` tells whether ``compute`` returns one loss per
    sample (shape ``(batch,)``) or a scalar for the whole batch.

    The class is a Keras layer only so that its adapters are tracked, trained
    and saved with the Distiller; it is never part of the student.
    """

    kind = "logits"
    per_sample = True
    needs_labels = False

    def __init__(self, weight=1.0, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = check_number("weight", weight, "pass e.g. weight=1.0.")
        # Objectives hold no weights of their own until `build_for` (adapters);
        # an unbuilt layer would make Keras re-trace every train_on_batch.
        self.built = True

    def build_for(self, teacher_shape, student_shape):
        """Creates any state (adapters) once the tapped shapes are known."""
        self.built = True

    def get_config(self):
        config = super().get_config()
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        config["weight"] = self.weight
        return config
