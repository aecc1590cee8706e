"""``keras-kd export``: convert a saved ``.keras`` student to TFLite files."""

import argparse
import os
import sys

from keras_kd.app import parser as app_parser
import numpy as np

import keras_kd  # noqa: F401  (registers the Distiller for loading)
from keras_kd import saving
from keras_kd.export import api, lm
from keras_kd.export.api import QUANTIZE_MODES, to_tflite
from keras_kd.export.errors import ExportError


def add_export_parser(subparsers):
    """Registers the ``export`` sub-command on an argparse ``subparsers``.

    The options are :func:`keras_kd.app.parser.add_export_arguments`'s (the launcher
    builds the command's parser without importing Keras).

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="keras-kd")
    >>> add_export_parser(parser.add_subparsers(dest="command"))  # doctest: +ELLIPSIS
    ArgumentParser(prog='keras-kd export', ...)
    """
    return app_parser.add_export_parser(subparsers)


# The data sets `keras-kd run --dataset` knows without tensorflow-datasets.
OFFLINE_DATA = ("digits", "mnist1d")
# Training inputs read from a tensorflow-datasets name for calibration
# (to_tflite draws 200 of them at random).
REPRESENTATIVE_LIMIT = 2000


def _offline_arrays(name, labels):
    """``(x, y)``: the training split (calibration) or the test split
    (``labels``: evaluation) of ``digits`` or ``mnist1d``, as ``keras-kd
    run`` generates them."""
    if name == "digits":
        from keras_kd.data import load_digits

        train, test = load_digits()
    else:
        from keras_kd.data import load_mnist1d

        train, test = load_mnist1d()
    return test if labels else train


def _shaped(x, shape, name):
    """``x`` reshaped to the model's input ``shape`` (the digits are stored
    flat, models take them as (8, 8, 1) or (64,)); refused when the sizes
    differ."""
    if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
        raise ValueError(
            f"The {name} data has samples of shape {tuple(x.shape[1:])}, but "
            f"the model takes inputs of shape {shape}: pass the data set it "
            "was trained on, or an .npz file of inputs of that shape.")
    return x.reshape((-1,) + tuple(shape))


def _load_file(source, labels):
    """``(x, y)`` from an ``.npz`` (arrays ``x`` / ``x_train`` / ``x_test`` or
    its first, and ``y`` ...) or ``.npy`` (one array of inputs) file."""
    loaded = np.load(source)  # no pickles: allow_pickle stays False
    if isinstance(loaded, np.ndarray):  # .npy: one array, the inputs
        if labels:
            raise ValueError(
                f"{source} holds one array (inputs); --eval-data needs "
                "labels too: save an .npz file with np.savez(path, x=x, y=y).")
        return loaded, None
    with loaded as archive:
        keys = list(archive.keys())
        if not keys:
            raise ValueError(f"{source} holds no arrays.")
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


def _tfds_data(name, shape, labels):
    """The training (calibration, first :data:`REPRESENTATIVE_LIMIT`
    examples) or test split (``labels``) of a tensorflow-datasets image data
    set, scaled and resized as ``keras-kd run --dataset NAME`` does."""
    from keras_kd.extras import require

    tfds = require("tensorflow_datasets")
    if name not in tfds.list_builders():
        raise ValueError(
            f"{name!r} is not an existing file, nor a data set name: use "
            f"{' or '.join(OFFLINE_DATA)} (offline, as keras-kd run "
            "--dataset), a tensorflow-datasets image name (cifar10, mnist, "
            "fashion_mnist, ...), or an .npz / .npy file.")
    from keras_kd.data import load_dataset

    image_size = tuple(shape[:2]) if len(shape) == 3 else None
    splits = load_dataset(name, image_size=image_size, batch_size=256,
                          max_train=None if labels else REPRESENTATIVE_LIMIT)
    return splits.test if labels else splits.train


def _load_array_source(source, model, labels):
    """What ``--representative-data`` (``labels=False``: inputs) or
    ``--eval-data`` (``labels=True``: inputs and labels) names, for
    ``model``: an ``.npz`` or ``.npy`` file, ``digits`` or ``mnist1d``
    (offline), or a tensorflow-datasets name.

    Returns ``(x, y)`` arrays (``y`` None without labels) or, for a
    tensorflow-datasets name, a finite ``tf.data.Dataset`` of ``(x, y)``
    batches and None.

    Example:

    >>> import keras
    >>> inputs = keras.Input((40, 1))
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> x, y = _load_array_source("mnist1d", model, labels=True)
    >>> x.shape, y.shape
    ((1000, 40, 1), (1000,))
    """
    shape, _ = api.input_spec(model)
    if os.path.isfile(source):
        return _load_file(source, labels)
    if source in OFFLINE_DATA:
        x, y = _offline_arrays(source, labels)
        return _shaped(x, shape, source), (y if labels else None)
    if source.endswith((".npz", ".npy")) or os.sep in source:
        raise ValueError(f"No data file at {source!r}; pass an existing .npz "
                         f"or .npy file, or a data set name such as "
                         f"{' or '.join(OFFLINE_DATA)}.")
    return _tfds_data(source, shape, labels), None


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

    A student called on ``{"token_ids", "padding_mask"}`` (the language
    model ``keras-kd run --task causal-lm`` saves) is exported with
    :func:`keras_kd.export.lm_to_tflite` at ``args.sequence_length`` (default:
    the model's own, :func:`keras_kd.export.lm.sequence_length_of`); any
    other with :func:`keras_kd.export.to_tflite`.

    Returns the exit status: 0 when every export succeeded, 1 (after printing
    the error to stderr) when one failed; a bad option exits with a message.
    """

    modes = []
    for value in args.quantize or ["float32"]:
        modes.extend(m.strip() for m in value.split(",") if m.strip())
    known = QUANTIZE_MODES
    if getattr(args, "kv_cache_length", None) is not None:
        known = tuple(QUANTIZE_MODES) + ("weight_only",)
    unknown = [m for m in modes if m not in known]
    if unknown:
        raise SystemExit(f"keras-kd export: unknown --quantize {unknown}; "
                         f"choose from {', '.join(known)}.")
    try:
        _export_files(args, modes)
    except (ValueError, TypeError, OSError, ImportError,
            ExportError) as error:
        print(f"keras-kd export: error: {error}", file=sys.stderr)
        return 1
    return 0


def _export_files(args, modes):
    if not os.path.isfile(args.model):
        raise ValueError(f"No model file at {args.model!r}; pass the path of "
                         "a .keras file saved with model.save(...).")
    model = api.student_of(saving.load_model(args.model, compile=False))
    if lm.takes_token_ids(model):
        return _export_language_model(args, modes, model)
    for option in ("sequence_length", "kv_cache_length"):
        if getattr(args, option, None) is not None:
            raise ValueError(
                f"--{option.replace('_', '-')} applies to a language model "
                f"(called on token_ids and padding_mask); '{model.name}' is "
                "not one: leave it out.")
    # A quantization-aware student (keras_kd.quantization.quantize_model)
    # exports as int8 from the ranges it learned: no calibration data.
    from keras_kd.quantization import is_quantization_aware

    if ("int8" in modes and args.representative_data is None
            and not is_quantization_aware(model)):
        raise SystemExit("keras-kd export: --quantize int8 needs "
                         "--representative-data (mnist1d, digits, a "
                         "tensorflow-datasets name or an .npz / .npy file), "
                         "unless the model is quantization-aware "
                         "(keras_kd.quantization.quantize_model).")
    representative = eval_data = None
    if args.representative_data:
        representative = _load_array_source(args.representative_data, model,
                                            labels=False)[0]
    if args.eval_data:
        x, y = _load_array_source(args.eval_data, model, labels=True)
        eval_data = x if y is None else (x, y)
    for mode, path in _output_paths(args, modes).items():
        report = to_tflite(model, path, quantize=mode,
                           representative_data=representative,
                           eval_data=eval_data, allow_flex=args.allow_flex,
                           latency_runs=args.latency_runs)
        print(report.summary())


def _export_language_model(args, modes, model):
    """``lm_to_tflite`` at each precision: what ``keras-kd run --task
    causal-lm`` saves (``student_distilled.keras``) exports as it did."""
    cache = getattr(args, "kv_cache_length", None)
    if cache is not None:
        return _export_cache_file(args, modes, model, cache)
    refused = [m for m in modes if m not in lm.LM_QUANTIZE_MODES]
    if refused:
        raise ValueError(
            f"--quantize {refused[0]} is not offered for a language model "
            f"('{model.name}' takes token_ids and padding_mask): use "
            f"{', '.join(lm.LM_QUANTIZE_MODES)} (dynamic: int8 weights, "
            "float activations).")
    for option in ("representative_data", "eval_data"):
        if getattr(args, option) is not None:
            raise ValueError(
                f"--{option.replace('_', '-')} applies to classifiers; the "
                f"language model '{model.name}' is verified on random token "
                "sequences (report: max |tflite - keras| over their logits). "
                "Leave it out.")
    length = args.sequence_length or lm.sequence_length_of(model)
    if length is None:
        raise ValueError(
            f"The sequence length of '{model.name}' is unknown (no backbone "
            "max_sequence_length, no fixed token_ids length): pass "
            "--sequence-length N, the longest prompt plus generated tokens.")
    for mode, path in _output_paths(args, modes).items():
        report = lm.lm_to_tflite(model, path, length, quantize=mode,
                                 allow_flex=args.allow_flex,
                                 latency_runs=args.latency_runs)
        print(f"{report.summary()}, sequence_length {length}")


def _export_cache_file(args, modes, model, cache):
    """``--kv-cache-length L``: ``lm_to_tflite(..., kv_cache_length=L)`` at
    each precision (the prefill and decode file of
    :mod:`keras_kd.export.lm_cache`)."""
    from keras_kd.export.lm_cache import CACHE_QUANTIZE_MODES

    refused = [m for m in modes if m not in CACHE_QUANTIZE_MODES]
    if refused:
        raise ValueError(
            f"--quantize {refused[0]} is not offered for a KV-cache file: use "
            f"{', '.join(CACHE_QUANTIZE_MODES)}.")
    if args.sequence_length is not None:
        raise ValueError("--sequence-length sets the fixed-length file; with "
                         "--kv-cache-length leave it out.")
    for option in ("representative_data", "eval_data"):
        if getattr(args, option) is not None:
            raise ValueError(
                f"--{option.replace('_', '-')} applies to classifiers: leave "
                "it out.")
    for mode, path in _output_paths(args, modes).items():
        report = lm.lm_to_tflite(model, path, quantize=mode,
                                 kv_cache_length=cache,
                                 allow_flex=args.allow_flex,
                                 latency_runs=args.latency_runs)
        print(f"{report.summary()}, kv_cache_length {cache}")


def main(argv=None):
    """``python -m keras_kd.export MODEL.keras [options]``."""
    parser = app_parser.add_export_arguments(argparse.ArgumentParser(
        prog="python -m keras_kd.export",
        description="Export a .keras student to TFLite."))
    return run_export(parser.parse_args(argv))

