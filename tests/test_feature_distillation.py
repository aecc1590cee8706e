"""FitNet feature distillation inside the Distiller: adapters, values, taps."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from tests.helpers import cnn, layer_features, mlp, to_numpy
from tests.references import fitnet as np_fitnet
from tests.references import kd as np_kd
from tests.references import resize_bilinear as np_resize_bilinear
from tests.references import sparse_ce as np_sparse_ce


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
    f_t = layer_features(teacher, "teacher_hidden", x)
    f_s = layer_features(student, "student_hidden", x)
    kernel, bias = (to_numpy(w).astype("float64")
                    for w in (hint.adapter.kernel, hint.adapter.bias))
    hint_np = np_fitnet(f_t, f_s @ kernel + bias).mean()
    hard = np_sparse_ce(y, to_numpy(student(x)))
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
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert history["hint2_loss"][-1] < history["hint2_loss"][0]
    for epoch in range(3):   # alpha 0.1, hint weights 1 and 2
        np.testing.assert_allclose(
            history["loss"][epoch],
            0.1 * history["student_loss"][epoch]
            + 0.9 * history["distillation_loss"][epoch]
            + history["hint1_loss"][epoch] + 2.0 * history["hint2_loss"][epoch],
            rtol=1e-5)
    # In inference, each hint is the NumPy FitNet through its adapter: the
    # 1×1 convolution, then BatchNorm with its (trained) moving statistics.
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0,
                              return_dict=True)
    for hint, layer in zip(pairs, ("conv1", "conv2")):
        conv, bn = hint.adapter.layers
        kernel = to_numpy(conv.kernel).astype("float64")[0, 0]
        gamma, beta, mean, var = (to_numpy(v).astype("float64") for v in (
            bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
        assert np.any(mean != 0.0)  # the statistics did move in fit
        z = layer_features(student, f"student_{layer}", x) @ kernel
        regressed = gamma * (z - mean) / np.sqrt(var + bn.epsilon) + beta
        np.testing.assert_allclose(
            logs[f"{hint.name}_loss"],
            np_fitnet(layer_features(teacher, f"teacher_{layer}", x),
                      regressed).mean(), rtol=1e-4, err_msg=hint.name)


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
    teacher, student = conv_model("t", 8), conv_model("s", 4)
    distiller = kd.Distiller(teacher, student)
    hint = kd.FitNet("t_p", "s_p", resize=True)
    distiller.compile("sgd", ce(), feature_losses=[hint])
    assert hint.adapter is None  # 4 channels on both sides
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    loss = distiller.compute_loss(x, None, distiller(x), training=False)
    # The student's 4×4 map is resized (bilinear) to the teacher's 8×8.
    s_map = layer_features(student, "s_p", x)
    assert s_map.shape == (4, 4, 4, 4)
    hint_np = np_fitnet(layer_features(teacher, "t_p", x),
                        np_resize_bilinear(s_map, (8, 8))).mean()
    logs = {k: float(to_numpy(v))
            for k, v in distiller.get_metrics_result().items()}
    np.testing.assert_allclose(logs["fitnet_loss"], hint_np, rtol=1e-5)
    # No labels: KD (T = 4) plus the hint, weight 1.
    soft = np_kd(to_numpy(teacher(x)), to_numpy(student(x)), 4.0).mean()
    np.testing.assert_allclose(to_numpy(loss), soft + hint_np, rtol=1e-5)


def test_rank_mismatch_names_the_fix():
    with pytest.raises(ValueError, match="ranks differ"):
        kd.Distiller(cnn(8, "teacher"), cnn(4, "student")).compile(
            "sgd", ce(), feature_losses=[kd.FitNet("teacher_conv2",
                                                   "student_pool")])
