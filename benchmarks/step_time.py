"""Training-step time: live vs. cached (offline) distillation, and Keras's own.

Measures, on one small CNN teacher (much bigger than its student, so the
teacher dominates a live step) and per Keras backend:

- ``student``: the student alone, ``student.train_on_batch(x, y)``;
- ``teacher``: one teacher inference, ``teacher.predict_on_batch(x)``;
- ``kd live`` / ``kd cached``: a keras-kd Distiller step, teacher run live or
  its outputs fed as targets ``{"teacher_logits", "labels"}``;
- ``keras live``: ``keras.distillation.Distiller`` with
  ``LogitsDistillation(temperature=4, loss=keras.losses.KLDivergence())``,
  the peer figure;
- the same three with one feature pair (keras-kd ``FitNet``, Keras
  ``FeatureDistillation``) on layers of equal shape (no adapter needed).

Each figure is the median over ``--repeats`` rounds of ``--steps`` steps on
fixed batches, after warm-up; the configurations are timed round-robin in one
process so that load changes affect them alike. Ratios reported:
``live / (student + teacher)`` (target <= 1.05) and ``cached / student``
(target <= 1.10).

Usage:
    python benchmarks/step_time.py                 # all three backends
    python benchmarks/step_time.py --backend jax   # one backend
"""

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")


def build_models(keras, size, classes):
    """A 4-conv teacher (~24x the student's multiply-adds) and a tiny student."""
    def teacher():
        x = keras.Input((size, size, 3), name="t_input")
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                                name="t_conv1")(x)
        h = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                                name="t_conv2")(h)
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                                name="t_hint")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(128, 3, padding="same", activation="relu",
                                name="t_conv3")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(classes, name="t_logits")(h),
                           name="teacher")

    def student():
        x = keras.Input((size, size, 3), name="s_input")
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                                name="s_hint")(x)
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                                name="s_conv2")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(classes, name="s_logits")(h),
                           name="student")

    return teacher, student


def measure(args):
    import numpy as np
    import keras

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    import keras_kd as kd

    keras.utils.set_random_seed(0)
    classes = 10
    make_teacher, make_student = build_models(keras, args.size, classes)
    teacher = make_teacher()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, classes, args.batch).astype("int32")
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def sgd():
        return keras.optimizers.SGD(0.01)

    student = make_student()
    student.compile(optimizer=sgd(), loss=sce)

    def kd_distiller(features):
        d = kd.Distiller(teacher=teacher, student=make_student())
        d.compile(optimizer=sgd(), loss=sce, alpha=0.1, temperature=4.0,
                  feature_losses=[kd.FitNet("t_hint", "s_hint", weight=1.0)]
                  if features else None)
        return d

    def keras_distiller(features):
        losses = [keras.distillation.LogitsDistillation(
            temperature=4.0, loss=keras.losses.KLDivergence())]
        if features:
            losses.append(keras.distillation.FeatureDistillation(
                loss="mse", teacher_layer_name="t_hint",
                student_layer_name="s_hint"))
        d = keras.distillation.Distiller(
            teacher=teacher, student=make_student(),
            distillation_losses=losses, student_loss_weight=0.1)
        d.compile(optimizer=sgd(), loss=sce)
        return d

    logits = np.asarray(teacher.predict_on_batch(x), dtype="float32")
    hint_model = keras.Model(teacher.inputs, teacher.get_layer("t_hint").output)
    hint = np.asarray(hint_model.predict_on_batch(x), dtype="float32")
    cached = {"teacher_logits": logits, "labels": y}
    # As a tensor: Keras's torch train_on_batch leaves NumPy arrays nested in
    # lists as they are (fit's data adapters convert them).
    cached_f = dict(cached, teacher_features=[keras.ops.convert_to_tensor(hint)])

    kd_live, kd_cached = kd_distiller(False), kd_distiller(False)
    kdf_live, kdf_cached = kd_distiller(True), kd_distiller(True)
    # Keras's train_on_batch re-traces the whole model (_symbolic_build)
    # whenever one of its layers reports built=False: detect and report it.
    unbuilt = sorted({layer.name for layer in kd_live._flatten_layers()
                      if not layer.built})
    ke_live, kef_live = keras_distiller(False), keras_distiller(True)
    configs = {
        "student": lambda: student.train_on_batch(x, y),
        "teacher": lambda: teacher.predict_on_batch(x),
        "kd_live": lambda: kd_live.train_on_batch(x, y),
        "kd_cached": lambda: kd_cached.train_on_batch(x, cached),
        "keras_live": lambda: ke_live.train_on_batch(x, y),
        "kd_live_feat": lambda: kdf_live.train_on_batch(x, y),
        "kd_cached_feat": lambda: kdf_cached.train_on_batch(x, cached_f),
        "keras_live_feat": lambda: kef_live.train_on_batch(x, y),
    }
    for fn in configs.values():  # warm-up: tracing and compilation
        for _ in range(3):
            fn()
    times = {name: [] for name in configs}
    names = list(configs)
    for round_ in range(args.repeats):
        # Alternate the order so that no configuration always runs first.
        for name in names if round_ % 2 == 0 else names[::-1]:
            fn = configs[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()  # returns NumPy logs / predictions: the step is synced
            times[name].append((time.perf_counter() - start) / args.steps)
    t = {name: np.array(v) for name, v in times.items()}
    base = t["student"] + t["teacher"]
    # Ratios are taken within each round (configurations measured minutes
    # apart see different machine load), then the median over rounds.
    ratios = {
        "live": t["kd_live"] / base,
        "cached": t["kd_cached"] / t["student"],
        "keras": t["keras_live"] / t["kd_live"],
        "live_feat": t["kd_live_feat"] / base,
        "cached_feat": t["kd_cached_feat"] / t["student"],
        "keras_feat": t["keras_live_feat"] / t["kd_live_feat"],
    }
    return {"backend": keras.backend.backend(),
            "ms": {k: float(np.median(v)) * 1e3 for k, v in t.items()},
            "ratio": {k: float(np.median(v)) for k, v in ratios.items()},
            "unbuilt_layers": unbuilt,
            "teacher_params": teacher.count_params(),
            "student_params": student.count_params()}


def table(results, args):
    lines = [
        f"Median ms per step (batch {args.batch}, {args.size}x{args.size}x3 "
        f"inputs, {args.repeats} rounds of {args.steps} steps):",
        "",
        "| backend | student | teacher inf. | kd live | kd cached | keras live "
        "| live/(student+teacher) | cached/student | keras live/kd live |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    feat = [
        "",
        "With one feature pair (keras-kd FitNet / Keras FeatureDistillation, "
        "32-channel maps of equal shape):",
        "",
        "| backend | kd live | kd cached | keras live | live/(student+teacher) "
        "| cached/student | keras live/kd live |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, q = r["ms"], r["ratio"]
        lines.append(
            f"| {r['backend']} | {m['student']:.2f} | {m['teacher']:.2f} | "
            f"{m['kd_live']:.2f} | {m['kd_cached']:.2f} | "
            f"{m['keras_live']:.2f} | {q['live']:.3f} | {q['cached']:.3f} | "
            f"{q['keras']:.3f} |")
        feat.append(
            f"| {r['backend']} | {m['kd_live_feat']:.2f} | "
            f"{m['kd_cached_feat']:.2f} | {m['keras_live_feat']:.2f} | "
            f"{q['live_feat']:.3f} | {q['cached_feat']:.3f} | "
            f"{q['keras_feat']:.3f} |")
    notes = ["", f"Teacher {results[0]['teacher_params']:,} parameters, "
             f"student {results[0]['student_params']:,}. Ratios: median over "
             "rounds of the per-round ratio."]
    unbuilt = sorted({n for r in results for n in r["unbuilt_layers"]})
    if unbuilt:
        notes.append(
            f"Note: the Distiller's layers {unbuilt} report built=False, so "
            "Keras's train_on_batch re-traces the model (_symbolic_build) at "
            "every step.")
    return "\n".join(lines + feat + notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="all",
                        choices=("all",) + BACKENDS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line (used per backend)")
    args = parser.parse_args()
    if args.backend != "all":
        os.environ["KERAS_BACKEND"] = args.backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        result = measure(args)
        print(json.dumps(result) if args.json else table([result], args),
              flush=True)
        return
    results = []
    for backend in BACKENDS:
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend,
               "--json", "--batch", str(args.batch), "--size", str(args.size),
               "--steps", str(args.steps), "--repeats", str(args.repeats)]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             check=False)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"{backend} run failed")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{backend}: done", file=sys.stderr, flush=True)
    print(table(results, args))


if __name__ == "__main__":
    main()
