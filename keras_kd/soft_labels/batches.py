"""One batch of a cache build: run the teacher, check its outputs, store them."""

import numpy as np

from keras_kd import taps
from keras_kd.soft_labels import sources, store
from keras_kd.soft_labels.codec import compress_top_k


def run_teacher(view, n_features, xb):
    """The teacher's float32 logits on input batch ``xb`` and its
    ``n_features`` tapped features (a list), from one forward pass of
    ``view`` (the teacher, or a model returning its logits and features)."""
    out = view.predict_on_batch(xb)
    if n_features:
        out = [np.asarray(o, dtype="float32") for o in out]
        return out[0], out[1:]
    return np.asarray(out, dtype="float32"), []


def check_batched(teacher, xb):
    """Refuses dataset elements holding one sample each (an unbatched
    dataset), by the rank the teacher's inputs expect."""
    if isinstance(xb, dict):
        try:
            expected = {t.name: tuple(t.shape) for t in teacher.inputs}
        except (AttributeError, TypeError, ValueError):
            return
        items = [(key, xb[key], expected.get(key)) for key in xb]
    else:
        items = [(None, xb, taps.input_shape(teacher))]
    for key, array, shape in items:
        if shape is not None and array.ndim == len(shape) - 1:
            what = ("The dataset's elements" if key is None else
                    f"The dataset's '{key}' inputs")
            raise ValueError(
                f"{what} have shape {array.shape}, one sample each, but the "
                f"teacher takes batches of shape {shape}. Batch the dataset "
                "first: dataset.batch(256)."
            )


def check_weights(wb, logits):
    """Refuses sample weights that fit neither a sample nor its positions."""
    if wb is None:
        return
    shape = tuple(wb.shape[1:])
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    positions = tuple(logits.shape[1:-1])
    if shape != positions[:len(shape)]:
        per_token = (f" or one per position, shape (n, "
                     f"{', '.join(str(d) for d in positions)})"
                     if positions else "")
        raise ValueError(
            f"sample_weight has shape {tuple(wb.shape[1:])} per sample but "
            f"the teacher's logits have shape {tuple(logits.shape[1:])} per "
            f"sample. Give one weight per sample, shape (n,){per_token}."
        )


def check_finite(index, rows, logits, features, feature_layers):
    """Refuses NaN or infinite teacher outputs before any of the batch is
    stored: the cache would teach them to the student."""
    named = [("logits", logits)] + [
        (f"feature layer {name!r}", f)
        for name, f in zip(feature_layers, features)]
    for what, array in named:
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise ValueError(
                f"The teacher's {what} for batch {index} (rows {rows} to "
                f"{rows + len(array) - 1}) hold {bad} NaN or infinite "
                "values, so the cache build stopped; the batches before it "
                "are kept and the cache stays incomplete (SoftLabels.load "
                "refuses it). Check the teacher on these inputs (e.g. run it "
                "in float32, or fix the inputs), then rerun "
                "compute_soft_labels to resume from this batch.")


def append(columns, options, xb, yb, wb, logits, features, index=0,
           rows_before=0):
    """Checks batch ``index`` (rows from ``rows_before``) and appends its
    inputs (when stored), labels, sample weights, logits (top-k compressed
    when ``options["top_k"]``) and features to ``columns``; returns its row
    count. Every check runs before the first column is written."""
    keys = options["input_keys"]
    found = sorted(xb) if isinstance(xb, dict) else None
    if found != keys:
        raise ValueError(
            f"Every batch must hold the same inputs: the first held "
            f"{keys or 'one array'}, this one {found or 'one array'}."
        )
    if (yb is None) == options["has_labels"]:
        raise ValueError("Some dataset batches have labels and some not.")
    if (wb is None) == options["has_sample_weight"]:
        raise ValueError(
            "Some dataset batches have sample weights and some not.")
    rows = sources.num_rows(xb)
    for name, array in (("labels", yb), ("sample weights", wb),
                        ("teacher outputs", logits)):
        if array is not None and len(array) != rows:
            raise ValueError(
                f"A batch has {rows} inputs but {len(array)} {name}: "
                "inputs, labels and sample weights must be aligned.")
    check_weights(wb, logits)
    check_finite(index, rows_before, logits, features,
                  options["feature_layers"])
    if options["stored_inputs"]:
        for key in keys or [None]:
            columns[store.input_column(key)].append(
                xb if key is None else xb[key])
    if yb is not None:
        columns["labels"].append(yb)
    if wb is not None:
        columns["sample_weight"].append(wb)
    top_k = options["top_k"]
    if top_k is None:
        columns["logits"].append(logits)
    else:
        values, indices, fill = compress_top_k(logits, top_k,
                                               options["top_k_dtype"])
        columns["topk_values"].append(values)
        columns["topk_indices"].append(indices)
        columns["topk_fill"].append(fill)
    for i, f in enumerate(features):
        columns[f"feature_{i}"].append(f)
    return rows
