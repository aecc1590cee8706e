"""kd.search: one keras-tuner trial per setting, ranked next to the student
alone."""

import shutil
import tempfile
import warnings

import keras
import numpy as np

from keras_kd.extras import require
from keras_kd.search.grid import (NO_FEATURES, STUDENT_ALONE, TEMPERATURE_FREE,
                                  check_numbers, feature_pair_labels,
                                  grid_size, objective_names)
from keras_kd.search.intervals import wilson_interval
from keras_kd.search.result import SearchResult

__all__ = ["search"]


def _keras_tuner():
    return require("keras_tuner")  # names pip install "keras-kd[search]"


def _count_examples(data):
    """The number of examples of ``validation_data``: an ``(x, y)`` tuple of
    arrays or a (batched) ``tf.data.Dataset``; None for anything else (a
    generator would be used up by counting)."""
    def first_len(tree):
        leaves = keras.tree.flatten(tree)
        return int(np.shape(leaves[0])[0]) if leaves else None

    if isinstance(data, (tuple, list)):
        return first_len(data[0]) if data else None
    if type(data).__module__.startswith("tensorflow") and \
            hasattr(data, "element_spec"):
        total = 0
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            total += first_len(x)
        return total
    return None


def _hypermodel(kt, teacher, make_student, objectives, temperatures, alphas,
                feature_labels, feature_objective, loss, metrics,
                learning_rate, seed):
    tempered = [o for o in objectives if o not in TEMPERATURE_FREE]

    class DistillationHyperModel(kt.HyperModel):
        """A fresh student, distilled with the trial's settings."""

        def build(self, hp):
            from keras_kd.distiller import Distiller

            objective = hp.Choice("objective", [STUDENT_ALONE] + objectives,
                                  default=STUDENT_ALONE)
            temperature, alpha, features = None, 1.0, NO_FEATURES
            with hp.conditional_scope("objective", objectives):
                value = hp.Choice("alpha", alphas)
                if objective != STUDENT_ALONE:
                    alpha = value
                if feature_labels:
                    value = hp.Choice("features",
                                      [NO_FEATURES] + list(feature_labels))
                    if objective != STUDENT_ALONE:
                        features = value
            if tempered:
                with hp.conditional_scope("objective", tempered):
                    temperature = hp.Choice("temperature", temperatures)
            # The same seed for every trial: the same initial student and the
            # same batches, so the settings alone differ.
            keras.utils.set_random_seed(seed)
            student = make_student()
            distiller = Distiller(teacher=teacher, student=student)
            pairs = ([] if features == NO_FEATURES
                     else [feature_objective(*feature_labels[features])])
            distiller.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss=(keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True) if loss is None else loss),
                metrics=list(metrics), alpha=alpha,
                # The student alone (alpha = 1) gives the distillation loss
                # weight 0; its objective and temperature do not matter.
                temperature=temperature or 1.0,
                distillation_loss=("kd" if objective == STUDENT_ALONE
                                   else objective),
                feature_losses=pairs)
            return distiller

        def fit(self, hp, model, x, y=None, **kwargs):
            if callable(x):  # a fresh pipeline: the same batch order each trial
                x = x()
                kwargs.setdefault("shuffle", False)  # the pipeline shuffles
            return model.fit(x, y, **kwargs)

    return DistillationHyperModel()


def _baseline_first(kt):
    class BaselineFirstRandomSearchOracle(kt.oracles.RandomSearchOracle):
        """Random search whose first trial is the defaults: the student alone."""

        def populate_space(self, trial_id):
            if self.start_order:
                return super().populate_space(trial_id)
            hps = self.get_space()
            values = {hp.name: hp.default for hp in hps.space
                      if hps.is_active(hp)}
            return {"status": "RUNNING", "values": values}

    return BaselineFirstRandomSearchOracle


def _row(trial, feature_labels):
    values = trial.hyperparameters.values
    objective = values.get("objective")
    if objective == STUDENT_ALONE:
        row = dict(objective=None, temperature=None, alpha=1.0, features=None,
                   setting=STUDENT_ALONE)
    else:
        features = values.get("features", NO_FEATURES)
        features = (None if features == NO_FEATURES
                    else list(feature_labels[features]))
        temperature = values.get("temperature")
        row = dict(objective=objective, temperature=temperature,
                   alpha=values["alpha"], features=features)
        row["setting"] = (
            objective + ("" if temperature is None else f" T={temperature:g}")
            + f" alpha={values['alpha']:g}"
            + ("" if features is None else " + features "
               + "->".join(features)))
    row["score"] = float(trial.score)
    row["trial"] = trial.trial_id
    return row


def search(teacher, make_student, x, y=None, validation_data=None, *,
           objectives=("kd", "dist", "dkd", "ls"), temperatures=(1.0, 2.0, 4.0),
           alphas=(0.1, 0.5), feature_pairs=None, feature_objective=None,
           epochs=10, batch_size=32, learning_rate=1e-3, loss=None,
           metrics=("accuracy",), metric="val_accuracy", max_trials=None,
           seed=0, directory=None, verbose=0):
    """Searches the distillation objective and its settings for a pair.

    Trains, with keras-tuner, a fresh student (``make_student()``) distilled
    from ``teacher`` by a :class:`keras_kd.Distiller` for each combination of
    objective × temperature × alpha (× feature pair or none), plus the student
    alone (alpha = 1: the hard-label loss only) as the baseline, and ranks them
    by ``metric`` on ``validation_data``. Every trial starts from
    ``keras.utils.set_random_seed(seed)`` before ``make_student()``, so all
    start from the same weights and see the same batches: a trial equals
    ``set_random_seed(seed)``, ``make_student()``, ``Distiller(...)``,
    ``compile(Adam(learning_rate), ..., alpha, temperature,
    distillation_loss)``, ``fit(...)`` run by hand.

    Temperature: every objective but ``"hard"`` reads the Distiller's
    temperature, so each is tried at every value of ``temperatures``. DIST
    (τ = 1 in its paper), LS (τ = 2) and KD and DKD (T = 4) have different
    usual values (the ones ``keras-kd run`` picks); the default
    ``temperatures=(1, 2, 4)`` holds all three, so each objective's usual
    setting is among the trials. ``"hard"`` ignores the temperature and gets
    one trial per alpha.

    The grid (:func:`grid_size` trials) runs in full with
    ``keras_tuner.GridSearch`` when ``max_trials`` is None or not smaller;
    otherwise ``max_trials`` trials run with ``keras_tuner.RandomSearch``
    (seeded by ``seed``), the first always the student alone.

    The score of a trial is keras-tuner's: ``metric`` at its best epoch; the
    returned student has that epoch's weights. That is a selection on the
    validation data: measure the chosen setting on a separate test set.

    Args:
        teacher: the trained teacher (a Keras model returning logits).
        make_student: a function of no arguments that builds a new,
            untrained student (called once per trial).
        x, y: the training data, as for ``fit``; ``x`` may also be a
            function of no arguments returning a fresh dataset (so that a
            reshuffling ``tf.data`` pipeline gives each trial the same order).
        validation_data: as for ``fit``; required (the scores come from it).
        objectives: logit objective names (``"kd"``, ``"dist"``, ``"dkd"``,
            ``"ls"``, ``"hard"``, ...).
        temperatures: temperatures (> 0) tried for each objective.
        alphas: hard-label weights in [0, 1); alpha = 1 is the student alone,
            always included.
        feature_pairs: ``[(teacher_layer, student_layer), ...]``; each is
            tried, as ``feature_objective(teacher_layer, student_layer)``,
            and so is no feature loss. None: logits only.
        feature_objective: builds the feature loss of a pair; default
            :class:`keras_kd.FitNet`.
        epochs, batch_size, learning_rate: of each trial's training (Adam);
            ``batch_size=None`` when ``x`` is a batched dataset.
        loss: the hard-label loss; default sparse categorical cross-entropy
            on logits.
        metrics: the Distiller's metrics; ``metric`` must be among their
            logged names.
        metric: what to rank by, e.g. ``"val_accuracy"`` (maximised) or
            ``"val_loss"`` (minimised); or a ``keras_tuner.Objective``.
        max_trials: at most this many trials (the student alone included).
        seed: the seed of every trial (and of the random search).
        directory: where keras-tuner keeps its trials (a ``search`` project
            in it, overwritten); None: a temporary directory, removed at the
            end, so nothing is written to the working directory.
        verbose: passed to ``fit`` and keras-tuner (0: silent).

    Returns:
        A :class:`SearchResult`: ``best`` settings, ``ranking`` (with each
        accuracy's 95% Wilson interval on the validation examples),
        ``baseline_score``, the best ``student``; ``table()`` prints the
        ranking, ``compile_kwargs()`` gives the best setting as arguments of
        ``Distiller.compile`` and ``run_args()`` as ``keras-kd run`` options.

    Raises:
        ImportError: keras-tuner is not installed (``pip install
            "keras-kd[search]"``).
        ValueError: bad arguments, with the fix.

    Example:

    >>> import keras, keras_kd as kd
    >>> (x, y), (x_val, y_val) = kd.data.load_digits()
    >>> def mlp(width):
    ...     return keras.Sequential([keras.Input((64,)),
    ...         keras.layers.Dense(width, activation="relu"),
    ...         keras.layers.Dense(10)])
    >>> keras.utils.set_random_seed(0)
    >>> teacher = mlp(64)
    >>> teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> _ = teacher.fit(x[:200], y[:200], epochs=3, verbose=0)
    >>> result = kd.search(teacher, lambda: mlp(8), x[:100], y[:100],
    ...     (x_val[:50], y_val[:50]), objectives=("kd",), temperatures=(4,),
    ...     alphas=(0.5,), epochs=1)
    >>> [row["setting"] for row in sorted(result.ranking,
    ...                                   key=lambda r: r["trial"])]
    ['student alone', 'kd T=4 alpha=0.5']
    """
    kt = _keras_tuner()
    if isinstance(make_student, keras.Model) or not callable(make_student):
        raise TypeError(
            "make_student must be a function that builds a new student (each "
            "trial trains its own), e.g. make_student=lambda: build_student(); "
            f"got {type(make_student).__name__}.")
    if validation_data is None:
        raise ValueError(
            "search ranks the settings on validation_data, which is None; "
            "pass held-out data, e.g. validation_data=(x_val, y_val).")
    names = objective_names(objectives)
    temperatures = check_numbers(temperatures, "temperatures",
                                 lambda v: v > 0, "> 0", "(1, 2, 4)")
    alphas = check_numbers(alphas, "alphas", lambda v: 0 <= v < 1,
                           "in [0, 1) (alpha = 1 is the student alone, which "
                           "the search always includes)", "(0.1, 0.5)")
    if feature_objective is None:
        from keras_kd.objectives import FitNet as feature_objective
    feature_labels = feature_pair_labels(
        feature_pairs, teacher, make_student() if feature_pairs else None)
    if max_trials is not None and (isinstance(max_trials, bool) or
                                   not isinstance(max_trials, int) or
                                   max_trials < 2):
        raise ValueError(
            f"max_trials must be an integer >= 2 (the student alone and at "
            f"least one setting) or None for the whole grid, got "
            f"{max_trials!r}; e.g. max_trials=10.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}; e.g. "
                         "seed=0.")

    hypermodel = _hypermodel(kt, teacher, make_student, names, temperatures,
                             alphas, feature_labels, feature_objective, loss,
                             metrics, learning_rate, seed)
    size = grid_size(names, temperatures, alphas, list(feature_labels))
    owned = directory is None
    root = tempfile.mkdtemp(prefix="keras-kd-search-") if owned else directory
    try:
        common = dict(hypermodel=hypermodel, directory=root,
                      project_name="search", overwrite=True)
        if max_trials is None or max_trials >= size:
            tuner = kt.GridSearch(objective=metric, seed=seed,
                                  max_consecutive_failed_trials=1, **common)
        else:
            oracle = _baseline_first(kt)(
                objective=metric, max_trials=max_trials, seed=seed,
                max_consecutive_failed_trials=1)
            tuner = kt.Tuner(oracle=oracle, **common)
        fit_kwargs = dict(validation_data=validation_data, epochs=epochs,
                          verbose=verbose)
        if batch_size is not None:  # None: x is a batched dataset
            fit_kwargs["batch_size"] = batch_size
        tuner.search(x, y, **fit_kwargs)
        objective = tuner.oracle.objective
        trials = [t for t in tuner.oracle.trials.values()
                  if t.score is not None]
        maximise = objective.direction == "max"
        ranking = sorted((_row(t, feature_labels) for t in trials),
                         key=lambda r: -r["score"] if maximise else r["score"])
        best_trial = tuner.oracle.get_best_trials(1)[0]
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's state too; only the
            # weights are wanted.
            warnings.filterwarnings("ignore", "Skipping variable loading for "
                                    "optimizer", UserWarning)
            student = tuner.load_model(best_trial).student
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    validation_examples = _count_examples(validation_data)
    accuracy = objective.name.endswith("accuracy")
    for row in ranking:
        row["interval"] = None
        if accuracy and validation_examples and 0 <= row["score"] <= 1:
            # The score is a share of the validation examples: back to the
            # count of right ones (rounding off float32 noise).
            right = round(row["score"] * validation_examples)
            row["interval"] = list(wilson_interval(right,
                                                   validation_examples))
    best_row = next(r for r in ranking if r["trial"] == best_trial.trial_id)
    baseline = next(r for r in ranking if r["objective"] is None)
    return SearchResult(
        best={k: best_row[k] for k in ("objective", "temperature", "alpha",
                                       "features")},
        best_score=best_row["score"], ranking=ranking,
        baseline_score=baseline["score"], student=student,
        metric=objective.name, direction=objective.direction,
        validation_examples=validation_examples,
        feature_objective=feature_objective)
