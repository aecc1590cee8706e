"""Transformer -> smaller transformer, with hidden-state (FitNet) distillation.

The BERT -> DistilBERT recipe in miniature: the student has half the layers
and half the width of the teacher; besides the soft logits (Hinton KD), the
output of each student block imitates the output of every second teacher
block (student block i <- teacher block 2i), through a trainable Dense adapter
from the student's width to the teacher's (``kd.FitNet`` creates it because
the widths differ; it is trained with the student and is not part of it).

Data: keras-kd bundles no text corpus and this example must run offline, so
it builds a synthetic sequence-classification task over token ids: each
sequence of ``--length`` tokens (vocabulary ``--vocab``) holds keywords of 4
groups; the label is the group whose keywords occur most often. Solving it
needs to aggregate over the whole sequence (what self-attention does); it is
order-invariant, so the models use no position embeddings. For real text,
feed token ids from your tokenizer in the same (batch, length) int layout.

Full size (minutes on a CPU)::

    python examples/text_transformer.py

Smoke size (seconds)::

    python examples/text_transformer.py --smoke
"""

import argparse
import sys

import keras
import numpy as np

import keras_kd as kd
from keras_kd.app.report import count_params

GROUPS = 4


def synthetic_task(n, length=32, vocab=200, seed=0):
    """Token sequences labelled by the keyword group that occurs most often.

    Token ids 1..4·8 are keywords (8 per group); the rest are filler. Ties
    are broken by the lowest group index.

    Returns:
        ``(x, y)``: int32 ``(n, length)`` tokens and int32 ``(n,)`` labels.
    """
    rng = np.random.default_rng(seed)
    per_group = 8
    x = rng.integers(1 + GROUPS * per_group, vocab, size=(n, length))
    counts = rng.integers(0, length // (2 * GROUPS) + 1, size=(n, GROUPS))
    for i in range(n):
        positions = rng.permutation(length)
        start = 0
        for g in range(GROUPS):
            k = counts[i, g]
            words = 1 + g * per_group + rng.integers(0, per_group, size=k)
            x[i, positions[start:start + k]] = words
            start += k
    return x.astype("int32"), np.argmax(counts, axis=1).astype("int32")


def transformer(name, layers, width, heads, vocab, length, classes=GROUPS):
    """A post-norm transformer encoder classifier; blocks end in ``{name}_block{i}``."""
    tokens = keras.Input((length,), dtype="int32", name=f"{name}_tokens")
    h = keras.layers.Embedding(vocab, width, name=f"{name}_embedding")(tokens)
    for i in range(1, layers + 1):
        attn = keras.layers.MultiHeadAttention(
            heads, width // heads, name=f"{name}_attention{i}")(h, h)
        h = keras.layers.LayerNormalization(name=f"{name}_norm{i}a")(h + attn)
        ff = keras.layers.Dense(2 * width, activation="gelu",
                                name=f"{name}_ffn{i}a")(h)
        ff = keras.layers.Dense(width, name=f"{name}_ffn{i}b")(ff)
        h = keras.layers.LayerNormalization(name=f"{name}_block{i}")(h + ff)
    pooled = keras.layers.GlobalAveragePooling1D(name=f"{name}_pool")(h)
    logits = keras.layers.Dense(classes, name=f"{name}_logits")(pooled)
    return keras.Model(tokens, logits, name=name)


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


FULL = {"epochs": 15, "examples": 8000, "length": 32}
# --smoke: no validation pass (fewer functions to compile).
SMOKE = {"epochs": 6, "examples": 2048, "length": 16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--epochs", type=int, default=None,
                        help="15; --smoke: SMOKE's")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples (a quarter as many more are "
                        "the test set): 8000; --smoke: SMOKE's")
    parser.add_argument("--length", type=int, default=None,
                        help="tokens a sequence: 32; --smoke: SMOKE's")
    parser.add_argument("--vocab", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the synthetic data")
    args = parser.parse_args(argv)
    val = 0.0 if args.smoke else 0.1  # smoke: fewer functions to compile
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    keras.utils.set_random_seed(args.seed)
    x, y = synthetic_task(args.examples + args.examples // 4, args.length,
                          args.vocab, seed=args.seed)
    x_train, y_train = x[:args.examples], y[:args.examples]
    x_test, y_test = x[args.examples:], y[args.examples:]

    # Teacher: 4 blocks of width 64; student: 2 blocks of width 32.
    teacher = transformer("teacher", 4, 64, 4, args.vocab, args.length)
    student = transformer("student", 2, 32, 2, args.vocab, args.length)
    scratch = keras.models.clone_model(student)
    scratch.set_weights(student.get_weights())

    print(f"teacher: {count_params(teacher):,} parameters, student: "
          f"{count_params(student):,}")
    _compile(teacher, 1e-3)
    teacher.fit(x_train, y_train, epochs=args.epochs, batch_size=64,
                validation_split=val, verbose=2)

    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.5, temperature=2.0,
        feature_losses=[
            # student block i <- teacher block 2i, as DistilBERT pairs layers
            kd.FitNet("teacher_block2", "student_block1", weight=1.0,
                      name="hidden1"),
            kd.FitNet("teacher_block4", "student_block2", weight=1.0,
                      name="hidden2"),
        ])
    distiller.fit(x_train, y_train, epochs=args.epochs, batch_size=64,
                  validation_split=val, verbose=2)

    _compile(scratch, 1e-3)
    scratch.fit(x_train, y_train, epochs=args.epochs, batch_size=64,
                validation_split=val, verbose=2)

    results = {"teacher": _accuracy(teacher, x_test, y_test),
               "distilled student": _accuracy(student, x_test, y_test),
               "student from scratch": _accuracy(scratch, x_test, y_test)}
    for name, acc in results.items():
        print(f"{name:>22}: test accuracy {acc:.4f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
