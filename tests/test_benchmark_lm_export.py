"""benchmarks/lm_export.py: the KV-cache decode benchmark runs end to end."""

import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")


@pytest.mark.one_backend("tensorflow")
def test_lm_export_quick_run_measures_both_files(capsys):
    from benchmarks import lm_export

    rows = lm_export.main(["--quick"])
    assert [(r["L"], r["cache"]) for r in rows] == [(32, False), (32, True)]
    plain, cached = rows
    # The "tiny" GPT-2: 1 block, width 16, 32 units, 256 bytes, 32
    # positions: (256 + 32) x 16 + 2 LayerNorms + q/k/v/out with biases +
    # the MLP + the final LayerNorm.
    h, i = 16, 32
    assert plain["parameters"] == (256 + 32) * h + 4 * h + 4 * (h * h + h) \
        + 2 * h * i + i + h + 2 * h == 6864
    # One decode step's FLOPs: 2 x (kernels + output projection + 2
    # attention products over 32 positions).
    assert cached["flops_per_token"] == 2 * (4 * h * h + 2 * h * i + 256 * h
                                             + 2 * 32 * h)
    assert plain["flops_per_token"] == 32 * 2 * (
        4 * h * h + 2 * h * i + 256 * h + 2 * 17 * h)
    for row in rows:
        assert row["max_abs_diff"] < 1e-4
        assert row["decode_16"] > 0 and row["decode_31"] > 0
        assert row["prefill_tokens_per_s"] > 0
        assert 0 < row["peak_mib"] < 1000  # LiteRT and NumPy only
    assert plain["decode_16"] == plain["decode_31"]  # one full pass each
    out = capsys.readouterr().out
    assert "| tiny (6,864) | 32 | KV cache |" in out
    assert "GFLOP/s" in out
