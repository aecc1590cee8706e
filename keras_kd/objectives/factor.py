"""FT: factor transfer with a paraphraser and a translator (Kim et al., 2018).

"Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018 (arXiv:1802.04977). A *paraphraser* (a small convolutional
autoencoder) is first trained, unsupervised, to reconstruct the teacher's
feature map; its encoder's output is the teacher's *factor*. The student
gets a *translator* (a small convolutional encoder) whose output imitates
the factor:

    L_FT = ‖ F_S / ‖F_S‖₂ − F_T / ‖F_T‖₂ ‖₁,  F_T = P(f_t),  F_S = T(f_s)

(see :func:`ft_loss`). Both networks are Keras layers owned by the
:class:`FT` objective, saved with the Distiller and never exported with the
student; the paraphraser is frozen while the student trains.
"""

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FeatureObjective, channels_last_maps


def ft_loss(teacher_factor, student_factor):
    """Factor transfer loss, one value per sample.

        loss_i = mean_j | F_S,ij / ‖F_S,i‖₂ − F_T,ij / ‖F_T,i‖₂ |

    over the flattened factors (Kim et al., NeurIPS 2018, eq. 3 with p = 1).
    The paper writes the L1 *norm* (a sum over the ``D`` elements); the
    authors' code and torchdistill's ``FTLoss`` take the mean, which the
    paper's weight β = 500 goes with: keras-kd follows the code (the two
    differ by the factor ``D``). The teacher's factor is a constant.

    Args:
        teacher_factor: the paraphraser's output, ``(batch, ...)``.
        student_factor: the translator's output, the same shape.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.ones((2, 2, 2, 1)); s = 3.0 * np.ones((2, 2, 2, 1))
    >>> [float(v) for v in ft_loss(t, s)]
    [0.0, 0.0]
    """
    def unit(f):
        f = to_float32(ops.convert_to_tensor(f))
        f = ops.reshape(f, (ops.shape(f)[0], -1))
        return f / ops.sqrt(ops.maximum(ops.sum(ops.square(f), axis=-1,
                                                keepdims=True), 1e-24))
    t = ops.stop_gradient(unit(teacher_factor))
    return ops.mean(ops.abs(unit(student_factor) - t), axis=-1)


def _block(filters, name, transpose=False):
    conv = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    return [conv(filters, 3, padding="same", data_format="channels_last",
                 name=f"{name}_conv"),
            keras.layers.BatchNormalization(axis=-1, name=f"{name}_bn"),
            keras.layers.LeakyReLU(0.1, name=f"{name}_act")]


def make_paraphraser(channels, rate=0.5, name="paraphraser"):
    """The FT paraphraser: ``(encoder, decoder)`` for maps of ``channels``.

    Encoder: three 3×3 conv + BN + LeakyReLU(0.1) blocks, ``C → C → kC →
    kC``; decoder: three transposed ones back to ``C`` (the authors' code,
    ``k = rate``, 0.5 in the paper). Channels last.

    Example:

    >>> encoder, decoder = make_paraphraser(8, rate=0.5)
    >>> encoder.compute_output_shape((None, 4, 4, 8))
    (None, 4, 4, 4)
    """
    factor = max(1, int(channels * rate))
    encoder = keras.Sequential(
        _block(channels, f"{name}_enc1") + _block(factor, f"{name}_enc2") +
        _block(factor, f"{name}_enc3"), name=f"{name}_encoder")
    decoder = keras.Sequential(
        _block(factor, f"{name}_dec1", True) +
        _block(channels, f"{name}_dec2", True) +
        _block(channels, f"{name}_dec3", True), name=f"{name}_decoder")
    return encoder, decoder


@keras.saving.register_keras_serializable(package="keras_kd")
class FT(FeatureObjective):
    """Factor transfer (FT): the student's translated map imitates the
    teacher's paraphrased factor.

    ``weight · ft_loss(P(f_t), T(f_s))`` per sample (:func:`ft_loss`; Kim
    et al., NeurIPS 2018). ``P`` is the paraphraser's encoder
    (:func:`make_paraphraser`), which must be trained on the teacher first
    with :func:`pretrain_paraphraser` and is frozen during distillation;
    ``T`` is the translator (three 3×3 conv + BN + LeakyReLU blocks to the
    factor's channels), trained with the student. The two maps must have
    the same spatial size (or pass ``resize=True``). The paper's settings: ``rate=0.5``, weight β =
    500, paraphraser trained 30 epochs, on the last stage's output.

    Args:
        teacher_layer: the teacher layer the paraphraser reads.
        student_layer: the student layer the translator reads.
        weight: the term's weight in the total loss.
        rate: the paraphrase rate ``k`` (factor channels = ``k · C_t``).
        resize: resize the student's map to the teacher's spatial size
            (bilinear) when they differ, instead of raising an error.

    Example:

    >>> import keras_kd as kd
    >>> ft = kd.objectives.FT("teacher_conv2", "student_conv2", weight=500.0)
    >>> ft.get_config()["rate"]
    0.5
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0, rate=0.5,
                 resize=False, name="ft", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         resize=resize, name=name, **kwargs)
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate!r}; the paper "
                             "uses rate=0.5.")
        self.rate = float(rate)
        self.encoder = self.decoder = self.translator = None

    def build_paraphraser(self, teacher_shape):
        """Creates the paraphraser for a teacher map of ``teacher_shape``."""
        if self.encoder is not None:
            return
        shape = tuple(teacher_shape)
        if len(shape) != 4:
            raise ValueError(
                f"FT: teacher layer '{self.teacher_layer}' has output shape "
                f"{shape}; FT needs a feature map (batch, H, W, C).")
        if keras.config.image_data_format() == "channels_first":
            shape = (shape[0],) + shape[2:] + (shape[1],)
        self.encoder, self.decoder = make_paraphraser(
            shape[-1], self.rate, name=f"{self.name}_paraphraser")
        self.encoder.build(shape)
        self.decoder.build(self.encoder.compute_output_shape(shape))
        self.encoder.trainable = self.decoder.trainable = False

    def build_for(self, teacher_shape, student_shape):
        self.check_spatial(teacher_shape, student_shape)
        self.build_paraphraser(teacher_shape)
        if self.translator is None:
            shape = tuple(student_shape)
            if keras.config.image_data_format() == "channels_first":
                shape = (shape[0],) + shape[2:] + (shape[1],)
            factor = self.encoder.layers[-3].filters
            self.translator = keras.Sequential(
                _block(shape[-1], f"{self.name}_translator1") +
                _block(factor, f"{self.name}_translator2") +
                _block(factor, f"{self.name}_translator3"),
                name=f"{self.name}_translator")
            self.translator.build(shape)
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        factor = self.encoder(channels_last_maps(teacher_features, "FT"),
                              training=False)
        translated = self.translator(
            channels_last_maps(self.resize_student(student_features), "FT"),
            training=training)
        return ft_loss(factor, translated)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        return config


def pretrain_paraphraser(objective, teacher, x, epochs=30, batch_size=64,
                         optimizer="adam", verbose=0):
    """Trains an :class:`FT` objective's paraphraser to reconstruct the teacher.

    The paper's first stage: the paraphraser (encoder then decoder) learns
    to reconstruct the teacher's map at ``objective.teacher_layer``, with
    the mean squared error, the teacher frozen (``training=False``). Call it
    before ``Distiller.compile``; the paraphraser is frozen again afterwards.

    Args:
        objective: a :class:`FT` objective.
        teacher: the teacher model (functional or sequential).
        x: the teacher's inputs (arrays or a dataset yielding inputs).
        epochs, batch_size, optimizer, verbose: as in ``keras.Model.fit``.

    Returns:
        The ``History`` of the reconstruction training.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((4, 4, 1))
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    >>> teacher = keras.Model(inputs, keras.layers.Flatten()(h))
    >>> ft = FT("conv", "conv")
    >>> history = pretrain_paraphraser(ft, teacher, np.ones((8, 4, 4, 1)),
    ...                                epochs=1)
    >>> sorted(history.history)
    ['loss']
    """
    from keras_kd import taps

    if not isinstance(objective, FT):
        raise TypeError(f"pretrain_paraphraser takes a kd.objectives.FT, got "
                        f"{type(objective).__name__}.")
    target = taps.layer_output(teacher, objective.teacher_layer, "teacher")
    objective.build_paraphraser(tuple(target.shape))
    features = keras.Model(teacher.inputs, target)
    maps = features.predict(x, batch_size=batch_size, verbose=0)
    if keras.config.image_data_format() == "channels_first":
        maps = maps.transpose(0, 2, 3, 1)
    autoencoder = keras.Sequential([objective.encoder, objective.decoder])
    objective.encoder.trainable = objective.decoder.trainable = True
    try:
        autoencoder.compile(optimizer=optimizer, loss="mse")
        return autoencoder.fit(maps, maps, epochs=epochs,
                               batch_size=batch_size, verbose=verbose)
    finally:
        objective.encoder.trainable = objective.decoder.trainable = False
