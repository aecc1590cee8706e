"""kd.search with feature_pairs="auto" and `keras-kd search --feature-pairs
auto`: the pairs kd.pair_layers proposes, each tried as a FitNet hint."""

import dataclasses
import functools
import json

import keras
import pytest

import keras_kd as kd
from keras_kd.search import STUDENT_ALONE, SearchResult
from keras_kd.search.tuning import auto_feature_pairs

pytest.importorskip("keras_tuner")

EPOCHS = 2
SEED = 3


def mlp(width, name):
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu", name=f"{name}_hidden"),
        keras.layers.Dense(10, name=f"{name}_logits")], name=name)


def make_student():
    return mlp(8, "student")


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_val, y_val) = kd.data.load_digits()
    return (x[:64], y[:64]), (x_val[:48], y_val[:48]), (x[:300], y[:300])


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)
    model = mlp(32, "teacher")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = digits[2]
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


def key(row):
    return (row["objective"], row["temperature"], row["alpha"],
            None if row["features"] is None else tuple(row["features"]))


def by_hand(teacher, digits, feature_losses):
    """KD T=4 alpha=0.5 plus ``feature_losses`` without keras-tuner, as a
    trial trains it: max val_accuracy over the epochs."""
    (x, y), validation, _ = digits
    keras.utils.set_random_seed(SEED)
    distiller = kd.Distiller(teacher, make_student())
    distiller.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.5, temperature=4.0,
        distillation_loss="kd", feature_losses=feature_losses)
    history = distiller.fit(x, y, validation_data=validation, epochs=EPOCHS,
                            batch_size=16, verbose=0)
    return max(history.history["val_accuracy"])


def test_auto_feature_pairs_are_pair_layers_proposals(teacher, digits):
    (x, _), _, _ = digits
    proposed = kd.pair_layers(teacher, make_student(), x).pairs
    assert auto_feature_pairs("auto", teacher, make_student(), x) == [
        (p["teacher"], p["student"]) for p in proposed] == [
        ("teacher_hidden", "student_hidden")]
    pairs = [("teacher_hidden", "student_hidden")]
    assert auto_feature_pairs(pairs, teacher, None, x) is pairs
    assert auto_feature_pairs(None, teacher, None, x) is None


@pytest.mark.one_backend("jax")
def test_search_with_auto_feature_pairs_scores_fitnet_as_by_hand(
        teacher, digits):
    (x, y), validation, _ = digits
    result = kd.search(teacher, make_student, x, y, validation,
                       objectives=("kd",), temperatures=(4,), alphas=(0.5,),
                       feature_pairs="auto", epochs=EPOCHS, batch_size=16,
                       seed=SEED)
    assert sorted((key(r) for r in result.ranking), key=repr) == sorted([
        (None, None, 1.0, None), ("kd", 4.0, 0.5, None),
        ("kd", 4.0, 0.5, ("teacher_hidden", "student_hidden"))], key=repr)
    row = next(r for r in result.ranking if r["features"])
    assert row["setting"] == ("kd T=4 alpha=0.5 + features "
                              "teacher_hidden->student_hidden")
    expected = by_hand(teacher, digits, [
        kd.FitNet("teacher_hidden", "student_hidden", weight=100.0)])
    assert row["score"] == pytest.approx(expected, abs=1e-6)
    # compile_kwargs rebuilds it with the same weight
    as_best = dataclasses.replace(result, best={k: row[k] for k in (
        "objective", "temperature", "alpha", "features")})
    (fitnet,) = as_best.compile_kwargs()["feature_losses"]
    assert isinstance(fitnet, kd.FitNet) and fitnet.weight == 100.0
    assert fitnet.teacher_layer == "teacher_hidden"


@pytest.mark.one_backend("torch")
@pytest.mark.filterwarnings("ignore:The teacher")   # 1 epoch: wiring only
def test_keras_kd_search_feature_pairs_auto_tries_fitnet(tmp_path, capsys):
    from keras_kd.app.launcher import main

    code = main(["search", "--quick", "--teacher", "small_mlp", "--student",
                 "small_mlp", "--objectives", "kd", "--temperatures", "4",
                 "--alphas", "0.5", "--feature-pairs", "auto", "--epochs",
                 "1", "--teacher-epochs", "1", "--max-train", "64",
                 "--max-test", "32", "--output", str(tmp_path / "out"),
                 "--run-name", "q"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "q" / "search.json").read_text())
    assert report["config"]["feature_pairs"] == "auto"
    # small_mlp has one hidden layer: the grid is the student alone, kd and
    # kd + FitNet on the pair (3 trials, the --quick budget).
    assert sorted(r["setting"] for r in report["ranking"]) == [
        "kd T=4 alpha=0.5", "kd T=4 alpha=0.5 + features "
        "teacher_dense1->student_dense1", STUDENT_ALONE]
    out = capsys.readouterr().out
    if report["best"]["features"]:
        assert report["run_command"] is None
        assert ("feature_losses=[kd.FitNet('teacher_dense1', "
                "'student_dense1', weight=100)]") in out
    else:
        assert f"To train it: {report['run_command']}" in out


def test_a_feature_setting_is_trained_in_python_not_keras_kd_run():
    from keras_kd.app.parser import build_parser
    from keras_kd.app.search_command import train_line

    args = build_parser().parse_args(["search", "--feature-pairs", "auto"])
    result = SearchResult(
        best=dict(objective="dist", temperature=1.0, alpha=0.1,
                  features=["t_dense1", "s_dense1"]), best_score=0.9,
        ranking=[], baseline_score=0.8, student=None, metric="val_accuracy",
        direction="max",
        feature_objective=functools.partial(kd.FitNet, weight=100.0))
    command, how = train_line(args, result)
    assert command is None
    assert how.startswith("in Python (keras-kd run distils logits only)")
    assert ("distillation_loss='dist', alpha=0.1, temperature=1, "
            "feature_losses=[kd.FitNet('t_dense1', 's_dense1', "
            "weight=100)]") in how
    logits_only = dataclasses.replace(result, best=dict(
        result.best, features=None))
    command, how = train_line(args, logits_only)
    assert command == how and command.startswith("keras-kd run ")
    assert command.endswith("--objective dist --alpha 0.1 --temperature 1")
