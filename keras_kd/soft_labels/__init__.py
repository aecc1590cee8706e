"""Precomputed teacher outputs (offline distillation).

Live distillation runs the teacher at every step of every epoch. When the
inputs are not augmented, the teacher's outputs are the same each epoch: run
the teacher once, store its logits (and, for feature objectives, its tapped
features) beside the inputs, and train the student from the stored outputs.
A training step then costs about as much as training the student alone.

The stored outputs reach the :class:`~keras_kd.Distiller` as targets,
``y = {"teacher_logits": t, "labels": y, "teacher_features": [...]}``, so that
each output travels with its sample through shuffling and batching; the
Distiller then never calls the teacher.

Sequence models work the same way: logits of any rank are stored, e.g. a
language model's ``(batch, length, vocab)``, with top-k compression per
token; inputs may be a dict of arrays (keras-hub's ``{"token_ids",
"padding_mask"}``, one column each), and padding travels as
``sample_weight``, so that elements are ``(x, targets, sample_weight)``.

Storage per position (per token, or per sample of a classifier) of the
logits, ``SoftLabels.bytes_per_token``: ``4·V`` bytes for float32 logits,
``k·(b_v + b_i) + 4`` with ``top_k=k`` (value bytes ``b_v`` = 2 for float16,
4 for ``top_k_dtype="float32"``; index bytes ``b_i`` = 2 for uint16 when
V <= 65535, else 4; plus a float32 fill). For V = 32,000: 128,000 bytes per
token in full, 132 bytes with k = 32 float16 values (196 with float32), so
a billion tokens take 128 TB in full and 132 GB with top-32.

Cached outputs describe the inputs *as they were when the cache was built*.
Random augmentation applied afterwards (to the dataset returned by
:meth:`SoftLabels.as_dataset`) changes the inputs but not the stored
outputs, so the student would imitate the teacher on images it never saw:
use live distillation with augmentation.
"""

from keras_kd.soft_labels.build import compute_soft_labels
from keras_kd.soft_labels.cache import SoftLabels
from keras_kd.soft_labels.codec import compress_top_k, expand_top_k
from keras_kd.soft_labels.guards import teacher_fingerprint

__all__ = ["SoftLabels", "compute_soft_labels", "compress_top_k",
           "expand_top_k", "teacher_fingerprint"]
