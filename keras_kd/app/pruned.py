"""``keras-kd run --prune SHARE``: the student is the run's teacher, pruned.

Instead of a hand-designed student, the trained teacher is cut down to
``SHARE`` of its parameters by structured pruning
(:func:`keras_kd.pruning.prune` with ``params=SHARE x teacher parameters``:
whole filters and units go, one share for every dependency group, so the
result is an ordinary, smaller Keras model of the same layers), then
distilled from the uncut teacher as any student is: Minitron's recipe (Sun
et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation"; Muralidharan et al. 2024, arXiv:2407.14679), prune then
distil. The run's "student alone" is the same pruned model fine-tuned on the
labels, so the gain the report states is what the teacher's signal adds to
the inherited weights.

The channels are ranked by the first-order Taylor criterion (Molchanov et
al. 2019, "Importance Estimation for Neural Network Pruning") on at most
:data:`CALIBRATION` training examples with their labels: the loss change
when a channel goes. The teachers of ``keras-kd run`` put a
BatchNormalization after every convolution, which makes the magnitude of a
filter (``"l1"``) and of its pre-normalization output (``"activation"``)
scale-free, and says nothing about the labels; see docs/pruning.md for the
criteria measured side by side.
"""

import numpy as np

from keras_kd.app.options import PRUNE_CRITERION as CRITERION
from keras_kd.app.runs import stage

# The training examples (with labels) the Taylor criterion reads, in
# batches of 32: enough for stable channel ranks, a few seconds of gradients.
CALIBRATION = 1024


def budget(teacher_params, share):
    """The most parameters the pruned student may have: ``⌊share · P⌋``.

    >>> budget(125_770, 0.25)
    31442
    """
    return int(np.floor(share * teacher_params))


def prune_teacher(teacher, share, x, y, criterion=CRITERION,
                  calibration=CALIBRATION):
    """The teacher pruned to ``share`` of its parameters, and the report.

    Args:
        teacher: a trained built-in classifier (logits out).
        share: in (0, 1): the pruned model has at most
            ``budget(teacher.count_params(), share)`` parameters.
        x, y: training inputs and labels; the first ``calibration`` rank the
            channels (``"activation"`` and ``"taylor"``).
        criterion: a :data:`keras_kd.pruning.importance.CRITERIA` name.

    Returns:
        ``(model, report)``: :func:`keras_kd.pruning.prune`'s report with
        ``share``, ``budget`` and ``calibration_examples`` added (``groups``
        keep their channel counts, not their kept indices).

    >>> import keras, numpy as np
    >>> from keras_kd.app.models import build_model
    >>> t = build_model("small_cnn", (40, 1), 10)
    >>> x = np.random.default_rng(0).normal(size=(64, 40, 1)).astype("float32")
    >>> s, r = prune_teacher(t, 0.5, x, np.arange(64) % 10)
    >>> r["params_after"] <= r["budget"] == 1581, s.count_params() == r["params_after"]
    (True, True)
    """
    import keras

    from keras_kd import pruning

    if not 0.0 < share < 1.0:
        raise ValueError(f"share={share!r} must be in (0, 1): the pruned "
                         "student's share of the teacher's parameters, e.g. "
                         "0.25.")
    limit = budget(teacher.count_params(), share)
    n = min(int(calibration), len(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # A teacher frozen by a Distiller has no trainable weights for Taylor's
    # gradients, and its layers' config would rebuild the student frozen.
    trainable = teacher.trainable
    teacher.trainable = True
    try:
        model, report = pruning.prune(
            teacher, params=limit, criterion=criterion,
            calibration_data=(np.asarray(x[:n]), np.asarray(y[:n])),
            loss=loss)
    finally:
        teacher.trainable = trainable
    report = dict(report, share=float(share), budget=limit,
                  calibration_examples=n if criterion in (
                      "activation", "taylor") else 0)
    report["groups"] = [{k: g[k] for k in ("name", "producers",
                                            "channels_before",
                                            "channels_after")}
                        for g in report["groups"]]
    report.pop("layers", None)
    return model, report


def calibration_arrays(dataset, limit=CALIBRATION):
    """The first ``limit`` ``(x, y)`` examples of a batched data set, as
    arrays (read with ``take``: bounded)."""
    xs, ys = [], []
    for x, y in dataset.unbatch().take(int(limit)).batch(256) \
            .as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def student_name(args):
    """The student's name in the run's folder name and report labels:
    ``--student``, or ``TEACHER-pruned-SHARE`` with ``--prune``.

    >>> import argparse
    >>> student_name(argparse.Namespace(student="small_cnn", prune=0.25,
    ...                                 teacher="cnn"))
    'cnn-pruned-0.25'
    """
    share = getattr(args, "prune", None)
    return args.student if share is None else f"{args.teacher}-pruned-{share:g}"


def prune_stage(run):
    """``keras-kd run --prune``: prunes the trained ``run.teacher`` into
    ``run.student`` (kept unchanged as ``run.pruned_initial``, measured
    before any training) and records the pruning in ``run.prune_info``."""
    import keras

    args = run.args
    criterion = args.prune_criterion = args.prune_criterion or CRITERION
    x, y = calibration_arrays(run.splits.train)
    stage(f"pruning the teacher to {args.prune:g} of its parameters "
          f"({budget(run.teacher.count_params(), args.prune):,}): criterion "
          f"{criterion}"
          + (f" on {len(x)} training examples"
             if criterion in ("activation", "taylor") else ""))
    try:
        model, report = prune_teacher(run.teacher, args.prune, x, y,
                                      criterion=criterion)
    except ValueError as error:
        raise SystemExit(f"keras-kd run: --prune {args.prune:g}: {error} "
                         "From the command: raise --prune, the student's "
                         "share of the teacher's parameters.") from None
    initial = keras.models.clone_model(model)
    initial.set_weights(model.get_weights())
    run.student, run.pruned_initial, run.prune_info = model, initial, report
    stage(f"pruned student: {report['params_after']:,} parameters (teacher "
          f"{report['params_before']:,}), {report['flops_after']:,} FLOPs "
          f"per example (teacher {report['flops_before']:,}); channels "
          + ", ".join(f"{g['name']} {g['channels_before']}->"
                      f"{g['channels_after']}" for g in report["groups"]))


def markdown(info):
    """The report's paragraph on the pruning (``report.json``'s
    ``pruning``).

    >>> print(markdown(dict(share=0.25, budget=100, params_before=400,
    ...     params_after=96, flops_before=800, flops_after=150,
    ...     criterion="taylor", calibration_examples=64, groups=[dict(
    ...     name="c1", channels_before=8, channels_after=4)])))
    Student: the teacher pruned to 0.25 of its parameters (at most 100) by `keras_kd.pruning.prune`, criterion `taylor` on 64 labelled training examples: 400 -> 96 parameters, 800 -> 150 FLOPs per example; channels c1 8 -> 4. The student alone is this pruned model fine-tuned on the labels; the distilled student, the same pruned model distilled from the teacher.
    """
    examples = info.get("calibration_examples")
    return (f"Student: the teacher pruned to {info['share']:g} of its "
            f"parameters (at most {info['budget']:,}) by "
            f"`keras_kd.pruning.prune`, criterion `{info['criterion']}`"
            + (f" on {examples:,} labelled training examples"
               if examples else "")
            + f": {info['params_before']:,} -> {info['params_after']:,} "
            f"parameters, {info['flops_before']:,} -> "
            f"{info['flops_after']:,} FLOPs per example; channels "
            + ", ".join(f"{g['name']} {g['channels_before']} -> "
                        f"{g['channels_after']}" for g in info["groups"])
            + ". The student alone is this pruned model fine-tuned on the "
            "labels; the distilled student, the same pruned model distilled "
            "from the teacher.")
