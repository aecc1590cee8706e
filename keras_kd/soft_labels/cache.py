"""The cache: a teacher's outputs over a dataset, computed once, kept beside the inputs."""

import os
import warnings
import zlib

import keras
import numpy as np

from keras_kd import taps
from keras_kd.extras import require
from keras_kd.soft_labels import guards, sources, store
from keras_kd.soft_labels.codec import (VALUE_DTYPES, compress_top_k,
                                        expand_top_k)
from keras_kd.soft_labels.guards import teacher_fingerprint


class SoftLabels:
    """A teacher's outputs over a dataset, kept beside the inputs.

    Built by :func:`compute_soft_labels` or reopened by :meth:`load`. Feed it
    to ``Distiller.fit`` through :meth:`as_dataset` (a ``tf.data.Dataset``,
    any backend) or :meth:`as_numpy`; each element is
    ``(x, {"teacher_logits": t, "labels": y, "teacher_features": (...)})``
    ("labels" when labels were given, "teacher_features" when feature layers
    were cached: a tuple in ``as_dataset``, since tf.data would stack a list
    into one tensor; a list in ``as_numpy``), followed by the sample weights,
    ``(x, targets, sample_weight)``, when they were given. ``x`` is an array,
    or a dict of arrays when the inputs were a dict (keras-hub models'
    ``{"token_ids", "padding_mask"}``).

    Logits may have any rank: ``(C,)`` per sample for a classifier,
    ``(length, V)`` for a sequence model (one distribution per token; top-k
    keeps the k largest logits of every token).

    Memory (or disk) cost of the logits per position (per token of a
    sequence model, per sample of a classifier), :attr:`bytes_per_token`:
    ``4·V`` for float32 logits, or ``k·(b_v + b_i) + 4`` with ``top_k=k``
    (``b_v`` = 2 for float16 values, 4 for float32; ``b_i`` = 2 for uint16
    indices, 4 when V > 65535; plus one float32 fill value). V = 32,000:
    128,000 bytes per token in full, 132 with k = 32 float16 values, 196
    with float32 ones. Per sample, multiply by the positions (the sequence
    length; padding is stored too) and add ``4·prod(shape)`` per cached
    feature layer (float32; a 8×8×64 map is 16,384 bytes), the labels and
    sample weights, and the inputs' own size when they are stored
    (``bytes_per_sample`` adds it all up).

    Attributes:
        path: the cache directory, or None for an in-memory cache.
        manifest: the JSON manifest (teacher fingerprint, sizes, progress).
    """

    def __init__(self, manifest, columns, inputs=None, labels=None, path=None):
        self.manifest = manifest
        self.path = path
        self._columns = columns
        self._inputs = inputs
        self._labels = labels

    # -------------------------------------------------------------- info
    @property
    def num_samples(self):
        """How many samples the cache holds."""
        return int(self.manifest["rows_done"])

    @property
    def num_classes(self):
        """The teacher's class count C."""
        return int(self.manifest["num_classes"])

    @property
    def top_k(self):
        """k of the top-k compression, or None when all logits are kept."""
        return self.manifest["top_k"]

    @property
    def top_k_dtype(self):
        """The dtype of the kept top-k values ("float16" or "float32"), or
        None when all logits are kept (float32)."""
        return _options(self.manifest)["top_k_dtype"]

    @property
    def logits_shape(self):
        """The teacher's logits per sample: ``(C,)``, or ``(length, V)``."""
        if self.top_k is None:
            return self._columns["logits"].row_shape
        return self._columns["topk_fill"].row_shape + (self.num_classes,)

    @property
    def input_keys(self):
        """The input names when the inputs are a dict, else None."""
        return _options(self.manifest)["input_keys"]

    @property
    def feature_layers(self):
        """The cached teacher layers, in the order of ``teacher_features``."""
        return list(self.manifest["feature_layers"])

    @property
    def bytes_per_sample(self):
        """Storage per sample in bytes: outputs, labels, sample weights and
        stored inputs."""
        return int(sum(c.row_bytes for c in self._columns.values()))

    @property
    def bytes_per_token(self):
        """Bytes of teacher logits per position (per row of the last axis).

        Full float32 logits: ``4·V``. Top-k: ``k·(b_v + b_i) + 4``, with
        ``b_v`` the value bytes (2 for float16, 4 for float32), ``b_i`` the
        index bytes (2 for uint16 when V <= 65535, else 4 for int32) and 4
        for the float32 fill. V = 32,000: 128,000 bytes in full; k = 32:
        132 bytes (float16 values), 196 (float32). A classifier has one
        position per sample; a sequence model one per token.
        """
        if self.top_k is None:
            return int(self._columns["logits"].dtype.itemsize
                       * self.num_classes)
        values, indices, fill = (self._columns[name] for name in (
            "topk_values", "topk_indices", "topk_fill"))
        return int(self.top_k * (values.dtype.itemsize
                                 + indices.dtype.itemsize)
                   + fill.dtype.itemsize)

    def _col(self, name):
        return self._columns[name].array(self.num_samples)

    @property
    def inputs(self):
        """The inputs, aligned with the outputs (array or memory map), or a
        dict of them when the inputs were a dict."""
        if self._inputs is not None:
            return self._inputs
        keys = self.input_keys
        if keys is None:
            return self._col(store.input_column(None))
        return {key: self._col(store.input_column(key)) for key in keys}

    @property
    def sample_weight(self):
        """The sample weights ((n,) or (n, length)), or None when none were
        given."""
        if "sample_weight" not in self._columns:
            return None
        return self._col("sample_weight")

    @property
    def labels(self):
        """The labels, or None when none were given."""
        if self._labels is not None:
            return self._labels
        return self._col("labels") if "labels" in self._columns else None

    def teacher_logits(self, indices=None):
        """Full float32 teacher logits, rebuilt from top-k when compressed.

        Args:
            indices: sample indices (default: all samples).
        """
        sel = slice(None) if indices is None else np.asarray(indices)
        if self.top_k is None:
            return np.asarray(self._col("logits")[sel], dtype="float32")
        return expand_top_k(self._col("topk_values")[sel],
                            self._col("topk_indices")[sel],
                            self._col("topk_fill")[sel], self.num_classes)

    def teacher_features(self, indices=None):
        """The cached teacher features (a list, one array per layer)."""
        sel = slice(None) if indices is None else np.asarray(indices)
        return [np.asarray(self._col(f"feature_{i}")[sel], dtype="float32")
                for i in range(len(self.feature_layers))]

    def _targets(self, indices=None):
        sel = slice(None) if indices is None else np.asarray(indices)
        targets = {"teacher_logits": self.teacher_logits(indices)}
        if self.feature_layers:
            targets["teacher_features"] = self.teacher_features(indices)
        labels = self.labels
        if labels is not None:
            targets["labels"] = np.asarray(labels[sel])
        return targets

    # -------------------------------------------------------------- checks
    def check(self, teacher=None, distiller=None, num_samples=None,
              num_classes=None):
        """Refuses a cache that does not belong to this teacher or data.

        Args:
            teacher: the teacher the outputs must come from (its name,
                weights checksum and output shape are compared).
            distiller: a compiled :class:`~keras_kd.Distiller`; its teacher,
                class count and feature objectives' teacher layers (in
                order) are compared.
            num_samples: the dataset size the cache must cover.
            num_classes: the class count the cache must have.

        Raises:
            ValueError: naming what differs and how to fix it.
        """
        where = f"at '{self.path}'" if self.path else "in memory"
        fix = ("Rebuild it with kd.compute_soft_labels(teacher, x, "
               "path=<a new directory>) (or overwrite=True).")
        if distiller is not None:
            teacher = teacher or distiller.teachers[0]
            classes = taps.output_shape(distiller.student)
            if classes is not None and classes[-1] is not None:
                num_classes = num_classes or int(classes[-1])
            layers = [f.teacher_layer for f in distiller.feature_objectives]
            if layers and layers != self.feature_layers:
                raise ValueError(
                    f"The Distiller's feature objectives tap teacher layers "
                    f"{layers} but the cache {where} holds features of "
                    f"{self.feature_layers}. Build the cache with "
                    f"feature_layers={layers} (same order)."
                )
        if teacher is not None:
            guards.check_teacher(self.manifest["teacher"], teacher, where, fix)
        if num_samples is not None and int(num_samples) != self.num_samples:
            raise ValueError(
                f"The soft-label cache {where} holds {self.num_samples} "
                f"samples but the dataset has {num_samples}. Cached outputs "
                f"are aligned sample by sample with the data they were built "
                f"from. {fix}"
            )
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"The soft-label cache {where} holds {self.num_classes}-class "
                f"teacher logits but {num_classes} classes were expected (the "
                f"student's output width). Give the student "
                f"{self.num_classes} output units, or rebuild the cache with "
                "the matching teacher."
            )
        return self

    # -------------------------------------------------------------- outputs
    def as_numpy(self):
        """``(x, targets)`` in memory, for ``Distiller.fit(x, targets)``;
        ``(x, targets, sample_weight)`` when the cache holds sample weights.

        ``x`` is an array, or a dict of arrays for dict inputs. ``targets`` is
        ``{"teacher_logits", "labels"?, "teacher_features"?}`` with full
        float32 logits (rebuilt from top-k when compressed); the memory cost
        is that of the dense arrays.

        With sample weights, feed the three as a dataset,
        ``tf.data.Dataset.from_tensor_slices(cache.as_numpy()).batch(b)``
        (or use :meth:`as_dataset`): Keras's array path,
        ``fit(x, targets, sample_weight=w)``, copies one weight array onto
        every entry of a targets dict and refuses per-token weights there.
        """
        inputs = self.inputs
        x = ({k: np.asarray(v) for k, v in inputs.items()}
             if isinstance(inputs, dict) else np.asarray(inputs))
        weights = self.sample_weight
        targets = self._targets()
        guards.mark_origin(targets["teacher_logits"], self._origin())
        if weights is None:
            return x, targets
        return x, targets, np.asarray(weights)

    def _origin(self):
        where = f"at '{self.path}'" if self.path else "in memory"
        return guards.Origin(self.manifest["teacher"], where)

    def as_dataset(self, batch_size=32, shuffle=True, seed=None,
                   drop_remainder=False, distiller=None):
        """A ``tf.data.Dataset`` of ``(x, targets)`` batches for ``fit``,
        ``(x, targets, sample_weight)`` when the cache holds sample weights
        (``x`` a dict of tensors for dict inputs).

        Samples are read by index (from memory or the memory-mapped files),
        so data larger than memory streams from disk; top-k logits are
        expanded per batch. Shuffling permutes indices with
        ``Dataset.shuffle(n, seed)``, reshuffling every epoch: the same seed
        gives the same order as ``from_tensor_slices((x, y)).shuffle(n,
        seed).batch(batch_size)`` over the original data.

        Do not map a random augmentation over the result: the cached outputs
        describe the un-augmented inputs.

        Args:
            batch_size: samples per batch.
            shuffle: shuffle the samples each epoch.
            seed: the shuffle seed.
            drop_remainder: drop the last incomplete batch.
            distiller: when given, :meth:`check` the cache against it first.

        Example:

        >>> import keras, numpy as np, keras_kd as kd
        >>> from keras_kd.soft_labels import compute_soft_labels
        >>> def mlp(width, name):
        ...     inputs = keras.Input((16,))
        ...     h = keras.layers.Dense(width, activation="relu")(inputs)
        ...     return keras.Model(inputs, keras.layers.Dense(4)(h), name=name)
        >>> teacher, student = mlp(64, "teacher"), mlp(8, "student")
        >>> x = np.random.rand(64, 16).astype("float32")
        >>> y = np.random.randint(0, 4, 64)
        >>> cache = compute_soft_labels(teacher, x, y, batch_size=32)
        >>> distiller = kd.Distiller(teacher=teacher, student=student)
        >>> distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True))
        >>> history = distiller.fit(cache.as_dataset(16, seed=0), epochs=1,
        ...                         verbose=0)
        """
        tf = require("tensorflow")

        origin = self._origin()
        if distiller is not None:
            self.check(distiller=distiller)
            origin.checked.add(distiller)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got {batch_size!r}.")
        n = self.num_samples
        if n == 0:
            raise ValueError("The soft-label cache is empty.")
        inputs = self.inputs
        labels = self.labels
        weights = self.sample_weight
        keys = self.input_keys
        x_arrays = [inputs[k] for k in keys] if keys else [inputs]
        n_x = len(x_arrays)
        n_feat = len(self.feature_layers)
        specs = [(np.dtype(a.dtype), tuple(a.shape[1:])) for a in x_arrays]
        specs.append((np.dtype("float32"), tuple(self.logits_shape)))
        specs += [(np.dtype("float32"),
                   self._columns[f"feature_{i}"].row_shape)
                  for i in range(n_feat)]
        if labels is not None:
            specs.append((np.dtype(labels.dtype), tuple(labels.shape[1:])))
        if weights is not None:
            specs.append((np.dtype("float32"), tuple(weights.shape[1:])))

        def gather(idx):
            targets = self._targets(idx)
            out = [np.asarray(a[idx]) for a in x_arrays]
            out.append(targets["teacher_logits"])
            out += targets.get("teacher_features", [])
            if labels is not None:
                out.append(targets["labels"])
            if weights is not None:
                out.append(np.asarray(weights[idx]))
            return [np.asarray(a, dtype=d) for a, (d, _) in zip(out, specs)]

        def load(idx):
            arrays = tf.numpy_function(
                gather, [idx], [tf.as_dtype(d) for d, _ in specs],
                stateful=False)
            for array, (_, shape) in zip(arrays, specs):
                array.set_shape((None,) + shape)
            x = dict(zip(keys, arrays[:n_x])) if keys else arrays[0]
            rest = list(arrays[n_x + 1 + n_feat:])
            targets = {"teacher_logits": arrays[n_x]}
            if n_feat:
                targets["teacher_features"] = tuple(
                    arrays[n_x + 1:n_x + 1 + n_feat])
            if labels is not None:
                targets["labels"] = rest.pop(0)
            if weights is not None:
                return x, targets, rest.pop(0)
            return x, targets

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(load).prefetch(tf.data.AUTOTUNE)
        return guards.mark_origin(ds, origin)

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, path, teacher=None, num_samples=None, num_classes=None,
             verify=True):
        """Reopens a complete cache written by :func:`compute_soft_labels`.

        Arrays are memory-mapped. Pass ``teacher`` (and the dataset size) to
        refuse a cache built for another teacher or data; without it, a
        Distiller trained from :meth:`as_dataset` or :meth:`as_numpy`
        compares its teacher with the cache's when ``fit`` starts.

        Integrity: every column file must have the size the manifest
        records, and with ``verify=True`` (the default) its CRC-32 must
        equal the one recorded when the build wrote it, so a flipped or
        truncated byte is refused with an error naming the file. Verifying
        reads the whole cache once: measured 0.6 to 0.9 s per GB with the
        files in the page cache on a shared 2-core machine, or the disk's
        read time when they are not cached. Pass ``verify=False`` to skip the checksums
        (the sizes are still checked). Caches written before checksums
        existed open with a warning and only the size check.

        Args:
            path: the cache directory.
            teacher: optional teacher to :meth:`check` against.
            num_samples: optional dataset size to check.
            num_classes: optional class count to check.
            verify: compare each file's CRC-32 with the manifest's.

        Raises:
            FileNotFoundError: no cache at ``path``.
            ValueError: an incomplete build, an invalid manifest, a
                truncated or corrupt file, or another teacher or data
                (each naming the file and the fix).
        """
        manifest = store.read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(
                f"No soft-label cache at '{path}' (no {store.MANIFEST}). Build one "
                "with kd.compute_soft_labels(teacher, x, path=...)."
            )
        if not manifest["complete"]:
            raise ValueError(
                f"The soft-label cache at '{path}' is incomplete "
                f"({manifest['rows_done']} rows done): its build was "
                "interrupted or stopped. Rerun compute_soft_labels with the "
                "same arguments to finish it."
            )
        columns = store.open_columns(manifest, path)
        if not verify:
            for column in columns.values():
                column.check_file(manifest["rows_done"])
        elif not store.verify_columns(manifest, columns, path):
            warnings.warn(
                f"The soft-label cache at '{path}' has no checksums (it was "
                "written by an older keras-kd), so only its files' sizes "
                "were checked. Rebuild it (overwrite=True) to get them.",
                stacklevel=2)
        cache = cls(manifest, columns, path=path)
        return cache.check(teacher=teacher, num_samples=num_samples,
                           num_classes=num_classes)


def _options(manifest):
    """A manifest's build options, with the values that caches written
    before an option existed were built with."""
    options = dict(manifest["options"])
    options.setdefault("input_keys", None)
    options.setdefault("has_sample_weight", False)
    options.setdefault("top_k_dtype",
                       None if manifest["top_k"] is None else "float16")
    return options


def _run_teacher(view, n_features, xb):
    out = view.predict_on_batch(xb)
    if n_features:
        out = [np.asarray(o, dtype="float32") for o in out]
        return out[0], out[1:]
    return np.asarray(out, dtype="float32"), []


def _check_batched(teacher, xb):
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


def _check_weights(wb, logits):
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


def _check_finite(index, rows, logits, features, feature_layers):
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


def _append(columns, options, xb, yb, wb, logits, features, index=0,
            rows_before=0):
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
    _check_weights(wb, logits)
    _check_finite(index, rows_before, logits, features,
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


def compute_soft_labels(teacher, x, y=None, batch_size=256, path=None,
                        top_k=None, feature_layers=None, overwrite=False,
                        check_determinism=True, verbose=0, *,
                        sample_weight=None, top_k_dtype="float16"):
    """Runs the teacher once over a dataset and keeps its outputs.

    The teacher runs in inference mode (``training=False``) through its
    compiled ``predict_on_batch``, batch by batch, and its logits (and the
    outputs of ``feature_layers``, from the same forward pass) are stored in
    dataset order beside the inputs, labels and sample weights:

    - ``path=None``: in memory (NumPy inputs are referenced, not copied);
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

    Guards: a cache at ``path`` built for another teacher (name, weights
    checksum, output shape), another dataset (size, a different first
    batch, or any later input, label or sample weight: the rerun reads the
    stored batches again, without the teacher, and compares their CRC-32
    checksums) or other options is refused with an error naming the fix.
    Each column file's CRC-32 is recorded with every batch and checked
    before a resume continues from it. A build holds ``<path>/.lock``, so a
    second build of the same cache is refused (RuntimeError); a lock left
    by a killed build is taken over (POSIX). NaN or infinite teacher
    outputs stop the build, naming the batch; the cache stays incomplete. A
    ``tf.data`` source whose graph contains random or shuffling ops, or whose
    first batch reads differently twice (random augmentation, a shuffle), is
    refused with a ValueError: the
    cached outputs would describe inputs the student never sees again.
    Build the cache from the un-augmented, unshuffled data; shuffle with
    ``as_dataset(shuffle=True)``; keep augmentation for live distillation.

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
        path: a directory for an on-disk, resumable cache; None for memory.
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
    feature_layers = list(feature_layers or [])
    view = taps.make_view(teacher, feature_layers, "teacher")
    source = sources.Source(x, y, batch_size, sample_weight)
    store_inputs = path is not None or source.dataset is not None

    first_x, first_y, first_w = source.first_batch()
    _check_batched(teacher, first_x)
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
    first_logits, first_features = _run_teacher(view, len(feature_layers),
                                                first_x)
    if first_logits.ndim < 2:
        raise ValueError(
            f"The teacher's output has shape {first_logits.shape} per batch; "
            "soft labels are logits, (batch, classes) or (batch, ..., "
            "classes) such as a sequence model's (batch, length, vocab)."
        )
    _check_weights(first_w, first_logits)
    _check_finite(0, 0, first_logits, first_features, feature_layers)
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

    if path is None:
        return _build(None, None, teacher, view, source, options,
                      feature_layers, first, fingerprint, num_classes,
                      dataset_id, top_k, top_k_dtype, store_inputs, verbose)
    os.makedirs(path, exist_ok=True)
    with store.BuildLock(path):  # one build at a time per directory
        manifest = None if overwrite else store.read_manifest(path)
        if overwrite:  # the cache's own files only, never a user's
            store.remove_cache_files(path)
        return _build(path, manifest, teacher, view, source, options,
                      feature_layers, first, fingerprint, num_classes,
                      dataset_id, top_k, top_k_dtype, store_inputs, verbose)


def _build(path, manifest, teacher, view, source, options, feature_layers,
           first, fingerprint, num_classes, dataset_id, top_k, top_k_dtype,
           store_inputs, verbose):
    """Builds, resumes or reopens the cache (under the build lock)."""
    first_x, first_y, first_w, first_logits, first_features = first
    fix = "Pass another path, or overwrite=True to rebuild the cache there."
    if manifest is not None:
        cache = SoftLabels(manifest, store.open_columns(manifest, path), path=path)
        cache.check(teacher=teacher)
        stored_options = _options(manifest)
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
        columns = cache._columns
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
    data = _DataFingerprint(columns, rows, done, manifest, path)
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
                logits, features = _run_teacher(view, len(feature_layers), xb)
            rows += _append(columns, options, xb, yb, wb, logits, features,
                            index, rows)
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
    inputs = None if store_inputs else source.x
    return SoftLabels(manifest, columns, inputs=inputs, path=path)


class _DataFingerprint:
    """Compares the data of a rerun with the data a cache was built from.

    The build records, per finished batch, the CRC-32 of every column; those
    of the inputs, labels and sample weights fingerprint all of the data.
    A rerun reads the batches already stored again (without running the
    teacher) and must reach the same checksums after them.
    """

    def __init__(self, columns, rows, batches, manifest, path):
        self.columns = columns
        self.rows, self.batches = rows, batches
        self.stored = manifest.get("checksums") or {}
        self.names = [n for n in columns if store.is_data_column(n)]
        self.crcs = dict.fromkeys(self.names, 0)
        self.seen = 0
        self.path = path
        self.done = batches == 0

    def add(self, index, xb, yb, wb, options):
        """Adds stored batch ``index`` of the rerun's data."""
        parts = {}
        keys = options["input_keys"]
        if options["stored_inputs"]:
            for key in keys or [None]:
                name = store.input_column(key)
                if key is not None and (not isinstance(xb, dict)
                                        or key not in xb):
                    self.refuse(f"batch {index} lacks the input {key!r}")
                parts[name] = xb if key is None else xb[key]
        if yb is not None:
            parts["labels"] = yb
        if wb is not None:
            parts["sample_weight"] = wb
        if sorted(parts) != sorted(self.names):
            self.refuse(f"batch {index} holds {sorted(parts)}, the cache "
                         f"{sorted(self.names)}")
        for name, array in parts.items():
            encoded = self.columns[name].encode(array)
            if encoded.size:
                self.crcs[name] = zlib.crc32(
                    memoryview(encoded).cast("B"), self.crcs[name])
        self.seen += sources.num_rows(xb)

    def finish(self, index):
        """Compares once the stored batches have all been read again."""
        if self.done:
            return
        if index < self.batches:
            self.refuse(f"it has {index} batches, the cache {self.batches}")
        self.done = True
        if self.seen != self.rows:
            self.refuse(f"its first {self.batches} batches hold {self.seen} "
                         f"rows, the cache's {self.rows}")
        differ = [n for n in self.names if n in self.stored
                  and self.crcs[n] != int(self.stored[n])]
        if differ:
            self.refuse(f"the {differ} of its first {self.rows} rows "
                         "differ (CRC-32 checksums)")

    def refuse(self, what):
        """Raises the ValueError of data that differ, saying how."""
        raise ValueError(
            f"The soft-label cache at '{self.path}' was built from other "
            f"data: {what}. Its inputs, labels and sample weights are "
            "fingerprinted whole, not only the first batch; cached outputs "
            "are aligned sample by sample with their data. Pass the same "
            "data, another path, or overwrite=True to rebuild the cache "
            "there.")
