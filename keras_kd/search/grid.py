"""The grid of a search: its settings, their checks and its size."""

import math
import numbers

from keras_kd import objectives as objectives_lib

__all__ = ["STUDENT_ALONE", "TEMPERATURE_FREE", "NO_FEATURES", "grid_size",
           "check_arguments",
           "objective_names", "check_numbers", "feature_pair_labels", "unique"]

# The value of the "objective" hyperparameter for the baseline: the student
# trained on the labels alone (alpha = 1).
STUDENT_ALONE = "student alone"
# Objectives that ignore the temperature: one trial each, whatever
# `temperatures` holds (hard distillation uses the teacher's argmax).
TEMPERATURE_FREE = ("hard",)
# The "features" hyperparameter's value for no feature loss.
NO_FEATURES = "none"


def objective_names(objectives):
    """The objective names of a search, lower-cased, each once.

    Raises:
        ValueError: a string instead of a list, an empty list, an unknown or
            repeated name; the message names the known objectives.

    >>> objective_names(("KD", "dist"))
    ['kd', 'dist']
    """
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
    return unique(names, "objectives")


def unique(values, what):
    """``values`` as a list; a repeated value raises ``ValueError``.

    >>> unique((1.0, 2.0), "temperatures")
    [1.0, 2.0]
    """
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has repeated values {list(values)}; list "
                         "each once.")
    return list(values)


def check_numbers(values, what, ok, rule, example):
    """``values`` as a list of floats, each finite, once and ``ok(v)``.

    Args:
        values: the user's list (``temperatures``, ``alphas``).
        what: the argument's name, for the message.
        ok: the rule a value must pass.
        rule: the rule in words (``"> 0"``).
        example: a good value, for the message.

    >>> check_numbers((1, 4), "temperatures", lambda v: v > 0, "> 0", "(1, 4)")
    [1.0, 4.0]
    """
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
    return unique(out, what)


def feature_pair_labels(feature_pairs, teacher, student):
    """The feature pairs by label (``"teacher_layer->student_layer"``).

    Each pair must name a layer of the teacher and one of the student.

    >>> import keras
    >>> def mlp(name):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(
    ...         3, name=f"{name}_hidden")], name=name)
    >>> feature_pair_labels([("t_hidden", "s_hidden")], mlp("t"), mlp("s"))
    {'t_hidden->s_hidden': ('t_hidden', 's_hidden')}
    """
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


def _positive_int(value, what, example, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got "
                         f"{value!r}; e.g. {what}={example}.")
    return int(value)


def check_arguments(objectives=("kd", "dist", "dkd", "ls"),
                    temperatures=(1.0, 2.0, 4.0), alphas=(0.1, 0.5),
                    max_trials=None, epochs=10, batch_size=32,
                    learning_rate=1e-3, metrics=("accuracy",),
                    metric="val_accuracy", seed=0):
    """Checks the arguments of :func:`keras_kd.search` that need no model or
    data, so that a bad one fails before anything trains (``keras-kd search``
    calls it before training its teacher).

    Returns:
        ``{"objectives", "temperatures", "alphas"}``: the lists the search
        uses (names lower-cased, numbers as floats).

    Raises:
        ValueError: a bad argument; the message names a good value.

    >>> check_arguments(objectives=("KD",), temperatures=(4,), alphas=(0.5,))
    {'objectives': ['kd'], 'temperatures': [4.0], 'alphas': [0.5]}
    >>> check_arguments(max_trials=1)
    Traceback (most recent call last):
    ...
    ValueError: max_trials must be an integer >= 2 (the student alone and at least one setting) or None for the whole grid, got 1; e.g. max_trials=10.
    """
    names = objective_names(objectives)
    temperatures = check_numbers(temperatures, "temperatures",
                                 lambda v: v > 0, "> 0", "(1, 2, 4)")
    alphas = check_numbers(alphas, "alphas", lambda v: 0 <= v < 1,
                           "in [0, 1) (alpha = 1 is the student alone, which "
                           "the search always includes)", "(0.1, 0.5)")
    if max_trials is not None and (
            isinstance(max_trials, bool)
            or not isinstance(max_trials, numbers.Integral) or max_trials < 2):
        raise ValueError(
            f"max_trials must be an integer >= 2 (the student alone and at "
            f"least one setting) or None for the whole grid, got "
            f"{max_trials!r}; e.g. max_trials=10.")
    _positive_int(epochs, "epochs", 10)
    if batch_size is not None:
        _positive_int(batch_size, "batch_size", "32 (None when x is a batched "
                      "dataset)")
    if isinstance(learning_rate, bool) or not isinstance(
            learning_rate, numbers.Real) or not math.isfinite(learning_rate) \
            or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a number > 0, got "
                         f"{learning_rate!r}; e.g. learning_rate=1e-3.")
    if isinstance(metrics, (str, dict)) or not isinstance(
            metrics, (list, tuple)):
        raise ValueError(f"metrics must be a list of the Distiller's "
                         f"metrics, got {metrics!r}; e.g. "
                         "metrics=('accuracy',).")
    for one in metric if isinstance(metric, (list, tuple)) else [metric]:
        name = one if isinstance(one, str) else getattr(one, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"metric must be a logged metric name such as "
                f"'val_accuracy' or a keras_tuner.Objective, got {one!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}; e.g. "
                         "seed=0.")
    return dict(objectives=names, temperatures=temperatures, alphas=alphas)
