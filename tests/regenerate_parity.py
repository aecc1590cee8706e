"""Regenerates the stored values of tests/test_parity.py (its ``EXPECTED``).

Run from the repository root:

    python -m tests.regenerate_parity            # prints the values
    python -m tests.regenerate_parity --write    # rewrites EXPECTED in place

Neither Keras nor keras-kd is imported. The weights and the batch are drawn
with NumPy's default generator (PCG64, seed 1234) in a fixed order and
rounded to float32 (:func:`parity_arrays`); the two MLPs and the FitNet
adapter are then evaluated in float64 NumPy and the loss terms computed
with tests/references.py (:func:`reference_terms`). tests/test_parity.py
loads the same arrays into a Distiller and compares its loss terms, on every
backend, with both the live references and the stored values.

Regenerate only when the setup below or a documented convention changes on
purpose, and say why in the commit: otherwise a change in these values means
that a reference, or NumPy's random stream, drifted.
"""

import argparse
import pathlib
import re

import numpy as np

from tests import references

SEED = 1234
INPUTS, CLASSES, TEACHER_WIDTH, STUDENT_WIDTH, BATCH = 12, 5, 16, 6, 8
ALPHA, TEMPERATURE, FITNET_WEIGHT = 0.3, 3.0, 2.0

# (layer, kernel shape, bias shape), drawn in this order. The adapter maps
# the student's hidden layer to the teacher's (a Dense: the widths differ).
LAYERS = [
    ("teacher_hidden", (INPUTS, TEACHER_WIDTH), (TEACHER_WIDTH,)),
    ("teacher_logits", (TEACHER_WIDTH, CLASSES), (CLASSES,)),
    ("student_hidden", (INPUTS, STUDENT_WIDTH), (STUDENT_WIDTH,)),
    ("student_logits", (STUDENT_WIDTH, CLASSES), (CLASSES,)),
    ("adapter", (STUDENT_WIDTH, TEACHER_WIDTH), (TEACHER_WIDTH,)),
]


def parity_arrays():
    """The fixed setup: ``{layer: (kernel, bias)}``, and ``x``, ``y``."""
    rng = np.random.default_rng(SEED)
    arrays = {}
    for name, kernel, bias in LAYERS:
        arrays[name] = tuple(
            rng.normal(0.0, 0.5, size=shape).astype("float32")
            for shape in (kernel, bias))
    arrays["x"] = rng.normal(size=(BATCH, INPUTS)).astype("float32")
    arrays["y"] = rng.integers(0, CLASSES, BATCH).astype("int32")
    return arrays


def reference_terms(arrays):
    """The Distiller's loss terms for ``arrays``, float64 NumPy:

        loss = alpha · CE + (1 − alpha) · KD_T + w · FitNet
    """
    def dense(h, name, relu=False):
        kernel, bias = (a.astype("float64") for a in arrays[name])
        out = h @ kernel + bias
        return np.maximum(out, 0.0) if relu else out

    x, y = arrays["x"].astype("float64"), arrays["y"]
    h_t = dense(x, "teacher_hidden", relu=True)
    h_s = dense(x, "student_hidden", relu=True)
    t, s = dense(h_t, "teacher_logits"), dense(h_s, "student_logits")
    hard = references.reduce_term(references.sparse_ce(y, s))
    soft = references.reduce_term(references.kd(t, s, TEMPERATURE))
    hint = references.reduce_term(
        references.fitnet(h_t, dense(h_s, "adapter")))
    return {
        "student_loss": float(hard),
        "distillation_loss": float(soft),
        "fitnet_loss": float(hint),
        "loss": float(ALPHA * hard + (1 - ALPHA) * soft
                      + FITNET_WEIGHT * hint),
    }


def expected_block(terms):
    lines = ["EXPECTED = {"]
    lines += [f"    \"{key}\": {value!r}," for key, value in terms.items()]
    return "\n".join(lines + ["}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite EXPECTED in tests/test_parity.py")
    args = parser.parse_args()
    block = expected_block(reference_terms(parity_arrays()))
    print(block)
    if args.write:
        path = pathlib.Path(__file__).with_name("test_parity.py")
        text = path.read_text()
        new, count = re.subn(r"^EXPECTED = \{\n.*?^\}", lambda _: block, text,
                             count=1, flags=re.S | re.M)
        if count != 1:
            raise SystemExit(f"no EXPECTED block found in {path}")
        path.write_text(new)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
