"""``keras-kd export``: convert a saved ``.keras`` student to TFLite files."""

import argparse
import os
import sys

import keras_kd_cli
import numpy as np

import keras_kd  # noqa: F401  (registers the Distiller for loading)
from keras_kd import saving
from keras_kd.export import api
from keras_kd.export.api import QUANTIZE_MODES, to_tflite
from keras_kd.export.errors import ExportError


def add_export_parser(subparsers):
    """Registers the ``export`` sub-command on an argparse ``subparsers``.

    The options are :func:`keras_kd_cli.add_export_arguments`'s (the launcher
    builds the command's parser without importing Keras).

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="keras-kd")
    >>> add_export_parser(parser.add_subparsers(dest="command"))  # doctest: +ELLIPSIS
    ArgumentParser(prog='keras-kd export', ...)
    """
    return keras_kd_cli.add_export_parser(subparsers)


def _load_array_source(source, model, labels):
    """``digits`` or an .npz path -> x (and y) shaped for ``model``."""
    shape, _ = api.input_spec(model)
    if source == "digits":
        from keras_kd.data import load_digits

        (x_train, y_train), (x_test, y_test) = load_digits()
        x, y = (x_test, y_test) if labels else (x_train, y_train)
        if int(np.prod(shape)) != x.shape[1]:
            raise ValueError(
                f"The digits data has 64 features per sample but the model "
                f"takes inputs of shape {shape}; pass an .npz file instead.")
        return x.reshape((-1,) + shape), y
    if not os.path.exists(source):
        raise ValueError(f"{source!r} is neither 'digits' nor an existing "
                         ".npz file.")
    with np.load(source) as archive:
        keys = list(archive.keys())
        xkey = next((k for k in ("x", "x_train", "x_test") if k in keys),
                    keys[0])
        x = archive[xkey]
        y = None
        if labels:
            ykey = next((k for k in ("y", "y_train", "y_test") if k in keys),
                        None)
            if ykey is None:
                raise ValueError(f"{source} has no 'y' array of labels "
                                 f"(arrays: {keys}).")
            y = archive[ykey]
    return x, y


def _output_paths(args, modes):
    stem = os.path.splitext(os.path.basename(args.model))[0]
    if args.output is None:
        base = os.path.dirname(os.path.abspath(args.model))
        return {m: os.path.join(base, f"{stem}_{m}.tflite") for m in modes}
    if not args.output.endswith(".tflite"):
        return {m: os.path.join(args.output, f"{stem}_{m}.tflite")
                for m in modes}
    if len(modes) == 1:
        return {modes[0]: args.output}
    root = args.output[:-len(".tflite")]
    return {m: f"{root}_{m}.tflite" for m in modes}


def run_export(args):
    """Runs ``keras-kd export`` for parsed ``args``; prints one line per file.

    Returns the exit status: 0 when every export succeeded, 1 (after printing
    the error to stderr) when one failed; a bad option exits with a message.
    """

    modes = []
    for value in args.quantize or ["float32"]:
        modes.extend(m.strip() for m in value.split(",") if m.strip())
    unknown = [m for m in modes if m not in QUANTIZE_MODES]
    if unknown:
        raise SystemExit(f"keras-kd export: unknown --quantize {unknown}; "
                         f"choose from {', '.join(QUANTIZE_MODES)}.")
    try:
        _export_files(args, modes)
    except (ValueError, TypeError, OSError, ExportError) as error:
        print(f"keras-kd export: error: {error}", file=sys.stderr)
        return 1
    return 0


def _export_files(args, modes):
    if not os.path.isfile(args.model):
        raise ValueError(f"No model file at {args.model!r}; pass the path of "
                         "a .keras file saved with model.save(...).")
    model = api.student_of(saving.load_model(args.model, compile=False))
    # A quantization-aware student (keras_kd.quantization.quantize_model)
    # exports as int8 from the ranges it learned: no calibration data.
    from keras_kd.quantization import is_quantization_aware

    if ("int8" in modes and args.representative_data is None
            and not is_quantization_aware(model)):
        raise SystemExit("keras-kd export: --quantize int8 needs "
                         "--representative-data (digits or an .npz file), "
                         "unless the model is quantization-aware "
                         "(keras_kd.quantization.quantize_model).")
    representative = eval_data = None
    if args.representative_data:
        representative = _load_array_source(args.representative_data, model,
                                            labels=False)[0]
    if args.eval_data:
        eval_data = _load_array_source(args.eval_data, model, labels=True)
    for mode, path in _output_paths(args, modes).items():
        report = to_tflite(model, path, quantize=mode,
                           representative_data=representative,
                           eval_data=eval_data, allow_flex=args.allow_flex,
                           latency_runs=args.latency_runs)
        print(report.summary())


def main(argv=None):
    """``python -m keras_kd.export MODEL.keras [options]``."""
    parser = keras_kd_cli.add_export_arguments(argparse.ArgumentParser(
        prog="python -m keras_kd.export",
        description="Export a .keras student to TFLite."))
    return run_export(parser.parse_args(argv))

