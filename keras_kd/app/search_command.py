"""``keras-kd search``: which objective, temperature and alpha for this pair.

Loads the data and trains the teacher as ``keras-kd run`` does (the same
functions of :mod:`keras_kd.app.image_run`), then runs :func:`keras_kd.search` over
the built-in student, prints the ranking as a Markdown table and writes
``OUTPUT/RUN_NAME/search.json``, and prints the ``keras-kd run`` command that
trains the best setting with the same data, models and sizes.

Examples::

    keras-kd search                     # digits, cnn -> small_cnn, 25 trials
    keras-kd search --quick             # seconds, for tests
    keras-kd search --objectives kd,dist --temperatures 1,4 --alphas 0.1
    keras-kd search --feature-pairs auto  # + FitNet on kd.pair_layers' pairs
"""

import json
import os
import shlex
import time

from keras_kd.app import image_run
from keras_kd.app.options import SEARCH_DEFAULTS, SEARCH_QUICK
from keras_kd.app.runs import stage, temporary_files_in

# What the search imports after the teacher has trained, checked before:
# keras-tuner, and on the TensorFlow backend the TensorBoard module its
# tuner imports at the first trial.
NEEDS = ("keras_tuner",)
TENSORFLOW_NEEDS = ("tensorboard.plugins.hparams.api",)


def require_search_packages(backend):
    """Imports keras-tuner (:data:`NEEDS`) and, on the ``"tensorflow"``
    backend, TensorBoard (:data:`TENSORFLOW_NEEDS`) before anything trains;
    an ``ImportError`` names the ``pip install "keras-kd[search]"`` line
    (:func:`keras_kd.extras.require`)."""
    from keras_kd.extras import require

    for module in NEEDS + (TENSORFLOW_NEEDS if backend == "tensorflow"
                           else ()):
        require(module)


def _apply_quick(args):
    """--quick: the smoke sizes, for the options left at their defaults."""
    if not args.quick:
        return
    for key, value in SEARCH_QUICK.items():
        if getattr(args, key) == SEARCH_DEFAULTS.get(key):
            setattr(args, key, value)


def run_command(args, result):
    """The ``keras-kd run`` argument list that trains ``result``'s best setting
    with the search's data, models, sizes and seed.

    ``["run", "--dataset", ..., "--teacher", ..., "--student", ...,
    "--epochs", ..., "--teacher-epochs", ..., "--batch-size", ...,
    "--learning-rate", ..., "--seed", ..., *result.run_args()]``, plus
    ``--image-size``, ``--weights``, ``--max-train`` and ``--max-test`` when
    the search set them. ``args`` are the parsed search options (after
    ``--quick`` was applied).
    """
    argv = ["run", "--dataset", args.dataset, "--teacher", args.teacher,
            "--student", args.student]
    if args.image_size is not None:
        argv += ["--image-size", "{}x{}".format(*args.image_size)]
    if args.weights != "auto":
        argv += ["--weights", args.weights]
    argv += ["--epochs", str(args.epochs),
             "--teacher-epochs", str(args.teacher_epochs),
             "--batch-size", str(args.batch_size),
             "--learning-rate", str(args.learning_rate)]
    for flag, value in (("--max-train", args.max_train),
                        ("--max-test", args.max_test)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + ["--seed", str(args.seed), *result.run_args()]


def run_search(args):
    """Runs ``keras-kd search`` for parsed arguments; returns the exit status.

    ``search.json`` holds the configuration, the backend, the teacher's
    validation accuracy, :meth:`keras_kd.search.SearchResult.to_dict`
    (``best``, ``best_score``, ``baseline_score``, ``validation_examples``,
    ``run_args``, ``ranking`` best first, each row with its 95% interval) and
    ``run_command``: the ``keras-kd run`` line of the best setting
    (:func:`run_command`), which is also printed (None when a feature loss
    won, see :func:`train_line`).
    """
    import keras

    try:
        require_search_packages(keras.backend.backend())
    except ImportError as error:
        raise SystemExit(f"keras-kd search: {error}") from None
    from keras_kd.search import search

    _apply_quick(args)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    state = image_run.Run(args, "search")
    state.make_dir("search")
    stage(f"search {state.run_name}: backend {state.backend}")
    with temporary_files_in(state.run_dir):
        image_run.load_data(state)
        image_run.train_teacher(state)
        teacher_accuracy = max(state.histories["teacher"]["val_accuracy"])
        stage(f"teacher: best validation accuracy {teacher_accuracy:.4f}; "
              f"searching objectives {', '.join(args.objectives)}, "
              f"temperatures {args.temperatures}, alphas {args.alphas}, "
              f"{args.epochs} epochs a trial")
        result = search(
            state.teacher,
            lambda: image_run.build(state, args.student, "student"),
            # A fresh pipeline for each trial: the same batches in the same
            # order.
            lambda: image_run.same_order_train(state),
            validation_data=state.splits.validation,
            objectives=args.objectives, temperatures=args.temperatures,
            alphas=args.alphas, epochs=args.epochs, batch_size=None,
            learning_rate=args.learning_rate, max_trials=args.max_trials,
            seed=args.seed, verbose=args.verbose,
            feature_pairs=getattr(args, "feature_pairs", None))
    print()
    print(result.table())
    print()
    path = os.path.join(state.run_dir, "search.json")
    config = {k: v for k, v in vars(args).items()
              if isinstance(v, (str, int, float, bool, tuple, type(None)))}
    command, how = train_line(args, result)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(config=config, backend=state.backend,
                       teacher_val_accuracy=teacher_accuracy,
                       seconds=time.perf_counter() - start,
                       run_command=command, **result.to_dict()), f, indent=2)
    best = result.ranking[0]["setting"]
    gain = result.best_score - result.baseline_score
    stage(f"best: {best} ({result.metric} {result.best_score:.4f}, "
          f"{100 * gain:+.2f} points over the student alone); wrote {path}")
    print(f"To train it: {how}")
    return 0


def train_line(args, result):
    """``(command, how)``: the ``keras-kd run`` line of the best setting
    (:func:`run_command`) and the line printed after "To train it:"; when
    the best setting has a feature loss (``--feature-pairs auto``), which
    ``keras-kd run`` does not offer, ``command`` is None and ``how`` names
    the feature loss and ``Distiller.compile(..., **result.compile_kwargs())``.
    """
    try:
        command = shlex.join(["keras-kd", *run_command(args, result)])
    except ValueError:
        features = result.compile_kwargs()["feature_losses"]
        hints = ", ".join(f"kd.{type(f).__name__}({f.teacher_layer!r}, "
                          f"{f.student_layer!r}, weight={f.weight:g})"
                          for f in features)
        return None, (
            f"in Python (keras-kd run distils logits only): "
            f"kd.Distiller(teacher, student).compile(..., "
            f"distillation_loss={result.best['objective']!r}, "
            f"alpha={result.best['alpha']:g}, "
            f"temperature={result.best['temperature'] or 1.0:g}, "
            f"feature_losses=[{hints}]), i.e. **result.compile_kwargs() of "
            "kd.search")
    return command, command
