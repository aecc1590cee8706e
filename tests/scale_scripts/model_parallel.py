"""A teacher sharded over devices, a data-parallel student, in a fresh process.

Virtual CPU devices must be configured before JAX initialises, so the tests
run this script as a subprocess (JAX only):

    KERAS_BACKEND=jax python tests/scale_scripts/model_parallel.py OUT.json \
        [--student=layout_map|data_parallel]

The recipe, on a ``(batch=2, model=4)`` mesh of 8 virtual CPU devices:

1. build the teacher (a keras-hub ``GemmaCausalLM``) inside the scope of a
   ``keras.distribution.ModelParallel`` with keras-hub's
   ``GemmaBackbone.get_layout_map(mesh)``: its embedding, attention and
   feed-forward kernels are sharded over ``"model"`` (and ``"batch"``);
2. build the student inside the scope of a ``ModelParallel`` over the same
   mesh with an empty ``LayoutMap``: every student variable is replicated on
   the 8 devices (data-parallel). keras-hub's layout regexes match variable
   paths without the model's name (``token_embedding/embeddings``,
   ``decoder_block_0/...``), so a student built under the teacher's
   distribution would be sharded too (or fail to build when its head
   counts do not divide the ``"model"`` axis); a variable's layout is fixed
   when it is created, so the scope it is created in decides;
3. ``keras.distribution.set_distribution(<the teacher's ModelParallel>)``,
   then build, compile and ``fit`` the ``kd.Distiller`` (its own variables,
   the optimizer's and the metrics' are created under that distribution:
   replicated, or, for the optimizer's slots, the student's layouts). Each
   batch is sharded over ``"batch"``.

It runs the same distillation (same initial weights, same global batches,
SGD, 2 epochs of 3 steps) on one device without any distribution first, and
writes, as JSON: how each variable is laid out, per-step logs and per-epoch
losses of both runs, whether each teacher weight is unchanged, and how far
the student moved and how far it ended from the single-device student.

``--student=data_parallel`` builds the student under
``keras.distribution.DataParallel(devices=...)`` (a 1-D mesh of the same 8
devices) instead: that works too.
"""

import json
import os
import sys

DEVICES = 8
MESH = (2, 4)  # (batch, model)
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") +
    f" --xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() != "jax":
    raise SystemExit("model_parallel.py runs on the JAX backend only "
                     f"(KERAS_BACKEND={keras.backend.backend()})")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
import keras_kd as kd  # noqa: E402
from tests.helpers import padded_lm_batch  # noqa: E402

VOCABULARY, LENGTH, SAMPLES, BATCH, EPOCHS = 64, 8, 24, 8, 2


def teacher_model():
    # keras-hub's Gemma layout shards the query/key/value kernels' head axis
    # over "model" and the hidden axis over "batch": the head counts must be
    # divisible by 4 and the widths by 2 (jax raises IndivisibleError
    # otherwise, e.g. for 2 query heads / 1 key-value head on this mesh).
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=4,
        num_key_value_heads=4, hidden_dim=32, intermediate_dim=64,
        head_dim=16, dropout=0.0, name="teacher_backbone")
    return keras_hub.models.GemmaCausalLM(backbone=backbone,
                                          preprocessor=None, name="teacher")


def student_model():
    # The same architecture, smaller: its variable paths match the teacher's
    # layout regexes, and its head counts do not divide the "model" axis.
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
        head_dim=8, dropout=0.0, name="student_backbone")
    return keras_hub.models.GemmaCausalLM(backbone=backbone,
                                          preprocessor=None, name="student")


def lm_data(seed=0):
    """Padded token sequences, next-token labels, padding sample weights."""
    return padded_lm_batch(SAMPLES, LENGTH, VOCABULARY, seed)


class StepLogs(keras.callbacks.Callback):
    """Logs after every training step (running means over the epoch so far:
    after an epoch's first step, that step's values)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def distill(teacher, student, data):
    """Builds, compiles and fits a Distiller: the distiller, per-step logs
    and per-epoch losses (the same batches each epoch)."""
    x, y, w = data
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.3, temperature=2.0)
    recorder = StepLogs()
    history = distiller.fit(x, y, sample_weight=w, batch_size=BATCH,
                            epochs=EPOCHS, shuffle=False, verbose=0,
                            callbacks=[recorder])
    return distiller, {"steps": recorder.logs,
                       "epoch_loss": history.history["loss"]}


def layout(variable):
    """How a variable's value is laid out on the devices."""
    array = variable.value
    sharding = array.sharding
    spec = getattr(sharding, "spec", None)
    return {
        "path": variable.path,
        "shape": list(variable.shape),
        "mesh": (dict(sharding.mesh.shape) if isinstance(
            sharding, jax.sharding.NamedSharding) else None),
        "spec": None if spec is None else [
            None if axis is None else str(axis) for axis in spec],
        "replicated": bool(sharding.is_fully_replicated),
        "devices": len(sharding.device_set),
        "shard_shape": list(array.addressable_shards[0].data.shape),
    }


def numpy_weights(model):
    return [np.array(w) for w in model.get_weights()]


def main(out_path, student_scope="layout_map"):
    keras.utils.set_random_seed(0)
    data = lm_data()

    # One device, no distribution: the reference.
    assert keras.distribution.distribution() is None
    teacher, student = teacher_model(), student_model()
    init = {"teacher": numpy_weights(teacher),
            "student": numpy_weights(student)}
    _, single = distill(teacher, student, data)
    single_student = numpy_weights(student)

    # The mesh, and the teacher sharded with keras-hub's layout map.
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh(MESH, ["batch", "model"], devices)
    layout_map = keras_hub.models.GemmaBackbone.get_layout_map(
        mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch")
    teacher_distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch")
    with teacher_distribution.scope():
        teacher = teacher_model()
    # The student replicated over the same devices: the same mesh with no
    # layout rule (or, --student=data_parallel, a 1-D DataParallel mesh of
    # the same devices, which works as well).
    if student_scope == "data_parallel":
        student_distribution = keras.distribution.DataParallel(
            devices=devices)
    else:
        student_distribution = keras.distribution.ModelParallel(
            layout_map=keras.distribution.LayoutMap(mesh),
            batch_dim_name="batch")
    with student_distribution.scope():
        student = student_model()
    # Assigning keeps each variable's layout (set_weights shards the values).
    teacher.set_weights(init["teacher"])
    student.set_weights(init["student"])
    teacher_layouts = [layout(v) for v in teacher.weights]

    # The Distiller (its variables, the optimizer's and the metrics'), the
    # batches and the compiled step under the teacher's distribution.
    keras.distribution.set_distribution(teacher_distribution)
    try:
        distiller, parallel = distill(teacher, student, data)
        result = {
            "devices": len(devices),
            "mesh": dict(zip(mesh.axis_names, mesh.shape)),
            "jit_compile": bool(distiller.jit_compile),
            "teacher_layouts": teacher_layouts,
            "teacher_layouts_after_fit": [layout(v) for v in teacher.weights],
            "student_layouts": [layout(v) for v in student.weights],
            # Student paths that the teacher's layout map would shard.
            "student_paths_in_teacher_map": [
                v.path for v in student.weights
                if layout_map[v.path] is not None],
            "distiller_layouts": [
                layout(v) for v in distiller.optimizer.variables +
                distiller.metrics_variables + [distiller._alpha,
                                                distiller._temperature]],
            "teacher_trainable": teacher.trainable,
        }
    finally:
        keras.distribution.set_distribution(None)

    teacher_after = numpy_weights(teacher)
    student_after = numpy_weights(student)
    result.update({
        "single": single,
        "parallel": parallel,
        # Bit for bit, after fit.
        "teacher_unchanged": [bool(np.array_equal(a, b)) for a, b in
                              zip(init["teacher"], teacher_after)],
        # Largest change of a student weight, and largest difference from
        # the single-device student after the same steps.
        "student_change": max(float(np.abs(a - b).max()) for a, b in
                              zip(init["student"], student_after)),
        "student_vs_single": max(float(np.abs(a - b).max()) for a, b in
                                 zip(single_student, student_after)),
    })
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    scope = "layout_map"
    for arg in sys.argv[2:]:
        if arg.startswith("--student="):
            scope = arg.split("=", 1)[1]
    if scope not in ("layout_map", "data_parallel"):
        raise SystemExit(f"--student=layout_map|data_parallel, got {scope}")
    main(sys.argv[1], scope)
