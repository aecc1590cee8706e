"""Choosing the objective and its settings for a teacher–student pair.

Which objective, temperature and alpha distil best depends on the pair and the
data: on the digits, KD at T=4 trails the student alone while DIST gains
(docs/benchmarks.md). :func:`search` answers the question for one pair by
training a fresh student for each setting with keras-tuner
(https://keras.io/keras_tuner/) and ranking the settings by their validation
score, next to the student alone.

keras-tuner is an optional dependency: ``pip install "keras-kd[search]"``.
"""

import dataclasses
import math
import numbers
import shutil
import tempfile
import warnings

import keras
import numpy as np

from keras_kd import objectives as objectives_lib
from keras_kd.extras import require

# The value of the "objective" hyperparameter for the baseline: the student
# trained on the labels alone (alpha = 1).
STUDENT_ALONE = "student alone"
# Objectives that ignore the temperature: one trial each, whatever
# `temperatures` holds (hard distillation uses the teacher's argmax).
TEMPERATURE_FREE = ("hard",)
_NO_FEATURES = "none"
# The 97.5% quantile of the standard normal: a two-sided 95% interval.
Z_95 = 1.959963984540054


def wilson_interval(successes, n, z=Z_95):
    """The Wilson score interval of a binomial proportion (95% by default).

    The interval of one trial's accuracy measured on ``n`` examples, of
    which ``successes`` are right: how far that accuracy may sit from the
    model's accuracy on the distribution the ``n`` examples are drawn from.
    It is not an interval over seeds or over retraining (each trial of
    :func:`search` trains once), and the score it is computed for is the best
    epoch's, picked on the same examples, so it is, if anything, optimistic.

    With ``p = successes / n``::

        centre = (p + z² / 2n) / (1 + z² / n)
        half   = z / (1 + z² / n) · sqrt(p (1 - p) / n + z² / 4n²)

    Args:
        successes: the number of correct examples, 0 <= successes <= n
            (NumPy arrays work element-wise).
        n: the number of examples, >= 1.
        z: the normal quantile; the default gives a two-sided 95% interval.

    Returns:
        ``(low, high)``, floats (arrays for array input) in [0, 1].

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``[0, n]``.

    >>> [round(v, 4) for v in wilson_interval(90, 100)]
    [0.8256, 0.9448]
    """
    successes = np.asarray(successes, dtype="float64")
    n = np.asarray(n, dtype="float64")
    if np.any(n < 1) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(
            f"wilson_interval needs n >= 1 examples and 0 <= successes <= n, "
            f"got successes={successes.tolist()!r}, n={n.tolist()!r}; pass "
            "counts, e.g. wilson_interval(90, 100).")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = np.clip(centre - half, 0.0, 1.0)
    high = np.clip(centre + half, 0.0, 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def paired_difference_interval(correct_a, correct_b, z=Z_95):
    """The difference of two models' accuracies on the same examples, with
    its 95% interval (Newcombe's hybrid score interval for paired data).

    When two models are scored on the same test set, their accuracies are
    paired proportions: the examples both get right, or both get wrong, say
    nothing about the difference, and two Wilson intervals that overlap do
    not show that the difference could be 0. This interval uses the pairing.
    It is an interval over test examples, for the two trained models: not
    over seeds or retraining.

    With ``n`` examples, ``a`` right for both models, ``b`` right for model A
    only, ``c`` right for model B only and ``d`` wrong for both, the
    accuracies are ``p1 = (a + b) / n`` and ``p2 = (a + c) / n`` and the
    difference is ``D = p1 - p2 = (b - c) / n``. With ``(l1, u1)`` and
    ``(l2, u2)`` the Wilson intervals of ``p1`` and ``p2``
    (:func:`wilson_interval`) and ``phi`` the correlation of the two
    models' correctness, corrected as Newcombe does (``A = ad - bc``;
    ``phi = (A - n/2) / sqrt((a+b)(c+d)(a+c)(b+d))`` when ``A > n/2``,
    ``0`` when ``0 <= A <= n/2``, ``A / sqrt(...)`` when ``A < 0``; ``0``
    when a margin is empty)::

        low  = D - sqrt((p1 - l1)² + (u2 - p2)² - 2 phi (p1 - l1)(u2 - p2))
        high = D + sqrt((p2 - l2)² + (u1 - p1)² - 2 phi (p2 - l2)(u1 - p1))

    This is method 10 of R. G. Newcombe, "Improved confidence intervals for
    the difference between binomial proportions based on paired data",
    Statistics in Medicine 17 (1998) 2635-2650, in the form of M. W.
    Fagerland, S. Lydersen and P. Laake, "Recommended tests and confidence
    intervals for paired binomial proportions", Statistics in Medicine 33
    (2014) 2850-2875 (their "Newcombe square-and-add" interval, which they
    recommend; it stays inside [-1, 1] and behaves at 0 or n discordant
    examples, where the Wald interval does not). On their example (Cavo et
    al., 2012: ``a, b, c, d = 59, 6, 16, 80``) it gives -0.0621, 95% CI
    -0.1186 to -0.0046.

    Args:
        correct_a: per-example correctness of model A (booleans or 0/1),
            e.g. ``argmax(logits_a, -1) == labels``.
        correct_b: the same for model B, on the same examples in the same
            order.
        z: the normal quantile; the default gives a two-sided 95% interval.

    Returns:
        ``(difference, low, high)``: accuracy of A minus accuracy of B and
        its interval, floats in [-1, 1]. The difference is beyond the
        interval's noise when ``low > 0`` (A better) or ``high < 0``.

    Raises:
        ValueError: the two arrays differ in length, are empty or hold
            values other than 0 and 1.

    >>> correct_a = [True] * 65 + [False] * 96     # Cavo et al.'s table:
    >>> correct_b = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    >>> [round(v, 4) for v in paired_difference_interval(correct_a, correct_b)]
    [-0.0621, -0.1186, -0.0046]
    """
    a_right = np.asarray(correct_a).reshape(-1)
    b_right = np.asarray(correct_b).reshape(-1)
    if (a_right.shape != b_right.shape or a_right.size == 0 or not all(
            np.isin(v, (0, 1)).all() for v in (a_right, b_right))):
        raise ValueError(
            "paired_difference_interval needs two equally long, non-empty "
            "arrays of per-example correctness (True/False or 1/0), got "
            f"shapes {a_right.shape} and {b_right.shape}; pass e.g. "
            "argmax(logits, -1) == labels for each model.")
    a_right, b_right = a_right.astype(bool), b_right.astype(bool)
    n = a_right.size
    both = int(np.sum(a_right & b_right))
    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = float(both + only_a) * (only_b + neither) * \
        (both + only_b) * (only_a + neither)
    cross = float(both) * neither - float(only_a) * only_b
    if margins == 0.0 or 0.0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    difference = p1 - p2
    low = difference - math.sqrt(max(
        (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0))
    high = difference + math.sqrt(max(
        (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0))
    return float(difference), max(low, -1.0), min(high, 1.0)


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


@dataclasses.dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        best: the best row's settings: ``{"objective", "temperature",
            "alpha", "features"}``; ``objective`` is ``None`` when the student
            alone won (then distillation did not pay on this validation set).
        best_score: the best row's validation score.
        ranking: one dict per trial, best first: the settings, ``"score"``
            (the best epoch's value of ``metric``, keras-tuner's convention),
            ``"setting"`` (a readable label) and ``"trial"`` (keras-tuner's
            trial id). The student alone is one of the rows.
        baseline_score: the student alone's score.
        student: the best row's student, with the weights of its best epoch.
        metric: the name of the score, e.g. ``"val_accuracy"``.
        direction: ``"max"`` or ``"min"``.
        validation_examples: the number of validation examples the scores
            were measured on (None when it could not be counted).
        feature_objective: the class that built the feature losses (what
            :meth:`compile_kwargs` uses for a feature pair).

    Each ranking row of an accuracy metric also holds ``"interval"``: the 95%
    Wilson interval ``[low, high]`` of that trial's accuracy on the
    ``validation_examples`` examples (:func:`wilson_interval`): the
    uncertainty of one trial's measurement on a finite validation set, not a
    spread over seeds. Rows whose intervals overlap are not told apart by
    this validation set. It is None for other metrics or an unknown count.
    """

    best: dict
    best_score: float
    ranking: list
    baseline_score: float
    student: object
    metric: str
    direction: str
    validation_examples: int = None
    feature_objective: object = None

    def table(self):
        """The ranking as a Markdown table (rank, setting, score, its 95%
        interval, gain).

        The gain is the score minus the student alone's; the interval is the
        row's ``"interval"`` (— when there is none).
        """
        n = self.validation_examples
        lines = [f"| rank | setting | {self.metric} | 95% interval"
                 + (f" (n={n})" if n else "") + " | vs student alone |",
                 "|---:|---|---:|---|---:|"]
        for rank, row in enumerate(self.ranking, 1):
            gain = row["score"] - self.baseline_score
            gain = "—" if row["objective"] is None else f"{gain:+.4f}"
            interval = row.get("interval")
            interval = ("—" if interval is None
                        else f"[{interval[0]:.4f}, {interval[1]:.4f}]")
            lines.append(f"| {rank} | {row['setting']} | {row['score']:.4f} "
                         f"| {interval} | {gain} |")
        return "\n".join(lines)

    def compile_kwargs(self):
        """The best setting as keyword arguments of
        :meth:`keras_kd.Distiller.compile`.

        ``alpha``, ``temperature``, ``distillation_loss`` and
        ``feature_losses`` (a new ``feature_objective(teacher_layer,
        student_layer)`` when the best row used a feature pair, else ``[]``);
        add the optimizer, loss and metrics. ``"hard"`` ignores the
        temperature (1.0 is given). When the student alone won, they train it
        alone: ``alpha=1.0`` (the hard-label loss only; the distillation
        loss, ``"kd"`` at T=1, gets weight 0), as the search's baseline did.

        >>> result = SearchResult(
        ...     best=dict(objective="dist", temperature=1.0, alpha=0.1,
        ...               features=None), best_score=0.9, ranking=[],
        ...     baseline_score=0.8, student=None, metric="val_accuracy",
        ...     direction="max")
        >>> result.compile_kwargs()
        {'alpha': 0.1, 'temperature': 1.0, 'distillation_loss': 'dist', 'feature_losses': []}
        """
        best = self.best
        if best["objective"] is None:
            return dict(alpha=1.0, temperature=1.0, distillation_loss="kd",
                        feature_losses=[])
        features = []
        if best.get("features"):
            make = self.feature_objective
            if make is None:
                from keras_kd.objectives import FitNet as make
            features = [make(*best["features"])]
        return dict(alpha=float(best["alpha"]),
                    temperature=float(best["temperature"] or 1.0),
                    distillation_loss=best["objective"],
                    feature_losses=features)

    def run_args(self):
        """The best setting as ``keras-kd run`` options: ``["--objective",
        NAME, "--alpha", A, "--temperature", T]``, the values of
        :meth:`compile_kwargs` (the student alone: ``--alpha 1``, whose
        distilled student is trained on the labels alone).

        Add the dataset, models and sizes the search used.

        Raises:
            ValueError: the best setting has a feature loss, which
                ``keras-kd run`` does not offer; use :meth:`compile_kwargs`
                with a :class:`keras_kd.Distiller` instead.
        """
        if self.best["objective"] is not None and self.best.get("features"):
            raise ValueError(
                "the best setting adds a feature loss ("
                + "->".join(self.best["features"]) + "), which keras-kd run "
                "does not offer (it distils logits only); train it in Python: "
                "distiller.compile(..., **result.compile_kwargs()).")
        kwargs = self.compile_kwargs()
        return ["--objective", kwargs["distillation_loss"],
                "--alpha", f"{kwargs['alpha']:.10g}",
                "--temperature", f"{kwargs['temperature']:.10g}"]

    def to_dict(self):
        """A JSON-ready dict (everything but the student and the feature
        objective); ``run_args`` is :meth:`run_args` (None when the best
        setting has a feature loss)."""
        try:
            run_args = self.run_args()
        except ValueError:
            run_args = None
        return dict(metric=self.metric, direction=self.direction,
                    best=self.best, best_score=self.best_score,
                    baseline_score=self.baseline_score,
                    validation_examples=self.validation_examples,
                    run_args=run_args, ranking=self.ranking)


def _keras_tuner():
    return require("keras_tuner")  # names pip install "keras-kd[search]"


def _names(objectives):
    if isinstance(objectives, str) or not objectives:
        raise ValueError(
            f"objectives must be a non-empty list of objective names, got "
            f"{objectives!r}; e.g. objectives=('kd', 'dist').")
    known = sorted(objectives_lib.LOGIT_OBJECTIVES)
    names = []
    for name in objectives:
        if not isinstance(name, str) or name.lower() not in known:
            raise ValueError(
                f"objectives holds {name!r}; search takes objective names, "
                f"one of {known}, e.g. objectives=('kd', 'dist').")
        names.append(name.lower())
    return _unique(names, "objectives")


def _unique(values, what):
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has repeated values {list(values)}; list "
                         "each once.")
    return list(values)


def _numbers(values, what, ok, rule, example):
    if isinstance(values, (str, numbers.Number)) or not values:
        raise ValueError(f"{what} must be a non-empty list of numbers, got "
                         f"{values!r}; e.g. {what}={example}.")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
                not math.isfinite(v) or not ok(v):
            raise ValueError(f"{what} holds {v!r}, which is not {rule}; e.g. "
                             f"{what}={example}.")
        out.append(float(v))
    return _unique(out, what)


def _feature_labels(feature_pairs, teacher, student):
    if feature_pairs is None:
        return {}
    labels = {}
    for pair in feature_pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(n, str) for n in pair)):
            raise ValueError(
                f"feature_pairs holds {pair!r}; give (teacher_layer, "
                "student_layer) name pairs, e.g. feature_pairs=[('dense', "
                "'dense_1')].")
        for model, name, role in ((teacher, pair[0], "teacher"),
                                  (student, pair[1], "student")):
            layer_names = [layer.name for layer in model.layers]
            if name not in layer_names:
                raise ValueError(
                    f"feature_pairs: the {role} has no layer {name!r}; its "
                    f"layers are {layer_names}.")
        labels[f"{pair[0]}->{pair[1]}"] = tuple(pair)
    if len(labels) != len(feature_pairs):
        raise ValueError(f"feature_pairs has repeated pairs {feature_pairs}; "
                         "list each once.")
    return labels


def grid_size(objectives, temperatures, alphas, feature_pairs=None):
    """The number of trials of a full grid, the student alone included.

    One per objective, temperature (not for ``"hard"``), alpha and feature
    pair (or none), plus one for the student alone.

    >>> grid_size(("kd", "dist", "hard"), (1, 2, 4), (0.1, 0.5))
    15
    """
    features = 1 + len(feature_pairs or ())
    per_temperature = sum(1 if o.lower() in TEMPERATURE_FREE
                          else len(temperatures) for o in objectives)
    return 1 + per_temperature * len(alphas) * features


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
            temperature, alpha, features = None, 1.0, _NO_FEATURES
            with hp.conditional_scope("objective", objectives):
                value = hp.Choice("alpha", alphas)
                if objective != STUDENT_ALONE:
                    alpha = value
                if feature_labels:
                    value = hp.Choice("features",
                                      [_NO_FEATURES] + list(feature_labels))
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
            pairs = ([] if features == _NO_FEATURES
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
        features = values.get("features", _NO_FEATURES)
        features = (None if features == _NO_FEATURES
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
    names = _names(objectives)
    temperatures = _numbers(temperatures, "temperatures", lambda v: v > 0,
                            "> 0", "(1, 2, 4)")
    alphas = _numbers(alphas, "alphas", lambda v: 0 <= v < 1, "in [0, 1) "
                      "(alpha = 1 is the student alone, which the search "
                      "always includes)", "(0.1, 0.5)")
    if feature_objective is None:
        from keras_kd.objectives import FitNet as feature_objective
    feature_labels = _feature_labels(feature_pairs, teacher,
                                     make_student() if feature_pairs else None)
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
