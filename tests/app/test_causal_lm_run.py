"""keras-kd run --task causal-lm: the offline language-model run and its report."""

import json
import os

import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd.app import causal_lm_run, launcher, options, parser  # noqa: E402
from keras_kd.app.language_models import (  # noqa: E402
    SIZES,
    evaluate_bits_per_byte,
    greedy_agreement,
    greedy_continuations,
)
from keras_kd.data.text import load_python_source  # noqa: E402
from keras_kd.export import LiteRTCausalLM  # noqa: E402
from keras_kd.objectives.sequences import SEQUENCE_OBJECTIVES  # noqa: E402
from tests.conftest import BACKEND  # noqa: E402

KEYS = ["teacher", "student_alone", "student_distilled", "student_tflite"]


# The tests of one `keras-kd run --task causal-lm --quick` share its run: one
# backend runs them all (the library code under it is tested on each).
QUICK_RUN_BACKEND = "torch"


# The application's language-model run: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_runs")
    code = launcher.main(["run", "--task", "causal-lm", "--quick", "--output",
                     str(out), "--run-name", "q", "--verbose", "0"])
    run_dir = out / "q"
    report = json.loads((run_dir / "report.json").read_text())
    cfg = report["config"]
    data = load_python_source(sequence_length=cfg["sequence_length"],
                              max_bytes=cfg["max_bytes"])
    return code, run_dir, report, data


def _load(record):
    return keras.saving.load_model(record["path"])


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_quick_run_writes_models_and_report(quick_run):
    code, run_dir, report, _ = quick_run
    assert code == 0
    for name in ("teacher.keras", "student_alone.keras",
                 "student_distilled.keras", "student_distilled_float32.tflite",
                 "report.json", "report.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == \
        b"\x89PNG\r\n\x1a\n"
    assert report["backend"] == BACKEND and report["task"] == "causal-lm"
    cfg = report["config"]
    for name, value in options.LM_QUICK.items():
        assert cfg[name] == value, name
    assert [m["key"] for m in report["models"]] == KEYS
    md = (run_dir / "report.md").read_text()
    assert report["prompt"] in md
    for m in report["models"]:
        assert m["label"] in md and m["sample"] in md
        assert m["size_bytes"] == os.path.getsize(m["path"])
        assert m["latency_ms"] > 0
        # learned something (8 bits per byte is a uniform guess), not more
        # than the data allows
        assert 0.5 < m["bits_per_byte"] < 7.8, m
        # a greedy continuation of the prompt, to the window's end
        assert len(m["sample"].encode("utf-8", "surrogatepass")) >= len(
            m["sample"]) > 0
    # the teacher (a tiny model trained longer) beats the student alone
    by_key = {m["key"]: m for m in report["models"]}
    assert by_key["teacher"]["bits_per_byte"] < \
        by_key["student_alone"]["bits_per_byte"]
    # learning curves: from the first step to the last, and falling
    for label, steps in (("teacher", cfg["teacher_steps"]),
                         ("distilled student", cfg["steps"])):
        curve = report["curves"][label]
        assert curve["steps"][0] == 0 and curve["steps"][-1] == steps
        assert curve["bits_per_byte"][0] > 7.9  # random init: ~8
        assert curve["bits_per_byte"][-1] < curve["bits_per_byte"][0] - 0.5


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_report_figures_equal_a_recomputation_from_the_saved_files(quick_run):
    _, _, report, data = quick_run
    by_key = {m["key"]: m for m in report["models"]}
    p, count = report["prompt_length"], report["agreement_prompts"]
    teacher = _load(by_key["teacher"])
    for key in ("teacher", "student_alone", "student_distilled"):
        model = _load(by_key[key])
        assert evaluate_bits_per_byte(model, data.held_out) == pytest.approx(
            by_key[key]["bits_per_byte"], abs=1e-6), key
        if key != "teacher":
            assert greedy_agreement(teacher, model, data.held_out, p, count) \
                == pytest.approx(by_key[key]["greedy_agreement"]), key
    # the sample: the first full held-out window's first half, continued
    rows = causal_lm_run.prompt_rows(data.held_out, count)
    ids = data.held_out.token_ids[rows[:1]]
    assert causal_lm_run.decode(ids[0, :p]) == report["prompt"]
    student = _load(by_key["student_distilled"])
    out = greedy_continuations(student, ids, data.held_out.padding_mask[
        rows[:1]], p)
    assert causal_lm_run.decode(out[0, p:]) == \
        by_key["student_distilled"]["sample"]


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_litert_file_generates_what_the_keras_student_generates(quick_run):
    _, _, report, _ = quick_run
    by_key = {m["key"]: m for m in report["models"]}
    keras_student, litert = by_key["student_distilled"], by_key[
        "student_tflite"]
    # float32: the same greedy bytes and agreement, the same likelihood
    assert litert["sample"] == keras_student["sample"]
    assert litert["greedy_agreement"] == keras_student["greedy_agreement"]
    assert litert["bits_per_byte"] == pytest.approx(
        keras_student["bits_per_byte"], abs=1e-4)
    assert report["export"]["max_abs_diff"] < 1e-3
    # the file holds a KV cache of the run's sequence length
    assert report["export"]["kv_cache_length"] == report["config"][
        "sequence_length"]
    lm = LiteRTCausalLM(litert["path"])
    assert lm.has_cache and lm.kv_cache_length == report["config"][
        "sequence_length"]
    summary = report["litert"]
    assert 0 < litert["latency_ms"] == summary["files"]["float32"][
        "decode_ms_start"]
    # the samples of the float32 file: the Keras student's greedy bytes
    assert summary["samples"]["float32"][0] == keras_student["sample"]


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_kv_cache_files_figures(quick_run):
    _, run_dir, report, data = quick_run
    summary = report["litert"]
    files = summary["files"]
    L = report["config"]["sequence_length"]
    assert summary["kv_cache_length"] == L
    assert summary["prefill_length"] == report["prompt_length"]
    assert sorted(files) == ["dynamic", "float32"]
    for precision, f in files.items():
        assert f["path"] == str(run_dir / f"student_distilled_{precision}"
                                ".tflite")
        assert f["size_bytes"] == os.path.getsize(f["path"])
        assert f["prefill_tokens_per_s"] > 0
        assert 0 < f["decode_ms_start"] < 1000 and 0 < f["decode_ms_end"] < \
            1000
        assert f["decode_positions"] == [0, L - 1]
        assert len(summary["samples"][precision]) == causal_lm_run.SAMPLES
    # int8 weights: a smaller file
    assert files["dynamic"]["size_bytes"] < files["float32"]["size_bytes"]
    int8 = LiteRTCausalLM(files["dynamic"]["path"])
    assert int8.has_cache and int8.kv_cache_length == L
    # bits per byte on the first windows: the float32 file equals the Keras
    # student there; the int8 file is its own, recomputed from the file
    windows = summary["bits_per_byte_windows"]
    assert windows == min(causal_lm_run.LITERT_BPB_WINDOWS,
                          data.held_out.num_windows)
    assert files["float32"]["bits_per_byte"] == pytest.approx(
        summary["keras_bits_per_byte"], abs=1e-4)
    first = causal_lm_run.first_windows(data.held_out, windows)
    assert causal_lm_run.litert_bits_per_byte(int8, first) == pytest.approx(
        files["dynamic"]["bits_per_byte"], abs=1e-9)
    assert abs(files["dynamic"]["bits_per_byte"]
               - summary["keras_bits_per_byte"]) < 0.1
    # the int8 samples: what the int8 file generates from the first prompts
    rows = causal_lm_run.prompt_rows(data.held_out, causal_lm_run.SAMPLES)
    p = report["prompt_length"]
    for row, text in zip(rows, summary["samples"]["dynamic"]):
        ids = data.held_out.token_ids[row]
        assert causal_lm_run.decode(int8.generate(ids[:p], L - p)[p:]) == text
    md = (run_dir / "report.md").read_text()
    assert "## LiteRT files with a KV cache" in md
    for precision, f in files.items():
        assert os.path.basename(f["path"]) in md
        assert f"{f['bits_per_byte']:.4f}" in md
        for text in summary["samples"][precision]:
            assert text in md


def test_litert_helpers_against_the_keras_model(tmp_path):
    # On a small untrained model: the LiteRT file's bits per byte and greedy
    # continuations equal the Keras model's.
    from keras_kd.app.language_models import build_causal_lm
    from keras_kd.export import LiteRTCausalLM, lm_to_tflite

    data = load_python_source(sequence_length=16, max_bytes=3_000)
    model = build_causal_lm("tiny", sequence_length=16, seed=3)
    path = str(tmp_path / "lm.tflite")
    lm_to_tflite(model, path, 16, latency_runs=0)
    lm = LiteRTCausalLM(path)
    held = data.held_out
    assert causal_lm_run.litert_bits_per_byte(lm, held) == pytest.approx(
        evaluate_bits_per_byte(model, held), abs=1e-4)
    rows = causal_lm_run.prompt_rows(held, 4)
    ids = held.token_ids[rows]
    np.testing.assert_array_equal(
        causal_lm_run.litert_continuations(lm, ids, 5),
        greedy_continuations(model, ids, held.padding_mask[rows], 5))
    # the same with the KV-cache file the run exports (a prefill of the
    # prompt, then decode steps); its speed measured on the file
    cached_path = str(tmp_path / "lm_kv.tflite")
    # (verify=False: the comparisons below are the check)
    lm_to_tflite(model, cached_path, kv_cache_length=16, prefill_lengths=(5,),
                 latency_runs=0, verify=False)
    cached = LiteRTCausalLM(cached_path)
    assert cached.has_cache and cached.kv_cache_length == 16
    first = causal_lm_run.first_windows(held, 8)
    assert len(first.token_ids) == 8
    assert causal_lm_run.litert_bits_per_byte(cached, first) == pytest.approx(
        evaluate_bits_per_byte(model, first), abs=1e-4)
    np.testing.assert_array_equal(
        causal_lm_run.litert_continuations(cached, ids, 5),
        greedy_continuations(model, ids, held.padding_mask[rows], 5))
    speed = causal_lm_run.litert_speed(cached, 5, runs=3)
    assert speed["decode_positions"] == [0, 15]
    assert speed["prefill_tokens_per_s"] > 0
    assert 0 < speed["decode_ms_start"] < 1000
    assert 0 < speed["decode_ms_end"] < 1000


def test_export_precisions_always_hold_float32_and_int8_weights():
    assert causal_lm_run.export_precisions("float32") == ["float32",
                                                          "dynamic"]
    assert causal_lm_run.export_precisions("dynamic") == ["dynamic",
                                                          "float32"]
    assert causal_lm_run.export_precisions("float16") == [
        "float16", "float32", "dynamic"]


def test_decode_replaces_bytes_that_are_not_utf8():
    assert causal_lm_run.decode([104, 105, 0xFF]) == "hi\ufffd"
    assert causal_lm_run.decode(list("é".encode())) == "é"


@pytest.mark.parametrize("argv, fix", [
    (["--task", "causal-lm", "--epochs", "3"], "--steps"),
    (["--task", "causal-lm", "--teacher", "mlp"], "--lm-teacher"),
    (["--task", "causal-lm", "--dataset", "digits"], "--max-bytes"),
    (["--task", "causal-lm", "--max-train", "100"], "--max-bytes"),
    (["--task", "causal-lm", "--quantize", "int8"], "--quantize dynamic"),
    (["--task", "causal-lm", "--objective", "dist"], "forward_kl, gkd"),
    (["--task", "causal-lm", "--sequence-length", "2"],
     "--sequence-length 128"),
    (["--lm-student", "tiny"], "add --task causal-lm"),
    (["--steps", "5"], "--epochs"),
    (["--on-policy", "0.5"], "add --task causal-lm"),
])
def test_options_of_the_other_task_stop_with_one_line(argv, fix, tmp_path,
                                                      capsys):
    with pytest.raises(SystemExit) as stop:
        launcher.main(["run", "--output", str(tmp_path)] + argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-kd run: error: ")
    assert fix in err
    assert os.listdir(tmp_path) == []  # stopped before anything ran


def test_bad_on_policy_value_names_the_range(capsys):
    with pytest.raises(SystemExit):
        parser.build_parser().parse_args(
            ["run", "--task", "causal-lm", "--on-policy", "2"])
    assert "is not in [0, 1]; e.g. --on-policy 0.5" in capsys.readouterr().err


def test_task_defaults():
    parse = parser.build_parser().parse_args
    image = parser.apply_task_defaults(parse(["run"]))
    assert (image.objective, image.alpha, image.batch_size,
            image.learning_rate) == ("dist", 0.1, 64, 1e-3)
    lm = parser.apply_task_defaults(parse(["run", "--task",
                                                 "causal-lm"]))
    for name, value in options.LM_DEFAULTS.items():
        assert getattr(lm, name) == value, name
    # --quick shrinks what was not given
    quick = parser.apply_task_defaults(parse(
        ["run", "--task", "causal-lm", "--quick", "--steps", "7",
         "--objective", "gkd"]))
    assert (quick.steps, quick.objective) == (7, "gkd")
    assert (quick.teacher_steps, quick.lm_student, quick.latency_runs) == (
        options.LM_QUICK["teacher_steps"], "tiny",
        options.LM_QUICK["latency_runs"])


def test_written_out_names_match_keras_kd():
    assert sorted(options.LM_SIZES) == sorted(SIZES)
    assert sorted(options.LM_OBJECTIVES) == sorted(SEQUENCE_OBJECTIVES)
    assert set(options.LM_OBJECTIVES) <= set(options.OBJECTIVES)
