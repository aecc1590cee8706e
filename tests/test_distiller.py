"""The Distiller: Hinton KD value, frozen teacher, logs, labels, sample weights."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from tests.helpers import cnn, mlp, to_numpy
from tests.references import kd as np_kd, reduce_term
from tests.references import sparse_ce as np_sparse_ce


def make_distiller(alpha=0.1, temperature=4.0, loss=True, **compile_kwargs):
    teacher, student = mlp(32, "teacher"), mlp(8, "student")
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer="sgd",
        loss=(keras.losses.SparseCategoricalCrossentropy(from_logits=True)
              if loss else None),
        metrics=["accuracy"], alpha=alpha, temperature=temperature,
        **compile_kwargs)
    return distiller


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_kd_loss_matches_numpy(alpha, temperature):
    distiller = make_distiller(alpha, temperature)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, 16)
    loss = to_numpy(distiller.compute_loss(x, ops.convert_to_tensor(y),
                                           distiller(x), training=False))
    t = to_numpy(distiller.teacher(x)).astype("float64")
    s = to_numpy(distiller.student(x)).astype("float64")
    expected = alpha * np_sparse_ce(y, s).mean() + (1 - alpha) * np_kd(
        t, s, temperature).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_kd_function_matches_numpy_per_sample():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(5, 7)) * 3
    s = rng.normal(size=(5, 7)) * 3
    for temperature in (0.5, 1.0, 3.0, 20.0):
        got = to_numpy(kd.objectives.kd_loss(t.astype("float32"),
                                             s.astype("float32"), temperature))
        # float32 against float64: a few ulps of the T² · KL product
        np.testing.assert_allclose(got, np_kd(t, s, temperature), rtol=5e-5,
                                   atol=1e-6)
    # identical logits: zero loss
    same = to_numpy(kd.objectives.kd_loss(t.astype("float32"),
                                          t.astype("float32"), 4.0))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)


def test_kd_is_float32_under_mixed_policy():
    t = np.random.rand(4, 10).astype("float16")
    s = np.random.rand(4, 10).astype("float16")
    out = kd.objectives.kd_loss(ops.convert_to_tensor(t), ops.convert_to_tensor(s))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    # float32 accuracy on the float16 inputs (a float16 softmax would be off
    # by ~1e-3).
    np.testing.assert_allclose(to_numpy(out), np_kd(t, s, 4.0), rtol=1e-4,
                               atol=1e-6)


def test_unlabeled_fit_trains_on_soft_loss_alone():
    distiller = make_distiller(alpha=0.5, temperature=2.0)
    x = np.random.rand(8, 64).astype("float32")
    loss = to_numpy(distiller.compute_loss(x, None, distiller(x),
                                           training=False))
    t = to_numpy(distiller.teacher(x)).astype("float64")
    s = to_numpy(distiller.student(x)).astype("float64")
    np.testing.assert_allclose(loss, np_kd(t, s, 2.0).mean(), rtol=1e-5)
    history = distiller.fit(x, epochs=2, batch_size=4, verbose=0)
    assert set(history.history) == {"loss", "distillation_loss"}
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_sample_weight_weighs_both_terms():
    alpha, temperature = 0.3, 3.0
    distiller = make_distiller(alpha, temperature)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 64)).astype("float32")
    y = rng.integers(0, 10, 6)
    w = np.array([0.0, 1.0, 2.0, 0.5, 0.0, 3.0], "float32")
    loss = to_numpy(distiller.compute_loss(
        x, ops.convert_to_tensor(y), distiller(x),
        sample_weight=ops.convert_to_tensor(w), training=False))
    t = to_numpy(distiller.teacher(x)).astype("float64")
    s = to_numpy(distiller.student(x)).astype("float64")
    # Keras's reduction: Σ l·w / N, N the batch size (zero weights count).
    hard = reduce_term(np_sparse_ce(y, s), w)
    soft = reduce_term(np_kd(t, s, temperature), w)
    np.testing.assert_allclose(loss, alpha * hard + (1 - alpha) * soft,
                               rtol=1e-5)


def test_sample_weight_and_unlabeled_samples_reduce_as_documented():
    """Σ l·w·m / Σ m (keras_kd/composition.py): the hard term counts the
    labeled samples only (m: label >= 0), the KD term every sample."""
    alpha, temperature = 0.4, 2.0
    distiller = make_distiller(alpha, temperature)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 64)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    y[[1, 4, 5]] = -1
    w = np.array([1.0, 2.0, 0.5, 0.0, 3.0, 1.0, 2.0, 1.5], "float32")
    loss = to_numpy(distiller.compute_loss(
        x, ops.convert_to_tensor(y), distiller(x),
        sample_weight=ops.convert_to_tensor(w), training=False))
    logs = {k: float(to_numpy(v))
            for k, v in distiller.get_metrics_result().items()}
    t = to_numpy(distiller.teacher(x))
    s = to_numpy(distiller.student(x))
    hard = reduce_term(np_sparse_ce(np.maximum(y, 0), s), w, mask=y >= 0)
    soft = reduce_term(np_kd(t, s, temperature), w)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(loss, alpha * hard + (1 - alpha) * soft,
                               rtol=1e-5)


def test_teacher_is_frozen_bit_identical_after_fit():
    teacher, student = cnn(8, "teacher"), cnn(4, "student")
    # Put non-trivial statistics in the teacher's BatchNorm.
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 32)
    teacher.fit(x, y, epochs=1, verbose=0)
    before = [to_numpy(v).copy() for v in teacher.weights]
    student_before = [to_numpy(v).copy() for v in student.trainable_weights]
    distiller = kd.Distiller(teacher, student)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), feature_losses=[kd.FitNet("teacher_conv2",
                                                      "student_conv2")])
    teacher_ids = {id(v) for v in teacher.weights}
    assert not teacher_ids & {id(v) for v in distiller.trainable_weights}
    assert all(not v.trainable for v in teacher.weights)
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = [to_numpy(v) for v in teacher.weights]
    assert any("moving_mean" in v.path for v in teacher.weights)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)
    # The student did move: 2 epochs of 4 steps, each changing every
    # trainable weight of the student.
    assert int(to_numpy(distiller.optimizer.iterations)) == 8
    for b, v in zip(student_before, student.trainable_weights):
        assert not np.allclose(b, to_numpy(v)), v.path


def test_logs_and_evaluate_names():
    distiller = make_distiller(feature_losses=[
        kd.FitNet("teacher_hidden", "student_hidden", weight=2.0)])
    x = np.random.rand(32, 64).astype("float32")
    y = np.random.randint(0, 10, 32)
    history = distiller.fit(x, y, validation_data=(x, y), epochs=1,
                            batch_size=8, verbose=0)
    names = {"loss", "student_loss", "distillation_loss", "fitnet_loss",
             "accuracy"}
    assert set(history.history) == names | {f"val_{n}" for n in names}
    result = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == names
    # loss = alpha * student + (1 - alpha) * distillation + w * fitnet
    np.testing.assert_allclose(
        result["loss"], 0.1 * result["student_loss"] + 0.9 *
        result["distillation_loss"] + 2.0 * result["fitnet_loss"], rtol=1e-4)


class CountCalls(keras.layers.Layer):
    """Identity layer that counts how often it really runs (in every backend)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="calls")

    def call(self, x):
        self.calls.assign(self.calls + 1.0)
        return x


def counted_mlp(name, width):
    inputs = keras.Input((8,))
    counter = CountCalls(name=f"{name}_count")
    h = keras.layers.Dense(width, activation="relu",
                           name=f"{name}_h1")(counter(inputs))
    h2 = keras.layers.Dense(width, name=f"{name}_h2")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h2), name=name), counter


@pytest.mark.parametrize("taps", [0, 1, 2])
def test_teacher_and_student_run_once_per_step(taps):
    teacher, t_count = counted_mlp("t", 12)
    student, s_count = counted_mlp("s", 4)
    pairs = [kd.FitNet("t_h1", "s_h1", name="hint1"),
             kd.FitNet("t_h2", "s_h2", name="hint2")][:taps]
    distiller = kd.Distiller(teacher, student)
    distiller.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), feature_losses=pairs)
    x = np.random.rand(40, 8).astype("float32")
    y = np.random.randint(0, 3, 40)
    distiller.fit(x, y, batch_size=10, epochs=1, verbose=0)  # + first-fit check
    t0, s0 = float(to_numpy(t_count.calls)), float(to_numpy(s_count.calls))
    distiller.fit(x, y, batch_size=10, epochs=2, verbose=0)
    assert float(to_numpy(s_count.calls)) - s0 == 8
    assert float(to_numpy(t_count.calls)) - t0 == 8
    # predict needs no teacher call
    t1 = float(to_numpy(t_count.calls))
    distiller.predict(x, batch_size=10, verbose=0)
    assert float(to_numpy(t_count.calls)) == t1


def test_predict_is_the_student():
    distiller = make_distiller()
    x = np.random.rand(5, 64).astype("float32")
    np.testing.assert_allclose(distiller.predict(x, verbose=0),
                               to_numpy(distiller.student(x)), rtol=1e-5,
                               atol=1e-6)


def test_multi_teacher_kd_averages_soft_targets():
    t1, t2, student = mlp(16, "t1"), mlp(24, "t2"), mlp(8, "student")
    distiller = kd.Distiller([t1, t2], student, teacher_weights=[1.0, 3.0])
    distiller.compile("sgd", loss=None, temperature=2.0)
    x = np.random.rand(6, 64).astype("float32")
    loss = to_numpy(distiller.compute_loss(x, None, distiller(x),
                                           training=False))
    expected = np_kd([to_numpy(t1(x)), to_numpy(t2(x))], to_numpy(student(x)),
                     2.0, weights=[1.0, 3.0]).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert not {id(v) for v in t1.weights + t2.weights} & {
        id(v) for v in distiller.trainable_weights}


def test_student_regularization_losses_count_and_teacher_ones_do_not():
    def regularized(width, name):
        inputs = keras.Input((64,))
        h = keras.layers.Dense(width, activation="relu",
                               kernel_regularizer=keras.regularizers.L2(0.1),
                               name=f"{name}_hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)

    teacher, student = regularized(16, "teacher"), regularized(8, "student")
    distiller = kd.Distiller(teacher, student)
    distiller.compile("sgd", loss=None, temperature=2.0)
    x = np.random.rand(4, 64).astype("float32")
    loss = to_numpy(distiller.compute_loss(x, None, distiller(x),
                                           training=False))
    t = to_numpy(teacher(x)).astype("float64")
    s = to_numpy(student(x)).astype("float64")
    kernel = to_numpy(student.get_layer("student_hidden").kernel)
    penalty = 0.1 * (kernel.astype("float64") ** 2).sum()
    np.testing.assert_allclose(loss, np_kd(t, s, 2.0).mean() + penalty,
                               rtol=1e-5)
