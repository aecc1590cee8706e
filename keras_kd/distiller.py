"""The Distiller: a keras.Model that trains a student to imitate a frozen teacher."""

import contextlib
import threading
import warnings

import keras
import numpy as np
from keras import ops
from keras.src.losses import loss as keras_loss_module

from keras_kd import objectives as objectives_lib
from keras_kd import taps
from keras_kd.objectives.base import check_temperature, to_float32


class _Untracked:
    """Holds objects that Keras must not track or save (views, trackers)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _check_alpha(alpha):
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1], got {alpha!r}. alpha weighs the "
            "hard-label loss and 1 - alpha the distillation loss; the usual "
            "value is 0.1."
        )
    return float(alpha)


def _check_temperature(temperature):
    return float(check_temperature(temperature, strict=True))


def _is_built(model):
    return bool(model.built) and len(model.weights) > 0


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

    The loss of a step, per batch:

        loss = alpha · hard + (1 − alpha) · soft + Σ_k w_k · feature_k

    where ``hard`` is the compiled ``loss`` on the labels, ``soft`` the logit
    objective (Hinton KD by default: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``)
    and ``feature_k`` the feature objectives with their own weights. Without
    labels (``fit(x)``) or without a compiled ``loss``, the hard term is
    dropped and ``soft`` gets weight 1. ``sample_weight`` weighs every
    per-sample term, reduced as Keras does (sum of weighted losses divided by
    the batch size).

    Args:
        teacher: a trained, built ``keras.Model`` producing logits, or a list
            of them (multi-teacher distillation: their softened outputs are
            averaged, with ``teacher_weights``).
        student: the ``keras.Model`` to train, producing logits with as many
            classes as the teacher.
        teacher_weights: optional per-teacher weights (a list of teachers).
        name: the model's name.

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
                 name="distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [
            teacher]
        if not teachers:
            raise ValueError("teacher must be a keras.Model or a non-empty "
                             "list of them.")
        for i, t in enumerate(teachers):
            self._validate_model(t, "teacher" if len(teachers) == 1
                                 else f"teacher[{i}]")
        self._validate_model(student, "student")
        if teacher_weights is not None:
            teacher_weights = [float(w) for w in teacher_weights]
            if len(teacher_weights) != len(teachers) or min(
                    teacher_weights) < 0 or sum(teacher_weights) <= 0:
                raise ValueError(
                    f"teacher_weights must hold one non-negative weight per "
                    f"teacher ({len(teachers)}) with a positive sum, got "
                    f"{teacher_weights}."
                )
        for i, t in enumerate(teachers):
            self._check_compatible(t, student, i if len(teachers) > 1 else None)
        for t in teachers:
            t.trainable = False
        self.teacher = teachers[0] if len(teachers) == 1 else teachers
        self.student = student
        self.teacher_weights = teacher_weights
        self._alpha = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(0.1),
            trainable=False, name="alpha", dtype="float32")
        self._temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(4.0),
            trainable=False, name="temperature", dtype="float32")
        self.distillation_objective = None
        self.feature_objectives = []
        self._kd = _Untracked(student_view=student, teacher_views=list(teachers),
                              teacher_feature_count=0, trackers=[],
                              teacher_checked=False, teacher_detached=False)
        self._stash = threading.local()
        self.built = True

    # ------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------
    @staticmethod
    def _validate_model(model, role):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"{role} must be a keras.Model, got {type(model).__name__}. "
                "Wrap your layers in keras.Model(inputs, outputs) or "
                "keras.Sequential([...])."
            )
        if role.startswith("teacher") and not _is_built(model):
            raise ValueError(
                f"The {role} '{model.name}' is not built: it has no weights, "
                "so it cannot have been trained. Train it (teacher.fit) or "
                "load its trained weights before distilling; a model built "
                "with keras.Input(shape=...) is built on creation."
            )

    @staticmethod
    def _check_compatible(teacher, student, index):
        role = "teacher" if index is None else f"teacher[{index}]"
        t_out, s_out = taps.output_shape(teacher), taps.output_shape(student)
        if t_out and s_out and t_out[-1] is not None and s_out[-1] is not None \
                and t_out[-1] != s_out[-1]:
            raise ValueError(
                f"The {role} predicts {t_out[-1]} classes (output shape "
                f"{t_out}) but the student predicts {s_out[-1]} (output shape "
                f"{s_out}). Give the student's last layer {t_out[-1]} units "
                "so that both score the same classes."
            )
        t_in, s_in = taps.input_shape(teacher), taps.input_shape(student)
        if t_in and s_in and tuple(t_in[1:]) != tuple(s_in[1:]):
            raise ValueError(
                f"The {role} takes inputs of shape {t_in} but the student "
                f"takes {s_in}; each batch feeds both. Make the input shapes "
                "agree, e.g. put a keras.layers.Resizing (or Reshape) layer "
                "at the start of the model whose input differs."
            )

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
        return float(ops.convert_to_numpy(self._alpha.value))

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(_check_alpha(value))

    @property
    def temperature(self):
        """Softening temperature T (a float; settable, e.g. by schedules)."""
        return float(ops.convert_to_numpy(self._temperature.value))

    @temperature.setter
    def temperature(self, value):
        self._temperature.assign(_check_temperature(value))

    def _lock_state(self):
        # Objectives (and their adapters) are attached at compile time, after
        # the model is built, as Functional models allow too.
        pass

    def compile(self, optimizer="adam", loss=None, metrics=None, alpha=0.1,
                temperature=4.0, distillation_loss="kd", feature_losses=None,
                **kwargs):
        """Configures the distillation.

        Args:
            optimizer: the student's optimizer (name or instance).
            loss: the student's hard-label loss, e.g.
                ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``;
                ``None`` for distillation without labels.
            metrics: metrics measured on the student's predictions.
            alpha: weight of the hard-label loss, in [0, 1]; ``1 − alpha``
                weighs the distillation loss.
            temperature: softening temperature, > 0.
            distillation_loss: a logit objective: its name (``"kd"``, ...),
                an objective instance, or ``None`` for features only.
            feature_losses: a list of feature objectives such as
                ``kd.FitNet("teacher_layer", "student_layer", weight=100.0)``.
            **kwargs: passed to ``keras.Model.compile`` (``jit_compile``,
                ``steps_per_execution``, ``run_eagerly``, ...).
        """
        alpha = _check_alpha(alpha)
        temperature = _check_temperature(temperature)
        objective = (None if distillation_loss is None
                     else objectives_lib.get(distillation_loss))
        feature_losses = list(feature_losses or [])
        for f in feature_losses:
            if not isinstance(f, objectives_lib.Objective) or f.kind == "logits":
                raise ValueError(
                    f"feature_losses takes feature objectives such as "
                    f"kd.FitNet('teacher_layer', 'student_layer'), got {f!r}; "
                    "logit objectives go in distillation_loss=."
                )
        if objective is None and not feature_losses and loss is None:
            raise ValueError(
                "Nothing to train on: pass distillation_loss='kd' (the "
                "default), feature_losses=[...], or a hard-label loss."
            )
        names = [f.name for f in feature_losses]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Feature objectives need distinct names to be logged apart, "
                f"got {names}; pass name='...' to each."
            )
        if objective is not None and self.teacher_weights is not None and \
                getattr(objective, "teacher_weights", False) is None:
            # The Distiller's per-teacher weights apply to an objective that
            # sets none of its own.
            objective.teacher_weights = list(self.teacher_weights)
        self._build_views(feature_losses)
        self.distillation_objective = objective
        self.feature_objectives = feature_losses
        self._alpha.assign(alpha)
        self._temperature.assign(temperature)
        names = ["student_loss"] + (
            ["distillation_loss"] if objective is not None else []) + [
            f"{f.name}_loss" for f in feature_losses]
        self._kd.trackers = [_LossTerms(names)]
        if kwargs.get("auto_scale_loss", True) and _computes_in_float16(
                self.student) and self.dtype_policy.name != "mixed_float16":
            # Keras wraps the optimizer for loss scaling only when the model's
            # own policy is mixed_float16; here the student's policy decides.
            optimizer = keras.optimizers.get(optimizer)
            if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)
        self._compile_config.config.update(
            alpha=alpha, temperature=temperature,
            distillation_loss=objective, feature_losses=feature_losses)

    def compile_from_config(self, config):
        """Recompiles from ``get_compile_config()`` (used by ``load_model``)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    def _build_views(self, feature_losses):
        """Makes the one-forward tap views and builds the objectives' adapters."""
        t_names = [f.teacher_layer for f in feature_losses]
        s_names = [f.student_layer for f in feature_losses]
        teacher = self.teachers[0]
        t_view = taps.make_view(teacher, t_names, "teacher")
        s_view = taps.make_view(self.student, s_names, "student")
        for f in feature_losses:
            f.build_for(
                tuple(taps.layer_output(teacher, f.teacher_layer, "teacher").shape),
                tuple(taps.layer_output(self.student, f.student_layer,
                                        "student").shape))
        self._kd.student_view = s_view
        self._kd.teacher_views = [t_view] + self.teachers[1:]
        self._kd.teacher_feature_count = len(t_names)

    # ------------------------------------------------------------------
    # Forward pass and loss
    # ------------------------------------------------------------------
    def call(self, inputs, training=None):
        """The student's forward pass (its tapped features kept for the loss)."""
        view = self._kd.student_view
        if view is self.student:
            return self.student(inputs, training=training)
        outputs = view(inputs, training=training)
        logits = outputs[0]
        self._stash.value = (logits, list(outputs[1:]))
        return logits

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

    def _teacher_outputs(self, x):
        """Teacher logits (a list for several teachers) and tapped features."""
        logits, features = [], []
        for i, view in enumerate(self._kd.teacher_views):
            out = view(x, training=False)
            if i == 0 and self._kd.teacher_feature_count:
                features = [ops.stop_gradient(f) for f in out[1:]]
                out = out[0]
            logits.append(ops.stop_gradient(out))
        return (logits[0] if len(logits) == 1 else logits), features

    @staticmethod
    def _label_mask(y):
        """``(labels, mask)``: integer labels below 0 mark unlabeled samples."""
        if y is None or isinstance(y, (list, tuple, dict)):
            return y, None
        dtype = keras.backend.standardize_dtype(y.dtype)
        if "int" not in dtype or _all_labeled_on_host(y):
            return y, None
        mask = ops.cast(ops.greater_equal(y, 0), "float32")
        if len(mask.shape) > 1:
            mask = ops.reshape(mask, (ops.shape(mask)[0],))
        return ops.maximum(y, ops.zeros_like(y)), mask

    @staticmethod
    def _reduce(per_sample, weights, count):
        """``Σ_i l_i w_i / count`` for per-sample losses; scalars unchanged."""
        if len(per_sample.shape) == 0:
            return per_sample
        if weights is not None:
            per_sample = per_sample * weights
        return ops.sum(per_sample) / count

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """Combines the hard-label, distillation and feature losses.

        ``alpha · hard + (1 − alpha) · soft + Σ_k w_k · feature_k``; without
        labels (or without a compiled ``loss``) ``soft + Σ_k w_k feature_k``.
        Each term is logged under its own name.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        # Regularization and add_loss terms of the student and adapters, read
        # before the teacher runs so that none of the teacher's are included.
        extra_losses = [self._aggregate_additional_loss(loss)
                        for loss in self.losses]
        student_features = self._student_features(x, y_pred, training)
        cached, y = split_targets(y)
        if cached is not None:
            teacher_logits = cached["teacher_logits"]  # a list: teachers
            teacher_logits = ([ops.convert_to_tensor(t) for t in teacher_logits]
                              if isinstance(teacher_logits, (list, tuple))
                              else ops.convert_to_tensor(teacher_logits))
            teacher_features = [ops.convert_to_tensor(f) for f in
                                cached.get("teacher_features", [])]
            if len(teacher_features) != len(self.feature_objectives):
                raise ValueError(
                    f"The cached targets hold {len(teacher_features)} teacher "
                    f"feature(s) but the Distiller has "
                    f"{len(self.feature_objectives)} feature objective(s). "
                    "Build the cache with feature_layers=[...] naming each "
                    "objective's teacher_layer, in order (see "
                    "keras_kd.compute_soft_labels)."
                )
        else:
            teacher_logits, teacher_features = self._teacher_outputs(x)
        self._check_logits(teacher_logits, y_pred)

        # A Python number when the batch size is static (one op fewer per use).
        batch = y_pred.shape[0]
        batch = float(batch) if batch is not None else ops.cast(
            ops.shape(y_pred)[0], "float32")
        weights = (None if sample_weight is None else
                   ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))
        labels, mask = self._label_mask(y)
        # The options' current values as tensors: arithmetic between tensors
        # is then the backend's own operator, where each operation on a
        # keras.Variable is dispatched through keras.ops (on eager PyTorch,
        # several microseconds each).
        alpha, temperature = self._alpha.value, self._temperature.value
        has_hard = y is not None and self._compile_loss is not None

        if mask is None:
            labeled_weights, labeled_count = weights, batch
        else:
            labeled_weights = mask if weights is None else weights * mask
            labeled_count = ops.maximum(ops.sum(mask), 1.0)

        hard = None
        if has_hard:
            # Keras's compiled losses come pre-divided by the number of
            # tf.distribute replicas; bring the term back to a per-batch mean.
            hard = _unscale_for_replicas(to_float32(
                self._compile_loss(labels, y_pred, labeled_weights)))
            if mask is not None:
                hard = hard * (batch / labeled_count)

        soft = None
        objective = self.distillation_objective
        if objective is not None:
            if objective.needs_labels and labels is None:
                raise ValueError(
                    f"The '{objective.name}' objective needs labels: pass y "
                    "to fit()/evaluate(), or choose distillation_loss='kd'."
                )
            per_sample = objective.compute(teacher_logits, y_pred, labels=labels,
                                           temperature=temperature)
            if objective.needs_labels:
                soft = self._reduce(per_sample, labeled_weights, labeled_count)
            else:
                soft = self._reduce(per_sample, weights, batch)
            if objective.weight != 1.0:
                soft = soft * objective.weight

        if soft is None:  # features only: alpha·hard + Σ_k w_k feature_k
            total = (alpha * hard if has_hard
                     else ops.zeros((), "float32"))
        elif has_hard:
            # alpha·hard + (1 − alpha)·soft, in three ops.
            total = soft + alpha * (hard - soft)
        else:
            total = soft
        feature_values = []
        for f, t_feat, s_feat in zip(self.feature_objectives, teacher_features,
                                     student_features):
            value = self._reduce(f.compute(t_feat, s_feat, training=training),
                                 weights, batch)
            feature_values.append(value)
            total = total + (value if f.weight == 1.0 else f.weight * value)

        values = [0.0 if hard is None else hard] + (
            [] if soft is None else [soft]) + feature_values
        for tracker in self._kd.trackers:
            tracker.update_state(values, batch)
        # Under tf.distribute each replica returns its share (1 / replicas) of
        # the loss, so that the summed gradients are those of the global batch.
        total = _scale_for_replicas(total)
        # `_aggregate_additional_loss` already takes the replica share.
        for loss in extra_losses:
            total = total + ops.cast(loss, "float32")
        return total

    def _check_logits(self, teacher_logits, student_logits):
        t = teacher_logits[0] if isinstance(teacher_logits, list) else \
            teacher_logits
        t_classes, s_classes = t.shape[-1], student_logits.shape[-1]
        if t_classes is not None and s_classes is not None and \
                t_classes != s_classes:
            raise ValueError(
                f"The teacher predicts {t_classes} classes but the student "
                f"predicts {s_classes}. Give the student's last layer "
                f"{t_classes} units."
            )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on the student's predictions.

        Without labels only the loss terms are reported.
        """
        _, y = split_targets(y)
        self._kd.labels_seen = y is not None
        metrics = self._compile_metrics
        if y is not None and metrics is not None:
            labels, mask = self._label_mask(y)
            if mask is None or isinstance(y_pred, (list, tuple, dict)):
                metrics.update_state(labels, y_pred, sample_weight)
            else:
                # Unlabeled samples (label < 0) are left out of every metric:
                # Keras passes sample_weight to `weighted_metrics` only, so the
                # mask goes to each metric of the single output directly.
                if not metrics.built:
                    metrics.build(labels, y_pred)
                weights = mask if sample_weight is None else ops.reshape(
                    ops.cast(sample_weight, "float32"), (-1,)) * mask
                for metric in metrics._flat_metrics:
                    if metric:
                        metric.update_state(labels, y_pred, sample_weight=mask)
                for metric in metrics._flat_weighted_metrics:
                    if metric:
                        metric.update_state(labels, y_pred,
                                            sample_weight=weights)
        return self.get_metrics_result()

    @property
    def metrics(self):
        metrics = []
        if self.compiled:
            if self._loss_tracker is not None:
                metrics.append(self._loss_tracker)
            metrics.extend(self._kd.trackers if hasattr(self, "_kd") else [])
            if self._compile_metrics is not None:
                metrics.append(self._compile_metrics)
        return metrics

    def get_metrics_result(self):
        logs = {}
        labels_seen = getattr(self._kd, "labels_seen", True)
        for metric in self.metrics:
            if metric is self._compile_metrics:
                if metric.built and labels_seen:
                    logs.update(metric.result())
            elif isinstance(metric, _LossTerms):
                terms = metric.result()
                if not labels_seen:
                    terms.pop("student_loss")
                logs.update(terms)
            else:
                logs[metric.name] = metric.result()
        return logs

    # ------------------------------------------------------------------
    # What a step touches: the student and the objectives, not the teachers
    # ------------------------------------------------------------------
    def _trained_modules(self):
        """The student and the objectives (with their adapters)."""
        kd_state = self.__dict__.get("_kd")
        if kd_state is None:  # still in __init__
            return []
        return [self.student] + self._objectives()

    def _gather(self, attribute):
        seen, out = set(), []
        for module in self._trained_modules():
            for v in getattr(module, attribute):
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    @property
    def trainable_weights(self):
        """The student's and the adapters' trainable weights.

        The teachers are frozen, so their layers are not walked: Keras reads
        this list at every PyTorch step, and walking a ResNet50 teacher's
        layers there costs more than a small student's step.
        """
        return self._gather("trainable_weights") if self.trainable else []

    @property
    def trainable_variables(self):
        """The student's and the adapters' trainable variables."""
        return self._gather("trainable_variables") if self.trainable else []

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

    @property
    def losses(self):
        """Regularization and ``add_loss`` terms of the student and adapters.

        The teachers' are never part of the distillation loss (nor walked).
        """
        if self._losses_override:  # set by Keras's JAX step
            return self._losses_override
        return [loss for module in self._trained_modules()
                for loss in module.losses]

    def _clear_losses(self):
        # Keras clears the losses of every sublayer whenever the Distiller is
        # called (each step). A teacher clears its own when it runs, so only
        # the student and the adapters are visited here; Keras would walk
        # every layer of the teacher too (a ResNet50's 175 at each step).
        # (object.__setattr__: a plain swap that Keras's tracking must not see.)
        layers = self._layers
        teacher_ids = {id(t) for t in self.teachers}
        object.__setattr__(self, "_layers", [
            layer for layer in layers if id(layer) not in teacher_ids])
        try:
            super()._clear_losses()
        finally:
            object.__setattr__(self, "_layers", layers)

    if keras.backend.backend() == "torch":
        def zero_grad(self, set_to_none=True):
            """Clears the gradients of the student and adapters (PyTorch).

            Keras calls this at every PyTorch step; the frozen teachers have
            no gradients, so their parameters are not visited.
            """
            for module in self._trained_modules():
                module.zero_grad(set_to_none=set_to_none)

        def train_step(self, data):
            """Keras's PyTorch step, with the teachers run first.

            The steps of Keras's PyTorch ``train_step`` (forward, zero_grad,
            loss, loss tracker, ``backward``, optimizer, metrics), with two
            changes, both for speed on eager PyTorch:

            - the teachers' outputs are computed (without autograd) before
              the student's forward pass and handed to the loss as cached
              outputs are (``{"teacher_logits", "teacher_features",
              "labels"}``): the same values as running them after it, but the
              student's saved activations are then still in the CPU's cache
              when its backward pass reads them, where a teacher run in
              between would have evicted them (about 0.6 ms of a 20 ms step
              in ``benchmarks/step_time.py``);
            - the forward pass is ``self.call``, the student's own call,
              rather than ``self(...)``: the Distiller's ``Layer.__call__``
              only wraps the student's, which does the input conversion,
              training flag and loss bookkeeping itself, and costs about
              0.1 ms of Python per step.
            """
            import torch

            with torch.no_grad():
                x, y, sample_weight = self._with_teacher_outputs(data)
            self._clear_losses()  # as the Distiller's __call__ does
            y_pred = self.call(x, training=True)
            self.zero_grad()
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                      sample_weight=sample_weight,
                                      training=True)
            self._loss_tracker.update_state(loss, sample_weight=next(
                i for i in keras.tree.flatten(x) if i is not None).shape[0])
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
            variables = self.trainable_weights
            if variables:
                loss.backward()
                with torch.no_grad():
                    self.optimizer.apply([v.value.grad for v in variables],
                                         variables)
            else:
                warnings.warn("The model does not have any trainable weights.")
            return self.compute_metrics(x, y, y_pred,
                                        sample_weight=sample_weight)

    def _with_teacher_outputs(self, data):
        """``(x, targets, sample_weight)`` of ``data``, the teachers' outputs
        in the targets (unless they are cached there already)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if split_targets(y)[0] is not None:
            return x, y, sample_weight
        logits, features = self._teacher_outputs(x)
        targets = {"teacher_logits": logits, "teacher_features": features}
        if y is not None:
            targets["labels"] = y
        return x, targets, sample_weight

    def _detach_teachers_while(self, detached, method, *args, **kwargs):
        previous = self._kd.teacher_detached
        self._kd.teacher_detached = detached
        try:
            return method(*args, **kwargs)
        finally:
            self._kd.teacher_detached = previous

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate``; with cached targets the teacher stays idle."""
        return self._detach_teachers_while(
            _holds_cached_targets(x, y), super().evaluate, x, y, *args,
            **kwargs)

    def predict(self, x, *args, **kwargs):
        """The student's predictions (``keras.Model.predict``); no teacher runs."""
        return self._detach_teachers_while(True, super().predict, x, *args,
                                           **kwargs)

    # ------------------------------------------------------------------
    # fit: a check that the teacher is worth imitating
    # ------------------------------------------------------------------
    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``, after checking the teacher on a first batch.

        When labels come with the data, the teacher's accuracy on the first
        batch (up to 256 samples) is measured; near-chance accuracy raises a
        warning, since distilling an untrained teacher teaches nothing. NumPy
        training data are read directly. A ``tf.data`` training pipeline is
        not read (each pass over a pipeline that shuffles draws its next
        order, so a look would shift the order of every epoch): the check
        reads ``validation_data`` instead, when given.
        """
        if not self._kd.teacher_checked:
            self._kd.teacher_checked = True
            self._warn_if_teacher_untrained(x, y,
                                            kwargs.get("validation_data"))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        hooks = [o for o in self._objectives() if hasattr(o, "on_epoch_begin")]
        if hooks:
            callbacks.append(_ObjectiveEpochHook(hooks))
        return self._detach_teachers_while(
            _holds_cached_targets(x, y), super().fit, x, y, *args,
            callbacks=callbacks, **kwargs)

    def _objectives(self):
        first = [] if self.distillation_objective is None else [
            self.distillation_objective]
        return first + list(self.feature_objectives)

    def _warn_if_teacher_untrained(self, x, y, validation_data=None):
        if _is_dataset(x):  # reading it would consume one of its shuffles
            x, y = validation_data, None
            if isinstance(x, (tuple, list)):  # (x_val, y_val[, weights])
                x, y = x[0], (x[1] if len(x) > 1 else None)
        batch = _first_labeled_batch(x, y)
        if batch is None:
            return
        xb, yb = batch
        yb = np.asarray(yb)
        if yb.ndim > 1 and yb.shape[-1] > 1:
            yb = yb.argmax(-1)
        yb = yb.reshape(-1)
        keep = yb >= 0
        if keep.sum() < 20:
            return
        for i, teacher in enumerate(self.teachers):
            logits = ops.convert_to_numpy(teacher(xb, training=False))
            classes = logits.shape[-1]
            if classes < 2:
                return
            accuracy = float((logits.argmax(-1)[keep] == yb[keep]).mean())
            if accuracy <= 1.5 / classes:
                warnings.warn(
                    f"The teacher{'' if len(self.teachers) == 1 else f'[{i}]'} "
                    f"'{teacher.name}' scores {accuracy:.2f} accuracy on the "
                    f"first batch, near chance (1/{classes}). Distilling an "
                    "untrained teacher teaches nothing: train it first "
                    "(teacher.fit) or load its trained weights.",
                    stacklevel=3,
                )

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    # A `.keras` file or weights file of the Distiller holds the teachers',
    # student's and adapters' weights and the Distiller's own optimizer (the
    # one that trains the student). The optimizers the teachers or the student
    # were compiled with on their own are left out, with their compile
    # options: they play no part in distillation, and a teacher trained with
    # Adam carries two slots per weight (for a ResNet50, about 200 MB).
    def save(self, filepath, *args, **kwargs):
        """``keras.Model.save``, without the models' own optimizers."""
        with self._own_optimizers_hidden():
            return super().save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        """``keras.Model.save_weights``, without the models' own optimizers."""
        with self._own_optimizers_hidden():
            return super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """``keras.Model.load_weights``, for files saved by ``save_weights``."""
        with self._own_optimizers_hidden():
            return super().load_weights(filepath, *args, **kwargs)

    @contextlib.contextmanager
    def _own_optimizers_hidden(self):
        # Only models that hold an optimizer (compiled ones) are touched.
        held = [(model, model.__dict__["optimizer"])
                for model in self.teachers + [self.student]
                if model.__dict__.get("optimizer") is not None]
        try:
            for model, _ in held:
                model.__dict__["optimizer"] = None
            yield
        finally:
            for model, optimizer in held:
                model.__dict__["optimizer"] = optimizer

    def get_config(self):
        teacher = ([_serialize_uncompiled(t) for t in self.teacher]
                   if isinstance(self.teacher, list)
                   else _serialize_uncompiled(self.teacher))
        return {
            "name": self.name,
            "teacher": teacher,
            "student": _serialize_uncompiled(self.student),
            "teacher_weights": self.teacher_weights,
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


class _LossTerms(keras.metrics.Metric):
    """Running means of the loss terms, one variable for all of them.

    Each term is averaged over the samples seen, weighted by batch size as
    Keras's own ``loss`` is, so that at the end of an epoch
    ``loss = alpha · student_loss + (1 − alpha) · distillation_loss + ...``
    holds for the logged values too. One metric with a vector of totals
    costs a handful of ops per step, where one ``keras.metrics.Mean`` per
    term costs several each: on the eager PyTorch backend and in TensorFlow
    graphs on CPU that difference is measurable on small students
    (``benchmarks/step_time.py``).
    """

    def __init__(self, term_names, name="loss_terms"):
        super().__init__(name=name)
        self.term_names = list(term_names)
        # Weighted sums of the terms, then the number of samples.
        self.totals = self.add_variable(
            shape=(len(self.term_names) + 1,), initializer="zeros",
            dtype="float32", name="totals")

    def update_state(self, values, batch_size):
        """Adds one batch: ``values`` holds one scalar per term, in order."""
        # The sample count rides along as a last term of 1: one update.
        if keras.backend.backend() == "torch":
            # Eager PyTorch runs each keras.ops call and variable assignment
            # through Keras's dispatch (about 50 µs for this update, on a
            # small student's 7 ms step); the same sums as torch calls on
            # the variable's tensor take 10 µs.
            import torch

            totals = self.totals.value
            with torch.no_grad():
                terms = torch.stack([torch.as_tensor(
                    v, dtype=torch.float32, device=totals.device)
                    for v in values] + [torch.ones_like(totals[0])])
                totals.add_(terms * batch_size)
            return
        terms = ops.stack([ops.convert_to_tensor(v, "float32")
                           for v in values] + [ops.ones((), "float32")])
        self.totals.assign_add(terms * batch_size)

    def result(self):
        totals = self.totals.value
        # The count is a whole number of samples: 0 only before any update,
        # when the totals are 0 too (and the means then 0).
        means = ops.unstack(totals[:-1] / ops.maximum(totals[-1], 1.0))
        return dict(zip(self.term_names, means))


def _all_labeled_on_host(y):
    """True when ``y`` is a PyTorch CPU tensor of labels, none below 0.

    The label mask then weighs every sample by 1 and can be left out: on
    eager PyTorch its half-dozen operations (and the weighted hard loss they
    bring) cost more than this look at the labels, which on the CPU is a
    plain read. Elsewhere the mask is always computed: in compiled steps
    (JAX, TensorFlow, ``torch.compile``) the labels are not known while the
    step is built, and reading them on a GPU would make the host wait for
    the device at every step.
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return (isinstance(y, torch.Tensor) and y.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and bool(torch.all(y >= 0)))


def _serialize_uncompiled(model):
    """``model``'s Keras config without its own compile options."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _computes_in_float16(model):
    """True when ``model`` or one of its layers computes in float16.

    Gradients of float16 computations underflow without loss scaling, so
    ``Distiller.compile`` then wraps the optimizer in a ``LossScaleOptimizer``
    (bfloat16 has float32's exponent range and needs none).
    """
    layers = [model] + list(getattr(model, "layers", []))
    return any(getattr(layer, "compute_dtype", None) == "float16"
               for layer in layers)


def _scale_for_replicas(value):
    """``value / replicas`` under a tf.distribute strategy, else ``value``.

    Keras's TensorFlow ``train_step`` sums the replicas' gradients and
    multiplies the loss it logs back by the replica count, so ``compute_loss``
    must return each replica's share of the global loss (as Keras's own
    ``compute_loss`` does). A no-op on JAX and PyTorch and outside a strategy.
    """
    return keras_loss_module.scale_loss_for_distribution(value)


def _unscale_for_replicas(value):
    """Inverse of :func:`_scale_for_replicas`."""
    return keras_loss_module.unscale_loss_for_distribution(value)


def split_targets(y):
    """Splits targets into (cached teacher outputs, labels).

    Offline distillation feeds precomputed teacher outputs as targets: ``y``
    is then a dict with ``"teacher_logits"`` (and optionally
    ``"teacher_features"`` and ``"labels"``), so that each output travels with
    its sample through shuffling and batching. Any other ``y`` is labels.
    """
    if isinstance(y, dict) and "teacher_logits" in y:
        return y, y.get("labels")
    return None, y


def _holds_cached_targets(x, y):
    """True when ``fit``/``evaluate`` data carry cached teacher outputs.

    Recognizes a targets dict (``fit(x, {"teacher_logits": ...})``) and a
    ``tf.data.Dataset`` of ``(x, targets)`` elements, such as
    ``SoftLabels.as_dataset()``. Other sources (generators, ``PyDataset``)
    are not inspected: the teachers' state then stays in each step, which is
    correct whichever targets come.
    """
    if y is not None:
        return split_targets(y)[0] is not None
    spec = getattr(x, "element_spec", None)
    if _is_dataset(x) and isinstance(spec, (tuple, list)) and len(spec) >= 2:
        return split_targets(spec[1])[0] is not None
    return False


class _ObjectiveEpochHook(keras.callbacks.Callback):
    """Tells epoch-dependent objectives (e.g. DKD's warm-up) the epoch."""

    def __init__(self, objectives):
        super().__init__()
        self.objectives = objectives

    def on_epoch_begin(self, epoch, logs=None):
        for objective in self.objectives:
            objective.on_epoch_begin(epoch)


def _is_dataset(x):
    """True for a ``tf.data.Dataset``."""
    return type(x).__module__.startswith("tensorflow") and hasattr(
        x, "take") and hasattr(x, "element_spec")


def _first_labeled_batch(x, y, limit=256):
    """The first (inputs, labels) batch of NumPy data or a tf.data dataset."""
    if isinstance(y, dict):  # cached teacher outputs: the teacher is not used
        return None
    if y is not None and isinstance(x, np.ndarray):
        return x[:limit], np.asarray(y)[:limit]
    if y is None and _is_dataset(x):
        for element in x.take(1):
            if isinstance(element, (tuple, list)) and len(element) >= 2:
                xb, yb = element[0], element[1]
                if isinstance(xb, (dict, list, tuple)) or isinstance(yb, dict):
                    return None
                return np.asarray(xb)[:limit], np.asarray(yb)[:limit]
    return None
