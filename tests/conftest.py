"""Shared test setup: small models, deterministic seeds, the backend in use."""

import os

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
