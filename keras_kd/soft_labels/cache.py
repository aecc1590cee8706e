"""The cache: a teacher's outputs over a dataset, kept beside the inputs.

:class:`SoftLabels` reads a cache (in memory, or memory-mapped from its
folder) and hands it to ``Distiller.fit``; :func:`~keras_kd.soft_labels.
compute_soft_labels` (``build.py``) writes it.
"""

import warnings

import numpy as np

from keras_kd import taps
from keras_kd.extras import require
from keras_kd.soft_labels import guards, store
from keras_kd.soft_labels.codec import expand_top_k


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
        return store.build_options(self.manifest)["top_k_dtype"]

    @property
    def logits_shape(self):
        """The teacher's logits per sample: ``(C,)``, or ``(length, V)``."""
        if self.top_k is None:
            return self._columns["logits"].row_shape
        return self._columns["topk_fill"].row_shape + (self.num_classes,)

    @property
    def input_keys(self):
        """The input names when the inputs are a dict, else None."""
        return store.build_options(self.manifest)["input_keys"]

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
        dict of them when the inputs were a dict.

        An in-memory cache built from NumPy inputs returns those very
        arrays (referenced, not copied), after checking each row's CRC-32
        against the build's: inputs changed in place since raise
        ValueError."""
        if self._inputs is not None:  # referenced: checked row by row
            return self._inputs.check()
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
            layers = taps.tapped_layers(distiller.feature_objectives,
                                        "teacher")
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

        referenced = self._inputs

        def gather(idx):
            targets = self._targets(idx)
            out = [np.asarray(a[idx]) for a in x_arrays]
            if referenced is not None:  # changed since the build?
                referenced.check_rows(idx, out)
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
