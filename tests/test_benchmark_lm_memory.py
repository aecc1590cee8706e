"""benchmarks/lm_memory.py: its quick mode runs, its summary is its rows'."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tests.helpers import benchmark_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.one_backend("torch")
def test_lm_memory_quick_mode_reports_both_paths():
    backend = keras.backend.backend()
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "lm_memory.py"),
           "--quick", "--backend", backend]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend and result["chunk"] == 8
    rows = result["rows"]
    assert [r["chunk"] for r in rows] == [None, 8]
    full, chunked = rows
    assert all(r["vocab"] == 512 and r["tokens"] == 16 for r in rows)
    assert all(r["peak_mib"] > 0 and r["step_ms"] > 0 for r in rows)
    # The same weights and batch: the same loss, chunked or not.
    assert abs(full["loss"] - chunked["loss"]) < 1e-4 * abs(full["loss"])
    ratio = result["ratio"][0]
    assert abs(ratio["time"] - round(chunked["step_ms"] / full["step_ms"],
                                     3)) < 1e-9


def test_lm_memory_fit_and_extrapolation():
    """The summary's line fit and 24 GiB figures, from made-up rows."""
    lm_memory = benchmark_module("lm_memory")
    rows = []
    for vocab in (1000, 2000):
        for tokens in (10, 20):
            # full: 100 MiB + 8 bytes per token·id; chunked: 50 MiB + 3 per
            # chunk·id (chunk 4)
            rows.append(dict(vocab=vocab, tokens=tokens, chunk=None,
                             step_mib=100 + 8 * tokens * vocab / 2 ** 20,
                             step_ms=10.0))
            rows.append(dict(vocab=vocab, tokens=tokens, chunk=4,
                             step_mib=50 + 3 * 4 * vocab / 2 ** 20,
                             step_ms=12.0))
    ratios, fit = lm_memory.summarize(rows, 4)
    assert [r["time"] for r in ratios] == [1.2] * 4
    assert abs(fit["full_bytes_per_token_vocab"] - 8.0) < 1e-6
    assert abs(fit["chunked_bytes_per_chunk_vocab"] - 3.0) < 1e-6
    assert abs(fit["full_max_tokens_x_vocab_24gib"] - (
        24 * 2 ** 30 - 100 * 2 ** 20) / 8) <= 1
    assert fit["extrapolated"] is True


def test_lm_memory_refuses_bad_arguments():
    lm_memory = benchmark_module("lm_memory")
    with pytest.raises(SystemExit):
        lm_memory.parse_args(["--vocabs", "32k"])
    with pytest.raises(SystemExit):
        lm_memory.parse_args(["--chunk", "0"])
