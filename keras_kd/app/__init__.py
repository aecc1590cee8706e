"""The keras-kd application: the ``keras-kd`` command and what it builds on.

Built-in models (:mod:`~keras_kd.app.models`), the run report and its plots
(:mod:`~keras_kd.app.report`), and the command itself
(:mod:`~keras_kd.app.cli`, :mod:`~keras_kd.app.export_command`). Unlike the
library, this side may need TensorFlow, tensorflow-datasets, scikit-learn and
matplotlib: ``pip install "keras-kd[app]"``.
"""
