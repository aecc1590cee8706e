"""Shared test setup: small models, deterministic seeds, the backend in use."""

import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras backend: {BACKEND}, keras {keras.__version__}"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# Scripts that tests run in subprocesses (their own backend and device
# settings at import time): never imported by pytest's doctest collection.
collect_ignore = ["scale_scripts"]


# End-to-end programs (documentation pages, `keras-kd run`, benchmarks'
# smoke runs) exercise the same library code that the unit tests check on
# every backend; to keep CI time down, each runs under one backend only and
# is reported as skipped, not passed, under the other two. The three backend
# runs together run every one of them once. KERAS_KD_ONE_BACKEND=0 runs them
# all under the backend in use (scripts/test.sh's install checks do).
#   @pytest.mark.one_backend            -> a backend chosen from the test's id
#   @pytest.mark.one_backend("torch")   -> that backend
BACKENDS = ("tensorflow", "jax", "torch")


def assigned_backend(nodeid):
    """The backend that runs the one-backend test ``nodeid``: a stable
    function of the id (the same on every machine and run)."""
    return BACKENDS[zlib.crc32(nodeid.encode("utf-8")) % len(BACKENDS)]


def marked_backend(marker, nodeid):
    """The backend a ``one_backend`` mark names, or the one chosen from
    ``nodeid``; a name that is no backend is a usage error."""
    backend = marker.args[0] if marker.args else assigned_backend(nodeid)
    if backend not in BACKENDS:
        raise pytest.UsageError(
            f"{nodeid}: one_backend({backend!r}) names no backend; use one "
            f"of {BACKENDS}")
    return backend


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "one_backend(name=None): an end-to-end test that CI runs "
        "under one Keras backend only (named, or chosen from the test's id)")


def is_docstring_example(item):
    """Whether ``item`` is a docstring example of the library (collected
    by ``--doctest-modules`` from ``keras_kd/``)."""
    return item.nodeid.startswith("keras_kd/")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("one_backend")
        if marker is None and is_docstring_example(item):
            # A docstring's example shows a use, as a docs page's program
            # does; the behaviour it shows is asserted on every backend by
            # the tests. Each runs under one backend, chosen from its id.
            marker = pytest.mark.one_backend.mark
        if marker is None or os.environ.get("KERAS_KD_ONE_BACKEND") == "0":
            continue
        backend = marked_backend(marker, item.nodeid)
        if backend != BACKEND:
            item.add_marker(pytest.mark.skip(
                reason=f"runs under KERAS_BACKEND={backend} in CI (one "
                       "backend per end-to-end program or example)"))
