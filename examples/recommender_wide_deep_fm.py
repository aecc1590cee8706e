"""Recommender: Wide & Deep teacher -> factorization-machine student, with RKD.

A click-prediction task on synthetic interaction data (keras-kd bundles no
recommender data set and this example runs offline): users and items have
hidden taste vectors; a user clicks an item when their affinity plus noise is
positive. Each example holds four categorical fields, as global ids into one
shared vocabulary (the field offsets are added by ``synthetic_interactions``):
user, item, the user's age bucket and the item's category.

* Teacher, Wide & Deep (Cheng et al., 2016): a linear "wide" part over the
  one-hot fields plus a "deep" MLP over 32-dimensional field embeddings.
* Student, factorization machine (Rendle, 2010): per-field biases plus the
  pairwise interactions ``Σ_{i<j} <v_i, v_j>`` of 8-dimensional embeddings,
  ``½((Σ_f v_f)² − Σ_f v_f²)`` per embedding dimension: about a fifth of the
  teacher's weights.
* Distillation: Hinton KD on the click logits (two classes) plus relational
  KD (``kd.objectives.RKD``, Park et al., CVPR 2019) between the teacher's
  last deep layer (64-d) and the student's interaction vector (8-d): RKD
  compares the distances and angles among the examples of a batch, so the two
  representations need not have the same width (no adapter). RKD is
  scale-invariant, so its gradient grows as its features shrink, and the
  FM's interaction vector starts near 1e-3 (products of small initial
  factors): at RKD's usual weight 1 (or 0.01) it drowns the click loss and
  the distilled FM hardly learns the interactions (measured, 4 epochs on
  4,096 and on 16,000 training examples: test accuracy 0.61 and 0.67,
  against 0.84 and 0.86 from scratch and about 0.6 for a model without
  interactions). Here
  RKD gets weight ``RKD_WEIGHT`` = 0.001, a regulariser next to the KD and
  label terms.

Full size::

    python examples/recommender_wide_deep_fm.py

Smoke size (seconds)::

    python examples/recommender_wide_deep_fm.py --smoke
"""

import argparse
import sys

import keras
import numpy as np
from keras import ops

import keras_kd as kd
from keras_kd.app.report import count_params

AGE_BUCKETS, CATEGORIES = 6, 12
# The weight of the RKD term (see the module docstring: at weight 1 it keeps
# the FM from learning the interactions).
RKD_WEIGHT = 1e-3


def synthetic_interactions(n, users=500, items=800, dim=6, seed=0):
    """Synthetic (user, item, age bucket, category) -> click examples.

    Returns:
        ``(x, y, vocab)``: int32 ``(n, 4)`` global field ids, int32 ``(n,)``
        clicks (0/1, about half positive) and the vocabulary size.
    """
    rng = np.random.default_rng(seed)
    user_vec = rng.normal(size=(users, dim))
    item_vec = rng.normal(size=(items, dim))
    user_age = rng.integers(0, AGE_BUCKETS, users)
    item_cat = rng.integers(0, CATEGORIES, items)
    age_vec = rng.normal(size=(AGE_BUCKETS, dim))
    cat_vec = rng.normal(size=(CATEGORIES, dim))
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    score = (np.sum(user_vec[u] * item_vec[i], 1) / np.sqrt(dim)
             + np.sum(age_vec[user_age[u]] * cat_vec[item_cat[i]], 1)
             + 0.3 * rng.normal(size=n))
    y = (score > np.median(score)).astype("int32")
    offsets = np.cumsum([0, users, items, AGE_BUCKETS])
    x = np.stack([u, i, user_age[u], item_cat[i]], 1) + offsets
    return x.astype("int32"), y, int(offsets[-1] + CATEGORIES)


def wide_and_deep(vocab, fields=4, dim=32):
    """Wide & Deep classifier over ``fields`` categorical ids; logits for 2 classes."""
    ids = keras.Input((fields,), dtype="int32", name="teacher_ids")
    wide = keras.layers.Embedding(vocab, 1, name="teacher_wide")(ids)
    wide = keras.layers.Flatten(name="teacher_wide_flat")(wide)
    emb = keras.layers.Embedding(vocab, dim, name="teacher_embedding")(ids)
    h = keras.layers.Flatten(name="teacher_deep_flat")(emb)
    h = keras.layers.Dense(128, activation="relu", name="teacher_deep1")(h)
    h = keras.layers.Dense(64, activation="relu", name="teacher_deep2")(h)
    both = keras.layers.Concatenate(name="teacher_concat")([wide, h])
    return keras.Model(ids, keras.layers.Dense(2, name="teacher_logits")(both),
                       name="teacher")


def factorization_machine(vocab, fields=4, dim=8):
    """A factorization machine; ``student_interactions`` is the (batch, dim) vector."""
    ids = keras.Input((fields,), dtype="int32", name="student_ids")
    first = keras.layers.Embedding(vocab, 1, name="student_linear")(ids)
    first = keras.layers.Flatten(name="student_linear_flat")(first)
    v = keras.layers.Embedding(vocab, dim, name="student_factors")(ids)
    square_of_sum = ops.square(ops.sum(v, axis=1))
    sum_of_squares = ops.sum(ops.square(v), axis=1)
    pairs = keras.layers.Identity(name="student_interactions")(
        0.5 * (square_of_sum - sum_of_squares))
    both = keras.layers.Concatenate(name="student_concat")([first, pairs])
    return keras.Model(ids, keras.layers.Dense(2, name="student_logits")(both),
                       name="student")


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


FULL = {"examples": 40000, "epochs": 6, "batch_size": 64, "lr": 2e-3}
# --smoke: batches of 32 for the students: RKD's angle term costs batch³, and
# the FMs need a few hundred steps to learn the interactions.
SMOKE = {"examples": 4096, "epochs": 2, "batch_size": 32, "lr": 5e-3}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples (a fifth as many more are "
                        "the test set): 40000; --smoke: SMOKE's")
    parser.add_argument("--epochs", type=int, default=None,
                        help="6; --smoke: SMOKE's")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam's learning rate: 2e-3; --smoke: SMOKE's")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size of the students (distilled and from "
                        "scratch; the teacher's is 256): 64; --smoke: SMOKE's")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the synthetic data")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    keras.utils.set_random_seed(args.seed)
    x, y, vocab = synthetic_interactions(args.examples + args.examples // 5,
                                         seed=args.seed)
    x_train, y_train = x[:args.examples], y[:args.examples]
    x_test, y_test = x[args.examples:], y[args.examples:]

    teacher = wide_and_deep(vocab)
    student = factorization_machine(vocab)
    scratch = keras.models.clone_model(student)
    scratch.set_weights(student.get_weights())
    print(f"teacher (Wide & Deep): {count_params(teacher):,} parameters; "
          f"student (FM): {count_params(student):,}")

    _compile(teacher, args.lr)
    teacher.fit(x_train, y_train, batch_size=256, epochs=args.epochs,
                validation_split=0.1, verbose=2)

    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.5, temperature=2.0,
        feature_losses=[kd.objectives.RKD("teacher_deep2",
                                          "student_interactions",
                                          weight=RKD_WEIGHT)])
    # RKD's angle term compares every triple of a batch: its cost grows as
    # batch³ · width, so distil with moderate batches (64; --smoke: 32).
    distiller.fit(x_train, y_train, batch_size=args.batch_size,
                  epochs=args.epochs, validation_split=0.1, verbose=2)

    _compile(scratch, args.lr)
    scratch.fit(x_train, y_train, batch_size=args.batch_size,
                epochs=args.epochs, validation_split=0.1, verbose=2)

    results = {"teacher (Wide & Deep)": _accuracy(teacher, x_test, y_test),
               "distilled FM": _accuracy(student, x_test, y_test),
               "FM from scratch": _accuracy(scratch, x_test, y_test)}
    for name, acc in results.items():
        print(f"{name:>22}: test accuracy {acc:.4f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
