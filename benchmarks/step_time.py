"""Training-step time: live vs. cached (offline) distillation, and Keras's own.

Measures, per Keras backend and for three pairs (a small CNN teacher, ~24x
the student's multiply-adds, so the teacher dominates a live step; a
ResNet50 built with ``weights=None`` at 32x32, whose 25.6M parameters and 175
layers test that a cached step does not grow with the teacher; and the
realistic pair ``resnet50-mobilenetv2``, ResNet50 -> MobileNetV2 at 96x96,
both ``keras.applications`` models built with ``weights=None``, batch 32):

- ``student``: a step of the student alone, ``student.fit(x, y)``;
- ``teacher``: a step of teacher inference, ``teacher.predict_on_batch(x)``;
- ``kd live`` / ``kd cached``: a keras-kd Distiller step, teacher run live or
  its outputs fed as targets ``{"teacher_logits", "labels"}`` (computed once,
  as ``kd.compute_soft_labels`` does);
- ``keras live``: ``keras.distillation.Distiller`` with
  ``LogitsDistillation(temperature=4, loss=keras.losses.KLDivergence())``,
  the peer figure;
- with the CNN teacher, the same three with one feature pair (keras-kd
  ``FitNet``, Keras ``FeatureDistillation``) on layers of equal shape (no
  adapter needed).

Training steps are timed where users run them, inside one ``fit()`` call of ``--skip`` + ``--steps`` batches over in-memory NumPy data: a callback
starts the clock when batch ``--skip`` begins and it stops when the call's
results are on the host, so compilation and the first steps are left out and
the per-epoch work (metric resets, JAX's variable sync) is spread over the
timed steps, as in an epoch. (``train_on_batch`` would instead charge each
step for resetting every metric and, on JAX, for syncing every variable,
teacher included, which ``fit()`` does once per epoch.)

Each figure is the best of ``--repeats`` rounds (other load only adds time);
the configurations are timed round-robin in one process, alternating the
order, so that slow spells fall on all of them alike.
Ratios reported:
``live / (student + teacher)`` (target <= 1.05) and ``cached / student``
(target <= 1.10).

Usage:
    python benchmarks/step_time.py                 # all backends and teachers
    python benchmarks/step_time.py --backend jax --teachers cnn
"""

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")
PAIRS = ("cnn", "resnet50", "resnet50-mobilenetv2")


def build_models(keras, size, classes, teacher_kind="cnn"):
    """A teacher (a 4-conv CNN, ~24x the student's multiply-adds, or a
    ResNet50 built with ``weights=None``) and a tiny student."""
    def teacher():
        if teacher_kind in ("resnet50", "resnet50-mobilenetv2"):
            return keras.applications.ResNet50(
                weights=None, input_shape=(size, size, 3), classes=classes,
                classifier_activation=None, name="teacher")
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
        if teacher_kind == "resnet50-mobilenetv2":
            return keras.applications.MobileNetV2(
                weights=None, input_shape=(size, size, 3), classes=classes,
                classifier_activation=None, name="student")
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


class StepTimer:
    """A callback timing steps inside ``fit()``.

    The clock starts when step ``skip - 1`` has finished (earlier steps are
    warm-up) and stops when the caller has the results of the last step in
    hand, so exactly the steps after ``skip - 1`` are timed.

    Finished, not dispatched: on JAX ``fit()`` dispatches steps
    asynchronously, so Python runs ahead of the computation and the moment a
    batch *begins* on the Python side says nothing of when the earlier steps
    end (timing from there charged the untimed steps' work to the timed ones,
    +15% with 3 of 23). Keras hands ``on_train_batch_end`` the step's logs as
    Python numbers, which exist once the step has run; the callback is
    ``async_safe``, so Keras keeps dispatching asynchronously as it does
    without callbacks and calls it from its callback thread.
    """

    def __init__(self, keras, skip):
        if skip < 1:
            raise ValueError("StepTimer needs skip >= 1 untimed step.")
        timer = self

        class _Callback(keras.callbacks.Callback):
            async_safe = True

            def on_train_batch_end(self, batch, logs=None):
                if batch == skip - 1:
                    float(logs["loss"])  # a Python number: the step is done
                    timer.start = time.perf_counter()

        self.callback = _Callback()
        self.start = None


def measure(args):
    import numpy as np
    import keras

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    import keras_kd as kd

    keras.utils.set_random_seed(0)
    classes = 10
    make_teacher, make_student = build_models(keras, args.size, classes,
                                              args.teacher)
    teacher = make_teacher()
    # Feature pairs need the CNN teacher's "t_hint" layer.
    with_features = args.teacher == "cnn"
    rng = np.random.default_rng(0)
    n = args.batch * (args.steps + args.skip)
    x = rng.random((n, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, classes, n).astype("int32")
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

    # The teacher's outputs as a cache holds them (kd.compute_soft_labels).
    logits = np.asarray(teacher.predict(x, batch_size=args.batch, verbose=0),
                        dtype="float32")
    cached = {"teacher_logits": logits, "labels": y}
    timer = StepTimer(keras, args.skip)

    def train(model, targets):
        def run():
            history = model.fit(x, targets, batch_size=args.batch, epochs=1,
                                shuffle=False, verbose=0,
                                callbacks=[timer.callback])
            # The logged loss is a host float: the last step has finished.
            float(history.history["loss"][-1])
            return time.perf_counter()
        return run

    batches = [x[i:i + args.batch] for i in range(0, n, args.batch)]

    def infer():
        # One compiled forward pass per batch, outputs brought to the host:
        # predict()'s own loop adds data-pipeline and output-gathering work
        # per step (on TensorFlow more than the forward pass itself).
        timer.start = time.perf_counter()
        for batch in batches[args.skip:]:
            teacher.predict_on_batch(batch)
        return time.perf_counter()

    configs = {
        "student": train(student, y),
        "teacher": infer,
        "kd_live": train(kd_distiller(False), y),
        "kd_cached": train(kd_distiller(False), cached),
        "keras_live": train(keras_distiller(False), y),
    }
    if with_features:
        hint_model = keras.Model(teacher.inputs,
                                 teacher.get_layer("t_hint").output)
        hint = np.asarray(hint_model.predict(x, batch_size=args.batch,
                                             verbose=0), dtype="float32")
        configs.update(
            kd_live_feat=train(kd_distiller(True), y),
            kd_cached_feat=train(kd_distiller(True), dict(
                cached, teacher_features=[hint])),
            keras_live_feat=train(keras_distiller(True), y))
    for run in configs.values():  # warm-up: tracing and compilation
        run()
    times = {name: [] for name in configs}
    names = list(configs)
    for round_ in range(args.repeats):
        # Alternate the order so that no configuration always runs first.
        for name in names if round_ % 2 == 0 else names[::-1]:
            timer.start = None
            end = configs[name]()
            times[name].append((end - timer.start) / args.steps)
    if os.environ.get("STEP_TIME_RAW"):  # every round's ms, for a look
        print({k: [round(v * 1e3, 2) for v in vs] for k, vs in times.items()},
              file=sys.stderr)
    # Best of the rounds: other load only ever adds time (timeit's rule), and
    # on a small CPU machine it comes in bursts that can slow a whole round
    # of one configuration by 1.5x (seen with TensorFlow's thread pools).
    t = {name: min(v) for name, v in times.items()}
    base = t["student"] + t["teacher"]
    ratios = {
        "live": t["kd_live"] / base,
        "cached": t["kd_cached"] / t["student"],
        "keras": t["keras_live"] / t["kd_live"],
    }
    if with_features:
        ratios.update(
            live_feat=t["kd_live_feat"] / base,
            cached_feat=t["kd_cached_feat"] / t["student"],
            keras_feat=t["keras_live_feat"] / t["kd_live_feat"])
    return {"backend": keras.backend.backend(), "teacher": args.teacher,
            "size": args.size,
            "ms": {k: v * 1e3 for k, v in t.items()},
            "ratio": ratios,
            "teacher_params": teacher.count_params(),
            "student_params": student.count_params()}


def table(results, args):
    lines = [
        f"Best ms per step (batch {args.batch}, {args.repeats} rounds of "
        f"{args.steps} training steps inside fit()):",
        "",
        "| backend | teacher | student | teacher inf. | kd live | kd cached "
        "| keras live | live/(student+teacher) | cached/student "
        "| keras live/kd live |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    feat = [
        "",
        "With one feature pair (CNN teacher; keras-kd FitNet / Keras "
        "FeatureDistillation, 32-channel maps of equal shape):",
        "",
        "| backend | kd live | kd cached | keras live | live/(student+teacher) "
        "| cached/student | keras live/kd live |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = [""]
    for r in results:
        m, q = r["ms"], r["ratio"]
        lines.append(
            f"| {r['backend']} | {r['teacher']} | {m['student']:.2f} | "
            f"{m['teacher']:.2f} | {m['kd_live']:.2f} | {m['kd_cached']:.2f} "
            f"| {m['keras_live']:.2f} | {q['live']:.3f} | {q['cached']:.3f} | "
            f"{q['keras']:.3f} |")
        if "live_feat" in q:
            feat.append(
                f"| {r['backend']} | {m['kd_live_feat']:.2f} | "
                f"{m['kd_cached_feat']:.2f} | {m['keras_live_feat']:.2f} | "
                f"{q['live_feat']:.3f} | {q['cached_feat']:.3f} | "
                f"{q['keras_feat']:.3f} |")
    for kind in sorted({r["teacher"] for r in results}):
        r = next(r for r in results if r["teacher"] == kind)
        notes.append(
            f"{kind}: {r['size']}x{r['size']}x3 inputs, teacher "
            f"{r['teacher_params']:,} parameters, student "
            f"{r['student_params']:,}.")
    notes.append("Each figure is the best of the rounds; ratios are taken "
                 "between those.")
    return "\n".join(lines + (feat if len(feat) > 6 else []) + notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="all",
                        choices=("all",) + BACKENDS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default 16 for cnn, 32 for resnet50)")
    parser.add_argument("--teachers", default="cnn,resnet50",
                        help="comma-separated pairs among cnn, resnet50, "
                        "resnet50-mobilenetv2 (realistic: 96x96; use with "
                        "--batch 32)")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per fit() call")
    parser.add_argument("--skip", type=int, default=3,
                        help="untimed warm-up steps at the start of each call (>= 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--teacher", choices=PAIRS,
                        help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args()
    if args.skip < 1 or args.steps < 1:
        parser.error("--skip and --steps take at least 1 step each")
    if args.teacher:  # one backend, one teacher: a child run
        os.environ["KERAS_BACKEND"] = args.backend
        if args.size is None:
            args.size = {"cnn": 16, "resnet50": 32,
                         "resnet50-mobilenetv2": 96}[args.teacher]
        print(json.dumps(measure(args)), flush=True)
        return
    teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    bad = sorted(set(teachers) - set(PAIRS))
    if bad or not teachers:
        parser.error(f"--teachers takes {', '.join(PAIRS)}, got {bad}")
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    results = []
    for backend in backends:
        for teacher in teachers:
            # A fresh process per backend (KERAS_BACKEND is read at import).
            cmd = [sys.executable, os.path.abspath(__file__), "--backend",
                   backend, "--teacher", teacher, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--skip", str(args.skip),
                   "--repeats", str(args.repeats)]
            if args.size is not None:
                cmd += ["--size", str(args.size)]
            env = dict(os.environ, KERAS_BACKEND=backend,
                       TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 check=False)
            if out.returncode:
                sys.stderr.write(out.stderr[-3000:])
                raise SystemExit(f"{backend} / {teacher} run failed")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{backend} / {teacher}: done", file=sys.stderr, flush=True)
    print(table(results, args))


if __name__ == "__main__":
    main()
