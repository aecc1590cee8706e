"""Gradual pruning while a model trains or is distilled.

Zhu & Gupta (2017, "To prune, or not to prune: exploring the efficacy of
pruning for model compression") raise the sparsity from ``s_i`` to ``s_f``
over training, pruning every ``Δt`` steps:

    s(t) = s_f + (s_i − s_f) · (1 − (t − t_0) / (T − t_0))^power,  power = 3

for ``t_0 ≤ t ≤ T`` (``s_i`` before, ``s_f`` after): much is cut early,
while the network still recovers easily, and less and less near the end.
TensorFlow Model Optimization's ``PolynomialDecay`` applies it to masks.
:class:`PolynomialDecay` is its structural counterpart, counted in epochs:
``s`` is the share of each group's *original* channels removed (or, with
``target="params"`` / ``"flops"``, of the original model's parameters or
FLOPs), and a pruning removes whole channels.

Pruning changes the shapes of the weights, which a running ``fit()`` cannot
follow (its compiled step holds the old variables). :class:`GradualPruning`
therefore runs ``fit()`` in stages, one per pruning epoch: between stages it
prunes the model (the student of a :class:`keras_kd.Distiller`; the teacher
is untouched), recompiles the new model from the old one's compile config,
carries the optimizer state to the kept weights
(:mod:`keras_kd.pruning.optimizer_state`), and resumes at the next epoch
(``initial_epoch``), so epochs are numbered globally and the history is one.
"""

import math

import keras

from keras_kd.pruning import budget
from keras_kd.pruning import counting
from keras_kd.pruning import nodes as nodes_lib
from keras_kd.pruning import optimizer_state
from keras_kd.pruning.graph import DependencyGraph
from keras_kd.pruning.surgery import prune

_TARGETS = ("channels", "params", "flops")


class PolynomialDecay:
    """The share pruned at each epoch: ``s(e) = s_f + (s_i − s_f)(1 − p)^power``
    with ``p = min(1, (e − begin_epoch) / (end_epoch − begin_epoch))``
    (Zhu & Gupta 2017).

    Pruning happens at the start of the epochs ``begin_epoch``,
    ``begin_epoch + frequency``, ... up to ``end_epoch``, and at
    ``end_epoch`` itself (so the final share is always reached).

    Args:
        final_sparsity: the share removed in the end, in [0, 1).
        end_epoch: the (0-based) epoch at whose start the final share is
            reached.
        initial_sparsity: the share removed at ``begin_epoch``.
        begin_epoch: the first pruning epoch.
        frequency: prune every ``frequency`` epochs.
        power: the exponent (3 in Zhu & Gupta and in TensorFlow Model
            Optimization).

    >>> s = PolynomialDecay(final_sparsity=0.5, begin_epoch=1, end_epoch=4, frequency=1)
    >>> [round(s.sparsity(e), 4) for e in range(6)]
    [0.0, 0.0, 0.3519, 0.4815, 0.5, 0.5]
    >>> s.pruning_epochs()
    [1, 2, 3, 4]
    """

    def __init__(self, final_sparsity, end_epoch, initial_sparsity=0.0,
                 begin_epoch=0, frequency=1, power=3):
        for name, value in (("final_sparsity", final_sparsity),
                            ("initial_sparsity", initial_sparsity)):
            if isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be in [0, 1): the "
                                 "share of the original channels removed.")
        if initial_sparsity > final_sparsity:
            raise ValueError(
                f"initial_sparsity={initial_sparsity} is above "
                f"final_sparsity={final_sparsity}: pruning only removes; "
                "swap them.")
        for name, value in (("begin_epoch", begin_epoch),
                            ("end_epoch", end_epoch)):
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name}={value!r} must be an epoch index "
                                 "(an int >= 0).")
        if end_epoch <= begin_epoch:
            raise ValueError(
                f"end_epoch={end_epoch} must come after begin_epoch="
                f"{begin_epoch}: the final share is reached at end_epoch.")
        if isinstance(frequency, bool) or int(frequency) != frequency \
                or frequency < 1:
            raise ValueError(f"frequency={frequency!r} must be an int >= 1 "
                             "(prune every frequency epochs).")
        if not power > 0:
            raise ValueError(f"power={power!r} must be > 0.")
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_epoch, self.end_epoch = int(begin_epoch), int(end_epoch)
        self.frequency, self.power = int(frequency), float(power)

    def sparsity(self, epoch):
        """The share removed from the start of ``epoch`` on (0 before
        ``begin_epoch``)."""
        if epoch < self.begin_epoch:
            return 0.0
        p = min(1.0, (epoch - self.begin_epoch)
                / (self.end_epoch - self.begin_epoch))
        return self.final_sparsity + (self.initial_sparsity
                                      - self.final_sparsity) * (1 - p) ** self.power

    def pruning_epochs(self):
        """The epochs at whose start the model is pruned."""
        epochs = list(range(self.begin_epoch, self.end_epoch + 1,
                            self.frequency))
        return epochs if epochs[-1] == self.end_epoch else epochs + [self.end_epoch]

    def get_config(self):
        return dict(final_sparsity=self.final_sparsity, end_epoch=self.end_epoch,
                    initial_sparsity=self.initial_sparsity,
                    begin_epoch=self.begin_epoch, frequency=self.frequency,
                    power=self.power)


def _is_distiller(model):
    return hasattr(model, "student") and hasattr(model, "teacher")


def _recompiled(old, student):
    """A model like ``old`` around the pruned ``student``, compiled from
    ``old``'s compile config (a fresh optimizer of the same config)."""
    config = old.get_compile_config()
    if not config:
        raise ValueError(
            "GradualPruning needs a compiled model: call model.compile(...) "
            "before GradualPruning.fit.")
    if _is_distiller(old):
        new = type(old)(teacher=old.teacher, student=student,
                        teacher_weights=old.teacher_weights,
                        truncate_teacher_logits=old.truncate_teacher_logits,
                        name=old.name)
    else:
        new = student
    try:
        new.compile_from_config(config)
    except Exception as error:
        raise ValueError(
            "GradualPruning recompiles the pruned model from "
            "model.get_compile_config(), and that failed "
            f"({type(error).__name__}: {error}). Compile with Keras losses, "
            "metrics and optimizers (or ones registered with "
            "keras.saving.register_keras_serializable).") from error
    if new.optimizer is not None and not new.optimizer.built:
        new.optimizer.build(new.trainable_variables)
    if _is_distiller(old):
        new.alpha, new.temperature = old.alpha, old.temperature
    return new


def check_options(schedule, target, global_ranking):
    """Refuses, with the fix, a schedule that is not a
    :class:`PolynomialDecay`, an unknown ``target`` and ``global_ranking``
    with ``target="channels"`` (shared by :class:`GradualPruning` and
    :class:`keras_kd.pruning.PruningCallback`).

    >>> check_options(PolynomialDecay(0.5, end_epoch=2), "channels", True)
    Traceback (most recent call last):
    ...
    ValueError: global_ranking=True ranks channels against a budget: use target='params' or 'flops'.
    """
    if not isinstance(schedule, PolynomialDecay):
        raise TypeError("schedule must be a keras_kd.pruning."
                        f"PolynomialDecay, got {type(schedule).__name__}.")
    if target not in _TARGETS:
        raise ValueError(f"target={target!r} is not one of {_TARGETS}.")
    if global_ranking and target == "channels":
        raise ValueError(
            "global_ranking=True ranks channels against a budget: use "
            "target='params' or 'flops'.")


class GradualPruning:
    """Prune a model gradually while ``fit()`` trains or distils it.

    ``GradualPruning(schedule, ...).fit(model, x, y, epochs=..., ...)`` takes
    the arguments of ``model.fit`` and runs it in stages: at the start of
    every pruning epoch of ``schedule`` it prunes the model (the student of
    a :class:`keras_kd.Distiller`, the teacher untouched) to the scheduled
    share, recompiles it, carries the optimizer state (Adam's moments, the
    momentum, the step count) to the kept weights, and continues. Epochs are
    numbered globally and one ``History`` covers every stage. Callbacks are
    passed to every stage: they see the current model, and their
    ``on_train_begin`` runs again at each stage (``EarlyStopping`` and
    ``ReduceLROnPlateau`` restart their patience).

    Args:
        schedule: a :class:`PolynomialDecay`.
        target: what the share counts: ``"channels"`` (each group loses the
            share of its original channels, ``kept_count``), ``"params"`` or
            ``"flops"`` (a budget of ``(1 − s) ×`` the original model's).
        global_ranking: with a ``"params"`` or ``"flops"`` target, rank the
            channels across groups (:mod:`keras_kd.pruning.budget`).
        criterion, never_prune, min_channels, round_to, calibration_data,
            loss, calibration_steps: as in :func:`keras_kd.pruning.prune`.
        verbose: 1 prints one line per pruning.

    Attributes:
        model: the latest model (a new object after each pruning).
        reports: one ``prune`` report per pruning, with its ``epoch``,
            ``sparsity`` and ``optimizer_reset`` (variables not carried).
        kept: ``{group name: kept indices}`` into the original model's
            channels, after the last pruning.

    >>> import keras, numpy as np
    >>> from keras_kd import pruning
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                       keras.layers.Dense(3, name="head")])
    >>> m.compile(optimizer="adam", loss="mse")
    >>> pruner = pruning.GradualPruning(
    ...     pruning.PolynomialDecay(final_sparsity=0.5, begin_epoch=1, end_epoch=2), verbose=0)
    >>> history = pruner.fit(m, np.ones((8, 8)), np.ones((8, 3)), epochs=3, verbose=0)
    >>> history.epoch, pruner.model.layers[0].units
    ([0, 1, 2], 8)
    """

    def __init__(self, schedule, target="channels", global_ranking=False,
                 criterion="l1", never_prune=None, min_channels=1, round_to=1,
                 calibration_data=None, loss=None, calibration_steps=None,
                 verbose=1):
        check_options(schedule, target, global_ranking)
        self.schedule = schedule
        self.target = target
        self.global_ranking = bool(global_ranking)
        self.options = dict(criterion=criterion, never_prune=never_prune,
                            min_channels=min_channels, round_to=round_to,
                            calibration_data=calibration_data, loss=loss,
                            calibration_steps=calibration_steps)
        self.verbose = verbose
        self.model = None
        self.reports = []
        self.kept = None
        self._original = None

    # one pruning -------------------------------------------------------
    def _start(self, model):
        net = model.student if _is_distiller(model) else model
        never = self.options["never_prune"]
        graph = DependencyGraph(net, nodes_lib.output_names(net)
                                if never is None else never)
        self._original = dict(
            params=net.count_params(), flops=counting.count_flops(net),
            channels={g.name: g.size for g in graph.groups})
        self.kept = {g.name: list(range(g.size)) for g in graph.groups}

    def prune_at(self, model, epoch):
        """Prune ``model`` to the schedule's share at ``epoch``; returns the
        new, compiled model with the optimizer state carried (``model``
        itself when nothing changes). Used between stages by :meth:`fit`."""
        if self._original is None:
            self._start(model)
        share = self.schedule.sparsity(epoch)
        net = model.student if _is_distiller(model) else model
        options = dict(self.options)
        if self.target == "channels":
            o = self.options
            sizes = {g: len(k) for g, k in self.kept.items()}
            wanted = {g: budget.kept_count(n, share, o["min_channels"],
                                           o["round_to"])
                      for g, n in self._original["channels"].items()}
            if all(min(wanted[g], sizes[g]) == sizes[g] for g in sizes):
                return model
            # the ratio of the current width that leaves the wanted count
            ratio = {g: (sizes[g] - min(wanted[g], sizes[g])) / sizes[g]
                     for g in sizes}
            new_net, report = prune(net, ratio=ratio, **options)
        else:
            limit = max(1, math.floor((1 - share) * self._original[self.target]))
            new_net, report = prune(net, global_ranking=self.global_ranking,
                                    **{self.target: limit}, **options)
            if report[f"{self.target}_after"] == report[f"{self.target}_before"]:
                return model
        new = _recompiled(model, new_net)
        reset = []
        if model.optimizer is not None and model.optimizer.built:
            own = {id(v) for v in new_net.weights}
            fresh = [v for v in new.trainable_variables if id(v) not in own]
            reset = optimizer_state.carry_optimizer_state(
                model.optimizer, new.optimizer, new_net, report, fresh)
        for group in report["groups"]:
            if group["name"] in self.kept:
                self.kept[group["name"]] = [
                    self.kept[group["name"]][k] for k in group["kept"]]
        report.update(epoch=int(epoch), sparsity=share, optimizer_reset=reset)
        self.reports.append(report)
        if self.verbose:
            print(f"GradualPruning: before epoch {epoch + 1}, sparsity {share:.3f}: "
                  f"{report['params_before']} -> {report['params_after']} "
                  f"parameters, {report['flops_before']} -> "
                  f"{report['flops_after']} FLOPs")
        return new

    # fit in stages -------------------------------------------------------
    def fit(self, model, x=None, y=None, epochs=1, initial_epoch=0,
            callbacks=None, **kwargs):
        """``model.fit(x, y, epochs=..., **kwargs)`` with pruning at the
        schedule's epochs; returns one ``keras.callbacks.History`` over all
        epochs (``history.model`` and :attr:`model` are the final model).

        ``x`` is read once per stage: pass arrays, a ``tf.data.Dataset``, a
        ``keras.utils.PyDataset`` or another re-iterable input, not a
        Python generator.
        """
        if hasattr(x, "__next__"):
            raise ValueError(
                "GradualPruning.fit runs fit() once per pruning stage, and a "
                "Python iterator or generator ends after the first: pass "
                "arrays, a tf.data.Dataset or a keras.utils.PyDataset.")
        if self.schedule.end_epoch >= epochs:
            raise ValueError(
                f"The schedule reaches its final sparsity at the start of "
                f"epoch {self.schedule.end_epoch} (0-based), but fit runs "
                f"epochs={epochs}: raise epochs above end_epoch or lower "
                "end_epoch.")
        stops = [e for e in self.schedule.pruning_epochs()
                 if initial_epoch <= e < epochs]
        bounds = [initial_epoch] + [e for e in stops if e > initial_epoch] \
            + [epochs]
        merged = keras.callbacks.History()
        merged.history, merged.epoch = {}, []
        self.model = model
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if start in stops:
                self.model = self.prune_at(self.model, start)
            if stop == start:
                continue
            stage = self.model.fit(x, y, epochs=stop, initial_epoch=start,
                                   callbacks=list(callbacks or []), **kwargs)
            merged.epoch.extend(stage.epoch)
            for key, values in stage.history.items():
                merged.history.setdefault(key, []).extend(values)
            merged.params = stage.params
            if getattr(self.model, "stop_training", False):
                break      # a callback (EarlyStopping) ended training
        merged.set_model(self.model)
        return merged
