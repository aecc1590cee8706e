"""Choosing the objective and its settings for a teacher–student pair.

Which objective, temperature and alpha distil best depends on the pair and the
data: on the digits, KD at T=4 trails the student alone while DIST gains
(docs/benchmarks.md). :func:`search` answers the question for one pair by
training a fresh student for each setting with keras-tuner
(https://keras.io/keras_tuner/) and ranking the settings by their validation
score, next to the student alone.

keras-tuner is an optional dependency: ``pip install "keras-kd[search]"``.

One concept a module: :mod:`~keras_kd.search.grid` (the settings and their
checks), :mod:`~keras_kd.search.preflight` (what is checked before any
trial trains), :mod:`~keras_kd.search.tuning` (the trials),
:mod:`~keras_kd.search.result`, :mod:`~keras_kd.search.intervals`.

``keras_kd.search`` is this package, and ``kd.search`` (the attribute of
``keras_kd``) the function :func:`~keras_kd.search.tuning.search`: ``import
keras_kd as kd; kd.search(...)`` and ``from keras_kd.search import
wilson_interval`` both work.
"""

from keras_kd.search.grid import (STUDENT_ALONE, TEMPERATURE_FREE,
                                  check_arguments, grid_size)
from keras_kd.search.intervals import (Z_95, paired_difference_interval,
                                       wilson_interval)
from keras_kd.search.preflight import check_requirements
from keras_kd.search.result import SearchResult
from keras_kd.search.tuning import search

__all__ = ["search", "SearchResult", "grid_size", "check_requirements",
           "check_arguments", "wilson_interval",
           "paired_difference_interval", "STUDENT_ALONE", "TEMPERATURE_FREE",
           "Z_95"]
