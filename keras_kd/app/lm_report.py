"""The report of ``keras-kd run --task causal-lm``: table, JSON, Markdown,
learning curves.

Per model: held-out bits per byte, parameters, file size, greedy agreement
with the teacher and latency (:func:`lm_markdown_table`); the greedy sample
of each model; the learning curves
(:func:`keras_kd.app.plots.plot_bits_per_byte_curves`).
"""

import os

from keras_kd.app.plots import plot_bits_per_byte_curves
from keras_kd.app.report import aligned_table, format_bytes, write_json

LM_TABLE_COLUMNS = ("Model", "Parameters", "File", "Size",
                    "Held-out bits per byte", "Greedy agreement",
                    "Latency (ms)")


def lm_markdown_table(models):
    """The language-model comparison table as GitHub Markdown.

    ``models`` are records with ``label``, ``parameters``, ``path``,
    ``size_bytes``, ``bits_per_byte``, ``greedy_agreement`` (None for the
    teacher) and ``latency_ms``; missing figures show as ``-``.
    """
    def figure(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [(
        r["label"],
        f"{r['parameters']:,}" if r.get("parameters") else "-",
        os.path.basename(r["path"]) if r.get("path") else "-",
        format_bytes(r.get("size_bytes")),
        figure(r.get("bits_per_byte"), ".4f"),
        figure(r.get("greedy_agreement"), ".3f"),
        figure(r.get("latency_ms"), ".3f"),
    ) for r in models]
    return aligned_table(LM_TABLE_COLUMNS, rows)


LITERT_TABLE_COLUMNS = ("Precision", "File", "Size", "Prefill tokens/s",
                        "Decode ms/token, first position",
                        "Decode ms/token, last position", "Bits per byte")


def litert_section(litert):
    """The Markdown lines on the KV-cache LiteRT files of a run: one row per
    precision (file size, prefill tokens per second, decode milliseconds per
    token at the context's first and last positions, bits per byte on the
    scored held-out windows) and each file's greedy samples.

    ``litert`` is the report's ``"litert"`` entry: ``kv_cache_length``,
    ``prefill_length``, ``files`` (per precision: ``path``, ``size_bytes``,
    ``prefill_tokens_per_s``, ``decode_ms_start``, ``decode_ms_end``,
    ``bits_per_byte``), ``samples`` (per precision, a list of texts),
    ``bits_per_byte_windows``, ``keras_bits_per_byte``; None gives ``[]``.

    >>> lines = litert_section(dict(
    ...     kv_cache_length=32, prefill_length=16, bits_per_byte_windows=4,
    ...     keras_bits_per_byte=3.0, samples={"float32": ["x = 1"]},
    ...     files={"float32": dict(path="a.tflite", size_bytes=2048,
    ...            prefill_tokens_per_s=1e4, decode_ms_start=0.1,
    ...            decode_ms_end=0.12, bits_per_byte=3.0)}))
    >>> lines[0]
    '## LiteRT files with a KV cache'
    """
    if not litert:
        return []
    length, n = litert["kv_cache_length"], litert["prefill_length"]
    rows = [(precision, os.path.basename(f["path"]),
             format_bytes(f["size_bytes"]),
             f"{f['prefill_tokens_per_s']:,.0f}",
             f"{f['decode_ms_start']:.3f}", f"{f['decode_ms_end']:.3f}",
             f"{f['bits_per_byte']:.4f}")
            for precision, f in litert["files"].items()]
    lines = [
        "## LiteRT files with a KV cache", "",
        f"The distilled student exported with `kd.export.lm_to_tflite(..., "
        f"kv_cache_length={length}, prefill_lengths=({n},))` and run by "
        "LiteRT's interpreter (`kd.export.LiteRTCausalLM`); `dynamic` holds "
        "int8 weights. Prefill: one `prefill_"
        f"{n}` call from position 0. Decode: one `decode` step at position "
        f"0 and at position {length - 1}, the last of the cache. Medians on "
        "this machine's CPU. Bits per byte: on the first "
        f"{litert['bits_per_byte_windows']} held-out windows, one decode "
        "step per byte (the Keras student: "
        f"{litert['keras_bits_per_byte']:.4f} on the same windows).", "",
        aligned_table(LITERT_TABLE_COLUMNS, rows), "",
        "Greedy samples of the files, continuing the first held-out "
        "prompts:", ""]
    for precision, texts in litert["samples"].items():
        for i, text in enumerate(texts):
            lines += [f"{precision}, prompt {i + 1}:", "", "```text", text,
                      "```", ""]
    return lines


def lm_smoke_note(config):
    """The Markdown paragraph that opens a smoke run's report (``--quick``,
    ``config["quick"]``), or ``[]`` for a full run.

    >>> lm_smoke_note({"quick": True, "teacher_steps": 30, "steps": 20})[0][:34]
    '**Smoke run (`--quick`)**: a teach'
    """
    if not config.get("quick"):
        return []
    return [f"**Smoke run (`--quick`)**: a teacher of "
            f"{config.get('teacher_steps')} steps and students of "
            f"{config.get('steps')} steps check that every stage works "
            "(training, saving, export, report). Their figures say nothing "
            "about distillation: no conclusion is drawn. Run without "
            "`--quick` to measure it.", ""]


def write_lm_report(run_dir, report):
    """Writes the language-model run's ``report.json``, ``report.md`` and
    ``learning_curves.png`` into ``run_dir``.

    Args:
        run_dir: the run's output directory.
        report: a dict with ``models`` (records for
            :func:`lm_markdown_table`, each with its ``sample`` text),
            ``prompt`` (the text the samples continue), ``curves`` (for
            :func:`plot_bits_per_byte_curves`), ``config`` and anything else
            worth keeping (saved as JSON).

    Returns:
        ``{"json": path, "markdown": path, "plots": [paths]}``.
    """
    os.makedirs(run_dir, exist_ok=True)
    curves = os.path.join(run_dir, "learning_curves.png")
    plots = [plot_bits_per_byte_curves(report.get("curves", {}), curves)]
    json_path = write_json(run_dir, dict(
        report, plots=[os.path.basename(p) for p in plots]))
    cfg = report.get("config", {})
    title = os.path.basename(os.path.abspath(run_dir))
    lines = [
        f"# keras-kd run `{title}`", "",
        f"Causal language models on the Python standard library's source "
        f"(byte tokens, windows of {cfg.get('sequence_length')}): teacher "
        f"**{cfg.get('lm_teacher')}** ({cfg.get('teacher_steps')} steps), "
        f"student **{cfg.get('lm_student')}** ({cfg.get('steps')} steps, "
        f"batches of {cfg.get('batch_size')}), objective "
        f"**{cfg.get('objective')}** (alpha={cfg.get('alpha')}, "
        f"T={cfg.get('temperature')}"
        + (f", on-policy λ={cfg['on_policy']}" if cfg.get("on_policy")
           is not None else "")
        + f"), Keras backend **{report.get('backend')}**.",
        "",
        *lm_smoke_note(cfg),
        lm_markdown_table(report["models"]),
        "",
        "Bits per byte: the mean of -log2 p(next byte) over the held-out "
        "files (lower is better; 8 is a uniform guess). Greedy agreement: "
        "the share of greedily generated bytes equal to the teacher's, "
        "continuing the same held-out prompts. Latency: median milliseconds "
        "on this machine's CPU, for one sequence (Keras `predict_on_batch`) "
        "or for one generated token (the LiteRT interpreter, a decode step of "
        "the KV-cache file at its first position).",
        "",
        "Greedy samples: each model continues the same held-out prompt.",
        "",
        "Prompt:",
        "",
        "```text",
        report.get("prompt", ""),
        "```",
        "",
    ]
    for record in report["models"]:
        if record.get("sample") is not None:
            lines += [f"{record['label']}:", "", "```text", record["sample"],
                      "```", ""]
    lines += litert_section(report.get("litert"))
    lines += ["![learning curves](learning_curves.png)", ""]
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return {"json": json_path, "markdown": md_path, "plots": plots}
