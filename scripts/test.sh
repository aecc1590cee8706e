#!/usr/bin/env bash
# keras-kd's test command: installs keras-kd and its test needs into .venv,
# runs the whole suite once per Keras backend (TensorFlow, JAX, PyTorch) on
# the newest Keras, then the core tests in .venv-core: the oldest supported
# Keras with JAX and NumPy only (no extra), as a PyTorch or JAX user installs
# keras-kd.
#
#   bash scripts/test.sh                 # everything
#   KERAS_KD_BACKENDS=jax bash scripts/test.sh -k kd   # one backend, pytest args
#   KERAS_KD_CORE=0 bash scripts/test.sh                # skip the core check
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The oldest Keras of pyproject.toml's range ("keras>=3.13,<4").
KERAS_OLDEST=${KERAS_OLDEST:-3.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export TF_CPP_MIN_LOG_LEVEL=3

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of PyTorch first: a plain `torch` would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"

status=0
for backend in ${KERAS_KD_BACKENDS:-tensorflow jax torch}; do
  echo "=== keras-kd tests on the ${backend} backend"
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "=== tests failed on the ${backend} backend (exit ${status})"
    exit "$status"
  fi
done

echo "=== the documentation site builds (mkdocs build --strict)"
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict -q -d "$(mktemp -d)"

if [ "${KERAS_KD_CORE:-1}" = "1" ]; then
  echo "=== core install: keras==${KERAS_OLDEST}, jax, numpy (no extra)"
  if [ ! -x .venv-core/bin/python ]; then
    "$PYTHON" -m venv .venv-core
  fi
  .venv-core/bin/python -m pip install -q --upgrade pip
  .venv-core/bin/python -m pip install -q "keras==${KERAS_OLDEST}" jax pytest
  .venv-core/bin/python -m pip install -q --no-deps -e .
  KERAS_BACKEND=jax .venv-core/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_install.py tests/test_sequences.py tests/test_distiller.py \
    tests/objectives/test_logits.py tests/objectives/test_sequences.py \
    || { echo "=== core tests failed"; exit 1; }
fi
echo "=== all backends passed"
