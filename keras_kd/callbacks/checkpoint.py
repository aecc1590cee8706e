"""StudentCheckpoint: the best student, saved alone as a ``.keras`` file."""

import os

from keras_kd.callbacks.monitored import BestStudentCallback, student_of
from keras_kd.saving import save_atomically

__all__ = ["StudentCheckpoint"]


class StudentCheckpoint(BestStudentCallback):
    """Saves the student alone as a ``.keras`` file, the best by a metric.

    At the end of each epoch, when ``logs[monitor]`` improves on the best value
    seen so far (``mode="min"``: lower is better; ``"max"``: higher), the
    Distiller's ``student`` (the model itself when used on a plain
    ``keras.Model``) is written to ``filepath`` with
    ``keras.saving.save_model``. The teacher, adapters and optimizer are not in
    the file: it is an ordinary Keras model, ready for
    ``keras.models.load_model`` and export.

    The write is atomic: the model is saved to a temporary file in the same
    directory, then moved over ``filepath`` with ``os.replace``. A crash or a
    kill during the write leaves the last good checkpoint untouched.

    ``filepath`` may hold ``str.format`` fields filled with the 1-based epoch
    and the logs, e.g. ``"student_{epoch:02d}_{val_loss:.3f}.keras"``.

    One file, one writer: two callbacks of one ``fit()`` with the same
    ``filepath`` (two ``StudentCheckpoint``\ s monitoring different metrics,
    say) raise a ``ValueError`` at the start of ``fit()``, before any step;
    each would keep its own best, and the file would hold whichever saved
    last while each ``best_epoch`` named its own epoch.

    A ``monitor`` absent from the logs raises a ``ValueError`` at the end of
    the first epoch, listing the names that are there (Keras's
    ``ModelCheckpoint`` only warns and then saves every epoch, which silently
    defeats ``save_best_only``; failing after one epoch costs less than
    discovering after training that no best model was kept). ``val_*``
    metrics need ``validation_data`` in ``fit()``.

    With ``mode="auto"``, names ending in ``loss`` or ``error`` (and
    ``crossentropy``/``divergence``) are minimised, names containing ``acc``,
    ``auc``, ``precision``, ``recall``, ``f1``, ``iou`` or ``top_k`` are
    maximised, and any other name asks for an explicit ``mode``.

    Args:
        filepath: path of the ``.keras`` file (directories are created).
        monitor: the logged metric to compare, e.g. ``"val_loss"`` or
            ``"val_accuracy"``.
        mode: ``"auto"``, ``"min"`` or ``"max"``.
        save_best_only: save only on improvement (default); ``False`` saves
            every epoch (the latest model).
        verbose: 1 prints a line on each save.
        initial_value_threshold: a best value to beat from the start, e.g.
            the last best value of a run being resumed with
            ``BackupAndRestore`` (the callback's own best is not part of the
            backup).

    Example:

    >>> import keras, numpy as np, keras_kd as kd, tempfile, os
    >>> def mlp(width, name):
    ...     inputs = keras.Input((64,))
    ...     h = keras.layers.Dense(width, activation="relu")(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)
    >>> distiller = kd.Distiller(teacher=mlp(64, "teacher"),
    ...                          student=mlp(16, "student"))
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"],
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x = np.random.rand(16, 64).astype("float32")
    >>> y = np.random.randint(0, 10, 16)
    >>> path = os.path.join(tempfile.mkdtemp(), "student.keras")
    >>> _ = distiller.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...     callbacks=[kd.callbacks.StudentCheckpoint(path)])
    >>> keras.models.load_model(path).name
    'student'
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto",
                 save_best_only=True, verbose=0, initial_value_threshold=None):
        filepath = os.fspath(filepath)
        if not isinstance(filepath, str) or not filepath.endswith(".keras"):
            raise ValueError(
                f"StudentCheckpoint saves a whole Keras model, so filepath "
                f"must end in '.keras', got {filepath!r}. Use e.g. "
                "'saved_models/student.keras' (for weights only, use "
                "keras.callbacks.ModelCheckpoint(..., save_weights_only=True) "
                "with a '.weights.h5' path)."
            )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"monitor must be a metric name such as 'val_loss', got "
                f"{monitor!r}."
            )
        super().__init__(monitor, mode, initial_value_threshold)
        self.filepath = filepath
        self.save_best_only = bool(save_best_only)
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.path_of_epoch(epoch, logs)
        if self.save_best_only:
            value = self.monitored(
                epoch, logs, "save_best_only=False to save every epoch")
            if not self.is_improvement(value):
                self.say_no_improvement(epoch, value, "nothing saved")
                return
            self.say_improvement(epoch, value,
                              f"saving the student to {path}")
            self.best, self.best_epoch = value, epoch
        elif self.verbose:
            print(
                f"\nEpoch {epoch + 1}: saving the student to {path}")
        save_atomically(student_of(self.model), path)
