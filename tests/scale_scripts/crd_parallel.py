"""CRD's memory bank under data parallelism vs one device, in a fresh process.

    KERAS_BACKEND=jax|tensorflow python tests/scale_scripts/crd_parallel.py OUT.json

Two training steps of the same CRD distillation (same weights, same global
batches) on one device and on 2 virtual CPU devices
(``keras.distribution.DataParallel`` on JAX, ``tf.distribute.MirroredStrategy``
on TensorFlow); writes both runs' banks, write positions and losses as JSON.
"""

import contextlib
import json
import os
import sys

REPLICAS = 2
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

BATCH = 8


def mlp(width, name):
    x = keras.Input((16,))
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_hidden")(x)
    return keras.Model(x, keras.layers.Dense(10)(h), name=name)


def run(scope, init, x, y):
    with scope:
        teacher, student = mlp(12, "teacher"), mlp(6, "student")
        teacher.set_weights(init["teacher"])
        student.set_weights(init["student"])
        crd = kd.objectives.CRD("teacher_hidden", "student_hidden",
                                feature_dim=4, bank_size=24, temperature=0.5)
        distiller = kd.Distiller(teacher, student)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True),
                          alpha=0.5, distillation_loss=None,
                          feature_losses=[crd])
        if "heads" in init:
            for layer, weights in zip((crd.teacher_head, crd.student_head),
                                      init["heads"]):
                layer.set_weights(weights)
        else:
            init["heads"] = [crd.teacher_head.get_weights(),
                             crd.student_head.get_weights()]
        history = distiller.fit(x, y, batch_size=BATCH, epochs=1,
                                shuffle=False, verbose=0)

    def value(v):
        return np.asarray(keras.ops.convert_to_numpy(v)).tolist()

    return {"teacher_bank": value(crd.teacher_bank),
            "student_bank": value(crd.student_bank),
            "position": value(crd.bank_position),
            "normalizers": value(crd.normalizers),
            "loss": history.history["loss"][-1]}


def main(out_path):
    keras.utils.set_random_seed(0)
    init = {"teacher": mlp(12, "teacher").get_weights(),
            "student": mlp(6, "student").get_weights()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * BATCH, 16)).astype("float32")
    y = rng.integers(0, 10, 2 * BATCH)
    single = run(contextlib.nullcontext(), init, x, y)
    if BACKEND == "jax":
        devices = keras.distribution.list_devices("cpu")
        scope = keras.distribution.DataParallel(devices=devices).scope()
    else:
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        scope = tf.distribute.MirroredStrategy(devices).scope()
    parallel = run(scope, init, x, y)
    with open(out_path, "w") as f:
        json.dump({"devices": len(devices), "single": single,
                   "parallel": parallel}, f)


if __name__ == "__main__":
    main(sys.argv[1])
