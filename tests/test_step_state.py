"""What a training step touches: the student and adapters, not the teachers.

A cached (offline) step must cost what the student's step costs whatever the
teacher's size, so the Distiller keeps the frozen teachers out of the lists
Keras reads at each step (trainable weights, losses, loss clearing, PyTorch's
``zero_grad``) and, while no teacher can run, out of the state JAX passes
through each compiled step. These tests pin down that nothing is lost by it.
"""

import functools

import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import cnn, mlp, to_numpy

pytestmark = pytest.mark.filterwarnings("ignore:The teacher")

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 64)).astype("float32")
    return x, rng.integers(0, 10, n).astype("int32")


def _regularized(name, width=16):
    """An MLP with a kernel regularizer and an activity regularizer."""
    x = keras.Input((64,))
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_hidden",
                           kernel_regularizer=keras.regularizers.L2(0.1))(x)
    h = keras.layers.ActivityRegularization(l1=0.01)(h)
    return keras.Model(x, keras.layers.Dense(10)(h), name=name)


def test_trainable_lists_are_keras_default_without_the_teacher():
    teacher = cnn(8, "teacher", shape=(8, 8, 1))
    d = kd.Distiller(teacher=teacher, student=cnn(4, "student"))
    d.compile(optimizer="sgd", loss=SCE, feature_losses=[
        kd.FitNet("teacher_conv1", "student_conv1")])
    default_weights = keras.Model.trainable_weights.fget(d)
    default_variables = keras.Model.trainable_variables.fget(d)
    # Same variables, same order as Keras's own walk (optimizer slots and
    # checkpoints line up), and the FitNet adapter is among them.
    assert [id(v) for v in d.trainable_weights] == [
        id(v) for v in default_weights]
    assert [id(v) for v in d.trainable_variables] == [
        id(v) for v in default_variables]
    adapter = d.feature_objectives[0].trainable_weights
    assert adapter and all(any(a is v for v in d.trainable_weights)
                           for a in adapter)
    assert not any(v is w for v in d.trainable_weights
                   for w in teacher.weights)
    d.trainable = False
    assert d.trainable_weights == [] and d.trainable_variables == []


def test_losses_are_the_students_and_do_not_pile_up():
    teacher = _regularized("teacher", 32)
    student = _regularized("student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(optimizer="sgd", loss=SCE)
    x, _ = _data(8)
    for _ in range(3):  # each call clears the previous call's losses
        d(x, training=True)
    teacher(x)
    # One kernel penalty and one activity penalty: the student's, once.
    assert len(d.losses) == 2
    kernel = to_numpy(student.get_layer("student_hidden").kernel)
    hidden = np.maximum(x @ kernel + to_numpy(
        student.get_layer("student_hidden").bias), 0)
    expected = 0.1 * np.sum(kernel ** 2) + 0.01 * np.abs(hidden).sum() / 8
    got = sum(float(to_numpy(loss)) for loss in d.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_regularization_enters_the_loss_in_fit():
    x, y = _data(16)
    d = kd.Distiller(teacher=mlp(32, "teacher"), student=_regularized(
        "student"))
    d.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCE, alpha=0.5)
    logs = d.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    terms = 0.5 * logs["student_loss"][0] + 0.5 * logs["distillation_loss"][0]
    penalty = logs["loss"][0] - terms
    kernel = to_numpy(d.student.get_layer("student_hidden").kernel)
    assert penalty > 0.1 * np.sum(kernel ** 2) * 0.99


def _state_sizes(d, x, targets, **kwargs):
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["train"] = len(self.model.non_trainable_variables)

        def on_test_begin(self, logs=None):
            seen["test"] = len(self.model.non_trainable_variables)

    d.fit(x, targets, epochs=1, batch_size=8, verbose=0, callbacks=[Record()],
          **kwargs)
    return seen


def test_teacher_state_leaves_the_step_only_while_no_teacher_runs():
    x, y = _data()
    teacher = cnn(8, "teacher", shape=(8, 8, 1))
    xi = x.reshape(-1, 8, 8, 1)
    d = kd.Distiller(teacher=teacher, student=cnn(4, "student"))
    d.compile(optimizer="sgd", loss=SCE)
    full = len(d.non_trainable_variables)
    n_teacher = len(teacher.variables)
    cached = {"teacher_logits": to_numpy(teacher(xi)), "labels": y}
    assert _state_sizes(d, xi, y) == {"train": full}
    sizes = _state_sizes(d, xi, cached, validation_data=(xi, y))
    # Cached training leaves the teacher out; live validation brings it back.
    assert sizes == {"train": full - n_teacher, "test": full}
    sizes = _state_sizes(d, xi, y, validation_data=(xi, cached))
    assert sizes == {"train": full, "test": full - n_teacher}
    assert len(d.non_trainable_variables) == full  # restored after fit
    # The teacher was neither purged nor changed, and still runs.
    np.testing.assert_allclose(to_numpy(teacher(xi)),
                               cached["teacher_logits"], rtol=1e-6)


def test_cached_fit_evaluate_predict_agree_with_live():
    x, y = _data(24)
    teacher = mlp(32, "teacher")
    logits = to_numpy(teacher(x))
    cached = {"teacher_logits": logits, "labels": y}
    d = kd.Distiller(teacher=teacher, student=mlp(8, "student"))
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCE,
              metrics=["accuracy"])
    d.fit(x, cached, batch_size=8, epochs=2, verbose=0)
    live = d.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    offline = d.evaluate(x, cached, batch_size=8, verbose=0, return_dict=True)
    assert sorted(live) == sorted(offline)
    for key in live:
        np.testing.assert_allclose(offline[key], live[key], rtol=1e-5,
                                   err_msg=key)
    np.testing.assert_allclose(d.predict(x, batch_size=8, verbose=0),
                               to_numpy(d.student(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(teacher(x)), logits, rtol=1e-6)


def test_logged_terms_compose_into_the_loss_over_uneven_batches():
    # 20 samples in batches of 8, 8 and 4: each term is averaged over samples
    # as Keras averages the loss, so the epoch figures compose exactly.
    x, y = _data(20)
    d = kd.Distiller(teacher=mlp(32, "teacher"), student=mlp(8, "student"))
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCE, alpha=0.3,
              feature_losses=[kd.FitNet("teacher_hidden", "student_hidden",
                                        weight=0.5)])
    h = d.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    for epoch in range(2):
        composed = (0.3 * h["student_loss"][epoch]
                    + 0.7 * h["distillation_loss"][epoch]
                    + 0.5 * h["fitnet_loss"][epoch])
        np.testing.assert_allclose(composed, h["loss"][epoch], rtol=1e-5)
    d.reset_metrics()
    assert all(float(to_numpy(v)) == 0.0
               for v in d.get_metrics_result().values())


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="zero_grad is PyTorch's")
def test_zero_grad_clears_the_students_gradients():
    d = kd.Distiller(teacher=mlp(32, "teacher"), student=mlp(8, "student"))
    d.compile(optimizer="sgd", loss=SCE)
    x, y = _data(8)
    loss = d.compute_loss(x, keras.ops.convert_to_tensor(y), d(x))
    loss.backward()
    kernel = d.student.trainable_weights[0].value
    assert kernel.grad is not None and float(kernel.grad.abs().sum()) > 0
    d.zero_grad()
    assert all(v.value.grad is None for v in d.trainable_weights)


def test_every_layer_is_built_after_compile():
    # Keras's train_on_batch re-traces the whole model whenever a layer
    # reports built=False: objectives must be built when compile returns.
    d = kd.Distiller(teacher=cnn(8, "teacher"), student=cnn(4, "student"))
    d.compile(optimizer="sgd", loss=SCE, distillation_loss="dkd",
              feature_losses=[kd.FitNet("teacher_conv1", "student_conv1"),
                              kd.RKD("teacher_pool", "student_pool"),
                              kd.AttentionTransfer("teacher_conv2",
                                                   "student_conv2")])
    unbuilt = [layer.name for layer in d._flatten_layers() if not layer.built]
    assert unbuilt == []


class _Recorder(keras.layers.Layer):
    """Passes its input through and notes that it ran (eager backends)."""

    def __init__(self, log, tag, **kwargs):
        super().__init__(**kwargs)
        # A bound method, not the list: Keras would track (copy) a list.
        self.note = functools.partial(log.append, tag)

    def call(self, x):
        self.note()
        return x


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="the order of an eager PyTorch step")
def test_torch_step_runs_the_teacher_first_with_the_same_loss():
    log = []

    def model(width, tag):
        x = keras.Input((64,))
        h = keras.layers.Dense(width, activation="relu")(_Recorder(log, tag)(x))
        return keras.Model(x, keras.layers.Dense(10)(h), name=tag)

    teacher, student = model(32, "teacher"), model(8, "student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCE, alpha=0.3,
              temperature=2.0)
    x, y = _data(8)
    d.train_on_batch(x, y)  # builds the step (Keras traces the student once)
    t = to_numpy(teacher(x)).astype("float64")
    s = to_numpy(student(x)).astype("float64")
    log.clear()
    logs = d.train_on_batch(x, y, return_dict=True)
    # The teacher ran before the student, once each, with no autograd graph.
    assert log == ["teacher", "student"]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    hard = -log_softmax(s)[np.arange(8), y].mean()
    p = np.exp(log_softmax(t / 2.0))
    soft = 4.0 * (p * (log_softmax(t / 2.0) - log_softmax(s / 2.0))).sum(
        -1).mean()
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * hard + 0.7 * soft,
                               rtol=1e-5)
    assert all(v.value.grad is None for v in teacher.weights)
    assert d.student.weights[0].value.grad is not None


def test_cached_logits_of_several_teachers_train_as_live():
    # {"teacher_logits": [t1, t2]} keeps one tensor per teacher (weighted
    # mean of their softened outputs), as the live step computes them.
    x, y = _data(24)
    t1, t2 = mlp(16, "t1"), mlp(24, "t2")
    cached = {"teacher_logits": [to_numpy(t1(x)), to_numpy(t2(x))],
              "labels": y}

    def fitted(targets):
        keras.utils.set_random_seed(3)
        d = kd.Distiller([t1, t2], mlp(8, "student"), teacher_weights=[1, 3])
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCE,
                  temperature=2.0)
        history = d.fit(x, targets, batch_size=8, epochs=2, shuffle=False,
                        verbose=0).history
        return history, [to_numpy(w) for w in d.student.weights]

    (h_live, w_live), (h_cached, w_cached) = fitted(y), fitted(cached)
    assert sorted(h_live) == sorted(h_cached)
    for key in h_live:
        np.testing.assert_allclose(h_cached[key], h_live[key], rtol=1e-5,
                                   err_msg=key)
    for a, b in zip(w_live, w_cached):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="the Distiller's own step is PyTorch's")
def test_torch_step_equals_keras_step():
    """The PyTorch ``train_step`` (teachers first, the student's own call,
    the label mask skipped when every CPU label is >= 0) gives the logs and
    weights of Keras's ``train_step`` on a twin Distiller, step after step:
    regularization, an adapter, a batch with unlabeled samples (label -1)
    and batches without."""
    x, y = _data(24, seed=4)
    y_partial = y.copy()
    y_partial[[1, 5, 6]] = -1
    teacher = _regularized("teacher", width=32)

    def twin():
        keras.utils.set_random_seed(5)
        d = kd.Distiller(teacher=teacher, student=_regularized("student"))
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCE, alpha=0.4,
                  temperature=2.0, metrics=["accuracy"], feature_losses=[
                      kd.FitNet("teacher_hidden", "student_hidden")])
        # Losses the adapter adds while the loss is computed, which each
        # step must clear as Keras's does.
        d.feature_objectives[0].adapter.activity_regularizer = \
            keras.regularizers.L2(0.01)
        return d

    ours, reference = twin(), twin()
    for a, b in zip(ours.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for labels in (y, y_partial, y):
        data = (keras.ops.convert_to_tensor(x),
                keras.ops.convert_to_tensor(labels))
        logs = ours.train_step(data)
        expected = keras.Model.train_step(reference, data)
        assert sorted(logs) == sorted(expected)
        for key in expected:
            np.testing.assert_allclose(to_numpy(logs[key]),
                                       to_numpy(expected[key]), rtol=1e-6,
                                       err_msg=key)
        for a, b in zip(ours.trainable_weights, reference.trainable_weights):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6,
                                       atol=1e-7)
    # Three steps moved the student: the comparison is not between no-ops.
    assert not np.allclose(to_numpy(ours.student(x)),
                           to_numpy(twin().student(x)))


def test_label_mask_is_left_out_only_for_labels_seen_complete():
    """Only eager PyTorch CPU labels are read to drop the mask; labels with
    an unlabeled sample, NumPy labels and other backends' tensors keep it."""
    full = keras.ops.convert_to_tensor(np.array([0, 3, 9], "int32"))
    partial = keras.ops.convert_to_tensor(np.array([0, -1, 9], "int32"))
    read = keras.backend.backend() == "torch"
    labels, mask = kd.Distiller._label_mask(full)
    assert (mask is None) is read
    np.testing.assert_array_equal(to_numpy(labels), [0, 3, 9])
    if mask is not None:
        np.testing.assert_array_equal(to_numpy(mask), [1.0, 1.0, 1.0])
    labels, mask = kd.Distiller._label_mask(partial)
    np.testing.assert_array_equal(to_numpy(labels), [0, 0, 9])
    np.testing.assert_array_equal(to_numpy(mask), [1.0, 0.0, 1.0])
    labels, mask = kd.Distiller._label_mask(np.array([0, 3, 9], "int32"))
    np.testing.assert_array_equal(to_numpy(mask), [1.0, 1.0, 1.0])
