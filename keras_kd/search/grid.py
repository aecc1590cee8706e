"""The grid of a search: its settings, their checks and its size."""

import math
import numbers

from keras_kd import objectives as objectives_lib

__all__ = ["STUDENT_ALONE", "TEMPERATURE_FREE", "NO_FEATURES", "grid_size",
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
