"""Small models and utilities shared by the tests."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np


def mlp(width, name, inputs=64, classes=10, hidden_name=None):
    """A one-hidden-layer MLP; its hidden layer is named ``{name}_hidden``."""
    x = keras.Input((inputs,), name=f"{name}_input")
    h = keras.layers.Dense(width, activation="relu",
                           name=hidden_name or f"{name}_hidden")(x)
    return keras.Model(x, keras.layers.Dense(classes, name=f"{name}_logits")(h),
                       name=name)


def cnn(filters, name, classes=10, shape=(8, 8, 1), batchnorm=True):
    """A small CNN with layers ``{name}_conv1``, ``{name}_conv2``, ``{name}_pool``."""
    x = keras.Input(shape, name=f"{name}_input")
    h = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    if batchnorm:
        h = keras.layers.BatchNormalization(name=f"{name}_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                            name=f"{name}_conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
    return keras.Model(x, keras.layers.Dense(classes, name=f"{name}_logits")(h),
                       name=name)


def padded_lm_batch(n, length, vocabulary, seed=0):
    """Padded token sequences as keras-hub causal LMs take them.

    Returns ``(x, labels, weights)``: ``x`` holds ``token_ids`` (padding 0)
    and ``padding_mask``; labels are the next token; weights are 1 where a
    next token exists (0 on padding and on each sequence's last token).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, n)
    mask = np.arange(length)[None] < lengths[:, None]
    tokens = np.where(mask, rng.integers(1, vocabulary, (n, length)), 0)
    labels = np.roll(tokens, -1, axis=1)
    weights = mask.copy()
    weights[np.arange(n), lengths - 1] = False  # no next token
    x = {"token_ids": tokens.astype("int32"), "padding_mask": mask}
    return x, labels.astype("int32"), weights.astype("float32")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def layer_features(model, layer, x):
    """The output of ``model``'s layer named ``layer`` on ``x``, as float64."""
    extractor = keras.Model(model.input, model.get_layer(layer).output)
    return to_numpy(extractor(x, training=False)).astype("float64")


def backend_grad(fn, x):
    """Gradient of the scalar ``fn(x)`` w.r.t. ``x`` with the backend's
    autodiff, or None when the output does not depend on ``x``."""
    backend = keras.backend.backend()
    x = np.asarray(x, "float32")
    if backend == "jax":
        import jax
        return np.asarray(jax.grad(fn)(jax.numpy.asarray(x)))
    if backend == "tensorflow":
        import tensorflow as tf
        v = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = fn(v)
        grad = tape.gradient(out, v)
        return None if grad is None else grad.numpy()
    import torch
    v = torch.tensor(x, requires_grad=True)
    out = fn(v)
    if not out.requires_grad:
        return None   # no path from x to the output: no gradient
    out.backward()
    return v.grad.detach().cpu().numpy()


def numeric_grad(fn, x, h=1e-6):
    """Central finite differences of a float64 NumPy function."""
    x = np.asarray(x, "float64")
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (fn(up) - fn(down)) / (2 * h)
    return g


class Interrupted(Exception):
    """The simulated failure raised by :class:`Rows`."""


class Rows:
    """An array-like recording the row slices read; fails at row ``fail_at``
    (raising :class:`Interrupted`), to simulate a build killed midway."""

    def __init__(self, array, fail_at=None):
        self.array, self.fail_at, self.starts = array, fail_at, []
        self.shape, self.dtype = array.shape, array.dtype

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        self.starts.append(key.start or 0)
        if self.fail_at is not None and (key.start or 0) >= self.fail_at:
            raise Interrupted("simulated interruption")
        return self.array[key]


def run_scale_script(name, out, backend, timeout):
    """Runs ``tests/scale_scripts/<name>.py`` in a fresh interpreter (its own
    backend and device count) and returns the JSON it writes to ``out``."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    script = root / "tests" / "scale_scripts" / f"{name}.py"
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def benchmark_module(name):
    """Imports ``benchmarks/<name>.py`` (the folder is not a package)."""
    import importlib

    folder = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


class ScriptedScores(keras.callbacks.Callback):
    """Writes ``scores[epoch]`` into ``logs["score"]`` at each epoch's end
    (place it before the callback that reads the score)."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]


class StudentWeightLog(keras.callbacks.Callback):
    """The student's weights (a Distiller's, or the model's own) at the end
    of each epoch, as NumPy arrays."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        student = getattr(self.model, "student", self.model)
        self.weights.append([to_numpy(w) for w in student.weights])
