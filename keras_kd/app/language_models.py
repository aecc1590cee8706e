"""Small keras-hub causal language models built from a config: nothing downloaded.

`build_causal_lm` makes a GPT-2-style ``keras_hub.models.GPT2CausalLM`` of a
named size over a byte-level vocabulary (ids are byte values, see
`keras_kd.data.text`), for teacher-to-student distillation examples and tests
that must run offline on a CPU. `evaluate_bits_per_byte` scores any model that
maps ``{"token_ids", "padding_mask"}`` to next-token logits.

This module needs keras-hub (``pip install keras-hub``). Importing it imports
keras-hub, which imports TensorFlow and TensorFlow Text when they are
installed, whatever the Keras backend. Import it before
``keras.saving.load_model`` of a model saved with a preprocessor, so that
`CausalByteTokenizer` is registered.
"""

import random

import keras

try:
    import keras_hub
except ImportError:  # the module still imports; building raises
    keras_hub = None

SIZES = {
    # 224,640 parameters at sequence_length=128. On 2 CPU cores (JAX) it
    # trains at about 13k bytes/s: 600 steps of 32 x 128 bytes in ~3 min.
    "teacher": dict(num_layers=4, num_heads=2, hidden_dim=64,
                    intermediate_dim=256),
    # 63,168 parameters: 3.56x fewer than "teacher", same depth, half width.
    "student": dict(num_layers=4, num_heads=2, hidden_dim=32,
                    intermediate_dim=128),
    # 842,496 parameters: a teacher for longer runs (about 5k bytes/s on
    # 2 CPU cores; over the first ~1M bytes it learns no faster per step
    # than "teacher").
    "large": dict(num_layers=4, num_heads=4, hidden_dim=128,
                  intermediate_dim=512),
    # For tests: 8,400 parameters.
    "tiny": dict(num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32),
}
"""GPT-2 backbone shapes by name; see `build_causal_lm`."""


def _require_keras_hub():
    if keras_hub is None:
        raise ImportError(
            "keras_kd.app.language_models needs keras-hub: "
            "`pip install keras-hub`.")


if keras_hub is not None:

    @keras.saving.register_keras_serializable(package="keras_kd")
    class CausalByteTokenizer(keras_hub.tokenizers.ByteTokenizer):
        """keras-hub's ``ByteTokenizer`` made usable by a ``CausalLMPreprocessor``.

        ``CausalLMPreprocessor`` reads ``start_token_id``, ``end_token_id``
        and ``pad_token_id`` from its tokenizer, which ``ByteTokenizer`` does
        not have. Here padding is id 0 (what ``ByteTokenizer`` pads with) and
        there is no start or end token (None): bytes use all 256 ids. So
        ``generate()`` needs ``stop_token_ids=None`` (generate up to
        ``max_length``) or explicit ids such as ``(ord("\\n"),)``; the default
        ``"auto"`` fails. (An end id of 0 would not do: keras-hub's samplers
        count the prompt's padding as generated stop tokens and stop at once.)
        ``lowercase`` defaults to False (``ByteTokenizer`` case-folds by
        default), so ids are the bytes of the text as written.
        """

        def __init__(self, lowercase=False, **kwargs):
            super().__init__(lowercase=lowercase, **kwargs)
            self.start_token_id = None
            self.end_token_id = None
            self.pad_token_id = 0


def byte_preprocessor(sequence_length=128):
    """A ``CausalLMPreprocessor`` over raw text, byte ids, no start/end token.

    Called on a batch of ``k`` strings (or ``bytes``) it returns ``(x, y,
    sample_weight)``: ``x["token_ids"]`` int32 and ``x["padding_mask"]``
    bool, both ``(k, sequence_length)`` holding the first ``sequence_length``
    bytes of each text, padded with 0; ``y`` the next bytes (int32); and
    ``sample_weight`` (bool) False on padding and on the last byte of a text
    shorter than ``sequence_length + 1``. On ``TokenWindows.as_bytes()``
    this gives the arrays of `keras_kd.data.text.load_python_source`
    exactly.

    Args:
        sequence_length: the length of the packed sequences.

    Returns:
        A ``keras_hub.models.CausalLMPreprocessor``.
    """
    _require_keras_hub()
    return keras_hub.models.CausalLMPreprocessor(
        tokenizer=CausalByteTokenizer(), sequence_length=sequence_length,
        add_start_token=False, add_end_token=False)


def build_causal_lm(size="student", *, vocabulary_size=256,
                    sequence_length=128, dropout=0.0, with_preprocessor=False,
                    seed=None, name=None, **config):
    """A GPT-2-style keras-hub causal LM of a named size, built from config.

    No weights or vocabularies are downloaded: the model starts from random
    weights. It is a ``keras_hub.models.GPT2CausalLM`` (token and position
    embeddings, pre-norm transformer decoder blocks, the token embedding
    reused as the output layer) and is not compiled: ``compile()`` it (also
    needed before ``generate()``, which uses the ``sampler`` that keras-hub's
    ``compile`` sets), or hand it to a `keras_kd.Distiller`. Called on
    ``{"token_ids": int (batch, length), "padding_mask": bool or int (batch,
    length)}`` it gives float logits ``(batch, length, vocabulary_size)``;
    ``length`` is at most ``sequence_length``.

    Sizes (`SIZES`, parameters at ``sequence_length=128``): ``"teacher"``
    (4 layers, width 64, 224,640) trains to about 3.2 bits per byte on
    `keras_kd.data.text.load_python_source` in 600 steps of 32 windows, some
    3 minutes on 2 CPU cores; ``"student"`` (4 layers, width 32, 63,168:
    3.56x fewer) reaches about 3.5 alone in the same steps. ``"large"`` (4
    layers, width 128, 842,496) is for longer runs, ``"tiny"`` for tests.
    These settings train them well: ``AdamW`` with ``beta_2=0.95``, a peak
    learning rate of 3e-3 after 20 warm-up steps, cosine decay.

    Args:
        size: a name in `SIZES`.
        vocabulary_size: the number of token ids; 256 for byte ids.
        sequence_length: the longest sequence, position embeddings included
            (``generate`` cannot go past it).
        dropout: the dropout rate (keras-hub's default is 0.1; 0 suits
            the short CPU runs these sizes are for).
        with_preprocessor: attach `byte_preprocessor`, so that ``fit``,
            ``predict`` and ``generate`` take raw strings (needs
            ``vocabulary_size=256``).
        seed: makes the initial weights reproducible. Python's global
            ``random`` state, which Keras draws initializer seeds from, is
            seeded for the build and then restored.
        name: the model's name.
        **config: overrides of the size's ``GPT2Backbone`` arguments
            (``num_layers``, ``num_heads``, ``hidden_dim``,
            ``intermediate_dim``).

    Returns:
        An uncompiled ``keras_hub.models.GPT2CausalLM``.

    Example::

        data = load_python_source(sequence_length=128, max_bytes=2_700_000)
        train = data.train.shuffled(0)  # keras-hub's fit does not shuffle
        steps = train.num_windows // 32  # about 600
        teacher = build_causal_lm("teacher", seed=0)
        teacher.compile(
            optimizer=keras.optimizers.AdamW(
                keras.optimizers.schedules.CosineDecay(
                    0.0, steps - 20, alpha=0.1, warmup_target=3e-3,
                    warmup_steps=20),
                beta_2=0.95),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=["sparse_categorical_accuracy"])
        teacher.fit(train.x, train.labels, sample_weight=train.sample_weight,
                    batch_size=32)
        evaluate_bits_per_byte(teacher, data.held_out)
    """
    _require_keras_hub()
    if size not in SIZES:
        raise ValueError(
            f"size must be one of {sorted(SIZES)}, got {size!r}.")
    unknown = set(config) - set(SIZES[size])
    if unknown:
        raise ValueError(
            f"Unknown config {sorted(unknown)}; the GPT2Backbone arguments "
            f"that can be overridden are {sorted(SIZES[size])}.")
    if with_preprocessor and vocabulary_size != 256:
        raise ValueError(
            f"with_preprocessor=True tokenizes bytes, so vocabulary_size must "
            f"be 256, got {vocabulary_size!r}.")
    shape = {**SIZES[size], **config}
    if shape["hidden_dim"] % shape["num_heads"]:
        raise ValueError(
            f"hidden_dim ({shape['hidden_dim']}) must be a multiple of "
            f"num_heads ({shape['num_heads']}).")
    state = random.getstate()
    try:
        if seed is not None:
            random.seed(seed)
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=vocabulary_size, dropout=dropout,
            max_sequence_length=sequence_length, **shape)
        preprocessor = (byte_preprocessor(sequence_length)
                        if with_preprocessor else None)
        return keras_hub.models.GPT2CausalLM(
            backbone=backbone, preprocessor=preprocessor, compile=False,
            name=name)
    finally:
        if seed is not None:
            random.setstate(state)


def evaluate_bits_per_byte(model, windows, batch_size=64):
    """A model's bits per byte on `keras_kd.data.text.TokenWindows`.

    Works for any Keras model that maps ``{"token_ids", "padding_mask"}`` to
    logits ``(batch, length, vocabulary)``, keras-hub causal LMs included
    (their attached preprocessor, if any, is bypassed).

    Args:
        model: the model.
        windows: a `TokenWindows`, e.g. ``load_python_source().held_out``.
        batch_size: windows per forward pass.

    Returns:
        A Python float: the weighted mean of ``-log2 p(next byte)``.
    """
    from keras_kd.data.text import bits_per_byte

    total = weight = 0.0
    for start in range(0, windows.num_windows, batch_size):
        rows = slice(start, start + batch_size)
        w = windows.sample_weight[rows]
        if not w.any():
            continue
        x = {"token_ids": windows.token_ids[rows],
             "padding_mask": windows.padding_mask[rows]}
        # keras.Model's own predict_on_batch: compiled, no gradient, and
        # keras-hub's preprocessing step is skipped.
        logits = keras.Model.predict_on_batch(model, x)
        total += bits_per_byte(logits, windows.labels[rows], w) * float(w.sum())
        weight += float(w.sum())
    if not weight:
        raise ValueError("windows has no position to score.")
    return total / weight



def greedy_continuations(model, token_ids, padding_mask, prompt_length):
    """Greedy continuations of each row's first ``prompt_length`` tokens.

    Runs keras-hub's compiled generation (``make_generate_function``) with a
    greedy sampler on ``{"token_ids", "padding_mask"}`` batches: every
    position from the prompt's end to the sequence length is filled with the
    model's most likely next token. The model's own sampler is restored.

    Returns:
        An int32 NumPy array shaped like ``token_ids``.
    """
    import numpy as np

    _require_keras_hub()
    token_ids = np.asarray(token_ids)
    prompt = np.asarray(padding_mask, bool) & (
        np.arange(token_ids.shape[1])[None, :] < prompt_length)
    previous = getattr(model, "sampler", None), getattr(
        model, "generate_function", None)
    model.sampler = keras_hub.samplers.GreedySampler()
    model.generate_function = None
    try:
        generate = model.make_generate_function()
        out = generate({"token_ids": np.where(prompt, token_ids, 0),
                        "padding_mask": prompt})
    finally:
        model.sampler, model.generate_function = previous
    return np.asarray(keras.ops.convert_to_numpy(out["token_ids"]))


def greedy_agreement(teacher, student, windows, prompt_length, count=64,
                     batch_size=32):
    """Share of generated positions where the student's greedy continuation
    equals the teacher's, over the first ``count`` windows that are full.

    Both models continue the same prompts (each window's first
    ``prompt_length`` tokens) to the window's length; 1.0 means the student
    writes exactly what the teacher writes.
    """
    import numpy as np

    full = np.flatnonzero(np.asarray(windows.padding_mask).all(axis=1))
    rows = full[:count]
    if not len(rows):
        raise ValueError("windows has no full-length window to continue.")
    same = total = 0
    for start in range(0, len(rows), batch_size):
        take = rows[start:start + batch_size]
        ids, mask = windows.token_ids[take], windows.padding_mask[take]
        t = greedy_continuations(teacher, ids, mask, prompt_length)
        s = greedy_continuations(student, ids, mask, prompt_length)
        same += int((t[:, prompt_length:] == s[:, prompt_length:]).sum())
        total += t[:, prompt_length:].size
    return same / total


def lm_optimizer(steps, peak=3e-3):
    """AdamW for the `SIZES` models: a short warm-up, then cosine decay.

    The learning rate rises linearly from 0 to ``peak`` over
    ``min(20, steps // 10)`` steps (at least 1), then decays along a cosine
    to 0 at ``steps``; ``beta_2=0.95`` and weight decay 0.01. These settings
    train the `SIZES` models stably (see `build_causal_lm`).

    Args:
        steps: the training steps the schedule spans.
        peak: the learning rate after the warm-up.

    Returns:
        A ``keras.optimizers.AdamW``.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, steps),
        warmup_target=peak, warmup_steps=min(20, max(1, steps // 10)))
    return keras.optimizers.AdamW(schedule, beta_2=0.95, weight_decay=0.01)


def train_causal_lm(model, windows, steps, batch_size, teacher=None,
                    objective="forward_kl", on_policy=None, alpha=0.5,
                    temperature=1.0, learning_rate=3e-3, callbacks=None,
                    verbose=0):
    """Trains a causal LM for ``steps`` batches, alone or distilled.

    Alone (``teacher=None``) the model learns the next-byte labels with
    sparse cross-entropy; otherwise a `keras_kd.Distiller` trains it on
    ``alpha`` times that loss plus ``1 - alpha`` times ``objective`` against
    the teacher at ``temperature``, on-policy when ``on_policy`` is a
    `keras_kd.OnPolicy`. The batches are ``windows``' in their order (one
    pass at most: shuffle with ``windows.shuffled(seed)``, and give two
    students the same windows to train them on the same batches). The
    optimizer is `lm_optimizer` over the steps trained.

    Args:
        model: a causal LM from `build_causal_lm` (uncompiled or not).
        windows: the training `keras_kd.data.text.TokenWindows`.
        steps: batches to train on; fewer when ``windows`` holds fewer.
        batch_size: windows per batch.
        teacher: the teacher, or None to train ``model`` alone.
        objective: the distillation objective's name (with a teacher).
        on_policy: a `keras_kd.OnPolicy`, or None.
        alpha: the weight of the next-byte loss (with a teacher).
        temperature: the distillation temperature.
        learning_rate: the peak learning rate.
        callbacks: Keras callbacks for ``fit``.
        verbose: ``fit``'s verbosity.

    Returns:
        ``model``, trained.
    """
    import keras_kd as kd

    steps = min(steps, windows.num_windows // batch_size)
    if steps < 1:
        raise ValueError(
            f"{windows.num_windows} training windows make no batch of "
            f"{batch_size}; read more text (max_bytes) or use a smaller "
            "batch_size.")
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = lm_optimizer(steps, learning_rate)
    if teacher is None:
        model.compile(optimizer=optimizer, loss=sce)
        trainer = model
    else:
        trainer = kd.Distiller(teacher, model)
        trainer.compile(optimizer=optimizer, loss=sce, alpha=alpha,
                        temperature=temperature, distillation_loss=objective,
                        on_policy=on_policy)
    trainer.fit(windows.x, windows.labels, sample_weight=windows.sample_weight,
                batch_size=batch_size, steps_per_epoch=steps, epochs=1,
                shuffle=False, verbose=verbose, callbacks=callbacks)
    return model


class BitsPerByteCurve(keras.callbacks.Callback):
    """A learning curve: a model's bits per byte on some windows during ``fit``.

    Scores ``model`` with `evaluate_bits_per_byte` before the first step,
    every ``every`` steps and after the last, into ``steps`` and
    ``bits_per_byte``. ``model`` may be the one being fit or the student of
    a `keras_kd.Distiller` being fit.

    Args:
        model: the model to score.
        windows: a `keras_kd.data.text.TokenWindows` (a few dozen held-out
            windows keep it cheap).
        every: steps between two scores.
    """

    def __init__(self, model, windows, every):
        super().__init__()
        self.target, self.windows, self.every = model, windows, max(1, every)
        self.steps, self.bits_per_byte = [], []
        self._step = 0

    def _record(self):
        _ = self.model  # on JAX, writes the training state into the variables
        self.steps.append(self._step)
        self.bits_per_byte.append(
            evaluate_bits_per_byte(self.target, self.windows))

    def on_train_begin(self, logs=None):
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self._record()

    def on_train_end(self, logs=None):
        if self.steps[-1] != self._step:
            self._record()
