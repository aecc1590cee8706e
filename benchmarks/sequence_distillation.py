"""Sequence distillation: tokens per second of a live step, and cache bytes per token.

1. Training throughput of token-level distillation of a causal language
   model, keras-kd's ``Distiller`` (forward KL, T = 1, plus the next-token
   loss) against Keras's own ``keras.distillation.Distiller``
   (``LogitsDistillation(temperature=1, loss=keras.losses.KLDivergence())``,
   the setting that computes a true KL) on the same teacher and student:
   GPT-2-style keras-hub causal LMs built from config (``keras_kd.app.
   language_models``: "teacher" 224,640 parameters, "student" 63,168, the
   pair of ``examples/language_model.py``), byte
   tokens, padded batches with the padding mask as ``sample_weight``. Steps
   are timed inside ``fit()`` after warm-up, the two engines alternating
   round by round; the figure is the best round of each. Positions per
   second count every position of a batch (``batch × length``), real or
   padded, the work both engines do.
2. The cost of on-policy distillation (``kd.OnPolicy``): step time of GKD
   (β = 0.5) off-policy (λ = 0) and on-policy at λ = 0.5 and 1, the student
   continuing each sequence's second half (``prompt_length = length / 2``)
   inside the step; timed the same way, the three alternating round by
   round. A step with λ > 0 samples every batch and reruns the student.
3. The soft-label cache's bytes per token (``kd.compute_soft_labels`` over
   token windows, ``SoftLabels.bytes_per_token``) at top-k 8 and 32 and with
   the full vocabulary, measured on a cache of the byte-level teacher and
   given by the formula for the vocabularies of GPT-2 (50,257) and Gemma
   (256,000).

Usage (the backend comes from ``KERAS_BACKEND``)::

    KERAS_BACKEND=jax python benchmarks/sequence_distillation.py
    KERAS_BACKEND=torch python benchmarks/sequence_distillation.py --smoke
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
from keras_kd.app.language_models import build_causal_lm  # noqa: E402

ENGINES = ("keras-kd", "keras.distillation")


def batches(steps, batch_size, length, seed=0):
    """Byte windows of real text with padded tails, as fit() consumes them."""
    from keras_kd.data.text import load_python_source

    data = load_python_source(sequence_length=length,
                              max_bytes=steps * batch_size * length * 2,
                              seed=seed).train
    n = min(steps * batch_size, data.num_windows)
    x = {"token_ids": data.token_ids[:n], "padding_mask": data.padding_mask[:n]}
    return x, data.labels[:n], data.sample_weight[:n].astype("float32")


def engine(name, teacher, student):
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "keras-kd":
        model = kd.Distiller(teacher, student)
        model.compile(keras.optimizers.Adam(1e-3), sce, alpha=0.5,
                      temperature=1.0, distillation_loss="forward_kl")
        return model
    model = keras.distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=1.0, loss=keras.losses.KLDivergence()),
        student_loss_weight=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sce)
    return model


class _Clock(keras.callbacks.Callback):
    """Starts after ``skip`` steps have finished; stops at the last."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.start, self.stop = skip, None, None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.skip - 1:
            float(logs["loss"])  # the step is done: a Python number
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.stop = time.perf_counter()


def best_seconds_per_step(models, x, y, w, args):
    """Seconds per step of each model's ``fit``, best of ``args.repeats``
    rounds, the models alternating (reversed order every other round)."""
    names = list(models)
    best = {name: float("inf") for name in names}
    for round_ in range(args.repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            clock = _Clock(args.skip)
            models[name].fit(x, y, sample_weight=w,
                             batch_size=args.batch_size, epochs=1,
                             shuffle=False, verbose=0, callbacks=[clock])
            best[name] = min(best[name],
                             (clock.stop - clock.start) / args.steps)
    return best


def throughput(args):
    length, batch_size = args.sequence_length, args.batch_size
    x, y, w = batches(args.skip + args.steps, batch_size, length)
    teacher = build_causal_lm("teacher", sequence_length=length, seed=0)
    models = {name: engine(name, teacher, build_causal_lm(
        "student", sequence_length=length, seed=1)) for name in ENGINES}
    best = best_seconds_per_step(models, x, y, w, args)
    rates = {name: batch_size * length / best[name] for name in ENGINES}
    return {"positions_per_s": rates,
            "ratio_kd_over_keras": rates["keras-kd"] / rates[
                "keras.distillation"],
            "batch_size": batch_size, "sequence_length": length,
            "steps": args.steps, "repeats": args.repeats}


ON_POLICY = (0.0, 0.5, 1.0)


def on_policy_cost(args):
    """Seconds per step of GKD at each λ of ``ON_POLICY``, best of rounds."""
    length, batch_size = args.sequence_length, args.batch_size
    x, y, w = batches(args.skip + args.steps, batch_size, length)
    teacher = build_causal_lm("teacher", sequence_length=length, seed=0)
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models = {}
    for lmbda in ON_POLICY:
        model = kd.Distiller(teacher, build_causal_lm(
            "student", sequence_length=length, seed=1))
        model.compile(keras.optimizers.Adam(1e-3), sce, alpha=0.0,
                      temperature=1.0, distillation_loss="gkd",
                      on_policy=kd.OnPolicy(lmbda=lmbda,
                                            prompt_length=length // 2,
                                            seed=0))
        models[lmbda] = model
    best = best_seconds_per_step(models, x, y, w, args)
    # What fit logged of its last epoch: the sampling part of a step.
    logged = {str(k): float(models[k].get_metrics_result()["sampling_seconds"])
              for k in ON_POLICY}
    return {"seconds_per_step": {str(k): v for k, v in best.items()},
            "logged_sampling_seconds": logged,
            "ratio_over_off_policy": {str(k): best[k] / best[0.0]
                                      for k in ON_POLICY},
            "sampled_tokens_per_sequence": length - length // 2,
            "batch_size": batch_size, "sequence_length": length}


def cache_bytes(args):
    x, y, w = batches(2, 8, args.sequence_length)
    teacher = build_causal_lm("teacher", sequence_length=args.sequence_length,
                              seed=0)
    measured = {}
    for k in (8, 32, None):
        cache = kd.compute_soft_labels(teacher, x, y, sample_weight=w,
                                       batch_size=8, top_k=k)
        measured["full" if k is None else f"top{k}"] = cache.bytes_per_token

    def formula(vocabulary, k):
        if k is None:
            return 4 * vocabulary
        index = 2 if vocabulary <= 65535 else 4
        return k * (2 + index) + 4

    return {"measured_vocabulary_256": measured,
            "formula": {str(v): {("full" if k is None else f"top{k}"):
                                 formula(v, k) for k in (8, 32, None)}
                        for v in (256, 50257, 256000)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="a few short steps (checks the script runs)")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.sequence_length = 4, 32
        args.steps, args.skip, args.repeats = 2, 1, 1
    result = {"backend": keras.backend.backend(),
              "throughput": throughput(args),
              "on_policy": on_policy_cost(args), "cache": cache_bytes(args)}
    rates = result["throughput"]["positions_per_s"]
    print(f"backend {result['backend']}: positions/s keras-kd "
          f"{rates['keras-kd']:.0f}, keras.distillation "
          f"{rates['keras.distillation']:.0f}, ratio "
          f"{result['throughput']['ratio_kd_over_keras']:.3f}")
    cost = result["on_policy"]
    print("on-policy GKD, seconds per step by λ:", ", ".join(
        f"λ={k}: {v:.3f} s ({cost['ratio_over_off_policy'][k]:.2f}x)"
        for k, v in cost["seconds_per_step"].items()))
    print("  of which sampling (logged sampling_seconds):", ", ".join(
        f"λ={k}: {v:.3f} s" for k, v in
        cost["logged_sampling_seconds"].items()))
    print("cache bytes per token:", json.dumps(result["cache"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
