"""FitNet feature distillation inside the Distiller: adapters, values, taps."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from tests.helpers import cnn, mlp, to_numpy


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_vector_adapter_is_dense_and_value_matches_numpy():
    teacher, student = mlp(32, "teacher"), mlp(8, "student")
    distiller = kd.Distiller(teacher, student)
    hint = kd.FitNet("teacher_hidden", "student_hidden", weight=3.0)
    distiller.compile("sgd", ce(), distillation_loss=None,
                      feature_losses=[hint])
    assert isinstance(hint.adapter, keras.layers.Dense)
    assert hint.adapter.units == 32
    # adapter weights are trained with the student
    adapter_ids = {id(v) for v in hint.adapter.trainable_weights}
    assert adapter_ids <= {id(v) for v in distiller.trainable_weights}

    x = np.random.rand(6, 64).astype("float32")
    y = np.random.randint(0, 10, 6)
    loss = to_numpy(distiller.compute_loss(x, ops.convert_to_tensor(y),
                                           distiller(x), training=False))
    f_t = to_numpy(keras.Model(teacher.inputs,
                               teacher.get_layer("teacher_hidden").output)(x))
    f_s = to_numpy(keras.Model(student.inputs,
                               student.get_layer("student_hidden").output)(x))
    kernel, bias = (to_numpy(w) for w in hint.adapter.weights)
    hint_np = ((f_s @ kernel + bias - f_t) ** 2).mean()
    s = to_numpy(student(x)).astype("float64")
    z = s - s.max(-1, keepdims=True)
    hard = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(6), y]
    # no logit objective: the hard loss weighs alpha; hint weight 3
    np.testing.assert_allclose(loss, 0.1 * hard.mean() + 3.0 * hint_np,
                               rtol=1e-4)


def test_no_adapter_when_widths_agree_and_adapter_none_error():
    teacher, student = mlp(16, "teacher"), mlp(16, "student")
    hint = kd.FitNet("teacher_hidden", "student_hidden")
    kd.Distiller(teacher, student).compile("sgd", ce(), feature_losses=[hint])
    assert hint.adapter is None
    with pytest.raises(ValueError, match="adapter='auto'"):
        kd.Distiller(mlp(16, "teacher"), mlp(8, "student")).compile(
            "sgd", ce(), feature_losses=[
                kd.FitNet("teacher_hidden", "student_hidden", adapter="none")])


def test_feature_map_adapter_is_conv_bn_and_several_pairs_train():
    teacher, student = cnn(16, "teacher"), cnn(4, "student")
    distiller = kd.Distiller(teacher, student)
    pairs = [kd.FitNet("teacher_conv1", "student_conv1", name="hint1"),
             kd.FitNet("teacher_conv2", "student_conv2", weight=2.0,
                       name="hint2")]
    distiller.compile("adam", ce(), feature_losses=pairs)
    conv = pairs[0].adapter.layers[0]
    assert isinstance(conv, keras.layers.Conv2D) and conv.kernel_size == (1, 1)
    assert isinstance(pairs[0].adapter.layers[1],
                      keras.layers.BatchNormalization)
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 32)
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert {"hint1_loss", "hint2_loss"} <= set(history.history)
    assert history.history["hint2_loss"][-1] < history.history["hint2_loss"][0]


def test_spatial_mismatch_is_refused_or_resized():
    def conv_model(name, size):
        x = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, padding="same", name=f"{name}_c")(x)
        if size == 4:
            h = keras.layers.MaxPooling2D(name=f"{name}_p")(h)
        else:
            h = keras.layers.Identity(name=f"{name}_p")(h)
        out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
        return keras.Model(x, out, name=name)

    with pytest.raises(ValueError, match="resize=True"):
        kd.Distiller(conv_model("t", 8), conv_model("s", 4)).compile(
            "sgd", ce(), feature_losses=[kd.FitNet("t_p", "s_p")])
    distiller = kd.Distiller(conv_model("t", 8), conv_model("s", 4))
    hint = kd.FitNet("t_p", "s_p", resize=True)
    distiller.compile("sgd", ce(), feature_losses=[hint])
    x = np.random.rand(4, 8, 8, 1).astype("float32")
    loss = distiller.compute_loss(x, None, distiller(x), training=False)
    assert np.isfinite(to_numpy(loss))


def test_rank_mismatch_names_the_fix():
    with pytest.raises(ValueError, match="ranks differ"):
        kd.Distiller(cnn(8, "teacher"), cnn(4, "student")).compile(
            "sgd", ce(), feature_losses=[kd.FitNet("teacher_conv2",
                                                   "student_pool")])
