"""Building a cache: :func:`compute_soft_labels` runs the teacher once over the
data and writes (or resumes, or reopens) the cache."""

import os

import keras

from keras_kd import inputs, taps
from keras_kd.soft_labels import (batches, folder, guards, lock, sources,
                                   store)
from keras_kd.soft_labels.cache import SoftLabels
from keras_kd.soft_labels.codec import VALUE_DTYPES, compress_top_k
from keras_kd.soft_labels.data_fingerprint import DataFingerprint
from keras_kd.soft_labels.guards import teacher_fingerprint
from keras_kd.soft_labels.referenced import ReferencedInputs


def compute_soft_labels(teacher, x, y=None, batch_size=256, path=None,
                        top_k=None, feature_layers=None, overwrite=False,
                        check_determinism=True, verbose=0, *,
                        sample_weight=None, top_k_dtype="float16"):
    """Runs the teacher once over a dataset and keeps its outputs.

    The teacher runs in inference mode (``training=False``) through its
    compiled ``predict_on_batch``, batch by batch, and its logits (and the
    outputs of ``feature_layers``, from the same forward pass) are stored in
    dataset order beside the inputs, labels and sample weights:

    - ``path=None``: in memory. NumPy inputs are referenced, not copied,
      with a CRC-32 per row: using the cache after changing them in place
      (shuffled, rescaled) raises ValueError naming the row (see
      :mod:`keras_kd.soft_labels.referenced`). Labels and sample weights
      are copied;
    - ``path="dir"``: on disk, for data larger than memory: one raw file per
      array (``inputs.bin`` or one ``inputs.<name>.bin`` per dict input,
      ``labels.bin``, ``sample_weight.bin``, ``logits.bin``, ...), read back
      with ``np.memmap``, plus ``manifest.json`` (teacher fingerprint,
      shapes, dtypes, rows done). The manifest is updated after each batch,
      so an interrupted build rerun with the same arguments continues from
      the last finished batch. A complete cache is reopened without running
      the teacher.

    Sequence models: logits of any rank are kept, e.g. ``(batch, length,
    vocab)`` for a language model; top-k then keeps the k largest logits of
    every token. Inputs may be a dict of arrays (keras-hub's
    ``{"token_ids": (n, L) int32, "padding_mask": (n, L) bool}``), each
    stored as its own column, and padding is given as ``sample_weight``
    (``(n, L)``), stored and handed back to ``fit`` beside the targets.

    Guards: ``path`` must be a new or empty folder, or one keras-kd made
    for a cache (marked ``.keras-kd.json``, or holding a soft-label
    manifest from before markers): a folder of other files is refused
    (FileExistsError), ``overwrite=True`` or not. A cache at ``path`` built
    for another teacher (name, weights
    checksum, output shape), another dataset (size, a different first
    batch, or any later input, label or sample weight: the rerun reads the
    stored batches again, without the teacher, and compares their CRC-32
    checksums) or other options is refused with an error naming the fix.
    Each column file's CRC-32 is recorded with every batch and checked
    before a resume continues from it. A build holds ``<path>/.lock``, so a
    second build of the same cache is refused (RuntimeError); a lock left
    by a killed build is taken over (POSIX). A complete cache in a folder
    keras-kd cannot write (read-only) is reopened without the lock; a
    build, resume or ``overwrite=True`` there raises PermissionError. NaN or infinite teacher
    outputs stop the build, naming the batch; the cache stays incomplete. A
    ``tf.data`` source whose graph contains random or shuffling ops, or whose
    first batch reads differently twice (random augmentation, a shuffle), is
    refused with a ValueError: the
    cached outputs would describe inputs the student never sees again.
    Build the cache from the un-augmented, unshuffled data; shuffle with
    ``as_dataset(shuffle=True)``; keep augmentation for live distillation.
    An infinite ``tf.data`` source (``ds.repeat()`` without a count) is
    refused before anything is written; one of unknown length (after
    ``filter``) is read to its end.

    Cost of the logits per position (per token of a sequence model, per
    sample of a classifier; :attr:`SoftLabels.bytes_per_token`): ``4·V``
    bytes in float32, ``k·(b_v + b_i) + 4`` with top-k (``b_v`` = 2 for
    float16 values, 4 for float32; ``b_i`` = 2 for uint16 indices, 4 for
    int32 when V > 65535; 4 for the float32 fill). Worked example, V =
    32,000: 128,000 bytes per token in full, 132 with ``top_k=32`` (float16
    values), 196 with ``top_k_dtype="float32"``; a 2,048-token sequence
    then takes 262 MB, 270 kB or 401 kB, and a billion tokens 128 TB,
    132 GB or 196 GB. Add ``4·prod(shape)`` per feature layer, the labels,
    the sample weights and the inputs when stored (always with a ``path``
    or a ``tf.data`` source).

    Args:
        teacher: the trained teacher, a built ``keras.Model`` producing logits.
        x: inputs: a NumPy array (or ``np.memmap`` / any array with ``shape``
            and slicing), a dict of such equally long arrays (one per model
            input; names of ASCII letters, digits and underscores, as they
            name files), or a batched ``tf.data.Dataset`` of ``x``,
            ``(x, y)`` or ``(x, y, sample_weight)`` elements (``x`` an array
            or a dict).
        y: labels for array inputs (optional).
        batch_size: teacher batch size for array inputs.
        path: a directory for an on-disk, resumable cache: a new or empty
            folder, or a cache's (reopened or resumed); None for memory.
        top_k: keep only the k largest logits per sample, or per token for
            sequence logits (values in ``top_k_dtype``, with their indices);
            the rest are rebuilt as described in :func:`expand_top_k`. None
            keeps all logits in float32.
        feature_layers: teacher layer names whose outputs to cache, in the
            order of the Distiller's ``feature_losses`` (functional or
            Sequential teachers).
        overwrite: replace an existing cache at ``path`` instead of refusing
            (its manifest and column files; other files there are kept).
        check_determinism: refuse a ``tf.data`` source whose graph holds
            random or shuffling ops, or whose first batch reads differently
            twice.
        verbose: print progress every batch when 1.
        sample_weight: per-sample ``(n,)`` or per-token ``(n, length)``
            weights for array inputs (e.g. the padding mask), stored as
            float32 (optional; a ``tf.data`` source carries them as the
            third element).
        top_k_dtype: the dtype of the kept top-k values: ``"float16"`` (half
            the bytes) or ``"float32"`` (the kept logits exactly; with
            ``top_k`` equal to the class count the teacher's logits are then
            rebuilt bit for bit).

    Returns:
        A :class:`SoftLabels`.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((16,))
    >>> teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> x = np.random.rand(100, 16).astype("float32")
    >>> cache = compute_soft_labels(teacher, x, batch_size=32, top_k=3)
    >>> cache.num_samples, cache.teacher_logits().shape, cache.bytes_per_sample
    (100, (100, 10), 16)

    A language model's per-token logits, dict inputs and padding weights:

    >>> tokens = keras.Input((5,), dtype="int32", name="token_ids")
    >>> mask = keras.Input((5,), dtype="bool", name="padding_mask")
    >>> h = keras.layers.Embedding(50, 8)(tokens)
    >>> lm = keras.Model({"token_ids": tokens, "padding_mask": mask},
    ...                  keras.layers.Dense(50)(h))
    >>> x = {"token_ids": np.ones((4, 5), "int32"),
    ...      "padding_mask": np.ones((4, 5), bool)}
    >>> cache = compute_soft_labels(lm, x, sample_weight=np.ones((4, 5)),
    ...                             top_k=8)
    >>> cache.logits_shape, cache.bytes_per_token, sorted(cache.inputs)
    ((5, 50), 36, ['padding_mask', 'token_ids'])
    >>> [type(part).__name__ for part in cache.as_numpy()]
    ['dict', 'dict', 'ndarray']
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got "
                        f"{type(teacher).__name__}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer, got {batch_size!r}.")
    if top_k_dtype not in VALUE_DTYPES:
        raise ValueError(f"top_k_dtype must be one of {VALUE_DTYPES}, got "
                         f"{top_k_dtype!r}.")
    # Read to its end, an endless dataset would fill the disk (or memory):
    # refused before any folder or file is made.
    inputs.refuse_infinite(x, "x", fix=(
        "cache a finite part, x.take(n) (n batches), or build the dataset "
        "without .repeat(): compute_soft_labels reads x once, to its end, "
        "and as_dataset() gives a new epoch each time fit iterates it"))
    feature_layers = list(feature_layers or [])
    view = taps.make_view(teacher, feature_layers, "teacher")
    source = sources.Source(x, y, batch_size, sample_weight)
    store_inputs = path is not None or source.dataset is not None

    first_x, first_y, first_w = source.first_batch()
    batches.check_batched(teacher, first_x)
    if source.dataset is not None and check_determinism:
        again = source.first_batch()[0]
        random_ops = guards.random_ops(source.dataset)
        if random_ops or not sources.same_batch(again, first_x):
            found = (f"it contains random operations {random_ops}" if
                     random_ops else "two reads of its first batch differ")
            raise ValueError(
                f"The dataset is not deterministic: {found} (random "
                "augmentation or shuffling in the "
                "pipeline). Cached teacher outputs describe one fixed version "
                "of each input. Build the cache from the un-augmented, "
                "unshuffled dataset, and shuffle with as_dataset(shuffle="
                "True); for augmented training use live distillation. Pass "
                "check_determinism=False to skip this check."
            )
    first_logits, first_features = batches.run_teacher(
        view, len(feature_layers), first_x)
    if first_logits.ndim < 2:
        raise ValueError(
            f"The teacher's output has shape {first_logits.shape} per batch; "
            "soft labels are logits, (batch, classes) or (batch, ..., "
            "classes) such as a sequence model's (batch, length, vocab)."
        )
    batches.check_weights(first_w, first_logits)
    batches.check_finite(0, 0, first_logits, first_features, feature_layers)
    num_classes = int(first_logits.shape[-1])
    if top_k is not None:
        compress_top_k(first_logits[:1], top_k, top_k_dtype)  # validates k
    fingerprint = teacher_fingerprint(teacher)
    options = {"top_k": top_k, "feature_layers": feature_layers,
               "has_labels": first_y is not None,
               "stored_inputs": store_inputs,
               "batch_size": batch_size if source.dataset is None else None,
               "input_keys": (sorted(first_x) if isinstance(first_x, dict)
                              else None),
               "has_sample_weight": first_w is not None,
               "top_k_dtype": None if top_k is None else top_k_dtype}
    dataset_id = {"num_samples": source.num_samples,
                  "num_batches": source.num_batches,
                  "first_batch_sha256": sources.batch_sha256(first_x)}
    first = (first_x, first_y, first_w, first_logits, first_features)

    args = (teacher, view, source, options, feature_layers, first,
            fingerprint, num_classes, dataset_id, top_k, top_k_dtype,
            store_inputs, verbose)
    if path is None:
        return _build(None, None, *args)
    folder.claim(path)  # keras-kd's, or refused before anything is written
    build_lock = lock.BuildLock(path)  # one build at a time per directory
    try:
        build_lock.acquire()
    except OSError as error:
        if not lock.cannot_write(error):
            raise
        return _build(path, _read_only_manifest(path, overwrite, error),
                      *args)
    try:
        manifest = None if overwrite else store.read_manifest(path)
        if overwrite:  # the cache's own files only, never a user's
            store.remove_cache_files(path)
        return _build(path, manifest, *args)
    finally:
        build_lock.release()


def _read_only_manifest(path, overwrite, error):
    """The manifest of a complete cache in a folder keras-kd cannot write
    (``error`` came from creating its lock file), reopened without the
    lock; anything that would write there is refused."""
    manifest = None if overwrite else store.read_manifest(path)
    if manifest is not None and manifest["complete"]:
        return manifest
    if overwrite:
        what = "overwrite=True needs to replace its cache"
    elif manifest is None:
        what = "a new cache needs to be written there"
    else:
        what = (f"its incomplete cache ({manifest['rows_done']} rows done) "
                "needs to be resumed")
    raise PermissionError(
        f"keras-kd cannot write to the soft-label cache folder '{path}' "
        f"(creating {os.path.join(path, lock.LOCK)!r}: "
        f"{error.strerror or error}), and {what}. A complete cache is "
        "reopened from a read-only folder; to build, make the folder "
        "writable or pass another path.")


def _build(path, manifest, teacher, view, source, options, feature_layers,
           first, fingerprint, num_classes, dataset_id, top_k, top_k_dtype,
           store_inputs, verbose):
    """Builds, resumes or reopens the cache (under the build lock)."""
    first_x, first_y, first_w, first_logits, first_features = first
    fix = "Pass another path, or overwrite=True to rebuild the cache there."
    if manifest is not None:
        columns = store.open_columns(manifest, path)
        cache = SoftLabels(manifest, columns, path=path)
        cache.check(teacher=teacher)
        stored_options = store.build_options(manifest)
        for key, value in options.items():
            if stored_options[key] != value:
                raise ValueError(
                    f"The soft-label cache at '{path}' was built with "
                    f"{key}={stored_options[key]!r}, not {value!r}. {fix}"
                )
        stored = manifest["dataset"]
        if stored["num_samples"] is not None and source.num_samples is not \
                None and stored["num_samples"] != source.num_samples:
            cache.check(num_samples=source.num_samples)
        if stored["num_batches"] is not None and source.num_batches is not \
                None and stored["num_batches"] != source.num_batches:
            raise ValueError(
                f"The soft-label cache at '{path}' was built from "
                f"{stored['num_batches']} batches but this dataset has "
                f"{source.num_batches}. {fix}"
            )
        if stored["first_batch_sha256"] != dataset_id["first_batch_sha256"]:
            raise ValueError(
                f"The soft-label cache at '{path}' was built from other data: "
                "the first batch of inputs differs. Cached outputs are "
                f"aligned sample by sample with their data. {fix}"
            )
        for column in columns.values():
            column.check_file(manifest["rows_done"], exact=False)
            if not manifest["complete"]:  # a batch torn by an interruption
                column.truncate(manifest["rows_done"])
        if not store.verify_columns(manifest, columns, path):
            # Written before checksums: the bytes on disk are the baseline.
            for column in columns.values():
                column.crc = store.file_crc32(
                    column.file, manifest["rows_done"] * column.row_bytes)
            manifest["checksums"] = store.checksums(columns)
        options = stored_options
    else:
        columns = store.make_columns(first_x, first_y, first_w,
                                     (first_logits, first_features), top_k,
                                     top_k_dtype, store_inputs, path)
        manifest = {
            "format": store.FORMAT, "version": store.VERSION, "teacher": fingerprint,
            "num_classes": num_classes, "top_k": top_k,
            "feature_layers": feature_layers, "options": options,
            "dataset": dataset_id,
            "columns": {n: c.spec() for n, c in columns.items()},
            "rows_done": 0, "batches_done": 0, "complete": False,
        }
        if path is not None:
            for column in columns.values():
                column.truncate(0)
            manifest["checksums"] = store.checksums(columns)
            store.write_manifest(path, manifest)

    rows, done = manifest["rows_done"], manifest["batches_done"]
    # The batches already stored are read again, not run: their inputs,
    # labels and sample weights must give the checksums the build recorded
    # (a fingerprint of all the data, not only its first batch).
    data = DataFingerprint(columns, rows, done, manifest, path)
    # In memory, NumPy inputs are referenced and their rows checksummed.
    referenced = None if store_inputs or manifest["complete"] else \
        ReferencedInputs(source.x, source.batch_size)
    index = 0
    for xb, yb, wb in source.batches(0, 0):
        if index < done:
            data.add(index, xb, yb, wb, options)
        else:
            data.finish(index)
            if manifest["complete"]:
                data.refuse(f"it has more than the cache's {done} batches")
            if index == 0:  # the first batch already went through the teacher
                logits, features = first_logits, first_features
            else:
                logits, features = batches.run_teacher(
                    view, len(feature_layers), xb)
            rows += batches.append(columns, options, xb, yb, wb, logits,
                                   features, index, rows)
            if referenced is not None:
                referenced.add(xb)
            done += 1
            manifest.update(rows_done=rows, batches_done=done)
            if path is not None:
                manifest["checksums"] = store.checksums(columns)
                store.write_manifest(path, manifest)
            if verbose:
                print(f"soft labels: {rows} samples done", flush=True)
        index += 1
    data.finish(index)
    if manifest["complete"]:
        return cache
    manifest.update(complete=True)
    manifest["dataset"]["num_samples"] = rows
    manifest["dataset"]["num_batches"] = done
    if path is not None:
        store.write_manifest(path, manifest)
    return SoftLabels(manifest, columns, inputs=referenced, path=path)
