"""Trainable projections that align a student's features with the teacher's.

FitNet-style hints compare a student's intermediate output with a wider
teacher's; a small regressor ``r`` maps the student's features to the
teacher's width (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR
2015). keras-kd creates it automatically when the widths differ:

* feature maps ``(batch, H, W, C)``: a 1×1 ``Conv2D`` followed by
  ``BatchNormalization`` (the regressor of the CRD benchmark code);
* vectors ``(batch, D)`` and sequences ``(batch, L, D)``: a ``Dense`` layer on
  the last axis (as in hidden-state distillation of transformers).
"""

import keras


def make_adapter(student_shape, teacher_width, name="adapter"):
    """Builds a trainable adapter from ``student_shape`` to ``teacher_width``.

    Args:
        student_shape: the student feature's shape, batch axis included
            (``None`` allowed there).
        teacher_width: channels (last axis) of the teacher's feature.
        name: the adapter's layer name.

    Returns:
        A built ``keras.layers.Layer`` mapping the student's features to
        ``(..., teacher_width)``.

    Example:

    >>> adapter = make_adapter((None, 8, 8, 16), 64)
    >>> adapter.compute_output_shape((None, 8, 8, 16))
    (None, 8, 8, 64)
    """
    rank = len(student_shape)
    if rank == 4:
        adapter = keras.Sequential(
            [
                keras.layers.Conv2D(teacher_width, 1, use_bias=False,
                                    name=f"{name}_conv"),
                keras.layers.BatchNormalization(name=f"{name}_bn"),
            ],
            name=name,
        )
    elif rank in (2, 3):
        adapter = keras.layers.Dense(teacher_width, name=name)
    else:
        raise ValueError(
            f"Cannot build an adapter for features of rank {rank} (shape "
            f"{tuple(student_shape)}): keras-kd adapts vectors (batch, D), "
            "sequences (batch, L, D) and feature maps (batch, H, W, C). Tap "
            "another layer, or flatten/pool the feature in the model."
        )
    adapter.build(tuple(student_shape))
    return adapter
