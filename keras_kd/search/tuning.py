"""kd.search: one keras-tuner trial per setting, ranked next to the student
alone."""

import functools
import math
import os
import shutil
import tempfile
import warnings

import keras

from keras_kd import inputs, ownership
from keras_kd.search import preflight
from keras_kd.search.grid import (NO_FEATURES, STUDENT_ALONE, TEMPERATURE_FREE,
                                  check_arguments, feature_pair_labels,
                                  grid_size)
from keras_kd.search.intervals import wilson_interval
from keras_kd.search.result import SearchResult, rank_rows

__all__ = ["search", "auto_feature_pairs", "AUTO_FITNET_WEIGHT"]

# The FitNet weight of feature_pairs="auto" (kd.pair_layers' FitNet weight,
# the CRD benchmark code's).
AUTO_FITNET_WEIGHT = 100.0


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


def auto_feature_pairs(feature_pairs, teacher, student, x):
    """``feature_pairs`` of :func:`search`, with ``"auto"`` replaced by the
    ``(teacher_layer, student_layer)`` pairs that
    :func:`keras_kd.pair_layers` proposes on the first batch of ``x`` (its
    default ``select="end"``: CNN stage outputs by resolution, dense hidden
    layers by relative depth). Anything else is returned as it is.

    Raises:
        ValueError: another string, or models ``pair_layers`` finds no pair
            for (its message, naming the fix).

    >>> import keras, numpy as np
    >>> def mlp(name):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(
    ...         3, activation="relu", name=f"{name}_hidden"),
    ...         keras.layers.Dense(2)], name=name)
    >>> auto_feature_pairs("auto", mlp("t"), mlp("s"), np.ones((8, 4)))
    [('t_hidden', 's_hidden')]
    """
    if not isinstance(feature_pairs, str):
        return feature_pairs
    if feature_pairs != "auto":
        raise ValueError(
            f"feature_pairs must be a list of (teacher_layer, student_layer) "
            f"pairs, 'auto' or None, got {feature_pairs!r}; e.g. "
            "feature_pairs='auto'.")
    from keras_kd.pairing import pair_layers

    try:
        pairing = pair_layers(teacher, student, x() if callable(x) else x)
    except ValueError as error:
        raise ValueError(f"feature_pairs='auto': {error}") from None
    return [(p["teacher"], p["student"]) for p in pairing.pairs]


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
            and so is no feature loss. ``"auto"``: the pairs
            :func:`keras_kd.pair_layers` proposes for ``teacher`` and a
            student on the first batch of ``x`` (CNN stages by resolution,
            dense hidden layers by relative depth), each tried the same
            way, with ``FitNet(weight=100)`` (``pair_layers``' objective)
            unless ``feature_objective`` is given. None: logits only.
        feature_objective: builds the feature loss of a pair; default
            :class:`keras_kd.FitNet` (its weight 1; 100 with ``"auto"``),
            e.g. ``functools.partial(kd.FitNet, weight=10.0)``.
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
        directory: where keras-tuner keeps its trials: a ``search`` folder
            in it, which keras-kd marks as its own; a later search replaces
            a marked one and refuses (``FileExistsError``) a ``search``
            folder of the user's that is not empty. None: a temporary
            directory, removed at the end, so nothing is written to the
            working directory.
        verbose: passed to ``fit`` and keras-tuner (0: silent).

    Returns:
        A :class:`SearchResult`: ``best`` settings, ``ranking`` (with each
        accuracy's 95% Wilson interval on the validation examples),
        ``baseline_score``, the best ``student``; ``table()`` prints the
        ranking, ``compile_kwargs()`` gives the best setting as arguments of
        ``Distiller.compile`` and ``run_args()`` as ``keras-kd run`` options.

    Before the first trial trains, the search checks (and refuses, naming
    the fix): its dependencies (:func:`~keras_kd.search.check_requirements`);
    the arguments (:func:`~keras_kd.search.check_arguments`); that
    ``make_student`` builds a new model each call (the same model twice, or
    models sharing weights, would make the trials cumulative); that ``x``
    and ``validation_data`` are finite data sets and the validation inputs
    and labels hold no NaN or infinity (read once; a ``tf.data`` pipeline
    batch by batch); and that ``metric`` is logged, by evaluating the
    baseline Distiller on one validation batch (nothing is trained). A trial
    whose score is NaN (diverged) is ranked last with a ``RuntimeWarning``.

    Raises:
        ImportError: keras-tuner, or on TensorFlow TensorBoard, is not
            installed (``pip install "keras-kd[search]"``).
        ValueError: bad arguments, data or metric, with the fix.
        TypeError: ``make_student`` is not a function returning a model.
        FileExistsError: ``directory/search`` is a folder of the user's.

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
    # Everything that can be checked is checked before the first trial
    # trains: a failure inside a trial shows only as keras-tuner's
    # "Number of consecutive failures exceeded".
    kt = preflight.check_requirements()
    settings = check_arguments(
        objectives=objectives, temperatures=temperatures, alphas=alphas,
        max_trials=max_trials, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, metrics=metrics, metric=metric,
        seed=seed)
    names, temperatures, alphas = (settings[k] for k in (
        "objectives", "temperatures", "alphas"))
    if validation_data is None:
        raise ValueError(
            "search ranks the settings on validation_data, which is None; "
            "pass held-out data, e.g. validation_data=(x_val, y_val).")
    student = preflight.check_students(make_student)
    inputs.refuse_infinite(
        x() if callable(x) else x, "x", "each trial trains for epochs= "
        "passes over x, so x must end: pass a finite data set, e.g. "
        "x.take(1000)")
    validation_examples = preflight.validation_examples(validation_data)
    if feature_objective is None:
        from keras_kd.objectives import FitNet as feature_objective
        if isinstance(feature_pairs, str):
            # "auto": pair_layers' proposal, with its FitNet weight.
            feature_objective = functools.partial(feature_objective,
                                                  weight=AUTO_FITNET_WEIGHT)
    feature_pairs = auto_feature_pairs(feature_pairs, teacher, student, x)
    feature_labels = feature_pair_labels(
        feature_pairs, teacher, student if feature_pairs else None)
    if feature_labels:
        # Each trial taps the layers by name in a new student: unnamed
        # layers get new names at each call ("dense_7", then "dense_9").
        layer_names = {layer.name for layer in make_student().layers}
        changed = sorted({s for _, s in feature_labels.values()}
                         - layer_names)
        if changed:
            raise ValueError(
                f"feature_pairs: the student layers {changed} are not in the "
                "next model make_student builds (its layer names change at "
                "each call); name them, e.g. keras.layers.Dense(32, "
                "name='student_hidden').")
    preflight.check_metric(metric, preflight.logged_names(
        teacher, student, validation_data, batch_size, loss, metrics))

    hypermodel = _hypermodel(kt, teacher, make_student, names, temperatures,
                             alphas, feature_labels, feature_objective, loss,
                             metrics, learning_rate, seed)
    size = grid_size(names, temperatures, alphas, list(feature_labels))
    temporary = directory is None
    if temporary:
        root = tempfile.mkdtemp(prefix="keras-kd-search-")
    else:
        # Only a project folder keras-kd marked is replaced; a user's own
        # `directory/search` folder is refused (FileExistsError).
        root = os.fspath(directory)
        project = os.path.join(root, "search")
        if ownership.is_owned(project, "search"):
            ownership.remove_owned(project, "search")
        ownership.claim_folder(project, "search")
    try:
        common = dict(hypermodel=hypermodel, directory=root,
                      project_name="search", overwrite=False)
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
        ranking = rank_rows([_row(t, feature_labels) for t in trials],
                            objective.direction)
        if not math.isfinite(ranking[0]["score"]):
            raise ValueError(
                f"every trial's {objective.name} is NaN or infinite: no "
                "setting can be chosen. Lower learning_rate, or check the "
                "teacher and the data (kd.Distiller's fit names the cause).")
        best_trial = tuner.oracle.trials[ranking[0]["trial"]]
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's state too; only the
            # weights are wanted.
            warnings.filterwarnings("ignore", "Skipping variable loading for "
                                    "optimizer", UserWarning)
            student = tuner.load_model(best_trial).student
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    accuracy = objective.name.endswith("accuracy")
    for row in ranking:
        row["interval"] = None
        if accuracy and validation_examples and 0 <= row["score"] <= 1:
            # The score is a share of the validation examples: back to the
            # count of right ones (rounding off float32 noise).
            right = round(row["score"] * validation_examples)
            row["interval"] = list(wilson_interval(right,
                                                   validation_examples))
    best_row = ranking[0]
    baseline = next(r for r in ranking if r["objective"] is None)
    return SearchResult(
        best={k: best_row[k] for k in ("objective", "temperature", "alpha",
                                       "features")},
        best_score=best_row["score"], ranking=ranking,
        baseline_score=baseline["score"], student=student,
        metric=objective.name, direction=objective.direction,
        validation_examples=validation_examples,
        feature_objective=feature_objective)
