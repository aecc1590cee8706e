"""Bad input gets a clear error that names the fix."""

import warnings

import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import mlp, to_numpy
from tests.references import kd as np_kd
from tests.references import log_softmax
from tests.references import sparse_ce as np_sparse_ce


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_different_class_counts():
    with pytest.raises(ValueError, match="Give the student's last layer 10"):
        kd.Distiller(mlp(16, "teacher"), mlp(8, "student", classes=7))


def test_different_input_shapes():
    with pytest.raises(ValueError, match="Make the input shapes agree"):
        kd.Distiller(mlp(16, "teacher"), mlp(8, "student", inputs=32))


def test_unknown_layer_name_lists_the_names():
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    with pytest.raises(ValueError, match="No layer named 'nope'.*student_hidden"):
        distiller.compile("sgd", ce(), feature_losses=[
            kd.FitNet("teacher_hidden", "nope")])


class SubclassedStudent(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
        self.out = keras.layers.Dense(10)

    def call(self, x):
        return self.out(self.hidden(x))


def test_feature_taps_of_a_subclassed_model_are_refused():
    student = SubclassedStudent(name="student")
    student.build((None, 64))
    distiller = kd.Distiller(mlp(16, "teacher"), student)
    with pytest.raises(ValueError, match="functional API"):
        distiller.compile("sgd", ce(), feature_losses=[
            kd.FitNet("teacher_hidden", "hidden")])


def test_logits_kd_works_with_a_subclassed_student():
    student = SubclassedStudent(name="student")  # unbuilt: built by fit
    distiller = kd.Distiller(mlp(16, "teacher"), student)
    distiller.compile("adam", ce(), metrics=["accuracy"])
    x = np.random.rand(16, 64).astype("float32")
    y = np.random.randint(0, 10, 16)
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    np.testing.assert_allclose(distiller.predict(x, verbose=0),
                               to_numpy(student(x)), rtol=1e-5, atol=1e-6)
    # The loss is the documented one: 0.1·CE + 0.9·KD at T = 4.
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0,
                              return_dict=True)
    t, s = to_numpy(distiller.teacher(x)), to_numpy(student(x))
    hard, soft = np_sparse_ce(y, s).mean(), np_kd(t, s, 4.0).mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.1 * hard + 0.9 * soft,
                               rtol=1e-5)


def test_unbuilt_subclassed_student_with_wrong_classes_fails_at_first_step():
    class Wrong(SubclassedStudent):
        def __init__(self):
            super().__init__(name="student")
            self.out = keras.layers.Dense(3)

    distiller = kd.Distiller(mlp(16, "teacher"), Wrong())
    distiller.compile("sgd", ce())
    with pytest.raises(ValueError, match="Give the student's last layer 10"):
        distiller.fit(np.random.rand(8, 64).astype("float32"),
                      np.zeros(8, "int32"), verbose=0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), 1e4,
                                         np.float32(101.0), 1e-30, 0.009])
def test_temperature_must_be_positive_and_bounded(temperature):
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distiller.compile("sgd", ce(), temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd.KD(temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd.objectives.kd_loss(np.zeros((1, 3)), np.zeros((1, 3)), temperature)


def test_a_temperature_below_the_bound_is_refused_with_the_reason():
    # Issue #20: temperature=1e-30 gave a distillation loss of exactly 0.0:
    # T² = 1e-60 underflows float32 (while T²·KL ≈ T·margin -> 0 anyway).
    with pytest.raises(ValueError, match=r"at least 0.01 .*got 1e-30.*one-hot"
                       r".*vanishes with T, reaching 0.0 when T² underflows"):
        kd.Distiller(mlp(16, "teacher"), mlp(8, "student")).compile(
            "sgd", ce(), temperature=1e-30)
    # The bound itself is computed to float64's value.
    rng = np.random.default_rng(0)
    t, s = (3 * rng.normal(size=(64, 10)).astype("float32") for _ in "ts")
    ours = to_numpy(kd.objectives.kd_loss(t, s, 0.01))
    # T²·Σ p (log p − log q) in float64, in the log domain (q underflows)
    log_p, log_q = (log_softmax(z.astype("float64") / 0.01) for z in (t, s))
    ref = 0.01 ** 2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)
    assert ours.max() > 0.01


def test_kd_loss_keeps_its_digits_up_to_the_largest_temperature():
    # float32 T²·KL against float64: the bound is where it still holds.
    rng = np.random.default_rng(0)
    t, s = (3 * rng.normal(size=(64, 10)).astype("float32") for _ in "ts")
    for temperature in (1.0, 20.0, 100.0):
        ours = to_numpy(kd.objectives.kd_loss(t, s, temperature))
        ref = np_kd(t.astype("float64"), s.astype("float64"), temperature)
        np.testing.assert_allclose(ours, ref, rtol=2e-3)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_must_be_in_unit_interval(alpha):
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        distiller.compile("sgd", ce(), alpha=alpha)


def test_unbuilt_teacher_is_refused():
    teacher = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not built.*Train it"):
        kd.Distiller(teacher, mlp(8, "student"))


def test_unbuilt_student_with_feature_taps_is_refused():
    student = keras.Sequential([keras.layers.Dense(8, name="h"),
                                keras.layers.Dense(10)], name="student")
    distiller = kd.Distiller(mlp(16, "teacher"), student)
    with pytest.raises(ValueError, match="student 'student' is not built"):
        distiller.compile("sgd", ce(), feature_losses=[
            kd.FitNet("teacher_hidden", "h")])


def test_untrained_teacher_warns_and_trained_teacher_does_not():
    x = np.random.rand(200, 64).astype("float32")
    y = x[:, :10].argmax(-1).astype("int32")
    teacher = mlp(64, "teacher")
    distiller = kd.Distiller(teacher, mlp(8, "student"))
    distiller.compile("sgd", ce())
    with pytest.warns(UserWarning, match="no better than always predicting.*train it first"):
        distiller.fit(x, y, epochs=1, verbose=0)
    teacher = mlp(64, "teacher")  # the first one was frozen by its Distiller
    teacher.compile("adam", ce())
    teacher.fit(x, y, epochs=150, batch_size=50, verbose=0)
    accuracy = (to_numpy(teacher(x)).argmax(-1) == y).mean()
    assert accuracy > 0.5
    distiller = kd.Distiller(teacher, mlp(8, "student"))
    distiller.compile("sgd", ce())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        distiller.fit(x, y, epochs=1, verbose=0)


def test_a_teacher_that_outputs_probabilities_is_refused():
    x = np.random.rand(64, 64).astype("float32")
    y = x[:, :10].argmax(-1).astype("int32")
    inputs = keras.Input((64,))
    probabilities = keras.Model(inputs, keras.layers.Dense(
        10, activation="softmax")(inputs), name="softmax_teacher")
    distiller = kd.Distiller(probabilities, mlp(8, "student"))
    distiller.compile("sgd", ce())
    student_before = [to_numpy(w) for w in distiller.student.weights]
    with pytest.raises(ValueError, match="outputs probabilities.*"
                       "activation=None.*classifier_activation=None"):
        distiller.fit(x, y, epochs=1, verbose=0)
    for before, after in zip(student_before, distiller.student.weights):
        np.testing.assert_array_equal(before, to_numpy(after))  # no step ran
    # Logits pass the check (an untrained teacher only warns).
    logits = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    logits.compile("sgd", ce())
    with pytest.warns(UserWarning, match="no better than"):
        logits.fit(x, y, epochs=1, verbose=0)


def test_a_softmax_teacher_is_refused_on_a_transfer_set_without_labels():
    # Issue #18: the check ran only when the first batch had labels.
    x = np.random.rand(64, 64).astype("float32")
    inputs = keras.Input((64,))
    probabilities = keras.Model(inputs, keras.layers.Dense(
        10, activation="softmax")(inputs), name="softmax_teacher")
    distiller = kd.Distiller(probabilities, mlp(8, "student"))
    distiller.compile("sgd", None)
    student_before = [to_numpy(w) for w in distiller.student.weights]
    with pytest.raises(ValueError, match="'softmax_teacher' outputs "
                       "probabilities.*activation=None"):
        distiller.fit(x, epochs=1, verbose=0)
    for before, after in zip(student_before, distiller.student.weights):
        np.testing.assert_array_equal(before, to_numpy(after))  # no step ran
    # A logits teacher trains on the same transfer set.
    logits = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    logits.compile("sgd", None)
    history = logits.fit(x, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_model_with_several_outputs_is_refused_with_the_fix():
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(16)(inputs)
    two_heads = keras.Model(inputs, [keras.layers.Dense(3)(hidden),
                                     keras.layers.Dense(10)(hidden)],
                            name="two_heads")
    with pytest.raises(ValueError, match=r"'two_heads' has 2 outputs.*"
                       r"kd.Distiller\(\[teacher_a, teacher_b\], student\).*"
                       r"keras.Model\(teacher.inputs, teacher.outputs\[i\]\)"):
        kd.Distiller(two_heads, mlp(8, "student"))
    with pytest.raises(ValueError, match=r"student 'two_heads' has 2 outputs"):
        kd.Distiller(mlp(16, "teacher"), two_heads)
    # The fix the message names works.
    head = keras.Model(two_heads.inputs, two_heads.outputs[1])
    kd.Distiller(head, mlp(8, "student"))


def test_a_student_that_is_or_shares_the_teacher_is_refused():
    model = mlp(16, "model")
    with pytest.raises(ValueError, match="same model 'model'.*clone_model"):
        kd.Distiller(model, model)
    assert model.trainable  # refused before anything was frozen
    inputs = keras.Input((64,))
    shared = keras.layers.Dense(16, name="shared_dense")
    teacher = keras.Model(inputs, keras.layers.Dense(10)(shared(inputs)))
    s_in = keras.Input((64,))
    student = keras.Model(s_in, keras.layers.Dense(10)(shared(s_in)))
    with pytest.raises(ValueError, match="share 2 weight.*shared_dense"):
        kd.Distiller(teacher, student)
    assert shared.trainable and teacher.trainable


def test_teacher_check_leaves_a_shuffled_training_pipeline_alone():
    # Each pass over a shuffling tf.data pipeline draws its next order: the
    # check reads the validation data, so a Distiller with alpha = 1 trains
    # exactly as the student alone does on the same pipeline.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((64, 64)).astype("float32")
    y = rng.integers(0, 10, 64).astype("int32")

    def pipeline():
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            64, seed=1).batch(16)

    student = mlp(8, "student")
    init = to_numpy(student.weights[0]).copy()
    alone = keras.models.clone_model(student)
    alone.set_weights(student.get_weights())
    alone.compile(keras.optimizers.SGD(0.1), ce())
    alone.fit(pipeline(), epochs=2, verbose=0)
    distiller = kd.Distiller(mlp(16, "teacher"), student)
    distiller.compile(keras.optimizers.SGD(0.1), ce(), alpha=1.0)
    with pytest.warns(UserWarning, match="no better than always predicting"):  # from (x, y)
        distiller.fit(pipeline(), epochs=2, verbose=0, validation_data=(x, y))
    for a, b in zip(alone.weights, student.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(to_numpy(student.weights[0]), init)  # it trained


def test_bad_objectives_in_compile():
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    with pytest.raises(ValueError, match="Unknown distillation_loss 'kl'"):
        distiller.compile("sgd", ce(), distillation_loss="kl")
    with pytest.raises(ValueError, match="feature_losses takes feature"):
        distiller.compile("sgd", ce(), feature_losses=[kd.KD()])
    with pytest.raises(ValueError, match="distinct names"):
        distiller.compile("sgd", ce(), feature_losses=[
            kd.FitNet("teacher_hidden", "student_hidden"),
            kd.FitNet("teacher_hidden", "student_hidden")])
    with pytest.raises(TypeError, match="must be a keras.Model"):
        kd.Distiller(lambda x: x, mlp(8, "student"))


def _fitted(teacher=None, x=None, y=None, optimizer="sgd", **fit_kwargs):
    distiller = kd.Distiller(teacher or mlp(16, "teacher"), mlp(8, "student"))
    distiller.compile(optimizer, ce())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untrained teacher
        return distiller, distiller.fit(x, y, verbose=0, **fit_kwargs)


def test_labels_beyond_the_class_count_and_string_labels_are_refused():
    x = np.random.rand(300, 64).astype("float32")
    y = np.random.randint(0, 10, 300)
    y[290] = 10  # beyond the first batch: all NumPy labels are read
    with pytest.raises(ValueError, match=r"go up to 10, but the models have "
                       r"10 classes \(0 to 9\).*11 units"):
        _fitted(x=x, y=y)
    with pytest.raises(ValueError, match=r"str.* values.*np.unique\(y, "
                       r"return_inverse=True\)"):
        _fitted(x=x, y=np.array([f"c{v}" for v in y]))
    y[290] = -1  # negative labels mark unlabeled elements: allowed
    _fitted(x=x, y=y)


def test_nan_inputs_are_refused_before_fit_naming_the_rows():
    x = np.random.rand(300, 64).astype("float32")
    y = np.random.randint(0, 10, 300)
    x[290, 5] = np.nan  # past the first batch that the teacher check reads
    x[295, 0] = np.inf
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    distiller.compile("sgd", ce())
    before = [to_numpy(w) for w in distiller.student.weights]
    with pytest.raises(ValueError, match=r"inputs hold NaN or infinite values"
                       r" in 2 row\(s\), first rows \[290, 295\] of x"):
        distiller.fit(x, y, verbose=0)
    for b, after in zip(before, distiller.student.weights):
        np.testing.assert_array_equal(b, to_numpy(after))  # no step ran


def test_nan_inputs_from_a_dataset_stop_fit_naming_the_batch():
    tf = pytest.importorskip("tensorflow")
    teacher = mlp(16, "teacher")
    x = np.random.rand(96, 64).astype("float32")
    y = np.random.randint(0, 10, 96)
    x[70, 5] = np.nan
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    message = kd.checks.explain_non_finite([teacher], data, None, epoch=0)
    assert message.startswith("The inputs hold NaN or infinite values "
                              "(epoch 1): batch 2 of the dataset, rows [6]")
    # Inside fit the guard gives the same message when the loss turns NaN.
    x[70, 5] = np.inf
    teacher.get_layer("teacher_hidden").activation = keras.activations.linear
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(FloatingPointError, match=r"batch 2 of the dataset, "
                       r"rows \[6\]"):
        _fitted(teacher, data, epochs=2)


def test_nan_teacher_outputs_stop_fit_naming_the_teacher_and_rows():
    teacher = mlp(16, "teacher")
    teacher.get_layer("teacher_logits").kernel.assign(
        np.full((16, 10), 1e30, "float32"))  # finite, overflows on big inputs
    x = np.random.rand(300, 64).astype("float32")
    y = np.random.randint(0, 10, 300)
    x[[280, 299]] *= 1e9  # finite inputs, infinite logits
    with pytest.raises(FloatingPointError, match=r"teacher 'teacher' outputs "
                       r"NaN or infinite logits \(epoch 1\) on rows "
                       r"\[280, 299\] of x, whose inputs are finite"):
        _fitted(teacher, x, y, epochs=2, batch_size=64)


def test_a_diverging_student_is_named_as_the_cause():
    x = np.random.rand(64, 64).astype("float32")
    y = x[:, :10].argmax(-1)
    with pytest.raises(FloatingPointError, match=r"inputs and the teacher's "
                       r"outputs are finite: the student diverged at learning "
                       r"rate 1e\+30. Lower the learning rate"):
        _fitted(x=x, y=y, optimizer=keras.optimizers.SGD(1e30), epochs=2)
    # A finite run is left alone and trains all its epochs.
    _, history = _fitted(x=x, y=y, epochs=2)
    assert len(history.history["loss"]) == 2


def test_a_diverging_student_is_named_with_its_learning_rate():
    # Issue #25: with --learning-rate 1e30 the message said "reload its
    # trained weights"; it names the student's learning rate, and a teacher
    # with NaN weights is said to have diverged in its own training.
    x = np.random.rand(64, 64).astype("float32")
    y = x[:, :10].argmax(-1)
    with pytest.raises(FloatingPointError, match=r"the student diverged at "
                       r"learning rate 1e\+30\. Lower the learning rate"):
        _fitted(x=x, y=y, optimizer=keras.optimizers.Adam(1e30), epochs=2)
    teacher = mlp(16, "teacher")
    teacher.get_layer("teacher_logits").kernel.assign(
        np.full((16, 10), np.nan, "float32"))
    message = kd.checks.explain_non_finite([teacher], x, y)
    assert "diverged while it was trained" in message
    assert "Retrain it with a lower learning rate" in message


def test_the_nan_diagnosis_of_a_repeated_data_set_ends():
    # Issue #9: fit(ds.repeat(), steps_per_epoch=4) with a diverging student
    # read the endless data set forever to explain the NaN loss.
    tf = pytest.importorskip("tensorflow")
    import signal

    def too_long(*_):
        raise TimeoutError("the NaN diagnosis read ds.repeat() for 120 s")

    x = np.random.rand(64, 64).astype("float32")
    y = x[:, :10].argmax(-1)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    try:
        with pytest.raises(FloatingPointError, match=r"finite \(in the first "
                           r"4 batches read\): the student diverged at "
                           r"learning rate 1e\+30"):
            _fitted(x=data, optimizer=keras.optimizers.SGD(1e30),
                    steps_per_epoch=4, epochs=2, shuffle=False)
        # Called directly, without the epoch's steps: a stated bound.
        message = kd.checks.explain_non_finite([mlp(16, "teacher")], data,
                                               None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert f"in the first {kd.checks.SCANNED_BATCHES} batches read" in message


def test_integer_one_hot_labels_train_with_categorical_crossentropy():
    x = np.random.rand(64, 64).astype("float32")
    labels = np.random.randint(0, 10, 64)
    one_hot = np.eye(10, dtype="int64")[labels]  # integer one-hot, as Keras takes
    distiller = kd.Distiller(mlp(16, "teacher"), mlp(8, "student"))
    distiller.compile("sgd", keras.losses.CategoricalCrossentropy(
        from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untrained teacher
        distiller.fit(x, one_hot, epochs=1, verbose=0)
    logs = distiller.evaluate(x, one_hot, verbose=0, return_dict=True)
    expected = np_sparse_ce(labels, to_numpy(distiller.student(x))).mean()
    np.testing.assert_allclose(logs["student_loss"], expected, rtol=1e-4)


@pytest.mark.parametrize("weights", ["ab", ["a", "b"], [1.0, float("nan")],
                                     [1.0, float("inf")], [1.0], [-1.0, 2.0],
                                     [0.0, 0.0], 3.0])
def test_bad_teacher_weights_are_one_clear_error(weights):
    t1, t2 = mlp(16, "t1"), mlp(16, "t2")
    with pytest.raises(ValueError, match=r"teacher_weights must hold one "
                       r"non-negative weight per teacher \(2\).*e\.g\. \[0\.5"):
        kd.Distiller([t1, t2], mlp(8, "student"), teacher_weights=weights)


def test_good_teacher_weights_are_kept_as_floats():
    from keras_kd.checks import check_teacher_weights
    assert check_teacher_weights((1, 3), count=2) == [1.0, 3.0]
    assert check_teacher_weights(np.array([0.25, 0.75])) == [0.25, 0.75]
