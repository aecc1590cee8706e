"""The TensorFlow worker of the export (keras_kd.export.worker and
worker_main): its modules' imports, and what it prints."""

import ast
import os

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import export
from keras_kd.export import worker
from tests.conftest import BACKEND

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")

PACKAGE = os.path.dirname(keras_kd.__file__)


def imported_modules(path):
    """The ``keras_kd...`` modules a file imports, at any level (a function's
    own imports included): ``from keras_kd.export import convert`` names
    ``keras_kd.export.convert``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("keras_kd.")}


def test_export_modules_import_no_loop():
    """Issue 27: convert.py imported worker.py, whose job runner imported
    convert.py. No module of keras_kd.export may reach itself again."""
    folder = os.path.join(PACKAGE, "export")
    modules = {f"keras_kd.export.{name[:-3]}": os.path.join(folder, name)
               for name in os.listdir(folder)
               if name.endswith(".py") and name != "__init__.py"}
    assert {"keras_kd.export.convert", "keras_kd.export.worker",
            "keras_kd.export.worker_main"} <= set(modules)
    graph = {name: imported_modules(path) & set(modules)
             for name, path in modules.items()}
    assert "keras_kd.export.convert" in graph["keras_kd.export.worker_main"]
    assert "keras_kd.export.worker" in graph["keras_kd.export.convert"]

    def reaches(start):
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return seen

    loops = sorted(name for name in graph if name in reaches(name))
    assert loops == []


def run_tflite(path, x):
    """An independent LiteRT run of a one-input file on the rows of ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = (interpreter.get_input_details(),
                      interpreter.get_output_details())
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


@keras.saving.register_keras_serializable(package="keras_kd_tests")
def double(x):
    """A named, registered function for a Lambda: the TensorFlow worker
    imports this module to load it."""
    return x * 2.0


def unregistered_double(x):
    return x * 2.0


def lambda_model(function):
    inputs = keras.Input((8,))
    hidden = keras.layers.Lambda(function, name="doubling")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def numpy_outputs(model, x):
    """``Dense(2 x)``, computed with NumPy from the model's weights."""
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w))
                    for w in model.layers[-1].weights)
    return (2.0 * x) @ kernel + bias


def test_lambda_student_gets_advice_that_works(tmp_path):
    """Issue 28 #24: on JAX and PyTorch a Python lambda failed in the worker
    with Keras's advice, safe_mode=False, which cannot reach that process.
    Each way out the new message names works."""
    x = np.random.default_rng(0).random((5, 8)).astype("float32")
    path = tmp_path / "student.tflite"
    with_lambda = lambda_model(lambda t: t * 2.0)
    if BACKEND == "tensorflow":
        # "export with KERAS_BACKEND=tensorflow": converted in this process.
        export.to_tflite(with_lambda, path, latency_runs=0)
        np.testing.assert_allclose(run_tflite(path, x),
                                   numpy_outputs(with_lambda, x), atol=1e-5)
        return
    with pytest.raises(ValueError) as error:
        export.to_tflite(with_lambda, path, latency_runs=0)
    message = str(error.value)
    assert "Layer 'doubling' is a keras.layers.Lambda" in message
    for fix in ("register_keras_serializable", "named function",
                "KERAS_BACKEND=tensorflow"):
        assert fix in message
    assert "safe_mode=False cannot reach" in message
    assert os.listdir(tmp_path) == []
    # "a named function defined in an importable module": converts.
    named = lambda_model(double)
    export.to_tflite(named, path, latency_runs=0)
    np.testing.assert_allclose(run_tflite(path, x), numpy_outputs(named, x),
                               atol=1e-5)


def test_functions_the_worker_cannot_load_are_named():
    with pytest.raises(ValueError, match="Function 'unregistered_double' "
                       "\\(in layer 'doubling'\\) cannot be loaded by name"):
        worker._custom_modules(lambda_model(unregistered_double))

    @keras.saving.register_keras_serializable(package="keras_kd_tests")
    def local(x):
        return x + 1.0

    local.__module__ = "__main__"
    with pytest.raises(ValueError, match="defined in __main__"):
        worker._custom_modules(lambda_model(local))
    # A registered function's module is imported there; Keras's own
    # functions need nothing.
    assert worker._custom_modules(lambda_model(double)) == [__name__]
    assert worker._custom_modules(lambda_model(keras.activations.relu)) == []
