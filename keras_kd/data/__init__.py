"""Dataset loaders: offline data sets that ship with Python packages, and
tensorflow-datasets by name.

Each loader imports its optional dependency (scikit-learn, mnist1d,
tensorflow, tensorflow-datasets) only when called.
"""

from keras_kd.data.images import Splits, load_dataset, load_digits, load_tfds
from keras_kd.data.mnist1d import load_mnist1d
from keras_kd.data.text import (
    TextSplits,
    TokenWindows,
    bits_per_byte,
    load_python_source,
    python_source_files,
)

__all__ = ["Splits", "load_dataset", "load_digits", "load_mnist1d",
           "load_tfds", "TextSplits",
           "TokenWindows", "bits_per_byte", "load_python_source",
           "python_source_files"]
