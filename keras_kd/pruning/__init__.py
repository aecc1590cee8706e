"""Making the student from the teacher: structured pruning and low-rank
factorization of Functional and Sequential Keras models (keras + numpy only,
every backend).

- :class:`DependencyGraph`: the channel groups that must be cut together.
- :func:`prune`: a smaller model of the same layers, without masks.
- :mod:`~keras_kd.pruning.importance`: L1/L2, BatchNorm scale, activation, Taylor.
- :func:`factorize`: Dense / 1x1 convolutions split in two by truncated SVD.
- :func:`prune_transformer`: keras-hub GPT-2, BERT and Gemma in width and depth.
- :class:`GradualPruning`: pruning on a :class:`PolynomialDecay` schedule
  during ``fit()``, the optimizer state following the kept weights.
- :class:`PruningCallback`: the same schedule as masks inside the user's own
  ``fit()``, then :meth:`PruningCallback.strip` (via :func:`prune_channels`).
"""

from keras_kd.pruning.graph import DependencyGraph, Group, Slice
from keras_kd.pruning import importance
from keras_kd.pruning.counting import count_flops, layer_flops
from keras_kd.pruning import budget
from keras_kd.pruning.surgery import kept_count, prune
from keras_kd.pruning.low_rank import factorize, factorizable, svd_rank
from keras_kd.pruning.optimizer_state import carry_optimizer_state
from keras_kd.pruning.schedule import GradualPruning, PolynomialDecay
from keras_kd.pruning.transformers import prune_transformer
# masks inside the user's own fit(), then strip
from keras_kd.pruning.surgery import prune_channels
from keras_kd.pruning.callback import PruningCallback

__all__ = ["DependencyGraph", "Group", "Slice", "budget", "count_flops", "importance",
           "kept_count", "layer_flops", "prune", "factorize", "factorizable", "svd_rank",
           "carry_optimizer_state", "GradualPruning", "PolynomialDecay",
           "prune_transformer",
           # masks inside the user's own fit(), then strip
           "prune_channels", "PruningCallback"]
