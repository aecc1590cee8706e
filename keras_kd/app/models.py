"""Teacher and student builders: small built-in CNNs/MLPs and keras.applications.

``build_model(name, input_shape, num_classes)`` returns a functional
``keras.Model`` that maps images scaled to [0, 1] to class logits:

* built-in models (``"cnn"``, ``"small_cnn"``, ``"tiny_cnn"``, ``"mlp"``,
  ``"small_mlp"``): flat functional models whose layers are named
  ``{name}_conv1``, ``{name}_conv2``, ... so that feature objectives such as
  ``kd.FitNet`` can tap them. The CNNs follow the input's rank: 3×3
  ``Conv2D`` for ``(height, width, channels)`` images, kernel-5 ``Conv1D`` for
  ``(length, channels)`` signals such as MNIST-1D's ``(40, 1)``;
* ``keras.applications`` names (``"ResNet50"``, ``"MobileNetV2"``, ...): the
  application without its top (``include_top=False, pooling="avg"``) as a nested
  backbone model named ``{name}_backbone``, preceded by the preprocessing the
  application expects (so inputs stay in [0, 1]) and followed by a dropout and
  a Dense logits head. Grey images are repeated to three channels.

``freeze_backbone(model)`` / ``unfreeze_backbone(model)`` switch between
feature extraction (backbone frozen, head trained) and fine-tuning.
"""

import os
import socket

import keras
from keras import ops

BUILTIN_MODELS = {
    # name: (kind, widths)
    "cnn": ("cnn", (64, 128, 128)),
    "small_cnn": ("cnn", (16, 32)),
    "tiny_cnn": ("cnn", (8, 16)),
    "mlp": ("mlp", (256, 128)),
    "small_mlp": ("mlp", (32,)),
}

# keras.applications name -> (module-level constructor name, preprocessing
# mode, smallest input side accepted without pretrained weights).
_PREPROCESSING = {
    "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe",
    "VGG16": "caffe", "VGG19": "caffe",
    "ResNet50V2": "tf", "ResNet101V2": "tf", "ResNet152V2": "tf",
    "MobileNet": "tf", "MobileNetV2": "tf", "InceptionV3": "tf",
    "InceptionResNetV2": "tf", "Xception": "tf", "NASNetMobile": "tf",
    "NASNetLarge": "tf",
    "DenseNet121": "torch", "DenseNet169": "torch", "DenseNet201": "torch",
    # These include their own preprocessing and expect [0, 255] inputs.
    "MobileNetV3Small": "raw255", "MobileNetV3Large": "raw255",
    "EfficientNetB0": "raw255", "EfficientNetB1": "raw255",
    "EfficientNetB2": "raw255", "EfficientNetB3": "raw255",
    "EfficientNetB4": "raw255", "EfficientNetB5": "raw255",
    "EfficientNetB6": "raw255", "EfficientNetB7": "raw255",
    "EfficientNetV2B0": "raw255", "EfficientNetV2B1": "raw255",
    "EfficientNetV2B2": "raw255", "EfficientNetV2B3": "raw255",
    "EfficientNetV2S": "raw255", "EfficientNetV2M": "raw255",
    "EfficientNetV2L": "raw255",
    "ConvNeXtTiny": "raw255", "ConvNeXtSmall": "raw255",
    "ConvNeXtBase": "raw255", "ConvNeXtLarge": "raw255",
    "ConvNeXtXLarge": "raw255",
}
APPLICATIONS = tuple(sorted(n for n in _PREPROCESSING
                            if hasattr(keras.applications, n)))
_MIN_SIDE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71,
             "NASNetMobile": 32, "NASNetLarge": 32}


def model_names():
    """All names accepted by :func:`build_model` (built-ins, then applications).

    Example:

    >>> "MobileNetV2" in model_names() and "cnn" in model_names()
    True
    """
    return tuple(BUILTIN_MODELS) + APPLICATIONS


def resolve_name(name):
    if name in BUILTIN_MODELS or name in APPLICATIONS:
        return name
    lowered = {n.lower(): n for n in model_names()}
    if isinstance(name, str) and name.lower() in lowered:
        return lowered[name.lower()]
    raise ValueError(
        f"Unknown model {name!r}. Choose a built-in model "
        f"({', '.join(BUILTIN_MODELS)}) or a keras.applications name "
        f"({', '.join(APPLICATIONS)})."
    )


@keras.saving.register_keras_serializable(package="keras_kd")
class ImagePreprocessing(keras.layers.Layer):
    """Maps [0, 1] images to what a keras.applications backbone expects.

    Modes (as in ``keras.applications.imagenet_utils.preprocess_input``):
    ``"caffe"``: ``x·255`` in BGR order minus the ImageNet channel means;
    ``"tf"``: ``2x − 1``; ``"torch"``: ``(x − mean) / std`` per RGB channel;
    ``"raw255"``: ``x·255`` (models that preprocess internally). A one-channel
    image is first repeated to three channels.

    Example:

    >>> import numpy as np
    >>> layer = ImagePreprocessing("tf")
    >>> np.asarray(layer(np.ones((1, 2, 2, 1), "float32"))).shape
    (1, 2, 2, 3)
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "raw255"):
            raise ValueError(f"mode must be 'caffe', 'tf', 'torch' or "
                             f"'raw255', got {mode!r}.")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, "float32")
        if x.shape[-1] == 1:
            x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "raw255":
            return x * 255.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor([0.485, 0.456, 0.406])
            std = ops.convert_to_tensor([0.229, 0.224, 0.225])
            return (x - mean) / std
        x = ops.flip(x, axis=-1) * 255.0  # RGB -> BGR
        return x - ops.convert_to_tensor([103.939, 116.779, 123.68])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


def _builtin(kind, widths, name, input_shape, num_classes, dropout):
    inputs = keras.Input(input_shape, name=f"{name}_input")
    h = inputs
    if kind == "mlp":
        h = keras.layers.Flatten(name=f"{name}_flatten")(h)
        for i, width in enumerate(widths, start=1):
            h = keras.layers.Dense(width, activation="relu",
                                   name=f"{name}_dense{i}")(h)
    else:
        if len(input_shape) not in (2, 3):
            raise ValueError(
                f"A CNN needs (height, width, channels) images or (length, "
                f"channels) signals, got shape {tuple(input_shape)}; use an "
                "MLP ('mlp', 'small_mlp') for vectors, or add a channel axis "
                "(x[..., None]) to signals.")
        # Images: 3x3 Conv2D; 1-D signals (MNIST-1D): kernel 5 Conv1D, as in
        # the MNIST-1D paper's CNN.
        one_d = len(input_shape) == 2
        conv, pool, gap, kernel = (
            (keras.layers.Conv1D, keras.layers.MaxPooling1D,
             keras.layers.GlobalAveragePooling1D, 5) if one_d else
            (keras.layers.Conv2D, keras.layers.MaxPooling2D,
             keras.layers.GlobalAveragePooling2D, 3))
        for i, width in enumerate(widths, start=1):
            h = conv(width, kernel, padding="same", use_bias=False,
                     name=f"{name}_conv{i}")(h)
            # momentum 0.9: small datasets give few steps per epoch.
            h = keras.layers.BatchNormalization(momentum=0.9,
                                                name=f"{name}_bn{i}")(h)
            h = keras.layers.ReLU(name=f"{name}_relu{i}")(h)
            if i < len(widths) and min(h.shape[1:-1]) >= 4:
                h = pool(name=f"{name}_pool{i}")(h)
        h = gap(name=f"{name}_gap")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, name=f"{name}_head_dropout")(h)
    outputs = keras.layers.Dense(num_classes, name=f"{name}_logits")(h)
    return keras.Model(inputs, outputs, name=name)


def imagenet_weights_available(timeout=3.0):
    """Whether ImageNet weights can be fetched: cached in ~/.keras, or online.

    Tries a TCP connection to ``storage.googleapis.com:443`` (where
    keras.applications downloads from) with ``timeout`` seconds.
    """
    cache = os.path.join(os.path.expanduser(
        os.environ.get("KERAS_HOME", "~/.keras")), "models")
    if os.path.isdir(cache) and any(f.endswith(".h5") for f in os.listdir(cache)):
        return True
    try:
        with socket.create_connection(("storage.googleapis.com", 443),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _application(app_name, name, input_shape, num_classes, weights, dropout):
    if len(input_shape) != 3:
        raise ValueError(f"{app_name} needs image inputs (height, width, "
                         f"channels), got shape {tuple(input_shape)}.")
    min_side = _MIN_SIDE.get(app_name, 32)
    if min(input_shape[:2]) < min_side:
        raise ValueError(
            f"{app_name} needs images of at least {min_side}x{min_side}, got "
            f"{input_shape[0]}x{input_shape[1]}; pass --image-size "
            f"{max(min_side, 32)} (or image_size=...) to resize them.")
    constructor = getattr(keras.applications, app_name)
    shape = tuple(input_shape[:2]) + (3,)
    try:
        backbone = constructor(include_top=False, weights=weights,
                               input_shape=shape, pooling="avg")
    except Exception as error:  # download failures come in many types
        if weights == "imagenet":
            raise RuntimeError(
                f"Could not get the ImageNet weights of {app_name}: {error}. "
                "They are downloaded from storage.googleapis.com on first "
                "use; without network access pass --weights none (train from "
                "scratch), or copy the weight file into ~/.keras/models/."
            ) from error
        raise
    backbone.name = f"{name}_backbone"
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    h = ImagePreprocessing(_PREPROCESSING[app_name],
                           name=f"{name}_preprocessing")(inputs)
    # training=False keeps the backbone's BatchNorm in inference mode, also
    # when it is unfrozen for fine-tuning (the keras.io transfer-learning
    # recipe).
    h = backbone(h, training=False)
    if dropout:
        h = keras.layers.Dropout(dropout, name=f"{name}_head_dropout")(h)
    outputs = keras.layers.Dense(num_classes, name=f"{name}_logits")(h)
    return keras.Model(inputs, outputs, name=name)


def build_model(name, input_shape, num_classes, weights=None, dropout=None,
                model_name=None):
    """Builds a classifier mapping [0, 1] images (or vectors) to logits.

    Args:
        name: a built-in model (``"cnn"``, ``"small_cnn"``, ``"tiny_cnn"``,
            ``"mlp"``, ``"small_mlp"``) or a ``keras.applications`` name such
            as ``"ResNet50"`` or ``"MobileNetV2"`` (case-insensitive).
        input_shape: the input shape without the batch axis, e.g. ``(8, 8, 1)``
            (an image) or ``(40, 1)`` (a 1-D signal: the CNNs use Conv1D).
        num_classes: the number of classes (units of the logits layer).
        weights: ``None`` (random initialisation) or ``"imagenet"``
            (keras.applications only; downloaded on first use).
        dropout: dropout rate before the logits; defaults to 0.2 for
            applications and 0 for built-ins.
        model_name: the Keras model's name (defaults to ``name`` lowercased);
            layer names are prefixed with it.

    Returns:
        A functional ``keras.Model``.

    Example:

    >>> model = build_model("small_cnn", (8, 8, 1), 10, model_name="student")
    >>> model.output_shape
    (None, 10)
    >>> model.get_layer("student_conv2").name
    'student_conv2'

    The CNNs build 1-D convolutions for ``(length, channels)`` signals:

    >>> model = build_model("small_cnn", (40, 1), 10)
    >>> type(model.get_layer("small_cnn_conv1")).__name__, model.count_params()
    ('Conv1D', 3162)
    """
    resolved = resolve_name(name)
    model_name = model_name or resolved.lower()
    if weights in ("none", "None", ""):
        weights = None
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}.")
    if resolved in BUILTIN_MODELS:
        if weights is not None:
            raise ValueError(
                f"The built-in model {resolved!r} has no pretrained weights; "
                "use weights=None (--weights none) or a keras.applications "
                "model such as MobileNetV2.")
        kind, widths = BUILTIN_MODELS[resolved]
        return _builtin(kind, widths, model_name, input_shape, num_classes,
                        dropout or 0.0)
    return _application(resolved, model_name, input_shape, num_classes,
                        weights, 0.2 if dropout is None else dropout)


def is_application(name):
    """Whether ``name`` is a keras.applications model (vs a built-in)."""
    return resolve_name(name) in APPLICATIONS


def _backbone_layers(model):
    head = (f"{model.name}_logits", f"{model.name}_head_dropout")
    return [layer for layer in model.layers
            if layer.name not in head and not isinstance(
                layer, keras.layers.InputLayer)]


def freeze_backbone(model):
    """Freezes every layer but the head (the dropout and logits layers).

    For feature extraction: only the new classifier head trains. Recompile the
    model after calling this (Keras reads ``trainable`` at compile time).

    Example:

    >>> model = build_model("small_cnn", (8, 8, 1), 10)
    >>> freeze_backbone(model)
    >>> [w.name for w in model.trainable_weights]
    ['kernel', 'bias']
    """
    for layer in _backbone_layers(model):
        layer.trainable = False


def unfreeze_backbone(model):
    """Makes the whole model trainable again (fine-tuning); recompile after.

    BatchNorm layers of a keras.applications backbone keep running in
    inference mode (the backbone is called with ``training=False``).
    """
    for layer in _backbone_layers(model):
        layer.trainable = True
