"""Training schemes: deep mutual learning, born-again networks, TAKD."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.schemes import (MutualLearning, born_again, distill_chain,
                              teacher_assistant_chain)
from tests.helpers import mlp, to_numpy
from tests.references_logit_schemes import dml as np_dml


# Training schemes, built on Distiller.fit: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 64)).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def weights_of(model):
    return [to_numpy(w).copy() for w in model.weights]


@pytest.mark.parametrize("T,w", [(1.0, 1.0), (3.0, 0.5)])
def test_mutual_learning_loss_matches_numpy(T, w):
    students = [mlp(8, "a"), mlp(12, "b"), mlp(6, "c")]
    dml = MutualLearning(students)
    dml.compile(optimizer="sgd", temperature=T, kl_weight=w)
    x, y = data(16)
    logs = dml.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = [to_numpy(s(x)).astype("float64") for s in students]
    expected = np_dml(logits, y, T, w)
    for s, value in zip(students, expected):
        np.testing.assert_allclose(logs[f"{s.name}_loss"], value, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], sum(expected), rtol=1e-4)
    accuracy = [np.mean(np.argmax(l, -1) == y) for l in logits]
    np.testing.assert_allclose(
        [logs[f"{s.name}_accuracy"] for s in students], accuracy)


def test_mutual_learning_step_is_each_students_own_distillation_step():
    """One DML step moves student a exactly as a Distiller step on
    0.5·CE + 0.5·KD from the frozen peer b, at twice the learning rate:
    b's prediction is a constant target in a's loss, and a's loss alone
    moves a."""
    lr = 0.1
    a, b = mlp(8, "a"), mlp(12, "b")
    a_copy, b_copy = mlp(8, "a_copy"), mlp(12, "b_copy")
    a_copy.set_weights(a.get_weights())
    b_copy.set_weights(b.get_weights())
    dml = MutualLearning([a, b])
    dml.compile(optimizer=keras.optimizers.SGD(lr), temperature=2.0)
    x, y = data(16)
    dml.fit(x, y, epochs=1, batch_size=16, verbose=0)

    distiller = kd.Distiller(teacher=b_copy, student=a_copy)
    distiller.compile(
        optimizer=keras.optimizers.SGD(2 * lr), alpha=0.5, temperature=2.0,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for got, want in zip(a.weights, a_copy.weights):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-4,
                                   atol=1e-6)
    moved = any(np.abs(to_numpy(got) - to_numpy(start)).max() > 1e-6
                for got, start in zip(b.weights, b_copy.weights))
    assert moved   # b trained too, in the same step


def test_mutual_learning_refuses_bad_students():
    with pytest.raises(ValueError, match="two or more"):
        MutualLearning([mlp(8, "a")])
    with pytest.raises(ValueError, match="distinct names"):
        MutualLearning([mlp(8, "a"), mlp(8, "a")])


def test_chains_link_each_model_to_the_previous_one():
    teacher = mlp(16, "teacher")
    teacher.trainable = False   # as a Distiller leaves a teacher
    t_weights = weights_of(teacher)
    x, y = data(16)
    models, histories = born_again(
        teacher, generations=2, x=x, y=y,
        compile_options=dict(optimizer=keras.optimizers.SGD(0.1)),
        epochs=1, batch_size=16, verbose=0)
    assert [m.name for m in models] == ["teacher_gen1", "teacher_gen2"]
    assert histories[0].model.teacher is teacher
    assert histories[1].model.teacher is models[0]
    assert histories[1].model.optimizer is not histories[0].model.optimizer
    assert all(m.trainable and len(m.trainable_weights) == len(
        teacher.weights) for m in models)
    for a, w in zip(t_weights, teacher.weights):   # the teacher never moves
        np.testing.assert_array_equal(a, to_numpy(w))
    # Same architecture, fresh weights.
    assert [w.shape for w in models[0].weights] == [
        w.shape for w in teacher.weights]
    assert np.abs(to_numpy(models[0].weights[0]) - t_weights[0]).max() > 1e-3

    models, histories = teacher_assistant_chain(
        teacher, mlp(12, "assistant"), mlp(4, "student"), x, y,
        compile_options=dict(optimizer="sgd", distillation_loss="dkd"),
        epochs=1, batch_size=16, verbose=0)
    assert [m.name for m in models] == ["assistant", "student"]
    assert histories[1].model.teacher is models[0]
    assert histories[1].model.distillation_objective.name == "dkd"
    with pytest.raises(ValueError, match="generations"):
        born_again(teacher, generations=0)
    with pytest.raises(ValueError, match="at least one"):
        distill_chain(teacher, [])


@pytest.mark.one_backend("jax")  # compiled steps: the cheapest backend here
def test_teacher_assistant_chain_and_mutual_learning_learn_a_task():
    """End to end: a learnable task, a trained teacher, a chain through an
    assistant, and two students learning from each other (full-batch
    steps, few of them: the point is that each link learns)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = np.argmax(x[:, :4], -1).astype("int32")
    fit = dict(epochs=25, batch_size=256, verbose=0)

    def net(width, name):
        return mlp(width, name, classes=4)

    teacher = net(32, "teacher")
    teacher.compile(optimizer=keras.optimizers.Adam(0.05),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True))
    teacher.fit(x, y, **fit)
    models, _ = teacher_assistant_chain(
        teacher, [net(16, "assistant")], net(8, "student"), x, y,
        compile_options=dict(optimizer=keras.optimizers.Adam(0.05),
                             alpha=0.5), **fit)
    for model in models:
        assert np.mean(np.argmax(to_numpy(model(x)), -1) == y) > 0.8

    dml = MutualLearning([net(8, "a"), net(8, "b")])
    dml.compile(optimizer=keras.optimizers.Adam(0.05))
    logs = dml.fit(x, y, **fit).history
    assert logs["a_accuracy"][-1] > 0.8 and logs["b_accuracy"][-1] > 0.8
