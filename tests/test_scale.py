"""Scaling out: data-parallel distillation, mixed precision and XLA.

* Data parallelism (``keras.distribution.DataParallel`` on JAX,
  ``tf.distribute.MirroredStrategy`` on TensorFlow) runs in a subprocess
  (``scale_scripts/data_parallel.py``) because the 4 virtual CPU devices must
  be configured before the backend initialises.
* Mixed precision and ``jit_compile`` run in this process.
"""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.objectives.logits import kd_loss
from tests.helpers import mlp, run_scale_script, to_numpy
from tests.references import kd as np_kd
from tests.references import sparse_ce as np_sparse_ce

BACKEND = keras.backend.backend()
PARALLEL_BACKENDS = ("jax", "tensorflow")


# ----------------------------------------------------------------------
# Data parallelism
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory):
    if BACKEND not in PARALLEL_BACKENDS:
        pytest.skip(f"no data-parallel engine on the {BACKEND} backend "
                    "(docs/scaling.md: single device on PyTorch)")
    out = tmp_path_factory.mktemp("dp") / "result.json"
    return run_scale_script("data_parallel", out, BACKEND, timeout=300)


def test_data_parallel_losses_match_single_device(parallel_run):
    """Same global batches: every logged loss term, step by step, and the
    final student weights agree with a single-device run (SGD, so a wrong
    gradient scale across replicas would show from the second step on)."""
    assert parallel_run["devices"] == 4
    single, parallel = parallel_run["single_logs"], parallel_run["parallel_logs"]
    assert len(single) == len(parallel) == 3
    for step, (a, b) in enumerate(zip(single, parallel)):
        assert set(a) == set(b) == {"loss", "student_loss",
                                    "distillation_loss", "fitnet_loss",
                                    "accuracy"}
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6,
                                       err_msg=f"step {step}, {key}")
    # The student did move, so the comparison above is about training.
    assert abs(single[-1]["loss"] - single[0]["loss"]) > 1e-3
    for a, b in zip(parallel_run["single_student"],
                    parallel_run["parallel_student"]):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=2e-6)


def test_data_parallel_teacher_replicated_and_frozen(parallel_run):
    assert parallel_run["teacher_trainable"] is False
    placements = parallel_run["teacher_placement"]
    assert placements, "the teacher has weights"
    for kind, devices in placements:
        assert devices == 4
        assert kind == ("replicated" if BACKEND == "jax" else
                        "MirroredVariable")
    init = parallel_run["teacher_init"]
    for key in ("teacher_before", "teacher_after"):
        assert len(parallel_run[key]) == len(init)
        for w0, w in zip(init, parallel_run[key]):
            # Bit-identical, BatchNorm moving statistics included.
            assert np.array_equal(np.array(w0, np.float32),
                                  np.array(w, np.float32))


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="MirroredStrategy (replica threads) is TensorFlow's")
def test_mirrored_replicas_read_their_own_feature_stash(parallel_run):
    """call() stashes the student's tapped features in a threading.local and
    compute_loss reads them back; MirroredStrategy runs one thread per
    replica, so each replica must find its own stash (no second student
    forward pass, no features of another replica)."""
    lookups = parallel_run["parallel_lookups"]
    replica = [(name, hit) for name, hit in lookups if name != "MainThread"]
    assert len({name for name, _ in replica}) == 4
    assert all(hit for _, hit in replica), replica
    # The single-device run reads its stash on the main thread.
    assert all(hit for _, hit in parallel_run["single_lookups"])


# ----------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------
class _StepLosses(keras.callbacks.Callback):
    """Records the logs after every training step (running means over the
    epoch so far: after the first step, that step's values)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


MIXED = ["mixed_float16", "mixed_bfloat16"]


def _models(student_policy, teacher_policy="float32"):
    keras.config.set_dtype_policy(teacher_policy)
    teacher = mlp(32, "teacher", inputs=16)
    keras.config.set_dtype_policy(student_policy)
    student = mlp(8, "student", inputs=16, hidden_name="student_hidden")
    keras.config.set_dtype_policy("float32")
    return teacher, student


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 16)).astype("float32"),
            rng.integers(0, 10, n))


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_student_loss_terms_are_float32(policy):
    """Student in mixed precision, teacher in float32: each term is float32
    and equals a float64 NumPy computation on the student's low-precision
    logits to float32 accuracy (a float16/bfloat16 softmax would be off by
    ~1e-3..1e-2)."""
    teacher, student = _models(policy)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.3, temperature=2.0)
    x, y = _data()
    y_pred = distiller(x, training=False)
    assert keras.backend.standardize_dtype(y_pred.dtype) == policy[6:]
    total = distiller.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    assert keras.backend.standardize_dtype(total.dtype) == "float32"
    results = distiller.get_metrics_result()
    assert {"student_loss", "distillation_loss"} <= set(results)
    for value in results.values():
        assert keras.backend.standardize_dtype(value.dtype) == "float32"

    s = to_numpy(y_pred).astype(np.float64)
    t = to_numpy(teacher(x, training=False))
    soft = np_kd(t, s, 2.0).mean()
    hard = np_sparse_ce(y, s).mean()
    np.testing.assert_allclose(to_numpy(results["distillation_loss"]), soft,
                               rtol=1e-5)
    np.testing.assert_allclose(to_numpy(results["student_loss"]), hard,
                               rtol=1e-5)
    np.testing.assert_allclose(to_numpy(total), 0.3 * hard + 0.7 * soft,
                               rtol=1e-5)
    # The same check on the objective alone, logits in the low precision.
    low = keras.ops.cast(t, policy[6:])
    value = kd_loss(low, y_pred, temperature=2.0)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(
        to_numpy(value), np_kd(to_numpy(low).astype(np.float64), s, 2.0),
        rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_student_close_to_float32_student(policy):
    """Same weights in float32 and mixed precision: the distillation loss
    agrees within the precision of the low-precision logits."""
    teacher, student = _models(policy)
    _, student32 = _models("float32")
    student32.set_weights(student.get_weights())
    x, y = _data()
    values = []
    for s in (student, student32):
        distiller = kd.Distiller(teacher, s)
        distiller.compile(optimizer="sgd", temperature=2.0)
        values.append(to_numpy(distiller.compute_loss(x=x, training=False)))
    rtol = 2e-2 if policy == "mixed_bfloat16" else 5e-3
    np.testing.assert_allclose(values[0], values[1], rtol=rtol)


@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("global_policy", [False, True])
def test_mixed_student_trains_with_loss_scaling(policy, global_policy):
    """fit() trains a mixed-precision student under a float32 teacher; with
    float16 the optimizer is a LossScaleOptimizer, whether the policy was set
    globally (Keras's own auto_scale_loss) or only on the student (keras-kd
    looks at the student's policy). bfloat16 needs no loss scaling."""
    teacher, student = _models(policy)
    if global_policy:
        keras.config.set_dtype_policy(policy)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        feature_losses=[kd.FitNet("teacher_hidden", "student_hidden")])
    is_scaled = isinstance(distiller.optimizer,
                           keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (policy == "mixed_float16")
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    x, y = _data(64)
    # The first step's terms are computed before its update: on the first
    # batch, they are the NumPy values on the initial low-precision logits.
    s0 = to_numpy(student(x[:16], training=False)).astype(np.float64)
    t0 = to_numpy(teacher(x[:16], training=False))
    recorder = _StepLosses()
    distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                  callbacks=[recorder])
    # (The compiled step computes the same low-precision logits; the terms
    # are float32 from there, hence float32 accuracy.)
    first = recorder.logs[0]
    np.testing.assert_allclose(first["student_loss"],
                               np_sparse_ce(y[:16], s0).mean(), rtol=1e-5)
    np.testing.assert_allclose(first["distillation_loss"],
                               np_kd(t0, s0, 4.0).mean(), rtol=1e-5)
    # Loss scaling stays out of the logged terms: they compose into the
    # logged loss (alpha = 0.1, FitNet weight 1) after every step.
    assert len(recorder.logs) == 4
    for logs in recorder.logs:
        np.testing.assert_allclose(
            logs["loss"], 0.1 * logs["student_loss"] + 0.9 *
            logs["distillation_loss"] + logs["fitnet_loss"], rtol=1e-5)
    for a, b in zip(teacher_before, teacher.get_weights()):
        assert np.array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in
               zip(student_before, student.get_weights()))
    for w in student.trainable_weights:
        assert keras.backend.standardize_dtype(w.dtype) == "float32"
    if is_scaled:
        assert int(to_numpy(distiller.optimizer.iterations)) == 4
        # Finite gradients: the dynamic scale stays at its initial value.
        assert float(to_numpy(distiller.optimizer.dynamic_scale)) == 2.0 ** 15


def test_auto_scale_loss_false_is_respected():
    teacher, student = _models("mixed_float16")
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer="sgd", auto_scale_loss=False)
    assert not isinstance(distiller.optimizer,
                          keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("policy", MIXED)
def test_mixed_teacher_float32_student(policy):
    """The reverse: a mixed-precision teacher, a float32 student."""
    teacher, student = _models("float32", teacher_policy=policy)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer="sgd", temperature=2.0,
                      feature_losses=[kd.FitNet("teacher_hidden",
                                                "student_hidden")])
    assert not isinstance(distiller.optimizer,
                          keras.optimizers.LossScaleOptimizer)
    x, _ = _data()
    t = teacher(x, training=False)
    assert keras.backend.standardize_dtype(t.dtype) == policy[6:]
    s = distiller(x, training=False)
    distiller.compute_loss(x=x, y_pred=s, training=False)
    result = distiller.get_metrics_result()["distillation_loss"]
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    np.testing.assert_allclose(
        to_numpy(result), np_kd(to_numpy(t), to_numpy(s), 2.0).mean(),
        rtol=1e-5)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    recorder = _StepLosses()
    distiller.fit(x, epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[recorder])
    # No labels: loss = KD + FitNet; the first step's KD is NumPy's on the
    # first batch before any update.
    first = recorder.logs[0]
    assert set(first) == {"loss", "distillation_loss", "fitnet_loss"}
    np.testing.assert_allclose(
        first["distillation_loss"],
        np_kd(to_numpy(t)[:16], to_numpy(s)[:16], 2.0).mean(), rtol=1e-5)
    for logs in recorder.logs:
        np.testing.assert_allclose(
            logs["loss"], logs["distillation_loss"] + logs["fitnet_loss"],
            rtol=1e-5)
    for a, b in zip(teacher_before, teacher.get_weights()):
        assert np.array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in
               zip(student_before, student.get_weights()))


# ----------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------
@pytest.mark.skipif(BACKEND not in ("jax", "tensorflow"),
                    reason="XLA compilation is tested on TensorFlow and JAX")
def test_jit_compile_matches_eager_step_losses():
    """jit_compile=True (XLA) trains with the same per-step losses as
    jit_compile=False, a FitNet feature pair (with adapter) included."""
    teacher, student = _models("float32")
    student_init = student.get_weights()
    x, y = _data(48)
    runs, adapter_init = [], None
    for jit in (False, True):
        student.set_weights(student_init)
        distiller = kd.Distiller(teacher, student)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            alpha=0.3, temperature=2.0, jit_compile=jit,
            feature_losses=[kd.FitNet("teacher_hidden", "student_hidden",
                                      weight=2.0)])
        adapter = distiller.feature_objectives[0].adapter
        if adapter_init is None:
            adapter_init = adapter.get_weights()
        adapter.set_weights(adapter_init)
        assert distiller.jit_compile is jit
        recorder = _StepLosses()
        distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                      callbacks=[recorder])
        runs.append((recorder.logs, student.get_weights()))
    (eager, eager_w), (xla, xla_w) = runs
    assert len(eager) == len(xla) == 3
    assert abs(eager[-1]["loss"] - eager[0]["loss"]) > 1e-3
    for step, (a, b) in enumerate(zip(eager, xla)):
        assert "fitnet_loss" in a
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6,
                                       err_msg=f"step {step}, {key}")
    for a, b in zip(eager_w, xla_w):
        np.testing.assert_allclose(b, a, atol=1e-5)
