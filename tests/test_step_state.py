"""What a training step touches: the student and adapters, not the teachers.

A cached (offline) step must cost what the student's step costs whatever the
teacher's size, so the Distiller keeps the frozen teachers out of the lists
Keras reads at each step (trainable weights, losses, loss clearing, PyTorch's
``zero_grad``) and, while no teacher can run, out of the state JAX passes
through each compiled step. These tests pin down that nothing is lost by it.
"""


import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import cnn, mlp, to_numpy
from tests.references import kd as np_kd

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


def test_loss_adds_the_students_penalties_once_and_no_teacher_ones():
    # Both models carry a kernel and an activity regularizer; the teacher's
    # must not enter the loss (it is frozen), the student's must, once, and
    # repeated calls must not pile them up.
    teacher = _regularized("teacher", 32)
    student = _regularized("student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(optimizer="sgd", loss=None, temperature=2.0)
    x, _ = _data(8)
    for _ in range(3):
        loss = to_numpy(d.compute_loss(x, None, d(x, training=True)))
    kernel = to_numpy(student.get_layer("student_hidden").kernel)
    hidden = np.maximum(x @ kernel + to_numpy(
        student.get_layer("student_hidden").bias), 0)
    penalty = 0.1 * np.sum(kernel ** 2) + 0.01 * np.abs(hidden).sum() / 8
    soft = np_kd(to_numpy(teacher(x)), to_numpy(student(x)), 2.0).mean()
    np.testing.assert_allclose(loss, soft + penalty, rtol=1e-4)


def test_regularization_enters_the_loss_in_fit():
    x, y = _data(16)
    d = kd.Distiller(teacher=mlp(32, "teacher"), student=_regularized(
        "student"))
    d.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCE, alpha=0.5)
    logs = d.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    terms = 0.5 * logs["student_loss"][0] + 0.5 * logs["distillation_loss"][0]
    penalty = logs["loss"][0] - terms
    # SGD(0.0): the weights stay as they are, so the step's penalty is the
    # kernel's L2 plus the activity L1 of the hidden layer (its sum over the
    # batch of 16, divided by it, as Keras adds activity regularization).
    hidden = d.student.get_layer("student_hidden")
    kernel = to_numpy(hidden.kernel).astype("float64")
    h = np.maximum(x @ kernel + to_numpy(hidden.bias), 0.0)
    expected = 0.1 * np.sum(kernel ** 2) + 0.01 * np.abs(h).sum() / 16
    np.testing.assert_allclose(penalty, expected, rtol=1e-4)


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


def test_every_layer_is_built_after_compile():
    # Keras's train_on_batch re-traces the whole model whenever a layer
    # reports built=False: objectives must be built when compile returns.
    d = kd.Distiller(teacher=cnn(8, "teacher"), student=cnn(4, "student"))
    d.compile(optimizer="sgd", loss=SCE, distillation_loss="dkd",
              feature_losses=[kd.FitNet("teacher_conv1", "student_conv1"),
                              kd.RKD("teacher_pool", "student_pool"),
                              kd.AttentionTransfer("teacher_conv2",
                                                   "student_conv2")])
    objectives = [d.distillation_objective] + d.feature_objectives
    adapters = [o.adapter for o in objectives if getattr(o, "adapter", None)]
    assert adapters and all(layer.built for layer in objectives + adapters)


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


class _FailsWhenTraining(keras.layers.Layer):
    """Identity that raises while ``armed`` in a training call: inside the
    traced step of ``fit`` (Keras builds the model with ``training=False``)."""

    armed = True

    def call(self, x, training=None):
        if training and self.armed:
            raise RuntimeError("raised inside the training step")
        return x


def test_an_error_inside_a_step_leaves_the_models_readable_and_trainable():
    # JAX's trainer empties the variables while its compiled steps run; an
    # error escaping the first step used to leave them empty: get_weights()
    # raised TypeError and every later fit failed (issue 28 #1).
    x, y = _data()
    inputs = keras.Input((64,))
    fails = _FailsWhenTraining()
    student = keras.Model(inputs, keras.layers.Dense(10)(fails(
        keras.layers.Dense(8, activation="relu")(inputs))), name="student")
    teacher = mlp(16, "teacher")
    distiller = kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), SCE)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    with pytest.raises(RuntimeError, match="inside the training step"):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for before, after in ((teacher_before, teacher.get_weights()),
                          (student_before, student.get_weights())):
        for b, a in zip(before, after):
            np.testing.assert_array_equal(b, a)
    fails.armed = False
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, a)
               for b, a in zip(student_before, student.get_weights()))
    for b, a in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)


class _FailsOnBatchesOf(keras.layers.Layer):
    """Identity that raises when traced on a batch of ``size`` rows."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, x, training=None):
        if training and x.shape[0] == self.size:
            raise RuntimeError("raised inside a later step")
        return x


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="JAX's trainer empties the variables during fit")
def test_an_error_inside_a_later_step_keeps_the_trained_state():
    # The last, smaller batch is traced anew and raises there: the weights
    # are those the first two steps left, as a fit on those batches gives.
    x, y = _data(40)

    def student(size):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(10)(
            _FailsOnBatchesOf(size)(hidden)), name="student")

    teacher = mlp(16, "teacher")
    teacher_before = teacher.get_weights()
    failing, reference = student(8), student(-1)
    trained = []
    for model, data in ((failing, (x, y)), (reference, (x[:32], y[:32]))):
        distiller = kd.Distiller(teacher, model)
        distiller.compile(keras.optimizers.SGD(0.1), SCE)
        if model is failing:
            with pytest.raises(RuntimeError, match="inside a later step"):
                distiller.fit(*data, batch_size=16, shuffle=False, verbose=0)
        else:
            distiller.fit(*data, batch_size=16, shuffle=False, verbose=0)
        trained.append(model.get_weights())
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for b, a in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)


class _FailsWhileArmed(keras.layers.Layer):
    """Identity that raises in any traced call while ``armed``."""

    armed = False

    def call(self, x, training=None):
        if self.armed:
            raise RuntimeError("raised inside the step")
        return x


def test_an_error_inside_evaluate_or_predict_leaves_the_models_readable():
    x, y = _data()
    inputs = keras.Input((64,))
    fails = _FailsWhileArmed()
    student = keras.Model(inputs, keras.layers.Dense(10)(fails(
        keras.layers.Dense(8, activation="relu")(inputs))), name="student")
    teacher = mlp(16, "teacher")
    distiller = kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), SCE)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    before = [w.copy() for w in distiller.get_weights()]
    fails.armed = True
    for call in (lambda: distiller.evaluate(x, y, batch_size=8, verbose=0),
                 lambda: distiller.predict(x, batch_size=8, verbose=0)):
        with pytest.raises(RuntimeError, match="inside the step"):
            call()
        for b, a in zip(before, distiller.get_weights()):
            np.testing.assert_array_equal(b, a)
    fails.armed = False
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = np.mean([np.mean(np_kd(to_numpy(teacher(x[i:i + 8])),
                                      to_numpy(student(x[i:i + 8])), 4.0))
                        for i in range(0, 40, 8)])
    np.testing.assert_allclose(logs["distillation_loss"], expected,
                               rtol=1e-4)
