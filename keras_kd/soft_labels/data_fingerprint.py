"""The data a cache was built from, checked again when a build reruns."""

import zlib

from keras_kd.soft_labels import sources, store


class DataFingerprint:
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
