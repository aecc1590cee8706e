"""Making the student from the teacher: structured pruning and low-rank
factorization of Functional and Sequential Keras models (keras + numpy only,
every backend).

- :func:`factorize`: Dense / 1x1 convolutions split in two by truncated SVD.
"""

from keras_kd.pruning.low_rank import factorize, factorizable, svd_rank

__all__ = ["factorize", "factorizable", "svd_rank"]
