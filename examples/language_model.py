"""Distil a causal language model, offline, on the Python standard library's source.

Data: the Python standard library's own ``.py`` files (present in every
Python installation), read as bytes, split between training and held-out
*by file* (``keras_kd.data.load_python_source``): byte-level tokens, windows
of 128 bytes, padding weights.

Models: GPT-2-style keras-hub causal LMs built from config
(``keras_kd.app.language_models.build_causal_lm``): a teacher of 0.22 M
parameters and a student 3.6x smaller (63 k). For each seed the teacher is
trained, then the same initial student is trained four times on the same
batches in the same order: alone on the next-byte labels, and distilled
with ``kd.Distiller`` (``alpha=0.5``: half the next-byte loss, half the
distillation term, T = 1) with forward KL, reverse KL and GKD (β = 0.5).
Every model is scored in bits per byte on the held-out files.

Usage::

    KERAS_BACKEND=jax python examples/language_model.py             # 3 seeds
    KERAS_BACKEND=jax python examples/language_model.py --smoke     # seconds
    python examples/language_model.py --seeds 0 --steps 200 --json out.json
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
import keras_kd as kd  # noqa: E402
from keras_kd.app.language_models import (  # noqa: E402
    build_causal_lm,
    evaluate_bits_per_byte,
    greedy_agreement,
    train_causal_lm,
)
from keras_kd.data import load_python_source  # noqa: E402

OBJECTIVES = ("forward_kl", "reverse_kl", "gkd")
SMOKE = dict(steps=60, teacher_steps=120, max_bytes=60_000, sequence_length=32,
             batch_size=8, seeds=[0], teacher="tiny", student="tiny")


def trained_teacher(seed, data, args):
    """The teacher, trained on the training windows in ``seed``'s order."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    teacher = build_causal_lm(args.teacher, sequence_length=data.sequence_length,
                              seed=seed, name="teacher")
    train_causal_lm(teacher, data.train.shuffled(seed), args.teacher_steps,
          args.batch_size)
    bits = evaluate_bits_per_byte(teacher, data.held_out)
    print(f"teacher (seed {seed}): {bits:.3f} bits/byte "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return teacher, bits


def run_seed(seed, data, args, teacher=None):
    """Teacher (unless one is given), student alone and distilled students
    for one seed."""
    if teacher is None:
        teacher, teacher_bits = trained_teacher(seed, data, args)
    else:
        teacher, teacher_bits = teacher
    keras.utils.set_random_seed(seed)
    train_windows = data.train.shuffled(seed)  # one order for every student
    length = data.sequence_length
    results = {"teacher": teacher_bits, "agreement": {}, "seconds": {}}
    prompt = args.prompt_length or length // 2
    for name in ("student alone",) + tuple(args.objectives) + tuple(
            on_policy_names(args)):
        start = time.perf_counter()
        student = build_causal_lm(args.student, sequence_length=length,
                                  seed=seed + 1000, name="student")
        on_policy = None
        if name in on_policy_names(args):
            on_policy = kd.OnPolicy(lmbda=args.on_policy, prompt_length=prompt,
                                    seed=seed)
        train_causal_lm(
            student, train_windows, args.steps, args.batch_size,
            teacher=None if name == "student alone" else teacher,
            objective="gkd" if on_policy else name, on_policy=on_policy)
        results["seconds"][name] = time.perf_counter() - start
        results[name] = evaluate_bits_per_byte(student, data.held_out)
        if args.agreement:
            results["agreement"][name] = greedy_agreement(
                teacher, student, data.held_out, prompt, args.agreement)
        agree = (f", greedy agreement {results['agreement'][name]:.3f}"
                 if args.agreement else "")
        print(f"seed {seed}: {name} {results[name]:.3f} bits/byte{agree} "
              f"({results['seconds'][name]:.0f} s of training)", flush=True)
    results["parameters"] = {
        "teacher": teacher.count_params(), "student": student.count_params()}
    return results


def on_policy_names(args):
    """The run name of on-policy GKD, when ``--on-policy`` is given."""
    return [] if args.on_policy is None else [
        f"gkd on-policy (λ={args.on_policy:g})"]


def summarise(per_seed, names):
    """Mean and standard deviation over seeds, and the paired differences
    against the student alone."""
    table = {}
    for name in names:
        values = np.array([r[name] for r in per_seed])
        row = {"mean": float(values.mean()), "std": float(values.std(
            ddof=1)) if len(values) > 1 else 0.0, "values": values.tolist()}
        for key in ("agreement", "seconds"):
            if name in per_seed[0].get(key, {}):
                found = np.array([r[key][name] for r in per_seed])
                row[key] = {"mean": float(found.mean()), "std": float(
                    found.std(ddof=1)) if len(found) > 1 else 0.0}
        if name not in ("teacher", "student alone"):
            gain = np.array([r["student alone"] - r[name] for r in per_seed])
            row["gain_vs_alone"] = float(gain.mean())
            row["seeds_better_than_alone"] = int((gain > 0).sum())
        table[name] = row
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400,
                        help="training steps of each student")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--max-bytes", type=int, default=4_000_000)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                        choices=OBJECTIVES)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument(
        "--shared-teacher", type=int, default=None, metavar="SEED",
        help="train one teacher (with this seed) for every seed, instead of "
        "one teacher per seed")
    parser.add_argument("--student", default="student")
    parser.add_argument(
        "--on-policy", type=float, default=None, metavar="LAMBDA",
        help="also distil with GKD on-policy: this share of the sequences "
        "continued by the student (kd.OnPolicy)")
    parser.add_argument(
        "--prompt-length", type=int, default=None,
        help="prompt of on-policy sampling and of the greedy agreement "
        "(default: half the sequence length)")
    parser.add_argument(
        "--agreement", type=int, default=0, metavar="N",
        help="score the greedy continuations of N held-out prompts against "
        "the teacher's (0: skip)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models and data: checks that it runs")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.smoke:  # smaller defaults; flags given explicitly still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    data = load_python_source(sequence_length=args.sequence_length,
                              max_bytes=args.max_bytes)
    print(f"backend {keras.backend.backend()}: {data.train.num_files} "
          f"training files ({data.train.num_bytes:,} bytes), "
          f"{data.held_out.num_files} held-out files "
          f"({data.held_out.num_bytes:,} bytes)", flush=True)
    shared = (None if args.shared_teacher is None
              else trained_teacher(args.shared_teacher, data, args))
    per_seed = [run_seed(seed, data, args, shared) for seed in args.seeds]
    names = (["teacher", "student alone"] + list(args.objectives)
             + on_policy_names(args))
    table = summarise(per_seed, names)
    print()
    print("| model | held-out bits per byte (mean ± std over "
          f"{len(args.seeds)} seeds) | gain vs alone | seeds better | "
          "greedy agreement with the teacher | training time (s) |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        gain = (f"{row['gain_vs_alone']:+.3f}" if "gain_vs_alone" in row
                else "")
        better = (f"{row['seeds_better_than_alone']}/{len(args.seeds)}"
                  if "gain_vs_alone" in row else "")
        agree = ("{mean:.3f} ± {std:.3f}".format(**row["agreement"])
                 if "agreement" in row else "")
        seconds = ("{mean:.0f}".format(**row["seconds"])
                   if "seconds" in row else "")
        print(f"| {name} | {row['mean']:.3f} ± {row['std']:.3f} | {gain} | "
              f"{better} | {agree} | {seconds} |")
    result = {"backend": keras.backend.backend(), "args": vars(args),
              "parameters": per_seed[0]["parameters"], "table": table}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
