"""Multi-layer feature objectives: one term over several stages of each model.

Some methods compare more than one pair of layers inside a single loss:
ReviewKD fuses all the student's stages before comparing them with the
teacher's, FSP compares the flow between two layers of each model. Such an
objective subclasses :class:`StagesObjective`: it names ``teacher_layers``
and ``student_layers`` (lists) instead of one ``teacher_layer`` /
``student_layer``. It goes in ``Distiller.compile(feature_losses=[...])``
like any feature objective, is logged as one ``<name>_loss`` term, and is
saved and loaded with the Distiller (its constructor arguments in the
compile config, its layers' weights in the ``.keras`` file).

The Distiller taps every named layer once per step (the taps of all the
feature objectives share one forward pass of each model) and hands the
objective's :meth:`StagesObjective.compute` two lists, in the order of the
names; :meth:`StagesObjective.build_for` gets two lists of shapes.
"""

from keras_kd.objectives.base import Objective


def check_layer_names(arg, names):
    """``names`` as a list of non-empty strings, or a ValueError naming
    the fix."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or \
            not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"{arg} must be a non-empty list of layer names, got {names!r}. "
            "Use model.summary() to see the layer names.")
    return list(names)


class StagesObjective(Objective):
    """Base of feature objectives over several layers of each model.

    Subclasses implement ``build_for(teacher_shapes, student_shapes)`` (lists
    of shapes, batch axis included) and ``compute(teacher_features,
    student_features, training)`` (lists of tensors, in the order of
    ``teacher_layers`` / ``student_layers``), returning a ``(batch,)``
    per-sample loss or a scalar.

    Args:
        teacher_layers: names of the teacher layers, in order.
        student_layers: names of the student layers, in order.
        weight: the term's weight in the total loss.
        same_count: require as many student layers as teacher layers.

    Example:

    >>> from keras_kd.objectives.flow import FSP
    >>> fsp = FSP([("t_a", "t_b")], [("s_a", "s_b")])
    >>> fsp.teacher_layers, fsp.student_layers
    (['t_a', 't_b'], ['s_a', 's_b'])
    """

    kind = "features"

    def __init__(self, teacher_layers, student_layers, weight=1.0,
                 same_count=True, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.teacher_layers = check_layer_names("teacher_layers",
                                                teacher_layers)
        self.student_layers = check_layer_names("student_layers",
                                                student_layers)
        if same_count and len(self.teacher_layers) != len(
                self.student_layers):
            raise ValueError(
                f"{type(self).__name__} pairs the i-th teacher layer with the "
                f"i-th student layer; got {len(self.teacher_layers)} teacher "
                f"layers {self.teacher_layers} and "
                f"{len(self.student_layers)} student layers "
                f"{self.student_layers}. Give as many of each.")

    def get_config(self):
        config = super().get_config()
        config.update(teacher_layers=list(self.teacher_layers),
                      student_layers=list(self.student_layers))
        return config
