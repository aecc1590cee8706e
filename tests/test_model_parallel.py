"""A teacher larger than one device: sharded teacher, data-parallel student.

The teacher (a keras-hub ``GemmaCausalLM``) is built under
``keras.distribution.ModelParallel`` with keras-hub's
``GemmaBackbone.get_layout_map``, the student under a ``ModelParallel`` with
an empty ``LayoutMap`` (replicated), both on one ``(batch=2, model=4)`` mesh
of 8 virtual CPU devices; the Distiller then trains under the teacher's
distribution. It runs in a subprocess (``scale_scripts/model_parallel.py``)
because the virtual devices must be configured before JAX initialises.
"""

import keras
import numpy as np
import pytest

from tests.helpers import run_scale_script

BACKEND = keras.backend.backend()
if BACKEND != "jax":
    pytest.skip(
        f"keras.distribution.ModelParallel runs on JAX; the {BACKEND} backend "
        "has no sharded-variable engine on CPU devices here",
        allow_module_level=True)
pytest.importorskip("keras_hub")

# keras-hub's Gemma layout rules: (path, spec) of the teacher's sharded
# variables.
SHARDED = {
    "token_embedding/embeddings": ["model", "batch"],
    "attention/query/kernel": ["model", "batch", None],
    "attention/key/kernel": ["model", "batch", None],
    "attention/value/kernel": ["model", "batch", None],
    "attention/attention_output/kernel": ["model", None, "batch"],
    "ffw_gating/kernel": ["batch", "model"],
    "ffw_gating_2/kernel": ["batch", "model"],
    "ffw_linear/kernel": ["model", "batch"],
}


def _rule(path):
    for suffix, spec in SHARDED.items():
        if path.endswith(suffix):
            return spec
    return None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp") / "result.json"
    return run_scale_script("model_parallel", out, "jax", timeout=600)


def test_teacher_is_sharded_over_model_axis(run):
    assert run["devices"] == 8
    assert run["mesh"] == {"batch": 2, "model": 4}
    assert run["teacher_trainable"] is False
    layouts = run["teacher_layouts"]
    sharded = [v for v in layouts if _rule(v["path"])]
    # The embedding and 7 kernels in each of the 2 decoder blocks.
    assert len(sharded) == 1 + 2 * 7
    for v in layouts:
        spec = _rule(v["path"])
        assert v["devices"] == 8, v
        assert v["mesh"] == {"batch": 2, "model": 4}, v
        if spec is None:  # norms' scales
            assert v["replicated"], v
            continue
        assert v["spec"] == spec, v
        assert not v["replicated"], v
        # Each device holds 1/4 of the "model" axis, 1/2 of the "batch" one.
        sizes = {"model": 4, "batch": 2, None: 1}
        assert v["shard_shape"] == [n // sizes[a] for n, a in
                                    zip(v["shape"], spec)], v
    # The compiled step keeps the layouts (its out_shardings).
    assert run["teacher_layouts_after_fit"] == layouts


def test_student_and_distiller_state_are_replicated(run):
    # The teacher's layout regexes do match the student's variable paths
    # (same architecture, no model name in a path): the scope the student is
    # built in keeps it replicated.
    assert "token_embedding/embeddings" in run["student_paths_in_teacher_map"]
    assert "decoder_block_0/attention/query/kernel" in \
        run["student_paths_in_teacher_map"]
    for v in run["student_layouts"] + run["distiller_layouts"]:
        assert v["replicated"] and v["devices"] == 8, v
        assert v["shard_shape"] == v["shape"], v
    assert {"distiller/alpha", "distiller/temperature", "loss_terms/totals"} \
        <= {v["path"] for v in run["distiller_layouts"]}


def test_losses_match_single_device(run):
    """Same global batches and initial weights: every logged term, step by
    step, agrees with the run on one device without any distribution (SGD,
    so a wrong gradient would show from the second step on)."""
    assert run["jit_compile"] is True
    single, parallel = run["single"]["steps"], run["parallel"]["steps"]
    assert len(single) == len(parallel) == 6  # 2 epochs of 3 steps
    for step, (a, b) in enumerate(zip(single, parallel)):
        assert set(a) == set(b) == {"loss", "student_loss",
                                    "distillation_loss"}
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4,
                                       err_msg=f"step {step}, {key}")
    # The first step's loss (computed before its update) composes its terms.
    first = parallel[0]
    np.testing.assert_allclose(
        first["loss"], 0.3 * first["student_loss"] +
        0.7 * first["distillation_loss"], rtol=1e-5)
    np.testing.assert_allclose(run["parallel"]["epoch_loss"],
                               run["single"]["epoch_loss"], rtol=1e-4)
    assert run["student_vs_single"] < 1e-5


def test_teacher_frozen_student_trained(run):
    assert all(run["teacher_unchanged"]), run["teacher_unchanged"]
    assert len(run["teacher_unchanged"]) == len(run["teacher_layouts"])
    assert run["student_change"] > 1e-3
    # The same batches, epoch after epoch: the loss went down.
    first, second = run["parallel"]["epoch_loss"]
    assert second < first - 1e-3
