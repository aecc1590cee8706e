"""The keras-kd application: the ``keras-kd`` command and what it builds on.

The command: :mod:`~keras_kd.app.launcher` (its entry point),
:mod:`~keras_kd.app.parser` and :mod:`~keras_kd.app.options` (argparse alone,
no Keras), and the modules that run its commands
(:mod:`~keras_kd.app.image_run`, :mod:`~keras_kd.app.causal_lm_run`,
:mod:`~keras_kd.app.search_command`, :mod:`~keras_kd.app.export_command`) with
:mod:`~keras_kd.app.runs` (each run's folder). What they build on: built-in
models (:mod:`~keras_kd.app.models`), the report and its plots
(:mod:`~keras_kd.app.report`, :mod:`~keras_kd.app.plots`,
:mod:`~keras_kd.app.lm_report`), the pruned teacher as a student
(:mod:`~keras_kd.app.pruned`, ``keras-kd run --prune``). Unlike the library, this side may need
TensorFlow, tensorflow-datasets, scikit-learn and matplotlib:
``pip install "keras-kd[app]"``.
"""
