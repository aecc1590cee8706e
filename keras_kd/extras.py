"""Optional dependencies: imported when needed, with the install line that fixes them.

``import keras_kd`` needs keras and numpy only, so that a PyTorch or JAX user
never needs TensorFlow to distil. The export needs TensorFlow's converter and
the LiteRT interpreter, the data loaders tensorflow-datasets and scikit-learn,
the report matplotlib, the language-model helpers keras-hub; each of these is
imported through :func:`require`, whose error names the extra to install.
"""

import importlib

# The extra of pyproject.toml that installs each optional top-level module.
EXTRAS = {
    "tensorflow": "export",
    "ai_edge_litert": "export",
    "flatbuffers": "export",
    "tensorflow_datasets": "data",
    "sklearn": "data",
    "mnist1d": "data",
    "matplotlib": "app",
    "keras_hub": "hub",
    "keras_tuner": "search",
    # keras-tuner imports it at every trial on the TensorFlow backend.
    "tensorboard": "search",
}


def require(module):
    """Imports ``module`` (e.g. ``"tensorflow"`` or ``"ai_edge_litert.interpreter"``).

    Raises:
        ImportError: naming the ``pip install "keras-kd[...]"`` line that
            installs it.

    Example:

    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            raise
        raise ImportError(
            f"{top} is needed here but is not installed. Install it with: "
            f'pip install "keras-kd[{extra}]"'
        ) from error
