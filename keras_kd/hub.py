"""keras-hub tasks as teachers and students: preprocessing, tokenizers, init.

A keras-hub task (``CausalLM``, ``MaskedLM``, ``TextClassifier``, ...) may
carry a ``preprocessor`` that turns raw strings into ``{"token_ids",
"padding_mask", ...}`` batches with labels and sample weights. The
:class:`~keras_kd.Distiller` applies it the way the task's own ``fit`` does
(``task.preprocess_samples`` mapped over a ``tf.data`` pipeline), so
``distiller.fit(strings)`` trains as ``student.fit(strings)`` would. Teacher
and student must then share a tokenizer: distillation compares their
distributions token by token.

Nothing here imports keras-hub: the models are inspected by their public
attributes (``preprocessor``, ``tokenizer``, ``preprocess_samples``).
"""

import re

import keras
import numpy as np

from keras_kd import inputs
from keras_kd.extras import require


def _preprocessor(model):
    return getattr(model, "preprocessor", None)


def _tokenizer(model):
    return getattr(_preprocessor(model), "tokenizer", None)


def _vocabulary(tokenizer):
    size = tokenizer.vocabulary_size()
    try:
        return size, list(tokenizer.get_vocabulary())
    except Exception:  # noqa: BLE001 -- some tokenizers list none
        return size, None


def check_tokenizers(teacher, student):
    """Refuses a teacher and a student whose tokenizers differ.

    Compared when both models carry a keras-hub preprocessor with a
    tokenizer: vocabulary size, then the vocabulary itself when the tokenizer
    lists it.
    """
    t_tok, s_tok = _tokenizer(teacher), _tokenizer(student)
    if t_tok is None or s_tok is None:
        return
    (t_size, t_vocab), (s_size, s_vocab) = _vocabulary(t_tok), _vocabulary(
        s_tok)
    differ = t_size != s_size or (
        t_vocab is not None and s_vocab is not None and t_vocab != s_vocab)
    if differ or type(t_tok) is not type(s_tok):
        raise ValueError(
            f"The teacher '{teacher.name}' and the student '{student.name}' "
            f"tokenize differently ({type(t_tok).__name__} of {t_size} "
            f"tokens vs {type(s_tok).__name__} of {s_size}). Distillation "
            "compares their distributions token by token, so they must share "
            "a tokenizer: build the student with the teacher's preprocessor, "
            "e.g. keras_hub.models.GPT2CausalLM(backbone=student_backbone, "
            "preprocessor=teacher.preprocessor)."
        )


def preprocessing_of(teachers, student):
    """The ``preprocess_samples`` function to apply to raw data, or None.

    The student's when it has a preprocessor, else the first teacher's.
    """
    for model in [student] + list(teachers):
        if _preprocessor(model) is not None and hasattr(
                model, "preprocess_samples"):
            return model.preprocess_samples
    return None


def holds_raw_text(x):
    """True for strings (or bytes): NumPy arrays, lists, or a ``tf.data``
    dataset whose inputs are strings."""
    if isinstance(x, str):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and isinstance(x[0], (str, bytes))
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USO"
    if inputs.is_tf_dataset(x):
        spec = x.element_spec
        first = spec[0] if isinstance(spec, (tuple, list)) else spec
        return not isinstance(first, dict) and getattr(
            first, "dtype", None) is not None and first.dtype.name == "string"
    return False


def preprocessed(preprocess, x, y=None, sample_weight=None, batch_size=None,
                 shuffle=False, seed=None):
    """A batched ``tf.data`` pipeline of ``preprocess(x, y, sample_weight)``.

    A ``tf.data`` dataset is mapped as it is (batched already, as keras-hub
    expects); arrays and lists are sliced, shuffled when asked (as ``fit``
    shuffles NumPy data), batched (32 by default) and mapped.
    """
    tf = require("tensorflow")
    if inputs.is_tf_dataset(x):
        data = x
    else:
        packed = keras.utils.pack_x_y_sample_weight(
            np.asarray(x), None if y is None else np.asarray(y),
            None if sample_weight is None else np.asarray(sample_weight))
        data = tf.data.Dataset.from_tensor_slices(packed)
        if shuffle:
            data = data.shuffle(len(x), seed=seed,
                                reshuffle_each_iteration=True)
        data = data.batch(batch_size or 32)

    def apply(*element):
        return preprocess(*element)

    return data.map(apply, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def fit_data(preprocess, x, y, kwargs, training):
    """``(x, y, kwargs)`` of ``fit``/``evaluate``/``predict`` with raw text
    (and raw ``validation_data``) mapped through ``preprocess`` (see
    :func:`preprocessing_of`), as the task's own methods do; the arguments
    as they are when ``preprocess`` is None or the data are not text.

    Example:

    >>> fit_data(None, [[1, 2]], None, {}, training=True)
    ([[1, 2]], None, {})
    """
    if preprocess is None:
        return x, y, kwargs
    kwargs = dict(kwargs)
    if holds_raw_text(x):
        x = preprocessed(
            preprocess, x, y, kwargs.pop("sample_weight", None),
            kwargs.pop("batch_size", None),
            shuffle=training and kwargs.get("shuffle", True))
        y = None
    validation = kwargs.get("validation_data")
    if validation is not None:
        vx, vy, vw = keras.utils.unpack_x_y_sample_weight(
            validation) if isinstance(validation, (tuple, list)) else (
                validation, None, None)
        if holds_raw_text(vx):
            kwargs["validation_data"] = preprocessed(
                preprocess, vx, vy, vw)
    return x, y, kwargs


# ----------------------------------------------------------------------
# Initialising a shallower student from its teacher (DistilBERT)
# ----------------------------------------------------------------------
_INDEX = re.compile(r"_(\d+)$")


def _named_layers(model):
    """``{name: layer}`` over the model and its nested models."""
    found = {}
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.setdefault(layer.name, layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def init_from_teacher(student, teacher, stride=None):
    """Copies the teacher's weights into a shallower student where shapes agree.

    DistilBERT's initialisation (Sanh et al., 2019, arXiv:1910.01108): the
    student takes one layer out of every ``stride`` of the teacher's stack
    (its layer ``i`` from the teacher's layer ``stride · i``), and every other
    layer (embeddings, norms, heads) from the teacher's layer of the same
    name. Layers are matched by name, stacks by a trailing ``_<index>``
    (``transformer_layer_3``, ``decoder_block_3``), over nested models too
    (a keras-hub task and its backbone). A layer whose weights differ in
    shape is left as it is.

    Args:
        student: the model to initialise (built).
        teacher: the model to copy from (built).
        stride: teacher layers per student layer; by default the ratio of
            the two stacks' depths (2 for 12 → 6).

    Returns:
        A dict ``{student_layer_name: teacher_layer_name}`` of the layers
        copied.

    Example:

    >>> import keras
    >>> def stack(depth, name):
    ...     x = inputs = keras.Input((4,))
    ...     for i in range(depth):
    ...         x = keras.layers.Dense(4, name=f"block_{i}")(x)
    ...     return keras.Model(inputs, keras.layers.Dense(2, name="head")(x),
    ...                        name=name)
    >>> copied = init_from_teacher(stack(2, "student"), stack(4, "teacher"))
    >>> copied
    {'block_0': 'block_0', 'block_1': 'block_2', 'head': 'head'}
    """
    t_layers, s_layers = _named_layers(teacher), _named_layers(student)

    def stacks(layers):
        out = {}
        for name in layers:
            match = _INDEX.search(name)
            if match:
                prefix = name[:match.start()]
                out.setdefault(prefix, []).append(int(match.group(1)))
        return out

    t_stacks, s_stacks = stacks(t_layers), stacks(s_layers)
    copied = {}
    for name, layer in s_layers.items():
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        source = name
        match = _INDEX.search(name)
        if match and match.string[:match.start()] in t_stacks:
            prefix = name[:match.start()]
            step = stride or max(
                1, (max(t_stacks[prefix]) + 1) // (max(s_stacks[prefix]) + 1))
            source = f"{prefix}_{int(match.group(1)) * step}"
        t_layer = t_layers.get(source)
        if t_layer is None or isinstance(t_layer, keras.Model):
            continue
        t_weights = t_layer.get_weights()
        if [w.shape for w in t_weights] != [
                tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(t_weights)
        copied[name] = source
    return copied
