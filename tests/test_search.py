"""keras_kd.search and `keras-kd search`: the grid, the ranking, determinism."""

import dataclasses
import glob
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.search import STUDENT_ALONE, grid_size, wilson_interval

pytest.importorskip("keras_tuner")

EPOCHS = 2
SEED = 3


# `kd.search`, a driver of fit() runs: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _mlp(width, name):
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu", name=f"{name}_hidden"),
        keras.layers.Dense(10, name=f"{name}_logits")], name=name)


def _student():
    return _mlp(8, "student")


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_val, y_val) = kd.data.load_digits()
    return (x[:64], y[:64]), (x_val[:48], y_val[:48]), (x[:300], y[:300])


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)
    model = _mlp(32, "teacher")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = digits[2]
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    return model


def _search_in(workdir, teacher, digits, **kwargs):
    """Runs kd.search with ``workdir`` as the working directory and a
    temporary directory of its own (``tempfile.tempdir``, so that searches
    in other test processes cannot show in it); returns the result and the
    search folders left in that temporary directory."""
    (x, y), validation, _ = digits
    private_tmp = tempfile.mkdtemp(prefix="test-search-tmp-")
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, private_tmp
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = kd.search(teacher, _student, x, y, validation,
                           epochs=EPOCHS, batch_size=16, seed=SEED, **kwargs)
    finally:
        os.chdir(cwd)
        tempfile.tempdir = saved_tempdir
    left = set(glob.glob(os.path.join(private_tmp, "keras-kd-search-*")))
    shutil.rmtree(private_tmp, ignore_errors=True)
    return result, left


GRID = dict(objectives=("kd", "hard"), temperatures=(1, 4), alphas=(0.5,))


@pytest.fixture(scope="module")
def grid(tmp_path_factory, teacher, digits):
    workdir = tmp_path_factory.mktemp("search_cwd")
    result, left_in_tmp = _search_in(workdir, teacher, digits, **GRID)
    return result, workdir, left_in_tmp


def _key(row):
    return (row["objective"], row["temperature"], row["alpha"],
            None if row["features"] is None else tuple(row["features"]))


def _by_hand(teacher, digits, objective, temperature, alpha):
    """The setting trained without keras-tuner: max val_accuracy over epochs."""
    (x, y), validation, _ = digits
    keras.utils.set_random_seed(SEED)
    distiller = kd.Distiller(teacher, _student())
    distiller.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=alpha, temperature=temperature,
        distillation_loss=objective)
    history = distiller.fit(x, y, validation_data=validation, epochs=EPOCHS,
                            batch_size=16, verbose=0)
    return max(history.history["val_accuracy"])


def test_the_grid_holds_exactly_the_requested_settings_and_the_baseline(grid):
    result, _, _ = grid
    keys = [_key(r) for r in result.ranking]
    # "hard" ignores the temperature: one trial, not one per temperature.
    assert sorted(keys, key=repr) == sorted([
        (None, None, 1.0, None), ("kd", 1.0, 0.5, None),
        ("kd", 4.0, 0.5, None), ("hard", None, 0.5, None)], key=repr)
    assert len(keys) == grid_size(**GRID) == 4
    baseline = [r for r in result.ranking if r["objective"] is None]
    assert [r["setting"] for r in baseline] == [STUDENT_ALONE]
    assert result.baseline_score == baseline[0]["score"]


def test_the_best_is_the_top_of_the_ranking(grid, digits):
    result, _, _ = grid
    scores = [r["score"] for r in result.ranking]
    assert scores == sorted(scores, reverse=True)
    assert result.best_score == max(scores)
    assert result.best == {k: result.ranking[0][k] for k in
                           ("objective", "temperature", "alpha", "features")}
    assert result.metric == "val_accuracy" and result.direction == "max"
    # The returned student holds the best epoch's weights: its accuracy on
    # the validation data is the best score.
    x_val, y_val = digits[1]
    predicted = np.argmax(keras.ops.convert_to_numpy(
        result.student(x_val)), axis=-1)
    assert np.mean(predicted == y_val) == pytest.approx(result.best_score,
                                                        abs=1e-6)


@pytest.mark.parametrize("objective, temperature, alpha", [
    ("kd", 4.0, 0.5), (None, None, 1.0)])
def test_a_score_equals_retraining_the_setting_by_hand(
        grid, teacher, digits, objective, temperature, alpha):
    # Exact re-training: every trial seeds keras.utils.set_random_seed(seed)
    # before make_student(), so the same code by hand gives the same score.
    result, _, _ = grid
    row = next(r for r in result.ranking
               if _key(r) == (objective, temperature, alpha, None))
    expected = _by_hand(teacher, digits, objective or "kd", temperature or 1.0,
                        alpha)
    assert row["score"] == pytest.approx(expected, abs=1e-6)


def test_wilson_interval_equals_the_hand_computation():
    # 90 of 100: p = 0.9, z = 1.959964, z^2 = 3.841459;
    # centre = (0.9 + 0.019207) / 1.038415 = 0.885203,
    # half = 1.959964 / 1.038415 * sqrt(0.0009 + 0.000096036) = 0.059568.
    low, high = wilson_interval(90, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)
    # 0 of 10: centre = half = (z^2 / 20) / (1 + z^2 / 10) = 0.138766.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277533, abs=1e-6)
    # Element-wise on arrays; symmetric about 1/2.
    lows, highs = wilson_interval(np.array([10, 90]), 100)
    assert lows[0] == pytest.approx(1 - highs[1], abs=1e-12)
    with pytest.raises(ValueError, match=r"wilson_interval\(90, 100\)"):
        wilson_interval(101, 100)


def test_each_row_holds_the_wilson_interval_of_its_accuracy(grid):
    result, _, _ = grid
    n = result.validation_examples
    assert n == 48  # the digits fixture's validation examples
    table = result.table()
    assert "95% interval (n=48)" in table
    for row in result.ranking:
        right = round(row["score"] * n)
        assert right == pytest.approx(row["score"] * n, abs=1e-4)
        low, high = row["interval"]
        assert (low, high) == pytest.approx(wilson_interval(right, n))
        assert low < row["score"] < high or row["score"] in (0.0, 1.0)
        assert (f"| {row['score']:.4f} | [{low:.4f}, {high:.4f}] |"
                in table)
    assert json.loads(json.dumps(result.to_dict()))["ranking"][0][
        "interval"] == result.ranking[0]["interval"]


def _trains_one_step(teacher, digits, compile_kwargs):
    (x, y), _, _ = digits
    keras.utils.set_random_seed(SEED)
    distiller = kd.Distiller(teacher, _student())
    distiller.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], **compile_kwargs)
    before = [np.array(w) for w in distiller.student.get_weights()]
    history = distiller.fit(x[:16], y[:16], epochs=1, batch_size=16,
                            verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = distiller.student.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    return distiller


def _with_best(result, **best):
    full = dict(objective=None, temperature=None, alpha=1.0, features=None)
    full.update(best)
    return dataclasses.replace(result, best=full)


@pytest.mark.parametrize("best, expected", [
    (dict(objective="kd", temperature=4.0, alpha=0.5),
     dict(alpha=0.5, temperature=4.0, distillation_loss="kd")),
    # "hard" ignores the temperature: 1.0 is given.
    (dict(objective="hard", alpha=0.1),
     dict(alpha=0.1, temperature=1.0, distillation_loss="hard")),
    # The student alone: the hard-label loss only.
    (dict(), dict(alpha=1.0, temperature=1.0, distillation_loss="kd")),
])
def test_compile_kwargs_and_run_args_give_the_best_setting(
        grid, teacher, digits, best, expected):
    from keras_kd.app import parser as app_parser

    result = _with_best(grid[0], **best)
    kwargs = result.compile_kwargs()
    assert kwargs == dict(expected, feature_losses=[])
    distiller = _trains_one_step(teacher, digits, kwargs)
    assert distiller.alpha == pytest.approx(expected["alpha"])
    args = app_parser.build_parser().parse_args(["run", *result.run_args()])
    assert (args.objective, args.alpha, args.temperature) == (
        expected["distillation_loss"], expected["alpha"],
        expected["temperature"])
    assert app_parser.run_option_error(args) is None


def test_the_grid_best_compiles_as_found(grid, teacher, digits):
    result, _, _ = grid
    kwargs = result.compile_kwargs()
    if result.best["objective"] is None:
        assert kwargs["alpha"] == 1.0
    else:
        assert (kwargs["distillation_loss"], kwargs["alpha"]) == (
            result.best["objective"], result.best["alpha"])
    _trains_one_step(teacher, digits, kwargs)


def test_compile_kwargs_build_the_feature_loss_and_run_args_refuse_it(
        grid, teacher, digits):
    pair = ["teacher_hidden", "student_hidden"]
    result = _with_best(grid[0], objective="kd", temperature=4.0, alpha=0.5,
                        features=pair)
    kwargs = result.compile_kwargs()
    (feature,) = kwargs["feature_losses"]
    assert isinstance(feature, kd.FitNet)
    _trains_one_step(teacher, digits, kwargs)
    with pytest.raises(ValueError, match=r"\*\*result.compile_kwargs\(\)"):
        result.run_args()
    assert result.to_dict()["run_args"] is None


def test_nothing_is_left_in_the_working_directory_or_tmp(grid):
    _, workdir, left_in_tmp = grid
    assert os.listdir(workdir) == []
    assert left_in_tmp == set()


@pytest.mark.one_backend("tensorflow")
def test_directory_keeps_the_trials(tmp_path, teacher, digits):
    from keras_kd import ownership

    one = dict(objectives=("kd",), temperatures=(4,), alphas=(0.5,),
               directory=str(tmp_path / "trials"))
    result, _ = _search_in(tmp_path, teacher, digits, **one)
    assert os.listdir(tmp_path) == ["trials"]
    project = tmp_path / "trials" / "search"
    trial_dirs = glob.glob(str(project / "trial_*"))
    assert len(trial_dirs) == len(result.ranking) == 2
    assert ownership.is_owned(project, "search")
    # A second search replaces keras-kd's own project (not resumed: its
    # trials run again, with the same scores).
    (project / "stale.txt").write_text("old")
    again, _ = _search_in(tmp_path, teacher, digits, **one)
    assert not (project / "stale.txt").exists()
    assert len(glob.glob(str(project / "trial_*"))) == 2
    assert [r["score"] for r in again.ranking] == [
        r["score"] for r in result.ranking]
    assert ownership.is_owned(project, "search")


def test_a_users_search_folder_is_never_deleted(tmp_path, teacher, digits,
                                                nothing_trains):
    # Issue 28 #6: directory=d deleted a user's d/search (keras-tuner's
    # overwrite=True) before the first trial.
    users = tmp_path / "search"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    (x, y), validation, _ = digits
    with pytest.raises(FileExistsError, match=r"search.*did not write.*"
                       r"new or empty folder"):
        kd.search(teacher, _student, x, y, validation,
                  directory=str(tmp_path))
    assert sorted(os.listdir(users)) == ["notes.txt"]
    assert (users / "notes.txt").read_text() == "mine"


@pytest.mark.one_backend("torch")
def test_random_search_with_feature_pairs_runs_max_trials_baseline_first(
        tmp_path, teacher, digits):
    pairs = [("teacher_hidden", "student_hidden")]
    size = grid_size(("kd",), (1, 4), (0.5,), pairs)
    assert size == 1 + 2 * 2  # (T) x (features or none) + the student alone
    result, _ = _search_in(tmp_path, teacher, digits, objectives=("kd",),
                           temperatures=(1, 4), alphas=(0.5,),
                           feature_pairs=pairs, max_trials=3)
    rows = sorted(result.ranking, key=lambda r: r["trial"])
    assert len(rows) == 3
    assert rows[0]["setting"] == STUDENT_ALONE
    keys = [_key(r) for r in rows[1:]]
    assert len(set(keys)) == 2
    allowed = {("kd", t, 0.5, f) for t in (1.0, 4.0)
               for f in (None, tuple(pairs[0]))}
    assert set(keys) <= allowed


@pytest.fixture
def nothing_trains(monkeypatch):
    """Makes any training step of a trial fail loudly: a check that came
    only after training began would show as keras-tuner's "consecutive
    failures" error, not as the expected one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a trial started training")

    monkeypatch.setattr(kd.Distiller, "fit", refuse)


SHARED_STUDENT = []


def _shared_student():
    if not SHARED_STUDENT:
        SHARED_STUDENT.append(_student())
    return SHARED_STUDENT[0]


def _shared_layers():
    if not SHARED_STUDENT:
        SHARED_STUDENT.append(_student())
    hidden = SHARED_STUDENT[0].layers[0]
    return keras.Sequential([keras.Input((64,)), hidden,
                             keras.layers.Dense(10)])


def _unnamed_student():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(
        8, activation="relu"), keras.layers.Dense(10)])


def _cnn_student():
    inputs = keras.Input((64,))
    h = keras.layers.Reshape((8, 8, 1))(inputs)
    h = keras.layers.Conv2D(4, 3, name="student_conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(objectives=("kd", "nope")), ValueError, "one of"),
    (dict(objectives="kd"), ValueError, r"objectives=\('kd', 'dist'\)"),
    (dict(alphas=(0.5, 1.0)), ValueError, "student alone"),
    (dict(temperatures=(0,)), ValueError, "> 0"),
    (dict(temperatures=(1, 1)), ValueError, "list each once"),
    (dict(feature_pairs=[("nope", "student_hidden")]), ValueError,
     "teacher has no layer 'nope'"),
    (dict(feature_pairs="all"), ValueError, "feature_pairs='auto'"),
    (dict(feature_pairs="auto", make_student=_unnamed_student), ValueError,
     r"layer names change at each call.*name='student_hidden'"),
    (dict(feature_pairs="auto", make_student=_cnn_student), ValueError,
     r"feature_pairs='auto': pair_layers found no .* by hand"),
    # Issue 28 #25: refused before anything trains.
    (dict(max_trials=1), ValueError, "max_trials=10"),
    (dict(epochs=0), ValueError, "epochs=10"),
    (dict(batch_size=0), ValueError, "batch_size=32"),
    (dict(learning_rate=0.0), ValueError, "learning_rate=1e-3"),
    (dict(metrics="accuracy"), ValueError, r"metrics=\('accuracy',\)"),
    (dict(metric=3), ValueError, "keras_tuner.Objective"),
    (dict(validation_data=None), ValueError, r"validation_data=\(x_val"),
    (dict(make_student="model"), TypeError, "make_student=lambda"),
    # Issue 28 #22: a metric no trial logs, named before training.
    (dict(metric="val_auc"), ValueError,
     r"metric='val_auc' is not logged.*'val_accuracy'.*"
     r"keras.metrics.AUC\(name='auc'\)"),
    # Issue 28 #20: one model for every trial makes them cumulative.
    (dict(make_student=_shared_student), ValueError,
     "same model twice.*Build a new model in make_student"),
    (dict(make_student=_shared_layers), ValueError,
     "share weights.*Create new layers"),
])
def test_bad_arguments_are_refused_with_the_fix_before_training(
        teacher, digits, nothing_trains, kwargs, error, match):
    (x, y), validation, _ = digits
    args = dict(validation_data=validation)
    make_student = kwargs.pop("make_student", _student)
    if make_student == "model":
        make_student = _student()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        kd.search(teacher, make_student, x, y, **args)


@pytest.mark.parametrize("where", ["x", "y", "dataset"])
def test_nan_validation_data_is_refused_before_training(
        teacher, digits, nothing_trains, where):
    # Issue 28 #20: NaN validation inputs were ranked without a word (an
    # argmax of NaN logits still gives an "accuracy").
    (x, y), (x_val, y_val), _ = digits
    x_val = x_val.copy()
    x_val[5, 3] = np.nan
    validation = (x_val, y_val)
    if where == "y":  # float labels (a regression): NaN labels
        validation = (digits[1][0], y_val.astype("float32"))
        validation[1][7] = np.nan
    if where == "dataset":
        tf = pytest.importorskip("tensorflow")
        validation = tf.data.Dataset.from_tensor_slices(
            (x_val, y_val)).batch(4)
    row = {"x": "rows [5]", "y": "rows [7]", "dataset": "batch 1, rows [1]"}
    with pytest.raises(ValueError, match=r"NaN or infinite values \(.*"
                       + re.escape(row[where]) + r"\).*meaningless"):
        kd.search(teacher, _student, x, y, validation)


def test_an_endless_dataset_is_refused(teacher, digits, nothing_trains):
    tf = pytest.importorskip("tensorflow")
    (x, y), validation, _ = digits
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    with pytest.raises(ValueError, match=r"x.take\(1000\)"):
        kd.search(teacher, _student, endless, batch_size=None,
                  validation_data=validation)
    with pytest.raises(ValueError, match=r"validation_data.take\(100\)"):
        kd.search(teacher, _student, x, y, validation_data=endless)


def test_a_tf_data_validation_set_is_counted(teacher, digits):
    tf = pytest.importorskip("tensorflow")
    from keras_kd.search import preflight

    x_val, y_val = digits[1]
    dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(5)
    assert preflight.validation_examples(dataset) == len(x_val) == 48
    filtered = dataset.filter(lambda a, b: True)  # unknown cardinality
    assert preflight.validation_examples(filtered) == 48


def test_diverged_trials_are_ranked_last_with_a_warning():
    from keras_kd.search.result import rank_rows

    rows = [dict(setting="a", score=0.2), dict(setting="b", score=math.nan),
            dict(setting="c", score=0.9), dict(setting="d", score=math.inf)]
    with pytest.warns(RuntimeWarning, match=r"\['b', 'd'\].*ranked last"):
        ranked = rank_rows(rows, "max")
    assert [r["setting"] for r in ranked[:2]] == ["c", "a"]
    with pytest.warns(RuntimeWarning):
        ranked = rank_rows(rows, "min")
    assert [r["setting"] for r in ranked[:2]] == ["a", "c"]
    assert {r["setting"] for r in ranked[2:]} == {"b", "d"}


def test_a_missing_keras_tuner_names_the_extra(monkeypatch, teacher, digits):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    (x, y), validation, _ = digits
    with pytest.raises(ImportError, match=r'pip install "keras-kd\[search\]"'):
        kd.search(teacher, _student, x, y, validation)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_missing_tensorboard_on_tensorflow_names_the_extra(
        monkeypatch, teacher, digits, nothing_trains, backend):
    # Issue 28 #21: keras-tuner imports TensorBoard's hparams API at every
    # trial on TensorFlow; without it every trial failed after training.
    from keras_kd.search import check_requirements

    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams.api", None)
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    if backend != "tensorflow":
        assert check_requirements().__name__ == "keras_tuner"
        return
    with pytest.raises(ImportError, match=r'TensorBoard.*pip install '
                       r'"keras-kd\[search\]"'):
        check_requirements()
    (x, y), validation, _ = digits
    with pytest.raises(ImportError, match="tensorboard is not installed"):
        kd.search(teacher, _student, x, y, validation)


def test_the_search_extra_installs_what_keras_tuner_imports():
    from pathlib import Path

    from keras_kd.extras import EXTRAS

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    (line,) = [v for v in text.splitlines() if v.startswith("search = ")]
    assert "keras-tuner" in line and "tensorboard" in line
    assert EXTRAS["tensorboard"] == EXTRAS["keras_tuner"] == "search"


@pytest.mark.one_backend("torch")
def test_keras_kd_search_quick_writes_a_sorted_ranking(tmp_path, capsys):
    from keras_kd.app.launcher import main
    from keras_kd.app.parser import build_parser

    code = main(["search", "--quick", "--teacher", "small_mlp", "--student",
                 "small_mlp", "--objectives", "kd,dist", "--temperatures",
                 "1,4", "--alphas", "0.5", "--output", str(tmp_path / "out"),
                 "--run-name", "q"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "q" / "search.json").read_text())
    scores = [r["score"] for r in report["ranking"]]
    assert len(scores) == 3  # --quick: max_trials 3, the student alone first
    assert scores == sorted(scores, reverse=True)
    assert report["best_score"] == scores[0]
    assert STUDENT_ALONE in [r["setting"] for r in report["ranking"]]
    assert report["config"]["objectives"] == ["kd", "dist"]
    out = capsys.readouterr().out
    for row in report["ranking"]:
        assert f"| {row['setting']} | {row['score']:.4f} |" in out
        low, high = row["interval"]
        assert low <= row["score"] <= high
    assert report["validation_examples"] == 128  # --quick: --max-test 128
    # The keras-kd run line of the best setting: printed, in search.json,
    # and it parses to the best setting and the search's sizes.
    command = report["run_command"]
    assert f"To train it: {command}" in out
    argv = shlex.split(command)
    assert argv[:2] == ["keras-kd", "run"]
    args = build_parser().parse_args(argv[1:])
    best = report["best"]
    if best["objective"] is None:
        assert args.alpha == 1.0
    else:
        assert (args.objective, args.alpha, args.temperature) == (
            best["objective"], best["alpha"], best["temperature"])
    assert argv[2:] == ["--dataset", "digits", "--teacher", "small_mlp",
                        "--student", "small_mlp", "--epochs", "2",
                        "--teacher-epochs", "2", "--batch-size", "32",
                        "--learning-rate", "0.001", "--max-train", "256",
                        "--max-test", "128", "--seed", "0",
                        *report["run_args"]]


@pytest.mark.parametrize("argv, match", [
    (["--alphas", "0.1,1"], "student alone"),
    (["--objectives", "kd,nope"], "unknown objective 'nope'"),
    (["--temperatures", "1,1"], "--temperatures 1,2,4"),
    (["--feature-pairs", "all"], "invalid choice: 'all'"),
])
def test_keras_kd_search_refuses_bad_options(argv, match, capsys):
    from keras_kd.app.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", *argv])
    assert match in capsys.readouterr().err
