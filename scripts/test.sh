#!/usr/bin/env bash
# keras-kd's test command: installs keras-kd and its test needs into .venv,
# then runs the whole suite once per Keras backend (TensorFlow, JAX, PyTorch).
#
#   bash scripts/test.sh                 # all three backends
#   KERAS_KD_BACKENDS=jax bash scripts/test.sh -k kd   # one backend, pytest args
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip
# The CPU build of PyTorch first: a plain `torch` would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"

export TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in ${KERAS_KD_BACKENDS:-tensorflow jax torch}; do
  echo "=== keras-kd tests on the ${backend} backend"
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "=== tests failed on the ${backend} backend (exit ${status})"
    exit "$status"
  fi
done
echo "=== all backends passed"
