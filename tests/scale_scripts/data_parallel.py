"""Data-parallel distillation vs a single-device run, in a fresh process.

Virtual CPU devices must be configured before the backend initialises, so the
tests run this script as a subprocess:

    KERAS_BACKEND=jax python tests/scale_scripts/data_parallel.py OUT.json
    KERAS_BACKEND=tensorflow python tests/scale_scripts/data_parallel.py OUT.json

It trains the same student (same initial weights, same global batches, SGD)
once on one device and once data-parallel on 4 virtual CPU devices
(``keras.distribution.DataParallel`` on JAX, ``tf.distribute.MirroredStrategy``
on TensorFlow) and writes, as JSON: per-step losses of both runs, the final
student weights, teacher weights before and after, how the teacher's variables
are placed, and how often the student's tapped features came from the
Distiller's per-thread stash rather than a second forward pass.
"""

import contextlib
import json
import os
import sys
import threading

REPLICAS = 4
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={REPLICAS}")
elif BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
import keras_kd as kd  # noqa: E402

STEPS, BATCH = 3, 32


class CountingDistiller(kd.Distiller):
    """Records, at trace time, in which thread ``compute_loss`` looked for the
    student's features and whether they came from the stash that ``call()``
    left in that thread (rather than from a second student forward pass)."""

    lookups = []

    def _student_features(self, x, y_pred, training):
        stash = getattr(self._stash, "value", None)
        hit = stash is not None and stash[0] is y_pred
        CountingDistiller.lookups.append(
            (threading.current_thread().name, hit))
        return super()._student_features(x, y_pred, training)


def teacher_model():
    """A small MLP with BatchNorm statistics to watch."""
    x = keras.Input((16,), name="t_input")
    h = keras.layers.Dense(24, name="t_dense")(x)
    h = keras.layers.BatchNormalization(name="t_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(16, activation="relu", name="t_hidden")(h)
    return keras.Model(x, keras.layers.Dense(10, name="t_logits")(h),
                       name="teacher")


def student_model():
    # No BatchNorm in the student: under MirroredStrategy an unsynchronised
    # BatchNormalization normalises with per-replica statistics, which would
    # (legitimately) differ from the single-device run.
    x = keras.Input((16,), name="s_input")
    h = keras.layers.Dense(8, activation="relu", name="s_hidden")(x)
    return keras.Model(x, keras.layers.Dense(10, name="s_logits")(h),
                       name="student")


class StepLosses(keras.callbacks.Callback):
    """Per-step value of each loss term (Keras logs running means)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def run(scope, init, data):
    x, y = data
    with scope:
        teacher, student = teacher_model(), student_model()
        teacher.set_weights(init["teacher"])
        student.set_weights(init["student"])
        distiller = CountingDistiller(teacher, student)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], alpha=0.3, temperature=2.0,
            feature_losses=[kd.FitNet("t_hidden", "s_hidden", weight=2.0)])
        adapter = distiller.feature_objectives[0].adapter
        if "adapter" in init:
            adapter.set_weights(init["adapter"])
        else:
            init["adapter"] = adapter.get_weights()
        teacher_before = [np.array(w) for w in teacher.get_weights()]
        recorder = StepLosses()
        distiller.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False,
                      verbose=0, callbacks=[recorder])
        teacher_after = [np.array(w) for w in teacher.get_weights()]
    return distiller, recorder.logs, teacher_before, teacher_after


def placement(variable):
    """How a teacher variable is placed: (kind, number of devices)."""
    if BACKEND == "jax":
        sharding = variable.value.sharding
        return ("replicated" if sharding.is_fully_replicated else "sharded",
                len(sharding.device_set))
    values = getattr(variable.value, "values", None)
    return (type(variable.value).__name__, len(values) if values else 1)


def main(out_path):
    keras.utils.set_random_seed(0)
    init = {"teacher": teacher_model().get_weights(),
            "student": student_model().get_weights()}
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(STEPS * BATCH, 16)).astype("float32"),
            rng.integers(0, 10, STEPS * BATCH))

    single, single_logs, _, _ = run(contextlib.nullcontext(), init, data)
    single_lookups = list(CountingDistiller.lookups)
    CountingDistiller.lookups = []

    if BACKEND == "jax":
        devices = keras.distribution.list_devices("cpu")
        strategy = keras.distribution.DataParallel(devices=devices)
        scope = strategy.scope()
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        scope = strategy.scope()
    else:
        raise SystemExit(f"no data-parallel engine for {BACKEND}")
    parallel, parallel_logs, before, after = run(scope, init, data)

    result = {
        "devices": len(devices),
        "single_logs": single_logs,
        "parallel_logs": parallel_logs,
        "single_student": [w.tolist() for w in single.student.get_weights()],
        "parallel_student": [w.tolist() for w in
                             parallel.student.get_weights()],
        "teacher_init": [w.tolist() for w in init["teacher"]],
        "teacher_before": [w.tolist() for w in before],
        "teacher_after": [w.tolist() for w in after],
        "teacher_trainable": parallel.teacher.trainable,
        "teacher_placement": [placement(v) for v in parallel.teacher.weights],
        "single_lookups": single_lookups,
        "parallel_lookups": CountingDistiller.lookups,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
