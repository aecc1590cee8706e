"""keras_kd.search and `keras-kd search`: the grid, the ranking, determinism."""

import glob
import json
import os
import sys
import tempfile

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.search import STUDENT_ALONE, grid_size

pytest.importorskip("keras_tuner")

EPOCHS = 2
SEED = 3


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
    """Runs kd.search with ``workdir`` as the working directory."""
    (x, y), validation, _ = digits
    before = set(glob.glob(os.path.join(tempfile.gettempdir(),
                                        "keras-kd-search-*")))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = kd.search(teacher, _student, x, y, validation,
                           epochs=EPOCHS, batch_size=16, seed=SEED, **kwargs)
    finally:
        os.chdir(cwd)
    after = set(glob.glob(os.path.join(tempfile.gettempdir(),
                                       "keras-kd-search-*")))
    return result, after - before


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


def test_nothing_is_left_in_the_working_directory_or_tmp(grid):
    _, workdir, left_in_tmp = grid
    assert os.listdir(workdir) == []
    assert left_in_tmp == set()


def test_directory_keeps_the_trials(tmp_path, teacher, digits):
    result, _ = _search_in(tmp_path, teacher, digits, objectives=("kd",),
                           temperatures=(4,), alphas=(0.5,),
                           directory=str(tmp_path / "trials"))
    assert os.listdir(tmp_path) == ["trials"]
    trial_dirs = glob.glob(str(tmp_path / "trials" / "search" / "trial_*"))
    assert len(trial_dirs) == len(result.ranking) == 2


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


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(objectives=("kd", "nope")), ValueError, "one of"),
    (dict(objectives="kd"), ValueError, r"objectives=\('kd', 'dist'\)"),
    (dict(alphas=(0.5, 1.0)), ValueError, "student alone"),
    (dict(temperatures=(0,)), ValueError, "> 0"),
    (dict(temperatures=(1, 1)), ValueError, "list each once"),
    (dict(feature_pairs=[("nope", "student_hidden")]), ValueError,
     "teacher has no layer 'nope'"),
    (dict(max_trials=1), ValueError, "max_trials=10"),
    (dict(validation_data=None), ValueError, r"validation_data=\(x_val"),
    (dict(make_student="model"), TypeError, "make_student=lambda"),
])
def test_bad_arguments_are_refused_with_the_fix(teacher, digits, kwargs,
                                                error, match):
    (x, y), validation, _ = digits
    args = dict(validation_data=validation)
    make_student = _student
    if kwargs.get("make_student") == "model":
        make_student = _student()
        kwargs = {}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        kd.search(teacher, make_student, x, y, **args)


def test_a_missing_keras_tuner_names_the_extra(monkeypatch, teacher, digits):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    (x, y), validation, _ = digits
    with pytest.raises(ImportError, match=r'pip install "keras-kd\[search\]"'):
        kd.search(teacher, _student, x, y, validation)


def test_keras_kd_search_quick_writes_a_sorted_ranking(tmp_path, capsys):
    from keras_kd_cli import main

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
    table = capsys.readouterr().out
    for row in report["ranking"]:
        assert f"| {row['setting']} | {row['score']:.4f} |" in table


@pytest.mark.parametrize("argv, match", [
    (["--alphas", "0.1,1"], "student alone"),
    (["--objectives", "kd,nope"], "unknown objective 'nope'"),
    (["--temperatures", "1,1"], "--temperatures 1,2,4"),
])
def test_keras_kd_search_refuses_bad_options(argv, match, capsys):
    from keras_kd_cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", *argv])
    assert match in capsys.readouterr().err
