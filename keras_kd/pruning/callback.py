"""Gradual structured pruning inside the user's own ``fit()``: masks, then strip.

TensorFlow Model Optimization's ``prune_low_magnitude`` wraps each layer in a
mask, ``UpdatePruningStep`` raises the sparsity during ``fit()``, and
``strip_pruning`` removes the wrappers afterwards; the weights keep their
shapes. :class:`PruningCallback` is the structural counterpart for Keras 3:
on the epochs of a :class:`~keras_kd.pruning.PolynomialDecay` schedule it
ranks the channels of every dependency group
(:class:`~keras_kd.pruning.DependencyGraph`,
:mod:`~keras_kd.pruning.importance`) and *masks* the lowest-ranked ones: it
makes them dead, as a planted dead channel is,

- the producing filters (the kernel's output axis) and their bias are 0,
- BatchNormalization's ``γ = β = 0`` on the channel (its output is
  ``γ (x − μ)/σ + β = 0`` whatever the statistics),
- every consumer's input rows of the channel are 0 (a Dense or convolution
  reading it, a depthwise kernel), so even an activation with
  ``f(0) ≠ 0`` (a sigmoid) adds nothing downstream,

so the masked model computes exactly what the smaller model without those
channels computes. After every training batch the masks are applied again
(an optimizer step moves masked entries that receive a gradient, such as
``β``), and the optimizer's slots of those entries (Adam's moments ``m`` and
``v``, SGD's momentum: ``optimizer.variables`` of the weight's shape named
``{weight path}_{slot}``) are zeroed too, so momentum cannot bring them back.
Masks only grow: a removed channel stays removed, and later prunings rank the
remaining ones.

:meth:`PruningCallback.strip` then builds the ordinary, smaller Keras model
from the kept indices (:func:`~keras_kd.pruning.prune_channels`, the surgery
of :func:`~keras_kd.pruning.prune`), equal to the masked model.

Masks cost full-size compute during training; the weights' shapes never
change, so no recompilation happens and any ``fit()`` works (a plain model's
or a :class:`keras_kd.Distiller`'s, whose student is pruned).
:class:`~keras_kd.pruning.GradualPruning` instead shrinks the model at each
pruning, running ``fit()`` in stages.
"""

import math

import keras
import numpy as np

from keras_kd.pruning import budget
from keras_kd.pruning import counting
from keras_kd.pruning import importance
from keras_kd.pruning import nodes as nodes_lib
from keras_kd.pruning.graph import DependencyGraph
from keras_kd.pruning import schedule as schedule_lib
from keras_kd.pruning.surgery import prune_channels

_MASKED_NORM = ("gamma", "beta")


def _is_distiller(model):
    return hasattr(model, "student") and hasattr(model, "teacher")


def slot_owners(optimizer, weights):
    """``{id(weight): [its optimizer slot variables]}``.

    Keras names a slot ``{weight path with "/" as "_"}_{slot}``
    (``Optimizer.add_variable_from_reference``); each of
    ``optimizer.variables`` goes to the weight with the longest matching
    path, and is kept only if it has the weight's shape (factored slots,
    such as Adafactor's, are left alone).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")],
    ...                      name="m")
    >>> opt = keras.optimizers.Adam()
    >>> opt.build(m.trainable_variables)
    >>> {m.get_layer("d").weights[i].name: [v.name for v in s]
    ...  for i, s in enumerate(slot_owners(opt, m.trainable_variables).values())}
    {'kernel': ['m_d_kernel_momentum', 'm_d_kernel_velocity'], 'bias': ['m_d_bias_momentum', 'm_d_bias_velocity']}
    """
    keys = {w.path.replace("/", "_"): w for w in weights}
    owners = {id(w): [] for w in weights}
    for v in optimizer.variables:
        best = None
        for key in keys:
            if v.name.startswith(key + "_") and (best is None
                                                 or len(key) > len(best)):
                best = key
        if best is not None and tuple(v.shape) == tuple(keys[best].shape):
            owners[id(keys[best])].append(v)
    return owners


class PruningCallback(keras.callbacks.Callback):
    """Prune channels gradually inside ``model.fit`` or ``distiller.fit``
    by masking them; :meth:`strip` returns the smaller model.

    At the start of each pruning epoch of ``schedule``
    (``schedule.pruning_epochs()``; a ``fit`` that starts later catches up
    with the share of the last pruning epoch before it), the channels of
    every dependency group of the model (the student of a
    :class:`keras_kd.Distiller`; the teacher is never touched) are ranked
    by ``criterion`` on the current weights, and the lowest-ranked are
    masked (see the module docstring) until each group keeps
    ``kept_count(n, s(e), min_channels, round_to)`` of its ``n`` original
    channels, or, with ``target="params"`` / ``"flops"``, until the stripped
    model would have at most ``(1 − s(e)) ×`` the original's parameters or
    FLOPs (``global_ranking=True`` ranks across groups,
    :mod:`keras_kd.pruning.budget`). Masked channels stay masked: their
    scores rank below every kept channel. After every training batch the
    masks are applied again, to the weights and the optimizer's slots.

    Args:
        schedule: a :class:`~keras_kd.pruning.PolynomialDecay` (epochs as
            ``fit`` numbers them); its ``end_epoch`` must be below ``fit``'s
            ``epochs``.
        target, global_ranking, criterion, never_prune, min_channels,
            round_to, calibration_data, loss, calibration_steps: as in
            :class:`~keras_kd.pruning.GradualPruning` and
            :func:`~keras_kd.pruning.prune`.
        verbose: 1 prints one line per pruning.

    Attributes:
        kept: ``{group name: kept indices}`` into the original channels.
        history: one entry per epoch: ``epoch``, ``sparsity`` (the
            scheduled share in force), ``channels`` (``{group: kept
            count}``), ``params`` and ``flops`` (of the stripped model).
        masks: ``[(variable, 0/1 array)]``, the masked weights.

    With ``steps_per_execution > 1`` masks are applied every
    ``steps_per_execution`` batches (when Keras calls back). Under JAX,
    applying them syncs the training state to the variables each batch, as
    any callback that reads the model does.

    >>> import keras, numpy as np
    >>> from keras_kd import pruning
    >>> m = keras.Sequential([keras.Input((8,)),
    ...                       keras.layers.Dense(16, activation="relu", name="hidden"),
    ...                       keras.layers.Dense(3, name="head")])
    >>> m.compile(optimizer="adam", loss="mse")
    >>> cb = pruning.PruningCallback(pruning.PolynomialDecay(0.5, end_epoch=1), verbose=0)
    >>> _ = m.fit(np.ones((8, 8)), np.ones((8, 3)), epochs=2, callbacks=[cb], verbose=0)
    >>> [h["channels"] for h in cb.history]
    [{'hidden': 16}, {'hidden': 8}]
    >>> small, report = cb.strip()
    >>> small.layers[0].units, report["params_after"]
    (8, 99)
    """

    def __init__(self, schedule, target="channels", global_ranking=False,
                 criterion="l1", never_prune=None, min_channels=1, round_to=1,
                 calibration_data=None, loss=None, calibration_steps=None,
                 verbose=1):
        super().__init__()
        schedule_lib.check_options(schedule, target, global_ranking)
        if criterion not in importance.CRITERIA:
            raise ValueError(f"criterion={criterion!r} is not one of "
                             f"{importance.CRITERIA}.")
        if isinstance(min_channels, bool) or int(min_channels) < 1 \
                or isinstance(round_to, bool) or int(round_to) < 1:
            raise ValueError("min_channels and round_to must be ints >= 1, "
                             f"got {min_channels!r} and {round_to!r}.")
        self.schedule = schedule
        self.target = target
        self.global_ranking = bool(global_ranking)
        self.criterion = criterion
        self.never_prune = never_prune
        self.min_channels, self.round_to = int(min_channels), int(round_to)
        self.calibration = dict(calibration_data=calibration_data, loss=loss,
                                calibration_steps=calibration_steps)
        self.verbose = verbose
        self.graph = None
        self.net = None
        self.kept = None
        self.history = []
        self.masks = []
        self.sparsity = 0.0
        self._removed = set()
        self._original = None
        self._slots = None

    # the model being pruned -------------------------------------------
    def _network(self):
        model = self.model
        return model.student if _is_distiller(model) else model

    def _start(self, net):
        never = nodes_lib.output_names(net) if self.never_prune is None \
            else self.never_prune
        graph = DependencyGraph(net, never)
        original = dict(params=net.count_params(),
                        flops=counting.count_flops(net))
        if self.target == "flops" and original["flops"] is None:
            raise ValueError(
                "target='flops' needs every layer's output size, and some is "
                "unknown (a None spatial dimension): give the model a fixed "
                "input shape or use target='params'.")
        self.graph, self.net, self._never = graph, net, list(never)
        self._original = original
        self.kept = {g.name: list(range(g.size)) for g in graph.groups}
        self._removed, self.masks, self.history = set(), [], []
        self.sparsity, self._slots = 0.0, None

    def on_train_begin(self, logs=None):
        epochs = self.params.get("epochs") if self.params else None
        if epochs is not None and self.schedule.end_epoch >= epochs:
            raise ValueError(
                f"The schedule reaches its final sparsity at the start of "
                f"epoch {self.schedule.end_epoch} (0-based), but fit runs "
                f"epochs={epochs}: raise epochs above end_epoch or lower "
                "the schedule's end_epoch.")
        net = self._network()
        if net is not self.net:
            self._start(net)
        elif self.masks:
            self.apply_masks()

    def _scheduled(self, epoch):
        """The share of the last pruning epoch at or before ``epoch``."""
        done = [e for e in self.schedule.pruning_epochs() if e <= epoch]
        return self.schedule.sparsity(done[-1]) if done else 0.0

    def on_epoch_begin(self, epoch, logs=None):
        share = self._scheduled(epoch)
        if share > self.sparsity:
            self.mask_to(share, epoch)
        removed = np.asarray(sorted(self._removed), dtype=int)
        self.history.append(dict(
            epoch=int(epoch), sparsity=self.sparsity,
            channels={g: len(k) for g, k in self.kept.items()},
            params=budget.params_after(self.net, self.graph, removed),
            flops=None if self._original["flops"] is None
            else budget.flops_after(self.net, self.graph, removed)))

    def on_train_batch_end(self, batch, logs=None):
        if self.masks:
            self.apply_masks()

    # masking -------------------------------------------------------------
    def _keep_counts(self, share, scores):
        current = {g: len(k) for g, k in self.kept.items()}
        if self.target == "channels":
            wanted = {g.name: budget.kept_count(g.size, share, self.min_channels,
                                                self.round_to)
                      for g in self.graph.groups}
        else:
            limit = max(1, math.floor((1 - share) * self._original[self.target]))
            known = {r: (0.0 if r in self._removed else s)
                     for r, s in scores.items()}
            wanted, _, _ = budget.keep_for_budget(
                self.net, self.graph, known, min_channels=self.min_channels,
                round_to=self.round_to, global_ranking=self.global_ranking,
                **{self.target: limit})
        return {g: min(wanted[g], current[g]) for g in current}

    def mask_to(self, share, epoch=None):
        """Mask the channels to remove at ``share`` (called by
        :meth:`on_epoch_begin`); masks only grow."""
        _ = self.model  # (JAX: the training state back in the variables)
        scores, _ = importance.scores(self.graph, self.criterion,
                                      **self.calibration)
        scores = {int(r): float(s) for r, s in scores.items()}
        keep = self._keep_counts(share, scores)
        # masked classes rank below every kept one (scores are >= 0)
        ranked = {r: (-1.0 if r in self._removed else s)
                  for r, s in scores.items()}
        for group in self.graph.groups:
            for r in group.roots:
                ranked.setdefault(int(r), -1.0 if int(r) in self._removed
                                  else 0.0)
        removed, groups = budget.plan(self.graph, ranked, keep)
        removed = set(removed)
        if not removed >= self._removed:
            raise RuntimeError("A masked channel would come back; masks only "
                               "grow (please report this).")
        before = len(self._removed)
        self._removed = removed
        self.kept = {g["name"]: g["kept"] for g in groups}
        self.sparsity = share
        self._build_masks()
        self.apply_masks()
        if self.verbose:
            left = budget.params_after(self.net, self.graph,
                                       np.asarray(sorted(removed), dtype=int))
            when = "" if epoch is None else f" before epoch {epoch + 1},"
            print(f"PruningCallback:{when} sparsity {share:.3f}: "
                  f"{len(removed) - before} more channels masked, {left} of "
                  f"{self._original['params']} parameters after strip()")

    def _build_masks(self):
        removed = np.asarray(sorted(self._removed), dtype=int)
        by_variable = {}
        for s, roots in zip(self.graph.slices, self.graph.slice_roots):
            if s.role == "norm" and s.name not in _MASKED_NORM:
                continue          # moving statistics: γ = β = 0 suffice
            gone = np.isin(roots, removed)
            if not gone.any():
                continue
            variable = self.net.get_layer(s.layer).weights[s.weight]
            entry = by_variable.setdefault(
                id(variable), [variable, np.ones(tuple(variable.shape),
                                                 dtype=bool)])
            index = [slice(None)] * len(variable.shape)
            index[s.axis] = np.flatnonzero(gone)
            entry[1][tuple(index)] = False
        self.masks = [(v, m) for v, m in by_variable.values()]
        self._tensors = [keras.ops.convert_to_tensor(m.astype(
            keras.backend.standardize_dtype(v.dtype))) for v, m in self.masks]
        self._slots = None

    def _slot_masks(self, optimizer):
        if self._slots is None or self._slots[0] != len(optimizer.variables):
            owners = slot_owners(optimizer, [v for v, _ in self.masks])
            pairs = [(slot, t) for (v, _), t in zip(self.masks, self._tensors)
                     for slot in owners[id(v)]]
            self._slots = (len(optimizer.variables), pairs)
        return self._slots[1]

    def apply_masks(self):
        """Zero the masked entries of the weights and of the optimizer's
        slots (after every training batch)."""
        model = self.model  # (JAX: syncs the state; the next step reads it)
        for (variable, _), mask in zip(self.masks, self._tensors):
            variable.assign(keras.ops.multiply(variable, mask))
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            for slot, mask in self._slot_masks(optimizer):
                slot.assign(keras.ops.multiply(slot, mask))

    # the smaller model -----------------------------------------------------
    def strip(self):
        """``(smaller_model, report)``: the pruned model without the masked
        channels (:func:`~keras_kd.pruning.prune_channels` with
        :attr:`kept`), equal to the masked model, and its ``prune`` report
        with ``sparsity`` (the last share applied) and ``history``."""
        if self.net is None:
            raise ValueError(
                "Nothing to strip yet: pass the PruningCallback to "
                "model.fit(..., callbacks=[callback]) first.")
        small, report = prune_channels(self.net, self.kept, self._never)
        report.update(sparsity=self.sparsity, history=list(self.history),
                      criterion=self.criterion)
        return small, report
