"""Transfer learning for the teacher (feature extraction vs fine-tuning), then KD.

A teacher is rarely trained from scratch: it starts from a backbone
pretrained on a large source task. This example compares the two ways to
reuse that backbone on the target task, then distils the better teacher into
a small student:

* feature extraction: the backbone is frozen, only a new head is trained;
* fine-tuning: the head is trained first on the frozen backbone, then the
  whole network at a 10x lower learning rate;
* (reference) the same architecture trained from scratch on the target task.

Full size: a keras.applications backbone with ImageNet weights (downloaded on
first use) on a tensorflow-datasets target task::

    python examples/transfer_learning.py --backbone MobileNetV2 \\
        --dataset cifar10 --image-size 96 --epochs 5

Offline (and ``--smoke``): the source task is digits 0-4 and the target task
digits 5-9 (bundled data): a CNN backbone is pretrained on the source digits,
then transferred to the target digits with only ``--target-examples`` labelled
examples; the student is then distilled on all target images without their
labels (the teacher labels them), while the student alone has only the
labelled ones::

    python examples/transfer_learning.py            # offline, about a minute
    python examples/transfer_learning.py --smoke    # seconds
"""

import argparse
import sys

import keras
import numpy as np

import keras_kd as kd
from keras_kd.app import models
from keras_kd.data import load_digits, load_dataset
from keras_kd.app.report import accuracy, count_params


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


def _acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def digits_tasks(target_examples, seed=0):
    """Source task (digits 0-4) and target task (digits 5-9, relabelled 0-4).

    Returns ``(source, target_train, target_test, target_unlabelled)``: the
    labelled target examples are the first ``target_examples`` target training
    images; ``target_unlabelled`` holds all target training images, without
    labels (what the teacher can label for the student).
    """
    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed,
                                                       as_images=True)
    src = y_train < 5
    tgt_train, tgt_test = y_train >= 5, y_test >= 5
    source = (x_train[src], y_train[src])
    target_train = (x_train[tgt_train][:target_examples],
                    y_train[tgt_train][:target_examples] - 5)
    target_test = (x_test[tgt_test], y_test[tgt_test] - 5)
    return source, target_train, target_test, x_train[tgt_train]


def with_new_head(pretrained, num_classes, name):
    """A copy of ``pretrained`` whose logits layer is replaced by a new one."""
    copy = keras.models.clone_model(pretrained)
    copy.set_weights(pretrained.get_weights())
    features = copy.layers[-2].output  # the layer before the logits
    logits = keras.layers.Dense(num_classes, name=f"{name}_logits")(features)
    return keras.Model(copy.inputs, logits, name=name)


# Learning rate of a new head on a frozen backbone (digits).
HEAD_LR = 1e-2


def run_digits(args):
    source, (x_t, y_t), (x_test, y_test), x_pool = digits_tasks(
        args.target_examples, seed=args.seed)
    shape, classes = x_t.shape[1:], 5
    print(f"source task: digits 0-4, {len(source[0])} examples; target task: "
          f"digits 5-9, {len(x_t)} labelled examples, {len(x_test)} test")

    pretrained = models.build_model("cnn", shape, classes, model_name="src")
    _compile(pretrained, 1e-3)
    print("pretraining the backbone on the source task")
    pretrained.fit(*source, epochs=args.epochs, batch_size=64, verbose=2)

    results, teachers = {}, {}
    # Feature extraction: frozen backbone, new head. 100 labelled images are
    # 4 steps an epoch: at 1e-3 the head is still far from trained after 15
    # epochs (0.5 test accuracy where a logistic regression on the same
    # frozen features reaches 0.9), hence HEAD_LR.
    fe = with_new_head(pretrained, classes, "feature_extraction")
    models.freeze_backbone(fe)
    _compile(fe, HEAD_LR)
    print("feature extraction: training the head on the frozen backbone")
    fe.fit(x_t, y_t, epochs=args.epochs, batch_size=32, verbose=2)
    teachers["feature extraction"] = fe

    # Fine-tuning: head first, then everything at a 10x lower learning rate.
    ft = with_new_head(pretrained, classes, "fine_tuning")
    models.freeze_backbone(ft)
    _compile(ft, HEAD_LR)
    print("fine-tuning, step 1: the head on the frozen backbone")
    ft.fit(x_t, y_t, epochs=args.epochs, batch_size=32, verbose=2)
    models.unfreeze_backbone(ft)
    _compile(ft, HEAD_LR / 10)
    print(f"fine-tuning, step 2: all layers at learning rate {HEAD_LR / 10:g}")
    ft.fit(x_t, y_t, epochs=args.epochs, batch_size=32, verbose=2)
    teachers["fine-tuning"] = ft

    scratch = models.build_model("cnn", shape, classes, model_name="scratch")
    _compile(scratch, 1e-3)
    print("reference: the same network from scratch on the target task")
    scratch.fit(x_t, y_t, epochs=2 * args.epochs, batch_size=32, verbose=2)
    teachers["from scratch"] = scratch

    for name, model in teachers.items():
        results[f"teacher, {name}"] = _acc(model, x_test, y_test)
    best = max(teachers, key=lambda n: results[f"teacher, {n}"])
    # Distillation needs no labels: the student learns from the teacher's
    # soft predictions on all target images (fit(x) drops the hard-label
    # term), while the student alone has only the labelled examples.
    print(f"distilling the best teacher ({best}) into tiny_cnn on "
          f"{len(x_pool)} unlabelled target images")
    student = models.build_model("tiny_cnn", shape, classes,
                                 model_name="student")
    alone = keras.models.clone_model(student)
    alone.set_weights(student.get_weights())
    distiller = kd.Distiller(teacher=teachers[best], student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.1, temperature=4.0)
    distiller.fit(x_pool, epochs=2 * args.epochs, batch_size=32, verbose=2)
    _compile(alone, 3e-3)
    alone.fit(x_t, y_t, epochs=2 * args.epochs, batch_size=32, verbose=2)
    results["student (tiny_cnn), distilled"] = _acc(student, x_test, y_test)
    results["student (tiny_cnn), alone"] = _acc(alone, x_test, y_test)
    return results


def run_applications(args):
    splits = load_dataset(args.dataset, image_size=args.image_size,
                          batch_size=64, max_train=args.max_train)
    results, teachers = {}, {}
    for mode in ("feature extraction", "fine-tuning"):
        teacher = models.build_model(args.backbone, splits.input_shape,
                                     splits.num_classes, weights="imagenet",
                                     model_name="teacher")
        models.freeze_backbone(teacher)
        _compile(teacher, 1e-3)
        print(f"{mode}: head on the frozen {args.backbone} "
              f"({count_params(teacher):,} parameters)")
        teacher.fit(splits.train, validation_data=splits.validation,
                    epochs=args.epochs, verbose=2)
        if mode == "fine-tuning":
            models.unfreeze_backbone(teacher)
            _compile(teacher, 1e-4)
            print("fine-tuning all layers at learning rate 1e-4")
            teacher.fit(splits.train, validation_data=splits.validation,
                        epochs=args.epochs, verbose=2)
        teachers[mode] = teacher
        results[f"teacher, {mode}"] = accuracy(teacher, splits.test)
    best = max(teachers, key=lambda n: results[f"teacher, {n}"])
    student = models.build_model("small_cnn", splits.input_shape,
                                 splits.num_classes, model_name="student")
    distiller = kd.Distiller(teacher=teachers[best], student=student)
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.1, temperature=4.0)
    distiller.fit(splits.train, validation_data=splits.validation,
                  epochs=args.epochs, verbose=2)
    results["student (small_cnn), distilled"] = accuracy(student, splits.test)
    return results


# --smoke: the offline digits task with fewer epochs (on 100 labelled images
# an epoch is a few steps: most of the time goes to building the models).
SMOKE_EPOCHS = 10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--backbone", default="cnn",
                        help="'cnn' (offline digits 0-4 -> 5-9) or a "
                        "keras.applications name with ImageNet weights")
    parser.add_argument("--dataset", default="cifar10",
                        help="target tfds dataset for keras.applications "
                        "backbones")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"15; --smoke: {SMOKE_EPOCHS}")
    parser.add_argument("--target-examples", type=int, default=100,
                        help="labelled target examples (digits)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights (and of the digits split)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone = "cnn"
    if args.epochs is None:
        args.epochs = SMOKE_EPOCHS if args.smoke else 15
    keras.utils.set_random_seed(args.seed)
    results = (run_digits(args) if args.backbone == "cnn"
               else run_applications(args))
    for name, acc in results.items():
        print(f"{name:>34}: test accuracy {acc:.4f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
