"""Peak memory of one language-model distillation step: full vs chunked logits.

For each vocabulary size and tokens per batch, one child process per
configuration builds a GPT-2 teacher and student from config (keras-hub,
random weights; one decoder block, small widths, so that the logits dominate
as they do at real vocabulary sizes) and runs ``Distiller.train_on_batch``
with ``forward_kl`` and the hard loss, without and with
``compile(token_chunk_size=N)``:

- ``peak_mib``: the child's peak resident memory (``resource.getrusage``
  ``ru_maxrss``) after two steps; ``step_mib``: that peak minus the peak
  before the first step (models, data and imports), i.e. what a step adds;
  on a GPU, the allocator's peak instead (JAX ``memory_stats``,
  ``torch.cuda.max_memory_allocated``, TensorFlow ``get_memory_info``);
- ``step_ms``: the second step's wall time (the first includes tracing);
  ``ratio`` is chunked / full per configuration.

A least-squares line ``step_mib = a + b · tokens · vocab`` is fitted to the
full-logits rows and ``step_mib = a + c · chunk · vocab`` to the chunked
ones; ``fit`` reports ``b`` and ``c`` in bytes per (token × vocabulary id),
and the largest ``tokens × vocab`` (full) and ``chunk × vocab`` (chunked)
that fit in 24 GiB, extrapolated from those lines.

Usage:
    python benchmarks/lm_memory.py                       # 32k/128k/256k
    python benchmarks/lm_memory.py --quick               # a smoke run
    python benchmarks/lm_memory.py --vocabs 32000,128256 --tokens 128,256
"""

import argparse
import json
import os
import subprocess
import sys
import time

GIB = 1024 ** 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=os.environ.get(
        "KERAS_BACKEND", "torch"), choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--vocabs", default="32000,128256,256000")
    parser.add_argument("--tokens", default="128,256",
                        help="tokens per batch (batch 1 × length)")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: vocab 512, 16 tokens, chunk 8")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocabs, args.tokens, args.chunk = "512", "16", 8
    try:
        args.vocabs = [int(v) for v in args.vocabs.split(",")]
        args.tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        parser.error("--vocabs and --tokens take comma-separated integers, "
                     "e.g. --vocabs 32000,128256 --tokens 128,256")
    if args.chunk < 1 or min(args.vocabs + args.tokens) < 2:
        parser.error("--chunk takes an integer >= 1; --vocabs and --tokens "
                     "integers >= 2")
    return args


def gpu_peak_mib(backend):
    """The accelerator allocator's peak in MiB, or None on a CPU."""
    try:
        if backend == "torch":
            import torch
            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2 ** 20
        elif backend == "jax":
            import jax
            device = jax.devices()[0]
            if device.platform != "cpu":
                return device.memory_stats()["peak_bytes_in_use"] / 2 ** 20
        else:
            import tensorflow as tf
            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info(
                    "GPU:0")["peak"] / 2 ** 20
    except Exception:  # noqa: BLE001 -- no figure rather than no run
        return None
    return None


def run_child(config):
    """One configuration, in this process: prints a JSON line."""
    import resource

    import keras
    import keras_hub
    import numpy as np

    import keras_kd as kd

    vocab, tokens, chunk = config["vocab"], config["tokens"], config["chunk"]

    def lm(width, seed):
        keras.utils.set_random_seed(seed)
        return keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(
            vocabulary_size=vocab, num_layers=1, num_heads=2, hidden_dim=width,
            intermediate_dim=2 * width, max_sequence_length=tokens,
            dropout=0.0))

    teacher, student = lm(32, 0), lm(16, 1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (1, tokens)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    y = np.roll(ids, -1, axis=1)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        keras.optimizers.SGD(1e-3), alpha=0.5, temperature=1.0,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss="forward_kl", token_chunk_size=chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    distiller.train_on_batch(x, y)
    start = time.perf_counter()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    step_ms = (time.perf_counter() - start) * 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = gpu_peak_mib(keras.backend.backend())
    print(json.dumps(dict(
        config, peak_mib=round(gpu if gpu is not None else peak, 1),
        step_mib=round(gpu if gpu is not None else peak - before, 1),
        memory="gpu_allocator" if gpu is not None else "cpu_rss",
        step_ms=round(step_ms, 2), loss=float(logs["loss"]))))


def measure(args, config):
    """Runs one configuration in a child process; its JSON result."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=args.backend,
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
                   [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           json.dumps(config)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def line_fit(xs, ys):
    """Least squares ``y = a + b·x``: ``(a, b)`` (b = 0 for one point)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = 0.0 if var == 0 else sum(
        (x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return my - b * mx, b


def summarize(rows, chunk):
    """Ratios per configuration and the fitted bytes per (token × id)."""
    full = [r for r in rows if r["chunk"] is None]
    chunked = {(r["vocab"], r["tokens"]): r for r in rows
               if r["chunk"] is not None}
    ratios = []
    for r in full:
        c = chunked[(r["vocab"], r["tokens"])]
        ratios.append(dict(vocab=r["vocab"], tokens=r["tokens"],
                           memory=round(c["step_mib"] / r["step_mib"], 3),
                           time=round(c["step_ms"] / r["step_ms"], 3)))
    a_full, b_full = line_fit([r["tokens"] * r["vocab"] for r in full],
                              [r["step_mib"] * 2 ** 20 for r in full])
    a_chunk, b_chunk = line_fit(
        [chunk * r["vocab"] for r in chunked.values()],
        [r["step_mib"] * 2 ** 20 for r in chunked.values()])

    def largest(a, b):
        return None if b <= 0 else int((24 * GIB - max(a, 0.0)) / b)

    return ratios, dict(
        full_bytes_per_token_vocab=round(b_full, 2),
        chunked_bytes_per_chunk_vocab=round(b_chunk, 2),
        full_max_tokens_x_vocab_24gib=largest(a_full, b_full),
        chunked_max_chunk_x_vocab_24gib=largest(a_chunk, b_chunk),
        extrapolated=True)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(json.loads(args.child))
        return
    rows = []
    for vocab in args.vocabs:
        for tokens in args.tokens:
            for chunk in (None, args.chunk):
                row = measure(args, dict(vocab=vocab, tokens=tokens,
                                         chunk=chunk))
                rows.append(row)
                print(f"vocab {vocab:>7} tokens {tokens:>5} chunk "
                      f"{str(chunk):>5}: step +{row['step_mib']:9.1f} MiB "
                      f"(peak {row['peak_mib']:9.1f}), "
                      f"{row['step_ms']:9.1f} ms", file=sys.stderr)
    ratios, fit = summarize(rows, args.chunk)
    print(json.dumps(dict(backend=args.backend, chunk=args.chunk, rows=rows,
                          ratio=ratios, fit=fit)))


if __name__ == "__main__":
    main()
