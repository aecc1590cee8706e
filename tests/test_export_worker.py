"""The TensorFlow worker of the export (keras_kd.export.worker and
worker_main): its modules' imports, and what it prints."""

import ast
import os

import keras_kd

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
