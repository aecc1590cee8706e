"""Checks of a Distiller's arguments and models: each error names the fix.

Everything a user can get wrong before the first step is checked here, once,
with a message that says what to change: the options (``alpha``,
``temperature``, objective weights), the models (built, single logits output,
agreeing class counts and input shapes) and, on the first ``fit``, whether the
teacher is worth imitating.
"""

import math
import numbers
import warnings

import keras
import numpy as np

from keras_kd import inputs, taps


def is_number(value):
    """True for a real Python or NumPy number (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_))


def check_number(name, value, hint, allow_zero=True):
    """``float(value)`` for a finite number ``>= 0`` (``> 0`` without
    ``allow_zero``); otherwise a ValueError naming the fix.

    Example:

    >>> check_number("beta", 8, "the usual value is beta=8.0.")
    8.0
    """
    ok = is_number(value) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number {bound} (and finite), "
                         f"got {value!r}; {hint}")
    return float(value)


def check_alpha(alpha, what="alpha"):
    """``float(alpha)`` for a number in [0, 1]; otherwise a ValueError.

    ``alpha`` weighs the hard-label loss, ``1 − alpha`` the distillation loss.

    Example:

    >>> check_alpha(np.float32(0.25))
    0.25
    """
    if not is_number(alpha) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(
            f"{what} must be in [0, 1], got {alpha!r}. alpha weighs the "
            "hard-label loss and 1 - alpha the distillation loss; the usual "
            "value is 0.1."
        )
    return float(alpha)


# Above this, softmax(z / T) is within float32 rounding of uniform: the
# T²-scaled KL is then a difference of nearly equal numbers (relative error
# 6e-4 at T = 100, 8% at 1,000, 14x at 10,000 in float32 against float64).
MAX_TEMPERATURE = 100.0
# Below this, softmax(z / T) is one-hot for logits more than a few hundredths
# apart: T²·KL tends to T·(margin) and its gradients vanish with T. Below
# about 1e-19, T² underflows float32 and the loss is exactly 0.0 (issue 20).
MIN_TEMPERATURE = 0.01


def check_temperature(temperature, strict=False, what="temperature"):
    """Refuses a temperature that is not a finite number in [0.01, 100].

    Published settings lie between 1 and 20. Above 100 the softened
    distributions are within float32 rounding of uniform and the T²-scaled
    loss loses its digits; below 0.01 they are one-hot, the T²-scaled loss
    tends to ``T · margin`` and teaches nothing (at ``T = 1e-30``, ``T²``
    underflows float32 and the loss is 0.0). Such temperatures are refused
    rather than computed uselessly. Tensors and variables (a scheduled
    temperature) pass unchecked unless ``strict``, which demands a Python or
    NumPy number; a number comes back as a ``float``.

    Example:

    >>> check_temperature(4)
    4.0
    >>> check_temperature(1e-30)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be > 0, at least 0.01 and at most 100, got 1e-30. ...
    """
    number = is_number(temperature)
    if (strict and not number) or (number and not (
            math.isfinite(temperature)
            and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE)):
        raise ValueError(
            f"{what} must be > 0, at least {MIN_TEMPERATURE:g} and at most "
            f"{MAX_TEMPERATURE:g}, got {temperature!r}. Use a value such as "
            "temperature=4.0 (T=1 leaves the logits unsoftened; below 0.01 "
            "the softened distributions are one-hot and the T²-scaled loss "
            "vanishes with T, reaching 0.0 when T² underflows float32; above "
            "100 they are uniform to float32 precision)."
        )
    return float(temperature) if number else temperature


# ----------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------
def _is_built(model):
    return bool(model.built) and len(model.weights) > 0


def _is_functional(model):
    """A Functional (or Sequential) model, whose ``outputs`` are known."""
    try:
        return model.outputs is not None
    except (AttributeError, ValueError):
        return False


def check_model(model, role):
    """A ``keras.Model``, and for a teacher a built (trainable-looking) one."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{role} must be a keras.Model, got {type(model).__name__}. "
            "Wrap your layers in keras.Model(inputs, outputs) or "
            "keras.Sequential([...])."
        )
    outputs = getattr(model, "outputs", None) if _is_functional(model) else None
    if outputs is not None and len(outputs) > 1:
        several = ("For an ensemble of teachers pass a list: "
                   "kd.Distiller([teacher_a, teacher_b], student). "
                   if role.startswith("teacher") else "")
        raise ValueError(
            f"The {role} '{model.name}' has {len(outputs)} outputs; keras-kd "
            "distils one output of logits per model. " + several +
            f"To distil one head, pass keras.Model({role.split('[')[0]}.inputs, "
            f"{role.split('[')[0]}.outputs[i]) (its layers and weights are "
            "shared, nothing is copied)."
        )
    if role.startswith("teacher") and not _is_built(model):
        raise ValueError(
            f"The {role} '{model.name}' is not built: it has no weights, "
            "so it cannot have been trained. Train it (teacher.fit) or "
            "load its trained weights before distilling; a model built "
            "with keras.Input(shape=...) is built on creation."
        )


def check_pair(teacher, student, role="teacher", wider_teacher=False):
    """Teacher and student score the same classes and take the same inputs.

    With ``wider_teacher``, a teacher may score more classes than the student
    (its extra logits are dropped, see ``Distiller(truncate_teacher_logits)``).
    """
    if teacher is student:
        raise ValueError(
            f"The {role} and the student are the same model "
            f"'{student.name}': the teacher is frozen, so nothing would "
            "train. Distil into a separate student, e.g. "
            "student = keras.models.clone_model(model) (new weights), then "
            "student.set_weights(model.get_weights()) to start from the "
            "teacher's.")
    shared = {id(v) for v in teacher.weights} & {id(v) for v in student.weights}
    if shared:
        names = sorted(v.path for v in student.weights if id(v) in shared)
        raise ValueError(
            f"The {role} and the student share {len(shared)} weight(s) "
            f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
            "a layer used by both. The teacher is frozen, so the shared "
            "layer would be frozen in the student too. Give the student its "
            "own layers (build it anew, or keras.models.clone_model the "
            "shared part and copy its weights with set_weights).")
    t_out, s_out = taps.output_shape(teacher), taps.output_shape(student)
    if t_out and s_out and t_out[-1] is not None and s_out[-1] is not None \
            and t_out[-1] != s_out[-1] and not (
                wider_teacher and t_out[-1] > s_out[-1]):
        wider = t_out[-1] > s_out[-1]
        raise ValueError(
            f"The {role} predicts {t_out[-1]} classes (output shape "
            f"{t_out}) but the student predicts {s_out[-1]} (output shape "
            f"{s_out}). Give the student's last layer {t_out[-1]} units "
            "so that both score the same classes"
            + (", or, if the teacher's vocabulary is padded past its "
               "tokenizer's (Gemma and Llama checkpoints are), pass "
               "kd.Distiller(..., truncate_teacher_logits=True) to drop the "
               "teacher's extra logits." if wider else ".")
        )
    t_in, s_in = taps.input_shape(teacher), taps.input_shape(student)
    if t_in and s_in and tuple(t_in[1:]) != tuple(s_in[1:]):
        raise ValueError(
            f"The {role} takes inputs of shape {t_in} but the student "
            f"takes {s_in}; each batch feeds both. Make the input shapes "
            "agree, e.g. put a keras.layers.Resizing (or Reshape) layer "
            "at the start of the model whose input differs."
        )


def check_teacher_weights(teacher_weights, count=None):
    """Per-teacher weights: finite, non-negative, a positive sum, one per teacher."""
    if teacher_weights is None:
        return None
    per = f" per teacher ({count})" if count is not None else " per teacher"
    try:
        weights = [float(w) for w in teacher_weights]
    except (TypeError, ValueError):
        weights = None   # a string, or items that are no numbers
    if isinstance(teacher_weights, str) or not weights or min(weights) < 0 \
            or sum(weights) <= 0 or not all(math.isfinite(w) for w in weights) \
            or (count is not None and len(weights) != count):
        raise ValueError(
            f"teacher_weights must hold one non-negative weight{per} with a "
            f"positive sum, got {teacher_weights!r}; e.g. [0.5, 0.5]."
        )
    return weights


def check_logits(teacher_logits, student_logits):
    """Teacher and student logits have the same class count (last axis)."""
    t = teacher_logits[0] if isinstance(teacher_logits, (list, tuple)) else \
        teacher_logits
    t_classes, s_classes = t.shape[-1], student_logits.shape[-1]
    if t_classes is not None and s_classes is not None and \
            t_classes != s_classes:
        raise ValueError(
            f"The teacher predicts {t_classes} classes but the student "
            f"predicts {s_classes}. Give the student's last layer "
            f"{t_classes} units"
            + (", or pass kd.Distiller(..., truncate_teacher_logits=True) "
               "if the teacher's vocabulary is padded past the student's."
               if t_classes > s_classes else ".")
        )


# ----------------------------------------------------------------------
# The teacher, on the first batch
# ----------------------------------------------------------------------
def class_count(model):
    """The size of a built model's last output axis, else None."""
    try:
        return int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def check_labels(labels, classes, what="the labels"):
    """Refuses labels a hard loss cannot read, with the fix.

    Strings (map them to integer class indices first) and integer class
    indices at or above the class count (JAX's cross-entropy silently gives
    such a label a loss of 0) are refused; negative indices are allowed
    (they mark unlabeled elements, e.g. padding). One-hot or soft labels
    (floating point, ``classes`` wide) pass.

    Example:

    >>> check_labels(np.array([0, 2, -1]), classes=3)
    >>> check_labels(np.array([0, 3]), classes=3)
    Traceback (most recent call last):
    ...
    ValueError: the labels go up to 3, but the models have 3 classes (0 to 2). ...
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "USO":
        raise ValueError(
            f"{what} are {labels.dtype.name} values (e.g. {str(labels.flat[0])!r}); "
            "the hard loss needs integer class indices 0..classes-1. Map them "
            "first, e.g. classes, y = np.unique(y, return_inverse=True), or "
            "keras.layers.StringLookup(num_oov_indices=0).")
    if classes is None or classes < 2 or labels.size == 0 or \
            not np.issubdtype(labels.dtype, np.integer):
        return
    largest = int(labels.max())
    if largest >= classes:
        raise ValueError(
            f"{what} go up to {largest}, but the models have {classes} "
            f"classes (0 to {classes - 1}). Give the models' last layers "
            f"{largest + 1} units, or remap the labels to 0..{classes - 1}.")


def _first_inputs(x, limit=256):
    """The first inputs of a NumPy array or of a ``tf.data`` dataset of
    plain arrays (its elements ``x`` or ``(x, ...)``), else None."""
    if isinstance(x, np.ndarray):
        return x[:limit]
    if inputs.is_tf_dataset(x):
        for element in x.take(1):
            if isinstance(element, (tuple, list)):
                element = element[0]
            if isinstance(element, (dict, list, tuple)):
                return None
            return np.asarray(element)[:limit]
    return None


def warn_if_teacher_untrained(teachers, x, y, validation_data=None,
                              stacklevel=3):
    """Warns when a teacher does no better than the majority class.

    Refuses (``ValueError``) a teacher whose outputs on the batch are
    probabilities (non-negative rows summing to 1: a softmax last layer)
    rather than logits. That check needs inputs only: it runs on a transfer
    set without labels (``fit(x)``) too.

    The teacher's top-1 accuracy on the first labeled batch (up to 256
    samples, or elements for sequence labels) is compared with the share of
    the most frequent label in that batch: a model that predicts no better
    than always answering the majority class has learned nothing to teach,
    whatever the class count (2 or 1,000). NumPy training data are read
    directly. A ``tf.data`` training pipeline is not read (each pass over a
    pipeline that shuffles draws its next order, so a look would shift the
    order of every epoch): ``validation_data`` is read instead, when given.
    Labels that are not integer class indices (or one-hot) are not checked.
    ``stacklevel`` points the warning at the caller's caller (``fit``).
    """
    source = "x"
    if inputs.is_tf_dataset(x):
        source = "validation_data"
        x, y = validation_data, None
        if isinstance(x, (tuple, list)):  # (x_val, y_val[, weights])
            x, y = x[0], (x[1] if len(x) > 1 else None)
    batch = inputs.first_labeled_batch(x, y)
    if batch is not None:
        xb, yb = batch
        yb = np.asarray(yb)
        check_labels(yb, None)  # strings are refused before any teacher runs
    else:  # no labels (a transfer set): the softmax check still runs
        xb, yb = _first_inputs(x), None
        if xb is None:
            return
    for i, teacher in enumerate(teachers):
        logits = np.asarray(keras.ops.convert_to_numpy(
            teacher(xb, training=False)))
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError(
                f"Before training, on the first batch of {source}: " +
                explain_non_finite([teacher], xb, None).replace(" of x", ""))
        classes = logits.shape[-1]
        if classes > 1 and np.all(logits >= 0) and np.all(logits <= 1) and \
                np.allclose(logits.sum(-1), 1.0, atol=1e-3):
            who = "" if len(teachers) == 1 else f"[{i}]"
            raise ValueError(
                f"The teacher{who} '{teacher.name}' outputs probabilities (every "
                "row of its first batch is >= 0 and sums to 1): its last layer "
                "applies softmax. keras-kd's objectives take logits, and "
                "softened probabilities teach almost nothing. Build the "
                "teacher's last layer with activation=None (a "
                "keras.applications model with classifier_activation=None; "
                "keep the softmax for serving in a separate model), or load "
                "its weights into such a copy.")
        if yb is None or any(getattr(layer, "is_virtual_teacher", False)
                             for layer in getattr(teacher, "layers", [])):
            continue  # no labels, or a stand-in teacher with nothing learned
        labels = yb
        if labels.ndim == logits.ndim and labels.shape[-1] == classes > 1:
            labels = labels.argmax(-1)  # one-hot
        elif labels.size == logits.size // classes:
            check_labels(labels, classes, "the first batch's labels")
        if classes < 2 or not np.issubdtype(labels.dtype, np.integer) or \
                labels.size != logits.size // classes:
            continue
        labels = labels.reshape(-1)
        keep = labels >= 0
        if keep.sum() < 20:
            continue
        predicted = logits.reshape(-1, classes).argmax(-1)[keep]
        labels = labels[keep]
        accuracy = float((predicted == labels).mean())
        majority = float(np.bincount(labels).max() / labels.size)
        if accuracy <= majority:
            who = "" if len(teachers) == 1 else f"[{i}]"
            warnings.warn(
                f"The teacher{who} '{teacher.name}' scores {accuracy:.2f} "
                f"accuracy on the first batch, no better than always "
                f"predicting its most frequent label ({majority:.2f}). "
                "Distilling an untrained teacher teaches nothing: train it "
                "first (teacher.fit) or load its trained weights.",
                stacklevel=stacklevel,
            )


# ----------------------------------------------------------------------
# Non-finite values: where a NaN loss came from
# ----------------------------------------------------------------------
def _non_finite_rows(values):
    """Indices of the rows of ``values`` (arrays, or a dict / list of them)
    holding NaN or infinity; floating-point arrays only."""
    if isinstance(values, dict):
        values = list(values.values())
    if not isinstance(values, (list, tuple)):
        values = [values]
    bad = set()
    for value in values:
        value = np.asarray(keras.ops.convert_to_numpy(value)
                           if not isinstance(value, np.ndarray) else value)
        if value.ndim == 0 or not np.issubdtype(value.dtype, np.floating):
            continue
        rows = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        bad.update(np.flatnonzero(rows).tolist())
    return sorted(bad)


# The batches of a data set read to explain a NaN loss when neither the
# epoch's steps nor the data set's length bound the read.
SCANNED_BATCHES = 100


def scan_limit(x, steps=None):
    """How many batches of ``x`` :func:`explain_non_finite` reads: the
    epoch's ``steps`` when known, else the data set's length when finite,
    else :data:`SCANNED_BATCHES` (an infinite ``ds.repeat()`` or a
    pipeline of unknown length is never read to an end it may not have).

    Example:

    >>> scan_limit(np.zeros((10, 2)), steps=4)
    4
    >>> scan_limit(iter([]))
    100
    """
    if steps is not None:
        return int(steps)
    count = inputs.cardinality(x)
    if isinstance(count, int):
        return count
    return SCANNED_BATCHES


def _batches(x, y, batch_size, limit=None):
    """``(description, first_row, x_batch, y_batch)`` over NumPy data (in
    its own order) or the first ``limit`` elements of a ``tf.data``
    dataset (all of a finite one when ``limit`` is None)."""
    if inputs.is_tf_dataset(x):
        if limit is None:
            limit = scan_limit(x)
        elements = inputs.bounded(x.as_numpy_iterator(), limit, "x")
        for k, element in enumerate(elements):
            xb, yb = (element[0], element[1] if len(element) > 1 else None) \
                if isinstance(element, tuple) else (element, None)
            yield f"batch {k} of the dataset", 0, xb, yb
        return
    arrays = list(x.values()) if isinstance(x, dict) else (
        list(x) if isinstance(x, (list, tuple)) else [x])
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        take = slice(start, start + batch_size)
        xb = ({k: v[take] for k, v in x.items()} if isinstance(x, dict) else
              type(x)(v[take] for v in x) if isinstance(x, (list, tuple))
              else x[take])
        yb = None
        if isinstance(y, dict):
            yb = {k: v[take] for k, v in y.items()}
        elif isinstance(y, np.ndarray):
            yb = y[take]
        yield "x", start, xb, yb


def check_finite_inputs(x):
    """Refuses NumPy inputs (an array, or a dict / list of arrays) holding
    NaN or infinity, naming the first rows; other data pass unread.

    Read once, before the first ``fit``: a NaN input turns the student's
    weights to NaN (or, behind a ReLU on some backends, trains on garbage).

    Example:

    >>> check_finite_inputs(np.array([[0.0], [np.inf]]))
    Traceback (most recent call last):
    ...
    ValueError: The inputs hold NaN or infinite values in 1 row(s), first rows [1] of x. ...
    """
    arrays = list(x.values()) if isinstance(x, dict) else (
        list(x) if isinstance(x, (list, tuple)) else [x])
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return
    rows = _non_finite_rows(arrays)
    if rows:
        raise ValueError(
            f"The inputs hold NaN or infinite values in {len(rows)} row(s), "
            f"first rows {rows[:5]} of x. Drop or repair those samples "
            "before fit, e.g. keep = np.isfinite(x).reshape(len(x), "
            "-1).all(axis=1); x, y = x[keep], y[keep].")


def _learning_rate(optimizer):
    """The optimizer's current learning rate as a float, else None."""
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(
            optimizer.learning_rate)))
    except (AttributeError, TypeError, ValueError):
        return None


def explain_non_finite(teachers, x, y, batch_size=32, epoch=None, steps=None,
                       optimizer=None):
    """Says why a loss became NaN or infinite, naming the rows or batch.

    Reads the training data once more (NumPy data in its own order,
    ``tf.data`` batch by batch, at most ``steps`` batches: the epoch's; or
    :func:`scan_limit`'s bound, so that ``ds.repeat()`` is never read
    forever) and reports the first of: inputs holding NaN or infinity,
    cached teacher outputs (``y`` dicts) holding them, a teacher whose
    weights or outputs hold them. When all are finite the student itself
    diverged, and the message names its learning rate (from ``optimizer``,
    the student's) and what to lower.

    Example:

    >>> import keras
    >>> teacher = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> x = np.array([[0.0, 1.0], [np.nan, 1.0]], "float32")
    >>> print(explain_non_finite([teacher], x, None).split(":")[0])
    The inputs hold NaN or infinite values
    >>> print(explain_non_finite([teacher], x[:1], None,
    ...       optimizer=keras.optimizers.SGD(1e30)).split(". ")[0])
    The loss became NaN or infinite while the inputs and the teacher's outputs are finite: the student diverged at learning rate 1e+30
    """
    when = "" if epoch is None else f" (epoch {epoch + 1})"
    for i, teacher in enumerate(teachers):
        if not all(np.all(np.isfinite(keras.ops.convert_to_numpy(w)))
                   for w in teacher.weights
                   if np.issubdtype(np.dtype(w.dtype), np.floating)):
            return (f"The teacher '{teacher.name}' has NaN or infinite weights"
                    f"{when}, so it has nothing to teach: it diverged while "
                    "it was trained (a learning rate too large for it, e.g.) "
                    "or was loaded from a broken file. Retrain it with a "
                    "lower learning rate, or load weights saved from a "
                    "teacher whose loss stayed finite.")
    limit = scan_limit(x, steps) if inputs.is_tf_dataset(x) else None
    read = 0
    for where, first, xb, yb in _batches(x, y, batch_size, limit):
        read += 1
        rows = _non_finite_rows(xb)
        if rows:
            at = (f"rows {[first + r for r in rows[:5]]} of x" if where == "x"
                  else f"{where}, rows {rows[:5]}")
            return (f"The inputs hold NaN or infinite values{when}: {at}. "
                    "Drop or repair those samples, e.g. "
                    "keep = np.isfinite(x).reshape(len(x), -1).all(axis=1).")
        if isinstance(yb, dict):
            rows = _non_finite_rows(yb)
            if rows:
                at = (f"rows {[first + r for r in rows[:5]]}" if where == "x"
                      else f"{where}, rows {rows[:5]}")
                return (f"The cached teacher outputs hold NaN or infinite "
                        f"values{when}: {at}. Rebuild the cache "
                        "(compute_soft_labels(..., overwrite=True)) from a "
                        "teacher with finite outputs.")
            continue
        for teacher in teachers:
            rows = _non_finite_rows(teacher(xb, training=False))
            if rows:
                at = (f"rows {[first + r for r in rows[:5]]} of x"
                      if where == "x" else f"{where}, rows {rows[:5]}")
                return (f"The teacher '{teacher.name}' outputs NaN or "
                        f"infinite logits{when} on {at}, whose inputs are "
                        "finite. Check the teacher on them "
                        "(teacher.predict(x[rows])): an overflow in float16 "
                        "or a broken layer; keras-kd cannot distil them.")
    scanned = (f" (in the first {read} batches read)"
               if limit is not None and read >= limit else "")
    rate = None if optimizer is None else _learning_rate(optimizer)
    at_rate = "" if rate is None else f" at learning rate {rate:g}"
    return ("The loss became NaN or infinite" + when + " while the inputs "
            "and the teacher's outputs are finite" + scanned + ": the "
            f"student diverged{at_rate}. Lower the learning rate, clip "
            "gradients (e.g. keras.optimizers.Adam(1e-3, clipnorm=1.0)), or "
            "check the sample weights.")
