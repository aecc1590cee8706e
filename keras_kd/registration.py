"""keras-kd's classes registered with Keras, without importing Keras early.

``import keras_kd`` imports no Keras (its names load on first use), so that
the ``keras-kd`` command answers ``--help`` at once. A ``.keras`` file that
holds a :class:`~keras_kd.Distiller` or a keras-kd objective still loads with
``keras.models.load_model`` after ``import keras_kd``: the modules that
register keras-kd's serializable classes (:data:`SERIALIZABLE_MODULES`) are
imported

- at ``import keras_kd`` when Keras is imported already;
- else right after Keras has loaded (:func:`register_when_keras_loads`
  watches for the import of ``keras``);
- and by the first use of a ``keras_kd`` name (``kd.Distiller``) and by
  :func:`keras_kd.saving.load_model`.

Importing a keras-kd submodule alone (``import keras_kd.callbacks``)
registers that submodule's classes; ``import keras_kd`` registers them all.
"""

import importlib
import importlib.abc
import sys
import threading

# The modules whose classes carry @keras.saving.register_keras_serializable.
SERIALIZABLE_MODULES = ("keras_kd.objectives", "keras_kd.on_policy",
                        "keras_kd.distiller", "keras_kd.quantization")

_lock = threading.RLock()
_state = {"registered": False, "busy": False}


def _initializing(name):
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def _keras_kd_initializing():
    """Whether a keras_kd submodule is half-imported now (then importing the
    others could meet it half-made: registration waits)."""
    return any(name.startswith("keras_kd.") and _initializing(name)
               for name in list(sys.modules))


def registered():
    """Whether :func:`register` has imported every serializable module."""
    return _state["registered"]


def register(keras_loaded=False):
    """Imports :data:`SERIALIZABLE_MODULES` (registering their classes with
    Keras) unless done, or unless a keras_kd submodule (or Keras) is
    half-imported now; returns :func:`registered`. An error in those imports
    is raised.

    Example:

    >>> import keras
    >>> register()
    True
    >>> "keras_kd>Distiller" in keras.saving.get_custom_objects()
    True
    """
    with _lock:
        if _state["registered"] or _state["busy"]:
            return _state["registered"]
        if _keras_kd_initializing() or (not keras_loaded
                                        and _initializing("keras")):
            return False
        _state["busy"] = True
        try:
            for name in SERIALIZABLE_MODULES:
                importlib.import_module(name)
            _state["registered"] = True
        finally:
            _state["busy"] = False
        _remove_watcher()
        return True


def _try_register(keras_loaded=False):
    """:func:`register` from the import machinery: an error stops the
    automatic tries (the next explicit :func:`register`, e.g. the first
    ``kd.`` name, raises it) instead of breaking someone else's import."""
    try:
        register(keras_loaded)
    except Exception:  # noqa: BLE001  raised again by the explicit call
        _remove_watcher()


class _Watcher(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path`` until keras-kd is registered: wraps the loader
    of ``keras`` so that :func:`register` runs once Keras has loaded, and
    retries at later imports when it had to wait."""

    def find_spec(self, fullname, path=None, target=None):
        if _state["busy"]:
            return None
        if fullname != "keras" or "keras" in sys.modules:
            if "keras" in sys.modules and not _initializing("keras"):
                _try_register()  # a retry: a keras_kd submodule was half-made
            return None
        # The spec the other finders give, with a loader that registers
        # keras-kd after Keras has run.
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _AfterKeras(spec.loader)
        return spec


class _AfterKeras(importlib.abc.Loader):
    """Keras's own loader, then :func:`register`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        _try_register(keras_loaded=True)

    def __getattr__(self, name):
        return getattr(self._loader, name)


_watcher = _Watcher()


def _remove_watcher():
    while _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)


def register_when_keras_loads():
    """Registers keras-kd's classes now when Keras is loaded, else once it
    loads (a finder on ``sys.meta_path`` until then). Called by
    ``import keras_kd``."""
    if "keras" in sys.modules and not _initializing("keras"):
        if register():
            return
    if not _state["registered"] and _watcher not in sys.meta_path:
        sys.meta_path.insert(0, _watcher)
