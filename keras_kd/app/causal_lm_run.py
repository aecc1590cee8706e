"""``keras-kd run --task causal-lm``: the offline language-model run.

Trains a GPT-2-style byte-level teacher
(:func:`keras_kd.app.language_models.build_causal_lm`) on the Python standard
library's source (:func:`keras_kd.data.load_python_source`, split by file),
then the same initial student twice on the same batches in the same order:
alone on the next-byte labels, and distilled with :class:`keras_kd.Distiller`
(on-policy with ``--on-policy LAMBDA``). It saves the three models, exports
the distilled student to LiteRT with a KV cache
(:func:`keras_kd.export.lm_to_tflite` with ``kv_cache_length``, in float32
and int8 weights) and writes ``report.json``, ``report.md`` and
``learning_curves.png``: per model the held-out bits per byte, parameters,
file size, latency, greedy agreement with the teacher and the greedy
continuation of one held-out prompt; per LiteRT file its size, prefill
tokens per second, decode milliseconds per token at the cache's first and
last positions, bits per byte and greedy samples.

The training is that of ``examples/language_model.py``
(:func:`~keras_kd.app.language_models.train_causal_lm`).
"""

import dataclasses
import os
import time

import numpy as np

from keras_kd.app.parser import apply_task_defaults
from keras_kd.app.runs import (
    export_failed, make_run_dir, stage, temporary_files_in, timestamp)

# Held-out windows scored along training for the learning curves, and
# points per curve.
CURVE_WINDOWS = 32
CURVE_POINTS = 10
# Held-out prompts whose greedy continuations are compared with the
# teacher's.
AGREEMENT_PROMPTS = 64
# Held-out windows on which each LiteRT file's bits per byte is compared
# (the cache file scores a window one decode step per byte), and greedy
# samples per file.
LITERT_BPB_WINDOWS = 64
SAMPLES = 2


def first_windows(windows, count):
    """The first ``count`` windows of a ``TokenWindows``."""
    per_window = ("token_ids", "padding_mask", "labels", "sample_weight",
                  "file_index")
    return dataclasses.replace(windows, **{
        name: getattr(windows, name)[:count] for name in per_window})


def decode(token_ids):
    """Byte ids as text (UTF-8; undecodable bytes become U+FFFD)."""
    return bytes(np.asarray(token_ids, np.uint8).tolist()).decode(
        "utf-8", errors="replace")


def prompt_rows(windows, count):
    """The first ``count`` full-length windows: the prompts of the greedy
    agreement and (the first) of the samples."""
    return np.flatnonzero(np.asarray(windows.padding_mask).all(axis=1))[:count]


def litert_continuations(lm, token_ids, prompt_length):
    """Greedy continuations with a :class:`keras_kd.export.LiteRTCausalLM`:
    each row's first ``prompt_length`` ids continued to the file's length."""
    return np.stack([
        lm.generate(ids[:prompt_length], lm.sequence_length - prompt_length)
        for ids in np.asarray(token_ids)])


def litert_bits_per_byte(lm, windows):
    """Bits per byte of a :class:`keras_kd.export.LiteRTCausalLM` on
    ``TokenWindows``: the file's own logits, one window at a time."""
    from keras_kd.data.text import bits_per_byte

    total = weight = 0.0
    for ids, mask, labels, w in zip(windows.token_ids, windows.padding_mask,
                                    windows.labels, windows.sample_weight):
        n = int(mask.sum())
        if not w[:n].any():
            continue
        total += bits_per_byte(lm.logits(ids[:n]), labels[:n], w[:n]) * float(
            w[:n].sum())
        weight += float(w[:n].sum())
    return total / weight


def litert_speed(lm, prefill_length, runs):
    """Speed of a KV-cache :class:`keras_kd.export.LiteRTCausalLM`, timed
    on the file with LiteRT (medians of ``runs`` calls after one warm-up,
    on an empty cache): ``prefill_tokens_per_s``, ``prefill_length`` over
    the seconds of one ``prefill_<prefill_length>`` call from position 0;
    ``decode_ms_start`` and ``decode_ms_end``, the milliseconds of one
    ``decode`` step at position 0 and at the last position ``L - 1``."""
    cache = lm.new_cache()

    def median_s(name, n, start):
        tokens = [0] * n
        lm.run_signature(name, tokens, start, cache)
        times = []
        for _ in range(runs):
            begin = time.perf_counter()
            lm.run_signature(name, tokens, start, cache)
            times.append(time.perf_counter() - begin)
        return float(np.median(times))

    last = lm.kv_cache_length - 1
    return dict(
        prefill_tokens_per_s=prefill_length / median_s(
            f"prefill_{prefill_length}", prefill_length, 0),
        decode_ms_start=1000 * median_s("decode", 1, 0),
        decode_ms_end=1000 * median_s("decode", 1, last),
        decode_positions=[0, last])


class _LMRun:
    """The state one ``keras-kd run --task causal-lm`` builds up."""

    def __init__(self, args):
        import keras

        self.start = time.perf_counter()
        self.args = args
        self.backend = keras.backend.backend()
        self.run_name, self.run_dir = make_run_dir(  # before any training
            args.output, args.run_name, "causal-lm-{}-{}-{}".format(
                args.lm_teacher, args.lm_student, timestamp()))
        self.timings, self.curves, self.models = {}, {}, {}
        self.export_info = self.litert = None
        keras.utils.set_random_seed(args.seed)


def _load_data(run):
    from keras_kd.data import load_python_source

    args = run.args
    run.data = load_python_source(sequence_length=args.sequence_length,
                                  max_bytes=args.max_bytes)
    train, held = run.data.train, run.data.held_out
    stage(f"data: the Python standard library's source, {train.num_files} "
          f"training files ({train.num_bytes:,} bytes, {train.num_windows} "
          f"windows of {args.sequence_length}), {held.num_files} held-out "
          f"files ({held.num_bytes:,} bytes)")
    run.prompt_length = args.sequence_length // 2
    run.rows = prompt_rows(held, AGREEMENT_PROMPTS)
    if not len(run.rows):
        raise SystemExit(
            "keras-kd run: the held-out text has no full window of "
            f"{args.sequence_length} bytes to prompt with; raise --max-bytes "
            "or lower --sequence-length")
    run.curve_windows = first_windows(held, CURVE_WINDOWS)


def _train(run, key, size, steps, seed, teacher=None, on_policy=None):
    """Builds a model of ``size`` (initial weights from ``seed``) and trains
    it; records its learning curve under ``key``."""
    from keras_kd.app.language_models import (
        BitsPerByteCurve, build_causal_lm, train_causal_lm)

    args = run.args
    model = build_causal_lm(size, sequence_length=args.sequence_length,
                            seed=seed, name="teacher" if key == "teacher"
                            else "student")
    curve = BitsPerByteCurve(model, run.curve_windows,
                             max(1, steps // CURVE_POINTS))
    try:
        train_causal_lm(
            model, run.train_windows, steps, args.batch_size, teacher=teacher,
            objective=args.objective, on_policy=on_policy, alpha=args.alpha,
            temperature=args.temperature, learning_rate=args.learning_rate,
            callbacks=[curve], verbose=args.verbose)
    except ValueError as error:
        raise SystemExit(f"keras-kd run: {error}") from None
    run.curves[key] = {"steps": curve.steps,
                       "bits_per_byte": curve.bits_per_byte}
    run.models[key] = model
    return model


def _train_teacher(run):
    import keras

    args = run.args
    keras.utils.set_random_seed(args.seed)
    run.train_windows = run.data.train.shuffled(args.seed)
    stage(f"teacher ({args.lm_teacher}): training {args.teacher_steps} "
          f"steps of {args.batch_size} windows")
    _train(run, "teacher", args.lm_teacher, args.teacher_steps, args.seed)


def _train_students(run):
    """The student alone, then the same initial student distilled; both on
    the same batches in the same order (examples/language_model.py)."""
    import keras

    import keras_kd as kd

    args = run.args
    on_policy = None
    if args.on_policy is not None:
        on_policy = kd.OnPolicy(lmbda=args.on_policy,
                                prompt_length=run.prompt_length,
                                seed=args.seed)
    for key, teacher in (("student alone", None),
                         ("distilled student", run.models["teacher"])):
        keras.utils.set_random_seed(args.seed)
        stage(f"{key} ({args.lm_student}): training {args.steps} steps"
              + ("" if teacher is None else
                 f", objective {args.objective}, alpha {args.alpha}, T "
                 f"{args.temperature:g}" + (
                     f", on-policy λ={args.on_policy:g}" if on_policy
                     else "")))
        start = time.perf_counter()
        _train(run, key, args.lm_student, args.steps, args.seed + 1000,
               teacher=teacher, on_policy=on_policy if teacher else None)
        run.timings[key.replace(" ", "_") + "_s"] = (time.perf_counter()
                                                    - start)


def _measure(run):
    """Saves the three models; measures bits per byte, latency, greedy
    agreement with the teacher and one greedy sample each."""
    from keras_kd import saving
    from keras_kd.app import report
    from keras_kd.app.language_models import (
        evaluate_bits_per_byte, greedy_continuations)

    args, held = run.args, run.data.held_out
    p = run.prompt_length
    stage("saving the models; measuring held-out bits per byte, latency, "
          "greedy agreement with the teacher and samples")
    ids, mask = held.token_ids[run.rows], held.padding_mask[run.rows]
    example = {"token_ids": ids[:1], "padding_mask": mask[:1]}
    run.prompt = decode(ids[0, :p])
    run.records = []
    for key, label, size in (
            ("teacher", "teacher", args.lm_teacher),
            ("student_alone", "student alone", args.lm_student),
            ("student_distilled", "distilled student", args.lm_student)):
        model = run.models[label]
        path = os.path.join(run.run_dir, f"{key}.keras")
        # What greedy_agreement compares, with one generation per model.
        generated = greedy_continuations(model, ids, mask, p)
        if key == "teacher":
            run.teacher_continuations = generated
        run.records.append(dict(
            key=key, label=f"{label} ({size})", path=path,
            parameters=report.count_params(model),
            size_bytes=saving.save_model_only(model, path),
            bits_per_byte=evaluate_bits_per_byte(model, held),
            greedy_agreement=None if key == "teacher" else _agreement(
                run, generated),
            latency_ms=report.keras_latency_ms(model, example,
                                               runs=args.latency_runs),
            sample=decode(generated[0, p:]),
            runtime=f"keras ({run.backend})"))


def _agreement(run, generated):
    """The share of generated positions equal to the teacher's."""
    p = run.prompt_length
    return float(np.mean(generated[:, p:] == run.teacher_continuations[:, p:]))


def export_precisions(quantize):
    """The precisions the run exports, ``--quantize``'s first: float32 and
    int8 weights (``"dynamic"``) always.

    >>> export_precisions("float16")
    ['float16', 'float32', 'dynamic']
    """
    return list(dict.fromkeys((quantize, "float32", "dynamic")))


def _export(run):
    """Exports the distilled student with a KV cache (``lm_to_tflite(...,
    kv_cache_length=L)``, ``L`` the run's sequence length: the prompts plus
    their continuations) in each precision of :func:`export_precisions` and
    measures the files with LiteRT; a failure is reported, the models
    kept."""
    args, held = run.args, run.data.held_out
    p, length = run.prompt_length, args.sequence_length
    ids = held.token_ids[run.rows]
    stage(f"exporting the distilled student to LiteRT with a KV cache of "
          f"{length} positions ({', '.join(export_precisions(args.quantize))})"
          f": {run.run_dir}")
    from keras_kd.app.language_models import evaluate_bits_per_byte

    try:
        from keras_kd.export import LiteRTCausalLM, lm_to_tflite

        files, samples, main = {}, {}, None
        scored = first_windows(held, LITERT_BPB_WINDOWS)
        for precision in export_precisions(args.quantize):
            path = os.path.join(run.run_dir,
                                f"student_distilled_{precision}.tflite")
            result = lm_to_tflite(run.models["distilled student"], path,
                                  kv_cache_length=length,
                                  prefill_lengths=(p,), quantize=precision,
                                  latency_runs=args.latency_runs)
            lm = LiteRTCausalLM(result.path)
            files[precision] = dict(
                path=str(result.path), size_bytes=int(result.size_bytes),
                max_abs_diff=result.max_abs_diff,
                bits_per_byte=litert_bits_per_byte(lm, scored),
                **litert_speed(lm, p, max(1, args.latency_runs)))
            samples[precision] = [decode(row[p:]) for row in
                                  litert_continuations(lm, ids[:SAMPLES], p)]
            if precision == args.quantize:
                main = (result, lm)
        result, lm = main
        generated = litert_continuations(lm, ids, p)
        bits = litert_bits_per_byte(lm, held)
    except Exception as error:  # report, do not lose the trained models
        return export_failed(run, error, "LiteRT")
    run.export_info = result.as_dict()
    run.litert = dict(
        kv_cache_length=length, prefill_length=p, main=args.quantize,
        files=files, samples=samples,
        bits_per_byte_windows=int(len(scored.token_ids)),
        bits_per_byte_targets=int(np.sum(scored.sample_weight > 0)),
        keras_bits_per_byte=evaluate_bits_per_byte(
            run.models["distilled student"], scored))
    run.records.append(dict(
        key="student_tflite",
        label=f"distilled student, LiteRT {args.quantize}",
        path=str(result.path), parameters=None,
        size_bytes=int(result.size_bytes), bits_per_byte=bits,
        greedy_agreement=_agreement(run, generated),
        latency_ms=files[args.quantize]["decode_ms_start"],
        latency_unit="ms per token",
        sample=decode(generated[0, p:]), runtime="litert"))


def _write_report(run):
    import keras

    from keras_kd.app import lm_report

    data = run.data
    result = dict(
        task="causal-lm", backend=run.backend,
        keras_version=keras.__version__,
        config={k: v for k, v in vars(run.args).items()
                if k not in ("command", "native_logs")},
        data=dict(source="Python standard library", root=data.root,
                  sequence_length=data.sequence_length,
                  train_files=data.train.num_files,
                  train_bytes=data.train.num_bytes,
                  held_out_files=data.held_out.num_files,
                  held_out_bytes=data.held_out.num_bytes,
                  held_out_targets=data.held_out.num_targets),
        prompt=run.prompt, prompt_length=run.prompt_length,
        agreement_prompts=len(run.rows), models=run.records,
        curves=run.curves, export=run.export_info, litert=run.litert,
        timings=run.timings,
        run_dir=run.run_dir, smoke=bool(run.args.quick))
    result["paths"] = lm_report.write_lm_report(run.run_dir, result)
    print(f"\n{lm_report.lm_markdown_table(run.records)}\n")
    gain = run.records[1]["bits_per_byte"] - run.records[2]["bits_per_byte"]
    stage(f"distillation changed the student's held-out bits per byte by "
          f"{-gain:+.4f} ({data.held_out.num_targets:,} held-out bytes; "
          "lower is better)" + ("; a smoke run (--quick): no conclusion "
                                "about distillation" if run.args.quick
                                else ""))
    return result


def run(args):
    """Runs ``keras-kd run --task causal-lm`` for parsed arguments; returns
    the report (a dict, also written as ``report.json``).

    Stages: load the text; train the teacher; train the student alone and
    the same initial student distilled, on the same batches; save the three
    models (``.keras``); export the distilled student to LiteRT with a KV
    cache of ``--sequence-length`` positions (``--quantize float32``,
    ``float16`` or ``dynamic``, and always float32 and ``dynamic``, int8
    weights; ``--no-export`` skips it); measure (the report's ``litert``:
    per file its size, prefill tokens per second, decode ms per token at the
    first and last positions, bits per byte, greedy samples); write
    ``report.json``, ``report.md`` and ``learning_curves.png`` under
    ``OUTPUT/RUN_NAME/``.
    """
    state = _LMRun(apply_task_defaults(args))
    stage(f"run {state.run_name} (causal-lm): backend {state.backend}, "
          f"output {state.run_dir}")
    stages = [("data_s", _load_data), ("teacher_s", _train_teacher),
              ("students_s", _train_students), ("measure_s", _measure)]
    with temporary_files_in(state.run_dir):
        for key, step in stages + ([] if args.no_export else [
                ("export_s", _export)]):
            begun = time.perf_counter()
            step(state)
            state.timings[key] = time.perf_counter() - begun
    state.timings["total_s"] = time.perf_counter() - state.start
    result = _write_report(state)
    stage(f"done in {state.timings['total_s']:.0f} s; report: "
          f"{result['paths']['markdown']}")
    return result
