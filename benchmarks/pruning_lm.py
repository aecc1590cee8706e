"""Pruned and distilled against random and distilled: the byte LM at equal size.

The pair of ``examples/language_model.py``: a GPT-2-style keras-hub causal LM
teacher (224,640 parameters: 4 blocks, 2 heads, hidden 64, 256 MLP units),
trained on the Python standard library's source read as bytes, and a
student of 63,168 parameters (4 blocks, 2 heads, hidden 32, 128 units).
One teacher (seed 0, ``--teacher-steps`` steps) serves every seed. For each
seed every student is trained on the same batches in the same order,
``--steps`` steps of 32 windows of 128 bytes, and scored in bits per byte on
the held-out files:

* **pruned (width), distilled**: ``prune_transformer(teacher, hidden=32,
  intermediate=128)`` ranked on 256 training windows (the seed's order):
  the student's exact shape (both heads kept, 16 channels each), then
  distilled (``kd.Distiller``, forward KL, ``alpha=0.5``, T = 1);
* **pruned (width + depth), distilled**: ``layers=3, hidden=32,
  intermediate=193`` (63,139 parameters), then distilled the same way;
* **pruned (width), alone**: the width-pruned model trained on the labels
  only, which separates what the initialisation gives from what the teacher
  gives;
* **random, distilled** and **random, alone**: the student from random
  weights (``build_causal_lm("student", seed=seed + 1000)``, as the example
  builds it), distilled the same way, and trained alone.

The pruned models' bits per byte before any training are reported too.

Usage, from the repository root (the backend from ``KERAS_BACKEND``)::

    KERAS_BACKEND=jax python benchmarks/pruning_lm.py            # 3 seeds
    KERAS_BACKEND=jax python benchmarks/pruning_lm.py --quick    # < 1 min
    python benchmarks/pruning_lm.py --variants "pruned (width), distilled"

``--teacher-file PATH`` keeps the trained teacher there (written once,
reused after, never replaced).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from keras_kd.app.language_models import (  # noqa: E402
    build_causal_lm,
    evaluate_bits_per_byte,
    train_causal_lm,
)
from keras_kd.data import load_python_source  # noqa: E402
from keras_kd.pruning.transformers import prune_transformer  # noqa: E402

PRUNED = {
    "pruned (width)": dict(hidden=32, intermediate=128),
    "pruned (width + depth)": dict(layers=3, hidden=32, intermediate=193),
}
VARIANTS = (
    "pruned (width), distilled", "pruned (width + depth), distilled",
    "random, distilled", "random, alone", "pruned (width), alone")
QUICK = dict(steps=10, teacher_steps=20, max_bytes=20_000, sequence_length=32,
             batch_size=8, seeds=[0], calibration=16)
QUICK_PRUNED = {  # the "tiny" teacher: 1 block, hidden 16, 32 units
    "pruned (width)": dict(hidden=8, intermediate=16),
    "pruned (width + depth)": dict(hidden=8, intermediate=16),
}


def train_teacher(data, args):
    """The teacher (seed 0), trained as examples/language_model.py does, or
    loaded from ``--teacher-file`` when that file exists."""
    if args.teacher_file and os.path.exists(args.teacher_file):
        return keras.saving.load_model(args.teacher_file, compile=False)
    keras.utils.set_random_seed(0)
    teacher = build_causal_lm(args.teacher, sequence_length=data.sequence_length,
                              seed=0, name="teacher")
    train_causal_lm(teacher, data.train.shuffled(0), args.teacher_steps,
                    args.batch_size)
    if args.teacher_file:
        tmp = args.teacher_file + ".partial.keras"
        teacher.save(tmp)
        os.replace(tmp, args.teacher_file)
    return teacher


def student_of(variant, teacher, train, seed, args):
    """The initial student of ``variant`` for ``seed``, and its prune
    report (None for the random student)."""
    if variant.startswith("random"):
        return build_causal_lm(args.student,
                               sequence_length=args.sequence_length,
                               seed=seed + 1000, name="student"), None
    shape = (QUICK_PRUNED if args.quick else PRUNED)[variant.rsplit(",", 1)[0]]
    calibration = {"token_ids": train.token_ids[:args.calibration],
                   "padding_mask": train.padding_mask[:args.calibration]}
    return prune_transformer(teacher, calibration_data=calibration, **shape)


def run(args):
    data = load_python_source(sequence_length=args.sequence_length,
                              max_bytes=args.max_bytes)
    print(f"backend {keras.backend.backend()}: {data.train.num_bytes:,} "
          f"training bytes, {data.held_out.num_bytes:,} held-out", flush=True)
    start = time.perf_counter()
    teacher = train_teacher(data, args)
    results = {"backend": keras.backend.backend(), "args": vars(args),
               "teacher": evaluate_bits_per_byte(teacher, data.held_out),
               "teacher_params": teacher.count_params(), "runs": {},
               "untrained": {}, "params": {}, "seconds": {}}
    print(f"teacher: {results['teacher']:.3f} bits/byte, "
          f"{results['teacher_params']:,} parameters "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    for variant in args.variants:
        for seed in args.seeds:
            keras.utils.set_random_seed(seed)
            train = data.train.shuffled(seed)
            start = time.perf_counter()
            student, report = student_of(variant, teacher, train, seed, args)
            key = f"{variant} / {seed}"
            if report is not None:
                results["untrained"][key] = evaluate_bits_per_byte(
                    student, data.held_out)
                results.setdefault("reports", {})[key] = {
                    k: report[k] for k in ("sizes_after", "kept_blocks",
                                           "block_scores", "params_after")}
            train_causal_lm(student, train, args.steps, args.batch_size,
                            teacher=None if variant.endswith("alone")
                            else teacher)
            bits = evaluate_bits_per_byte(student, data.held_out)
            results["runs"].setdefault(variant, {})[seed] = bits
            results["params"][variant] = student.count_params()
            results["seconds"][key] = time.perf_counter() - start
            untrained = results["untrained"].get(key)
            print(f"seed {seed}: {variant}: {bits:.3f} bits/byte"
                  + (f" (pruned, untrained: {untrained:.3f})"
                     if untrained is not None else "")
                  + f", {student.count_params():,} parameters "
                  f"({results['seconds'][key]:.0f} s)", flush=True)
            if args.json:
                _write(args.json, results)
    return results


def _write(path, results):
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)


def table(results):
    """The Markdown table of ``results``: mean ± std over seeds and each
    seed's figure, by variant."""
    lines = ["| student | parameters | bits per byte | per seed | "
             "untrained (pruned) |", "|---|---|---|---|---|",
             f"| teacher | {results['teacher_params']:,} | "
             f"{results['teacher']:.3f} | | |"]
    for variant, by_seed in results["runs"].items():
        values = np.array(list(by_seed.values()))
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        untrained = [v for k, v in results["untrained"].items()
                     if k.startswith(variant + " /")]
        lines.append(
            f"| {variant} | {results['params'][variant]:,} | "
            f"{values.mean():.3f} ± {std:.3f} | "
            + ", ".join(f"{v:.3f}" for v in values) + " | "
            + (", ".join(f"{v:.3f}" for v in untrained)) + " |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark (see the module's text); returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--max-bytes", type=int, default=4_000_000)
    parser.add_argument("--calibration", type=int, default=256,
                        help="training windows the pruning ranks on")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        choices=VARIANTS)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default="student")
    parser.add_argument("--teacher-file", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and data: checks that it runs")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK, teacher="tiny", student="tiny")
        args = parser.parse_args(argv)
    results = run(args)
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
