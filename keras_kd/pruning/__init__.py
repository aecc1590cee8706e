"""Making the student from the teacher: structured pruning and low-rank
factorization of Functional and Sequential Keras models (keras + numpy only,
every backend).

- :class:`DependencyGraph`: the channel groups that must be cut together.
- :func:`factorize`: Dense / 1x1 convolutions split in two by truncated SVD.
"""

from keras_kd.pruning.graph import DependencyGraph, Group, Slice
from keras_kd.pruning.low_rank import factorize, factorizable, svd_rank

__all__ = ["DependencyGraph", "Group", "Slice", "factorize", "factorizable",
           "svd_rank"]
