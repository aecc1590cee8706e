#!/usr/bin/env bash
# keras-kd's test command: installs keras-kd and its test needs into .venv,
# runs the whole suite once per Keras backend (TensorFlow, JAX, PyTorch) on
# the newest Keras and builds the documentation site; then checks installs
# as users make them:
#   - core: .venv-core, the oldest supported Keras with JAX and NumPy only
#     (no extra), as a JAX user installs keras-kd: the core library tests;
#   - bare backends: .venv-torch (the oldest Keras, torch==2.13.0) and
#     .venv-tf (Keras, TensorFlow), no extra: tests/test_install.py and a
#     fit test on that backend;
#   - the package: the wheel and the sdist built (python -m build, into
#     dist/) and checked (twine check); the wheel, not the source tree,
#     installed with its [app,jax] extras into a fresh .venv-wheel, and
#     `keras-kd run --quick` run from outside the repository.
#
#   bash scripts/test.sh                 # everything
#   KERAS_KD_BACKENDS=jax bash scripts/test.sh -k kd   # one backend, pytest args
#   KERAS_KD_CORE=0 bash scripts/test.sh                # skip the core check
#   KERAS_KD_BARE=0 bash scripts/test.sh                # skip the bare backends
#   KERAS_KD_PACKAGE=0 bash scripts/test.sh             # skip the package check
#   KERAS_KD_SUITE=0 bash scripts/test.sh               # only the install checks
#   KERAS_KD_WORKERS=0 bash scripts/test.sh             # one pytest process, not two
#   KERAS_KD_ONE_BACKEND=0 bash scripts/test.sh         # one-backend tests on every backend
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

# pytest-xdist: the suite on two processes, each test file whole on one
# (module fixtures run once). KERAS_KD_WORKERS=0 runs it in one process.
# The 15 slowest tests are listed after each backend's run.
WORKERS=${KERAS_KD_WORKERS:-2}
status=0
if [ "${KERAS_KD_SUITE:-1}" != "1" ]; then KERAS_KD_BACKENDS=none; fi
for backend in ${KERAS_KD_BACKENDS:-tensorflow jax torch}; do
  [ "$backend" = none ] && continue
  echo "=== keras-kd tests on the ${backend} backend"
  # JAX: XLA's CPU code generation at LLVM -O0 (the HLO passes, fusion
  # included, unchanged; no fast math either way): the suite's thousands of
  # compiles of tiny models take about a quarter less time. Set XLA_FLAGS
  # to run with your own.
  xla_flags=${XLA_FLAGS-}
  if [ "$backend" = jax ] && [ -z "$xla_flags" ]; then
    xla_flags=--xla_backend_optimization_level=0
  fi
  XLA_FLAGS=$xla_flags KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
    -n "$WORKERS" --dist loadfile --durations=15 "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "=== tests failed on the ${backend} backend (exit ${status})"
    exit "$status"
  fi
done

if [ "${KERAS_KD_SUITE:-1}" = "1" ]; then
  echo "=== the documentation site builds (mkdocs build --strict)"
  NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict -q -d "$(mktemp -d)"
fi

# The check venvs install with --no-compile: pip does not byte-compile every
# module of jax, torch and tensorflow; Python compiles the few they import.
if [ "${KERAS_KD_CORE:-1}" = "1" ]; then
  echo "=== core install: keras==${KERAS_OLDEST}, jax, numpy (no extra)"
  if [ ! -x .venv-core/bin/python ]; then
    "$PYTHON" -m venv .venv-core
  fi
  .venv-core/bin/python -m pip install -q --upgrade pip
  .venv-core/bin/python -m pip install -q --no-compile "keras==${KERAS_OLDEST}" jax pytest pytest-xdist
  .venv-core/bin/python -m pip install -q --no-deps -e .
  XLA_FLAGS=${XLA_FLAGS:---xla_backend_optimization_level=0} KERAS_BACKEND=jax \
    KERAS_KD_ONE_BACKEND=0 .venv-core/bin/python -m pytest -q -p no:cacheprovider \
    -n "$WORKERS" --dist loadfile \
    tests/test_install.py tests/test_sequences.py tests/test_distiller.py \
    tests/objectives/test_logits.py tests/objectives/test_sequences.py \
    || { echo "=== core tests failed"; exit 1; }
fi

# A bare backend: Keras and one backend in a venv of its own, keras-kd
# without its dependencies or extras; the install test and a fit test, every
# test of them (KERAS_KD_ONE_BACKEND=0: the suite runs tests/test_install.py
# under one backend, these checks under each).
#   bare_backend VENV KERAS_BACKEND PACKAGE...
bare_backend() {
  local venv=$1 backend=$2
  shift 2
  echo "=== bare ${backend} install in ${venv}: $* (no extra)"
  if [ ! -x "${venv}/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  "${venv}/bin/python" -m pip install -q --upgrade pip
  "${venv}/bin/python" -m pip install -q --no-compile "$@" pytest
  "${venv}/bin/python" -m pip install -q --no-deps -e .
  KERAS_BACKEND=$backend KERAS_KD_ONE_BACKEND=0 "${venv}/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_install.py tests/test_distiller.py \
    || { echo "=== bare ${backend} tests failed"; exit 1; }
}

if [ "${KERAS_KD_BARE:-1}" = "1" ]; then
  # The CPU build of PyTorch, pinned: a plain `torch` pulls a CUDA build.
  bare_backend .venv-torch torch "keras==${KERAS_OLDEST}" "torch==2.13.0"
  bare_backend .venv-tf tensorflow keras tensorflow
fi

if [ "${KERAS_KD_PACKAGE:-1}" = "1" ]; then
  echo "=== the package: wheel and sdist, twine check, the wheel with [app]"
  rm -rf dist .venv-wheel
  .venv/bin/python -m build -q --outdir dist . >/dev/null
  .venv/bin/python -m twine check --strict dist/*
  "$PYTHON" -m venv .venv-wheel
  .venv-wheel/bin/python -m pip install -q --upgrade pip
  wheel=$(ls dist/keras_kd-*.whl)
  .venv-wheel/bin/python -m pip install -q --no-compile "${wheel}[app,jax]"
  # From a folder outside the repository, so the source tree is not
  # importable: keras_kd and the launcher come from the installed wheel.
  root=$(pwd)
  outside=$(mktemp -d)
  (
    set -euo pipefail
    cd "$outside"
    export KERAS_BACKEND=jax
    "${root}/.venv-wheel/bin/python" -c "import sys
import keras_kd, keras_kd.app.launcher
for m in (keras_kd, keras_kd.app.launcher):
    assert '/.venv-wheel/lib/' in m.__file__, m.__file__
assert 'keras' not in sys.modules, 'import keras_kd imported Keras'"
    "${root}/.venv-wheel/bin/keras-kd" --version
    if ! "${root}/.venv-wheel/bin/keras-kd" run --quick --output "${outside}/runs" \
        --run-name wheel --verbose 0 >"${outside}/run.log" 2>&1; then
      tail -n 40 "${outside}/run.log"
      exit 1
    fi
    "${root}/.venv-wheel/bin/python" -c "import json
report = json.load(open('${outside}/runs/wheel/report.json'))
keys = [m['key'] for m in report['models']]
assert report['backend'] == 'jax', report['backend']
assert keys == ['teacher', 'student_alone', 'student_distilled',
                'student_tflite'], keys
print('report:', keys)"
  )
  rm -rf "$outside"
fi
echo "=== all backends passed"
