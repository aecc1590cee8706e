"""Dataset loaders: offline data sets that ship with Python packages, and
tensorflow-datasets by name.

Each loader imports its optional dependency (scikit-learn, tensorflow,
tensorflow-datasets) only when called.
"""

from keras_kd.data.images import Splits, load_dataset, load_digits, load_tfds

__all__ = ["Splits", "load_dataset", "load_digits", "load_tfds"]
