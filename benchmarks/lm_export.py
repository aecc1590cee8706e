"""Decode speed of the student LM on LiteRT, with and without a KV cache.

For each student and each context ``L`` (``--lengths``) it writes two files
with ``keras_kd.export.lm_to_tflite``: the fixed-length forward pass (no
cache, ``sequence_length=L``) and the KV-cache file (``kv_cache_length=L``,
``prefill_<N>`` and ``decode``), and measures in one run on this machine:

* decode ms per token at positions 16, L/2 and L − 1 (the no-cache file
  runs its whole L-position forward pass for every token, wherever it is);
* prefill tokens per second (the cache file's ``prefill_<N>``; the
  no-cache file's L positions per forward pass);
* the file's size and the peak resident memory of a process that loads the
  file and runs it (each file measured in a fresh process);
* the roofline: FLOPs per token (2 per multiply-add of the matmuls, plus
  attention over the L cache positions) over this machine's measured
  single-thread float32 matmul throughput, against the measured decode time.

Students: ``"student"`` (the default of ``keras-kd run --task causal-lm``,
63k parameters at L = 128) and ``"10m"``, a GPT-2 of 6 layers, width 384
(about 11M parameters). LiteRT runs on one thread. Run from the repository
root (``--quick``: the tiny model at L = 32, seconds, for the tests):

    KERAS_BACKEND=tensorflow PYTHONPATH=. python benchmarks/lm_export.py
    KERAS_BACKEND=tensorflow PYTHONPATH=. python benchmarks/lm_export.py --quick
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

STUDENTS = {"student": dict(size="student"),
            "10m": dict(size="student", num_layers=6, num_heads=6,
                        hidden_dim=384, intermediate_dim=1536),
            "tiny": dict(size="tiny")}


def build(name, length):
    from keras_kd.app.language_models import build_causal_lm

    config = dict(STUDENTS[name])
    return build_causal_lm(config.pop("size"), sequence_length=length,
                           seed=0, **config)


def flops_per_token(lm, position):
    """Multiply-adds x 2 of one decode step at ``position``: every kernel
    once (the output projection included), attention's scores and weighted
    sum over ``position + 1`` cache entries."""
    backbone = lm.backbone
    d, layers = backbone.hidden_dim, backbone.num_layers
    kernels = sum(int(np.prod(w.shape)) for w in backbone.weights
                  if w.path.endswith("kernel"))
    output = backbone.vocabulary_size * d
    return 2 * (kernels + output + layers * 2 * (position + 1) * d)


def matmul_gflops(n=512, runs=5):
    """Single-thread float32 matmul throughput (a fresh process with one
    BLAS thread), in GFLOP/s."""
    code = (f"import time, numpy as np; a = np.ones(({n}, {n}), 'float32');"
            f" a @ a; t = time.perf_counter();\n"
            f"for _ in range({runs}): a @ a\n"
            f"print(2 * {n}**3 * {runs} / (time.perf_counter() - t) / 1e9)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


# Runs in a fresh process with LiteRT and NumPy only (no Keras, no
# TensorFlow), so that its peak memory is that of an app running the file.
MEASURE = r"""
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
runs = int(sys.argv[2])
signatures = interpreter.get_signature_list()

def median(call):
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))

result = {}
if "decode" in signatures:
    runners = {name: interpreter.get_signature_runner(name)
               for name in signatures}
    details = runners["decode"].get_input_details()
    cache = {k: np.zeros(d["shape"], d["dtype"]) for k, d in details.items()
             if k.startswith("kv_cache")}
    L = int(next(iter(cache.values())).shape[1])

    def call(name, n, start):
        return runners[name](tokens=np.ones((1, n), "int32"),
                             input_pos=np.arange(start, start + n,
                                                 dtype="int32"), **cache)

    for p in sorted({min(16, L - 1), L // 2, L - 1}):
        result[f"decode_{p}"] = 1000 * median(lambda: call("decode", 1, p))
    n = max(int(k.split("_")[1]) for k in signatures if k != "decode")
    result["prefill_tokens_per_s"] = n / median(
        lambda: call(f"prefill_{n}", n, 0))
else:
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()
    L = int(details["token_ids"]["shape"][1])
    ones = np.ones((1, L), "int32")
    full = median(lambda: runner(token_ids=ones, padding_mask=ones))
    for p in sorted({min(16, L - 1), L // 2, L - 1}):
        result[f"decode_{p}"] = 1000 * full
    result["prefill_tokens_per_s"] = L / full
# VmHWM, the peak resident memory of this process image (ru_maxrss would
# carry the parent's peak across exec).
with open("/proc/self/status") as f:
    hwm = [line for line in f if line.startswith("VmHWM")][0]
result["peak_mib"] = int(hwm.split()[1]) / 1024
print(json.dumps(result))
"""


def measure(path, runs):
    """Timings and peak memory of one file, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, path, str(runs)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows_for(name, lengths, runs, directory, prefill):
    from keras_kd import export

    rows = []
    lm = build(name, max(lengths))
    for L in lengths:
        for cache in (False, True):
            path = os.path.join(directory, f"{name}_{L}_{cache}.tflite")
            if cache:
                report = export.lm_to_tflite(
                    lm, path, kv_cache_length=L,
                    prefill_lengths=(min(prefill, L),), latency_runs=0)
            else:
                report = export.lm_to_tflite(lm, path, L, latency_runs=0)
            row = dict(student=name, parameters=lm.count_params(), L=L,
                       cache=cache, size_kib=report.size_bytes / 1024,
                       max_abs_diff=report.max_abs_diff,
                       flops_per_token=flops_per_token(lm, L - 1)
                       if cache else L * flops_per_token(lm, L // 2))
            row.update(measure(path, runs))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows, gflops):
    lines = ["| student (params) | L | file | size | decode ms at 16 / L/2 / "
             "L−1 | ratio L−1 / 16 | prefill tokens/s | peak MiB | "
             "roofline ms (measured / roofline) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L = r["L"]
        d = [r[f"decode_{p}"] for p in sorted({min(16, L - 1), L // 2,
                                                L - 1})]
        roof = r["flops_per_token"] / (gflops * 1e9) * 1000
        lines.append(
            f"| {r['student']} ({r['parameters']:,}) | {L} | "
            f"{'KV cache' if r['cache'] else 'no cache'} | "
            f"{r['size_kib']:.0f} KiB | "
            + " / ".join(f"{v:.3g}" for v in d)
            + f" | {d[-1] / d[0]:.2f} | {r['prefill_tokens_per_s']:,.0f} | "
            f"{r['peak_mib']:.0f} | {roof:.3g} ({d[-1] / roof:.1f}x) |")
    by = {(r["student"], r["L"], r["cache"]): r for r in rows}
    for (student, L, cache), r in sorted(by.items()):
        if cache and (student, L, False) in by:
            slow = by[(student, L, False)][f"decode_{L - 1}"]
            lines.append(f"\n{student}, L = {L}: the no-cache file's token "
                         f"at L − 1 costs {slow / r[f'decode_{L - 1}']:.1f}x "
                         "the cache file's.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="student,10m")
    parser.add_argument("--lengths", default="128,512,1024")
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help="the tiny model at L = 32, 3 runs (seconds)")
    parser.add_argument("--json", default=None, help="also write the rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.students, args.lengths, args.runs, args.prefill = (
            "tiny", "32", 3, 8)
    gflops = matmul_gflops()
    print(f"single-thread float32 matmul: {gflops:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lm_export_bench_") as tmp:
        start = time.perf_counter()
        for name in args.students.split(","):
            rows += rows_for(name, [int(n) for n in args.lengths.split(",")],
                             args.runs, tmp, args.prefill)
    print(table(rows, gflops))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gflops=gflops, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
