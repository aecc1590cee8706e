"""Flagship: ResNet50 (ImageNet, fine-tuned) -> MobileNetV2 on CIFAR-10, to TFLite.

1. Teacher: keras.applications ResNet50 with ImageNet weights, transfer
   learning on CIFAR-10 (tensorflow-datasets): the classifier head is trained
   on the frozen backbone, then the whole network is fine-tuned at a 10x
   lower learning rate.
2. Student: keras.applications MobileNetV2 (ImageNet weights), distilled from
   the teacher with Hinton KD (alpha=0.1, T=4); the same student is also
   trained on the labels alone for comparison.
3. Export: the distilled student to TFLite (float32 and int8, calibrated on
   training images), verified against Keras and timed.

Images are upscaled from 32x32 to ``--image-size`` (96 by default: ImageNet
features need some resolution; 224 is best and slowest).

Full size (GPU recommended; downloads CIFAR-10 and the ImageNet weights)::

    python examples/resnet50_mobilenetv2_cifar10.py --image-size 96 \\
        --head-epochs 2 --finetune-epochs 3 --epochs 10

Smoke size (offline, about a minute on a CPU): the CIFAR-10 pipeline runs on
``tfds.testing.mock_data`` (random images with CIFAR-10's shapes), weights
are random (``weights=None``), images stay 32x32, one epoch of a few steps::

    python examples/resnet50_mobilenetv2_cifar10.py --smoke

The same job from the command line::

    keras-kd run --dataset cifar10 --teacher ResNet50 --student MobileNetV2 \\
        --image-size 96 --weights imagenet --teacher-finetune --epochs 10 \\
        --objective kd
"""

import argparse
import contextlib
import os
import sys

import keras

import keras_kd as kd
from keras_kd.app import models
from keras_kd.data import load_dataset
from keras_kd.app.report import accuracy, count_params, markdown_table
from keras_kd.saving import save_model_only


# In --smoke runs the train steps run eagerly: tracing/compiling ResNet50's
# step costs more than the few steps of a smoke test.
EAGER = {"run_eagerly": False}


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], **EAGER)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--weights", default="imagenet",
                        choices=("imagenet", "none"))
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of distillation and of the student alone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--output", default="saved_models/flagship")
    args = parser.parse_args(argv)
    mock = contextlib.nullcontext()
    if args.smoke:
        import tensorflow_datasets as tfds

        mock = tfds.testing.mock_data(num_examples=48)
        args.image_size, args.weights = 32, "none"
        args.head_epochs = args.finetune_epochs = args.epochs = 1
        args.batch_size, args.max_train = 8, 16
        EAGER["run_eagerly"] = True
    weights = None if args.weights == "none" else args.weights
    keras.utils.set_random_seed(0)
    os.makedirs(args.output, exist_ok=True)

    with mock:
        splits = load_dataset("cifar10", image_size=args.image_size,
                              batch_size=args.batch_size,
                              max_train=args.max_train,
                              max_test=args.max_train)
        print(splits)
        val = None if args.smoke else splits.validation

        # 1. Teacher: frozen backbone + new head, then fine-tuning.
        teacher = models.build_model("ResNet50", splits.input_shape,
                                     splits.num_classes, weights=weights,
                                     model_name="teacher")
        models.freeze_backbone(teacher)
        _compile(teacher, 1e-3)
        print(f"teacher ResNet50: {count_params(teacher):,} parameters; "
              "training the head on the frozen backbone")
        teacher.fit(splits.train, validation_data=val,
                    epochs=args.head_epochs, verbose=2)
        models.unfreeze_backbone(teacher)
        _compile(teacher, 1e-4)
        print("fine-tuning the whole teacher at learning rate 1e-4")
        teacher.fit(splits.train, validation_data=val,
                    epochs=args.finetune_epochs, verbose=2)

        # 2. Student: distilled, and alone from the same initial weights.
        student = models.build_model("MobileNetV2", splits.input_shape,
                                     splits.num_classes, weights=weights,
                                     model_name="student")
        alone = keras.models.clone_model(student)
        alone.set_weights(student.get_weights())
        distiller = kd.Distiller(teacher=teacher, student=student)
        distiller.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], alpha=0.1, temperature=4.0, **EAGER)
        print(f"distilling into MobileNetV2 ({count_params(student):,} "
              "parameters)")
        distiller.fit(splits.train, validation_data=val,
                      epochs=args.epochs, verbose=2)
        _compile(alone, 1e-3)
        print("training the same student on the labels alone")
        alone.fit(splits.train, validation_data=val,
                  epochs=args.epochs, verbose=2)

        # 3. Save and export.
        records = []
        for label, model in (("teacher (ResNet50)", teacher),
                             ("student alone (MobileNetV2)", alone),
                             ("distilled student (MobileNetV2)", student)):
            path = os.path.join(args.output,
                                label.split(" (")[0].replace(" ", "_") + ".keras")
            save_model_only(model, path)  # without optimizer state
            records.append(dict(label=label, path=path,
                                parameters=count_params(model),
                                size_bytes=os.path.getsize(path),
                                test_accuracy=accuracy(model, splits.test)))
        from keras_kd import export

        representative = splits.train.map(lambda x, y: x)
        # int8 calibration of MobileNetV2 takes minutes on a CPU: smoke runs
        # export float32 only.
        for quantize in ("float32",) if args.smoke else ("float32", "int8"):
            rep = export.to_tflite(
                student, os.path.join(args.output, f"student_{quantize}.tflite"),
                quantize=quantize, representative_data=representative,
                eval_data=splits.test, latency_runs=5 if args.smoke else 50)
            print(rep.summary())
            records.append(dict(label=f"distilled student, TFLite {quantize}",
                                path=rep.path, size_bytes=rep.size_bytes,
                                test_accuracy=rep.tflite_accuracy,
                                latency_ms=rep.latency_ms_median))
    print(markdown_table(records))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
