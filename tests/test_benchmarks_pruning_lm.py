"""benchmarks/pruning_lm.py: the byte-LM pruning benchmark runs end to end."""

import math

import pytest

pytest.importorskip("keras_hub")


@pytest.mark.one_backend
def test_pruning_lm_quick_run_prunes_distils_and_scores(capsys):
    from benchmarks import pruning_lm

    pruned, alone = "pruned (width), distilled", "random, alone"
    results = pruning_lm.main(["--quick", "--variants", pruned, alone])
    # the "tiny" teacher (1 block, hidden 16, 32 units, 256 bytes, 32
    # positions) cut to hidden 8 and 16 units, by hand:
    # embeddings (256 + 32) x 8, two LayerNorms, q/k/v/out with biases,
    # the MLP, the final LayerNorm
    h, i = 8, 16
    expected = (256 + 32) * h + 4 * h + 4 * (h * h + h) + 2 * h * i + i + h \
        + 2 * h
    assert results["params"][pruned] == expected == 2920
    assert results["teacher_params"] == 6864
    untrained = results["untrained"][f"{pruned} / 0"]
    trained = results["runs"][pruned][0]
    for bits in (untrained, trained, results["runs"][alone][0],
                 results["teacher"]):
        assert math.isfinite(bits) and 0 < bits < 9
    assert trained != untrained  # the pruned model trains
    report = results["reports"][f"{pruned} / 0"]
    assert report["sizes_after"]["H"] == 8 and report["params_after"] == 2920
    out = capsys.readouterr().out
    assert f"| {pruned} | 2,920 |" in out and f"| {alone} | 6,864 |" in out
