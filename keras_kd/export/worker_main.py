"""The TensorFlow worker process's side: its entry point and job runner.

:mod:`keras_kd.export.worker` starts ``python -c "...; serve(fd)"`` with
``KERAS_BACKEND=tensorflow``; :func:`serve` reads job paths on stdin, runs
each (a SavedModel export or a TFLite conversion with
:func:`keras_kd.export.convert.convert_in_process`) and answers ``done`` on a
private pipe. Kept apart from :mod:`~keras_kd.export.worker` (the parent's
side) so that the converter, which calls the worker, and the worker's job
runner, which calls the converter, do not import each other.
"""

import importlib
import json
import os
import sys

import keras
import numpy as np

from keras_kd.export import convert
from keras_kd.export.errors import ExportError


def run_job(job_path):
    """Runs the job described in the JSON file ``job_path``; writes
    ``{"error": ...}`` (or ``{}``) to the job's ``result`` path."""
    with open(job_path) as f:
        job = json.load(f)
    for module in job["modules"]:
        importlib.import_module(module)
    from keras_kd import registration

    registration.register()  # keras-kd's serializables, before the load

    result = {}
    try:
        model = keras.models.load_model(job["keras_path"], compile=False)
        if job["kind"] == "saved_model":
            model.export(job["output"], format="tf_saved_model",
                         verbose=False)
        elif job["kind"] == "lm_cache":  # a causal LM's KV-cache file
            from keras_kd.export import lm_cache

            data = lm_cache.convert_in_process(
                model, job["kv_cache_length"], job["prefill_lengths"],
                job["quantize"])
            with open(job["output"], "wb") as f:
                f.write(data)
        else:
            representative = (np.load(job["representative"])
                              if job["representative"] else None)
            data = convert.convert_in_process(
                model, job["quantize"], representative, job["allow_flex"],
                job.get("input_signature"))
            with open(job["output"], "wb") as f:
                f.write(data)
    except ExportError as error:
        result = {"error": str(error), "type": "ExportError"}
    except Exception as error:  # reported to the parent process
        result = {"error": f"{type(error).__name__}: {error}",
                  "type": "ExportError"}
    with open(job["result"], "w") as f:
        json.dump(result, f)


def serve(answer_fd):
    """Worker loop: one job path per stdin line, ``done`` on ``answer_fd``."""
    answers = os.fdopen(answer_fd, "w")
    for line in sys.stdin:
        job_path = line.strip()
        if not job_path:
            continue
        try:
            run_job(job_path)
        finally:
            keras.backend.clear_session()
        answers.write("done\n")
        answers.flush()
