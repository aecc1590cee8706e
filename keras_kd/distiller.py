"""The Distiller: a keras.Model that trains a student to imitate frozen teachers."""

import threading

import keras

from keras_kd import (checks, chunked, compile_options, composition,
                      fit_guards, hub, saving, targets, taps)
from keras_kd import objectives as objectives_lib


class _Untracked:
    """Holds objects that Keras must not track or save (views, trackers)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains a student model to imitate a frozen teacher with ``fit()``.

    The Distiller is an ordinary ``keras.Model``: ``call()`` is the student,
    ``fit``/``evaluate`` add the distillation terms, ``predict`` never runs the
    teacher, and ``save``/``keras.models.load_model`` restore teacher, student,
    adapters and compile options. Each training step runs the teacher once
    (``training=False``, under ``stop_gradient``; its weights and BatchNorm
    statistics never change) and the student once, even when intermediate
    features are tapped.

    The loss of a step:

        loss = alpha · hard + (1 − alpha) · soft + Σ_k w_k · feature_k

    where ``hard`` is the compiled ``loss`` on the labels, ``soft`` the logit
    objective (Hinton KD by default: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``)
    and ``feature_k`` the feature objectives with their own weights. Without
    labels (``fit(x)``) or without a compiled ``loss``, the hard term is
    dropped and ``soft`` gets weight 1.

    Logits may have any rank, the class axis last: ``(batch, classes)``,
    ``(batch, length, vocab)`` for sequence models, ``(batch, H, W,
    classes)``. Every term is reduced over the other axes as Keras reduces a
    loss (:mod:`keras_kd.composition`): ``Σ l·w / N`` with ``sample_weight``
    ``w`` of shape ``(batch,)`` or ``(batch, length)`` (a padding mask), so a
    padded token adds nothing. Integer labels below 0 mark unlabeled samples
    or tokens: they are left out of the hard loss, label-based objectives and
    metrics, and still distilled.

    Args:
        teacher: a trained, built ``keras.Model`` producing logits, or a list
            of them (multi-teacher distillation: their softened outputs are
            averaged, with ``teacher_weights``).
        student: the ``keras.Model`` to train, producing logits with as many
            classes as the teacher.
        teacher_weights: optional per-teacher weights (a list of teachers).
        truncate_teacher_logits: when the teacher scores more classes than
            the student (a language model whose vocabulary is padded past its
            tokenizer's, as Gemma and Llama checkpoints are), keep the
            teacher's first ``student_classes`` logits, renormalising its
            distribution over the ids the student can predict. Off by
            default: different widths then raise an error.
        name: the model's name.

    keras-hub tasks (``CausalLM``, ``MaskedLM``, ``TextClassifier``) work as
    teacher and student, with ``preprocessor=None`` (``fit`` takes
    ``{"token_ids", "padding_mask"}``) or with their preprocessors: ``fit``
    then takes raw strings, as the task's own ``fit`` does, and teacher and
    student must share a tokenizer (:mod:`keras_kd.hub`).

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> def mlp(width, name):
    ...     inputs = keras.Input((64,))
    ...     h = keras.layers.Dense(width, activation="relu")(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)
    >>> distiller = kd.Distiller(teacher=mlp(128, "teacher"),
    ...                          student=mlp(16, "student"))
    >>> distiller.compile(
    ...     optimizer="adam",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"], alpha=0.1, temperature=4.0)
    >>> x = np.random.rand(32, 64).astype("float32")
    >>> y = np.random.randint(0, 10, 32)
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'distillation_loss', 'loss', 'student_loss']
    """

    def __init__(self, teacher, student, teacher_weights=None,
                 truncate_teacher_logits=False, name="distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [
            teacher]
        if not teachers:
            raise ValueError("teacher must be a keras.Model or a non-empty "
                             "list of them.")
        several = len(teachers) > 1
        for i, t in enumerate(teachers):
            checks.check_model(t, f"teacher[{i}]" if several else "teacher")
        checks.check_model(student, "student")
        teacher_weights = checks.check_teacher_weights(teacher_weights,
                                                       len(teachers))
        for i, t in enumerate(teachers):
            role = f"teacher[{i}]" if several else "teacher"
            checks.check_pair(t, student, role,
                              wider_teacher=truncate_teacher_logits)
            hub.check_tokenizers(t, student)
        for t in teachers:
            t.trainable = False
        self.teacher = teachers if several else teachers[0]
        self.student = student
        self.teacher_weights = teacher_weights
        self.truncate_teacher_logits = bool(truncate_teacher_logits)
        self._alpha = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(0.1),
            trainable=False, name="alpha", dtype="float32")
        self._temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(4.0),
            trainable=False, name="temperature", dtype="float32")
        self.distillation_objective = None
        self.feature_objectives = []
        self._kd = _Untracked(
            student_view=student, live=targets.LiveTeachers(teachers),
            composition=None, options={}, teacher_checked=False,
            teacher_detached=False, labels_seen=True, on_policy=None,
            on_policy_sampler=None, on_policy_metrics=None, chunked=None,
            predicting=False,
            preprocess=hub.preprocessing_of(teachers, student))
        self._stash = threading.local()
        self.built = True

    # ------------------------------------------------------------------
    # Options
    # ------------------------------------------------------------------
    @property
    def teachers(self):
        """The teachers as a list (one element for a single teacher)."""
        return list(self.teacher) if isinstance(self.teacher, list) else [
            self.teacher]

    @property
    def alpha(self):
        """Weight of the hard-label loss (a float; settable, e.g. by schedules)."""
        return float(keras.ops.convert_to_numpy(self._alpha.value))

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(checks.check_alpha(value))

    @property
    def temperature(self):
        """Softening temperature T (a float; settable, e.g. by schedules)."""
        return float(keras.ops.convert_to_numpy(self._temperature.value))

    @temperature.setter
    def temperature(self, value):
        self._temperature.assign(checks.check_temperature(value, strict=True))

    def compile(self, optimizer="adam", loss=None, metrics=None, alpha=0.1,
                temperature=4.0, distillation_loss="kd", feature_losses=None,
                on_policy=None, token_chunk_size=None, **kwargs):
        """Configures the distillation.

        Args:
            optimizer: the student's optimizer (name or instance).
            loss: the student's hard-label loss, e.g.
                ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``;
                ``None`` for distillation without labels.
            metrics: metrics measured on the student's predictions, over the
                labeled elements (``weighted_metrics`` also take
                ``sample_weight``, as in Keras).
            alpha: weight of the hard-label loss, in [0, 1]; ``1 − alpha``
                weighs the distillation loss.
            temperature: softening temperature, > 0.
            distillation_loss: a logit objective: its name (``"kd"``,
                ``"forward_kl"``, ...), an objective instance, or ``None``
                for features only.
            feature_losses: a list of feature objectives such as
                ``kd.FitNet("teacher_layer", "student_layer", weight=100.0)``.
            on_policy: a :class:`keras_kd.OnPolicy` to distil a keras-hub
                causal LM on its own sampled continuations (GKD); ``None``
                distils on the batches as given.
            token_chunk_size: for keras-hub causal LMs, compute the logits,
                the token-level objective and the hard loss this many
                positions at a time, each chunk rematerialised in the
                backward pass (:mod:`keras_kd.chunked`); None: full logits.
            **kwargs: passed to ``keras.Model.compile`` (``weighted_metrics``,
                ``jit_compile``, ``steps_per_execution``, ...).
        """
        alpha = checks.check_alpha(alpha)
        temperature = checks.check_temperature(temperature, strict=True)
        objective = (None if distillation_loss is None
                     else objectives_lib.get(distillation_loss))
        feature_losses = list(feature_losses or [])
        compile_options.check_objectives(objective, feature_losses,
                                         loss is not None)
        if objective is not None and self.teacher_weights is not None and \
                getattr(objective, "teacher_weights", False) is None:
            # The Distiller's per-teacher weights apply to an objective that
            # sets none of its own.
            objective.teacher_weights = list(self.teacher_weights)
        self._build_views(feature_losses)
        self._set_on_policy(on_policy, feature_losses)
        self._kd.chunked = chunked.make(
            token_chunk_size, self.teachers, self.student, objective,
            feature_losses, loss, self.truncate_teacher_logits)
        self.distillation_objective = objective
        self.feature_objectives = feature_losses
        self._alpha.assign(alpha)
        self._temperature.assign(temperature)
        self._kd.composition = composition.Composition(objective,
                                                       feature_losses)
        self._kd.options = dict(alpha=alpha, temperature=temperature,
                                distillation_loss=objective,
                                feature_losses=feature_losses)
        for key, value in (("on_policy", on_policy),
                           ("token_chunk_size", token_chunk_size)):
            if value is not None:
                self._kd.options[key] = value
        optimizer = compile_options.loss_scaled(
            optimizer, self.student, self.dtype_policy.name,
            kwargs.get("auto_scale_loss", True))
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def get_compile_config(self):
        """Keras's compile config plus the distillation options."""
        config = super().get_compile_config()
        if config:
            config.update({key: keras.saving.serialize_keras_object(value)
                           for key, value in self._kd.options.items()})
        return config

    def compile_from_config(self, config):
        """Recompiles from ``get_compile_config()`` (used by ``load_model``)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    def _set_on_policy(self, on_policy, feature_losses):
        """Checks ``on_policy`` and makes its sampler and logged metrics."""
        self._kd.on_policy = None
        if on_policy is None:
            return
        compile_options.check_on_policy(on_policy, self.student,
                                        feature_losses)
        if getattr(self, "_on_policy_seed", None) is None:
            self._on_policy_seed = keras.random.SeedGenerator(on_policy.seed)
        self._kd.on_policy = on_policy
        self._kd.on_policy_sampler = on_policy.make_sampler(
            self._on_policy_seed)
        if self._kd.on_policy_metrics is None:
            self._kd.on_policy_metrics = [
                keras.metrics.Mean(name="on_policy_fraction"),
                keras.metrics.Mean(name="generated_tokens"),
                keras.metrics.Mean(name="sampling_seconds")]

    def _times_sampling(self):
        """Whether the step can time its sampling: XLA-compiled TensorFlow
        steps have no clock op (see :func:`keras_kd.on_policy.timed`)."""
        return not (keras.config.backend() == "tensorflow"
                    and getattr(self, "jit_compile", False) is True)

    def _on_policy_logged(self):
        """The on-policy metrics this step updates, in ``mix``'s order."""
        logged = self._kd.on_policy_metrics
        return logged if self._times_sampling() else logged[:2]

    def _build_views(self, feature_losses):
        """Makes the one-forward tap views and builds the objectives' adapters."""
        taps.build_objectives(feature_losses, self.teachers[0], self.student)
        self._kd.student_view = taps.make_view(
            self.student, taps.tapped_layers(feature_losses, "student"),
            "student")
        self._kd.live = targets.LiveTeachers(
            self.teachers, taps.tapped_layers(feature_losses, "teacher"))

    # ------------------------------------------------------------------
    # Forward pass, loss and metrics
    # ------------------------------------------------------------------
    def call(self, inputs, training=None):
        """The student's forward pass (its tapped features kept for the loss)."""
        view = self._kd.student_view
        if self._kd.chunked is not None and not self._kd.predicting:
            return self._kd.chunked.hidden(inputs, training)  # no logits
        if view is self.student:
            return self.student(inputs, training=training)
        outputs = view(inputs, training=training)
        self._stash.value = (outputs[0], list(outputs[1:]))
        return outputs[0]

    def _student_features(self, x, y_pred, training):
        """Features of the forward pass that produced ``y_pred``."""
        if self._kd.student_view is self.student:
            return []
        stash = getattr(self._stash, "value", None)
        self._stash.value = None
        if stash is not None and stash[0] is y_pred:
            return stash[1]
        # `y_pred` came from elsewhere (a custom loop): run the view.
        return list(self._kd.student_view(x, training=training)[1:])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """Combines the hard-label, distillation and feature losses.

        ``alpha · hard + (1 − alpha) · soft + Σ_k w_k · feature_k``, each term
        reduced as described in :mod:`keras_kd.composition` and logged under
        its own name, plus the student's and adapters' regularization losses.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        if self._kd.chunked is not None:  # the metrics, before any update
            self._kd.chunked.update_metrics(
                y, y_pred, sample_weight, lambda *a: super(
                    Distiller, self).compute_metrics(x, *a))
        on_policy = self._kd.on_policy
        if training and on_policy is not None and on_policy.lmbda > 0:
            # A λ share of the sequences continued by the current student;
            # the student and the teacher then run on those tokens.
            x, y, sample_weight, *logged = on_policy.mix(
                self.student, self._kd.on_policy_sampler,
                self._on_policy_seed, x, y, sample_weight,
                timing=self._times_sampling())
            y_pred = self(x, training=training)
            for metric, value in zip(self._on_policy_logged(), logged):
                metric.update_state(value)
        terms = self._kd.composition
        if self._kd.chunked is not None:  # y_pred: the hidden states
            return self._kd.chunked.loss(
                x, y, y_pred, sample_weight, self._alpha.value,
                self._temperature.value, self.losses, terms.tracker)
        student_features = self._student_features(x, y_pred, training)
        _, labels = targets.split_targets(y)
        batch = terms.prepare(y_pred, labels)
        # Regularization and add_loss terms of the student and adapters, read
        # before a teacher runs so that none of the teacher's are included.
        replicas = composition.replicas()
        extra = sum(keras.ops.cast(loss, "float32") for loss in self.losses)
        hard = None
        if labels is not None and self.loss is not None:
            # Keras's own compiled loss: the hard term (on the labeled
            # elements, the mask riding on y_pred) plus the extra terms,
            # each already a replica's share.
            keras_loss = super().compute_loss(
                x=x, y=batch["labels"], y_pred=batch["y_pred"],
                sample_weight=_fresh(sample_weight), training=training)
            hard = (keras_loss - extra / replicas) * replicas
        teacher_logits, teacher_features, _ = targets.teacher_targets(
            x, y, self._kd.live)
        if self.truncate_teacher_logits:
            teacher_logits = targets.truncated(teacher_logits,
                                               y_pred.shape[-1])
        checks.check_logits(teacher_logits, y_pred)
        excess, values = terms(
            batch, hard, y_pred, sample_weight, teacher_logits,
            teacher_features, student_features, self._alpha.value,
            self._temperature.value, training)
        size = keras.ops.cast(keras.ops.shape(y_pred)[0], "float32")
        terms.tracker.update_state(values, size)
        if hard is None:
            return (excess + extra) / replicas
        return keras_loss + excess / replicas

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on the student's predictions.

        Metrics see the labeled elements only (integer labels below 0 are
        left out). Without labels only the loss terms are reported.
        """
        _, labels = targets.split_targets(y)
        self._kd.labels_seen = labels is not None
        if labels is None or self._kd.chunked is not None:
            return self.get_metrics_result()  # (chunked: in compute_loss)
        batch = self._kd.composition.prepare(y_pred, labels)
        return super().compute_metrics(x, batch["labels"], batch["y_pred"],
                                       _fresh(sample_weight))

    @property
    def metrics(self):
        """Keras's metrics, then the running means of the loss terms."""
        kd_state = self.__dict__.get("_kd")
        composed = kd_state and kd_state.composition
        extra = (self._on_policy_logged()
                 if kd_state and kd_state.on_policy is not None else [])
        return super().metrics + ([composed.tracker] if composed else []) + \
            extra

    def get_metrics_result(self):
        """Keras's logs plus one entry per loss term; without labels, the
        loss, the distillation terms and the on-policy metrics only."""
        logs = {}
        labels_seen = self._kd.labels_seen
        terms = self._kd.composition and self._kd.composition.tracker
        sampling = {id(m) for m in self._kd.on_policy_metrics or []}
        for metric in self.metrics:
            if id(metric) in sampling:  # on-policy: with or without labels
                logs[metric.name] = metric.result()
            elif metric is terms:
                values = metric.result()
                if not labels_seen:
                    values.pop("student_loss")
                logs.update(values)
            elif metric.name == "loss" or (labels_seen and getattr(
                    metric, "built", True)):
                result = metric.result()
                logs.update(result if isinstance(result, dict)
                            else {metric.name: result})
        return logs

    # ------------------------------------------------------------------
    # fit / evaluate / predict: the teachers' state leaves the step while no
    # teacher runs (cached targets, predict)
    # ------------------------------------------------------------------
    @property
    def non_trainable_variables(self):
        """Non-trainable state; the teachers' only while a step may run them.

        JAX passes this state into and out of every compiled step. While
        ``fit``/``evaluate`` train from cached teacher outputs, and during
        ``predict``, no teacher runs, so their variables are left out: the
        step then costs what the student's costs whatever the teacher's size.
        """
        variables = super().non_trainable_variables
        if self._kd.teacher_detached:
            teacher_ids = {id(v) for t in self.teachers for v in t.variables}
            variables = [v for v in variables if id(v) not in teacher_ids]
        return variables

    def _detach_teachers_while(self, detached, method, *args, **kwargs):
        """Runs Keras's ``fit``/``evaluate``/``predict`` with the teachers'
        state left out or in, refilling the variables if an error escapes a
        step (:class:`keras_kd.fit_guards.StateGuard`)."""
        previous = self._kd.teacher_detached
        self._kd.teacher_detached = detached
        guard = None
        callbacks = kwargs.get("callbacks")
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            # (a CallbackList: fit's validation, whose guard is in the list)
            guard = fit_guards.StateGuard()
            kwargs["callbacks"] = list(callbacks or []) + [guard]
        try:
            return method(*args, **kwargs)
        except BaseException:
            if guard is not None:
                guard.restore(self)
            raise
        finally:
            self._kd.teacher_detached = previous

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``, after checking the teacher on a first batch.

        Checks the data first (:func:`keras_kd.fit_guards.check_before_fit`):
        the first ``fit`` reads the labels and inputs and measures the
        teacher on a first batch; data from a soft-label cache must come from
        this Distiller's teacher.
        """
        x, y, kwargs = self._preprocessed(x, y, kwargs, training=True)
        cached = targets.holds_cached_targets(x, y)
        fit_guards.check_before_fit(
            self, x, y, cached, self._kd.on_policy,
            kwargs.get("validation_data"), first=not self._kd.teacher_checked)
        self._kd.teacher_checked = True
        callbacks = list(kwargs.pop("callbacks", None) or [])
        hooks = [o for o in self._objectives() if hasattr(o, "on_epoch_begin")]
        if hooks:
            callbacks.append(fit_guards.ObjectiveEpochHook(hooks))
        callbacks.append(fit_guards.NonFiniteLossGuard(
            self.teachers, x, y, kwargs.get("batch_size") or 32))
        return self._detach_teachers_while(
            cached, super().fit, x, y, *args,
            callbacks=callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate``; with cached targets the teacher stays idle."""
        x, y, kwargs = self._preprocessed(x, y, kwargs, training=False)
        if targets.holds_cached_targets(x, y):  # a soft-label cache's teacher?
            from keras_kd.soft_labels.guards import check_cached_teacher
            check_cached_teacher(self, x, y)
        return self._detach_teachers_while(
            targets.holds_cached_targets(x, y), super().evaluate, x, y, *args,
            **kwargs)

    def predict(self, x, *args, **kwargs):
        """The student's predictions (``keras.Model.predict``); no teacher runs."""
        x, _, kwargs = self._preprocessed(x, None, kwargs, training=False)
        self._kd.predicting = True  # call() gives logits, chunked or not
        try:
            return self._detach_teachers_while(True, super().predict, x,
                                               *args, **kwargs)
        finally:
            self._kd.predicting = False

    def _preprocessed(self, x, y, kwargs, training):
        """Raw text through the keras-hub preprocessor, as the task's own
        ``fit``/``evaluate``/``predict`` would (:func:`keras_kd.hub.fit_data`)."""
        return hub.fit_data(self._kd.preprocess, x, y, kwargs, training)

    def _objectives(self):
        first = [] if self.distillation_objective is None else [
            self.distillation_objective]
        return first + list(self.feature_objectives)

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    # A `.keras` file or weights file of the Distiller holds the teachers',
    # student's and adapters' weights and the Distiller's own optimizer (the
    # one that trains the student). The optimizers the teachers or the student
    # were compiled with on their own are left out, with their compile
    # options: they play no part in distillation.
    def save(self, filepath, *args, **kwargs):
        """``keras.Model.save``, without the models' own optimizers."""
        with saving.optimizers_detached(self.teachers + [self.student]):
            return super().save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        """``keras.Model.save_weights``, without the models' own optimizers."""
        with saving.optimizers_detached(self.teachers + [self.student]):
            return super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """``keras.Model.load_weights``, for files saved by ``save_weights``."""
        with saving.optimizers_detached(self.teachers + [self.student]):
            return super().load_weights(filepath, *args, **kwargs)

    def get_config(self):
        teacher = ([saving.serialize_uncompiled(t) for t in self.teacher]
                   if isinstance(self.teacher, list)
                   else saving.serialize_uncompiled(self.teacher))
        return {
            "name": self.name,
            "teacher": teacher,
            "student": saving.serialize_uncompiled(self.student),
            "teacher_weights": self.teacher_weights,
            "truncate_teacher_logits": self.truncate_teacher_logits,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        teacher = config.pop("teacher")
        if isinstance(teacher, list):
            teacher = [keras.saving.deserialize_keras_object(t)
                       for t in teacher]
        else:
            teacher = keras.saving.deserialize_keras_object(teacher)
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        config.pop("trainable", None)
        config.pop("dtype", None)
        return cls(teacher=teacher, student=student, **config)


def _fresh(sample_weight):
    """A copy of ``sample_weight`` for Keras's losses and metrics.

    With a mask on the predictions, Keras's PyTorch losses multiply the
    sample weights in place; the distillation terms still need them.
    """
    if sample_weight is None:
        return None
    return keras.ops.cast(sample_weight, "float32") * 1.0
