"""Training schemes with more than one student update: DML, BAN, TAKD.

* :class:`MutualLearning`: deep mutual learning, several students teaching
  each other in one ``fit`` (no fixed teacher).
* :func:`born_again`: generations of the same architecture, each student
  the next one's teacher.
* :func:`teacher_assistant_chain`: teacher → assistant(s) → student.

The chains are sequences of ordinary :class:`~keras_kd.Distiller` runs
(:func:`distill_chain`); any objective, feature losses or callbacks of a
single distillation work at each link.
"""

import keras
from keras import ops

from keras_kd.checks import check_number, check_temperature
from keras_kd.composition import LossTerms
from keras_kd.objectives.logits import kd_loss


class MutualLearning(keras.Model):
    """Deep mutual learning: students trained together, each by the others.

    Each student k minimises its own hard-label loss plus the mean KL from
    its peers' predictions to its own (Zhang et al., "Deep Mutual
    Learning", CVPR 2018, arXiv:1706.00384, eq. 10 for K students):

        L_k = CE(y, s_k) + w · 1/(K−1) Σ_{l≠k} T² · KL(p_l ‖ p_k),
        p = softmax(s / T)

    The peers' distributions are held constant (``stop_gradient``) in
    ``L_k``, so the gradient of ``Σ_k L_k`` w.r.t. student k's weights is
    the gradient of ``L_k`` alone: one ``fit`` step updates every student
    as the paper's simultaneous update does (the authors' code updates
    them in turn within a step, each seeing the others' updated
    predictions; the difference is one step of lag).

    ``fit`` logs ``loss`` (``Σ_k L_k``) and per student ``{name}_loss``,
    ``{name}_kl`` and, with labels, ``{name}_accuracy``. The students are
    ordinary models: save each one (``model.students[k].save(...)``).

    Args:
        students: two or more ``keras.Model`` with the same class count
            and distinct names.
        name: the model's name.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd.schemes import MutualLearning
    >>> def net(name):
    ...     return keras.Sequential([keras.Input((4,)),
    ...                              keras.layers.Dense(3)], name=name)
    >>> dml = MutualLearning([net("a"), net("b")])
    >>> dml.compile(optimizer="sgd", temperature=1.0)
    >>> x = np.ones((8, 4), "float32"); y = np.zeros(8, "int32")
    >>> logs = dml.fit(x, y, epochs=1, verbose=0).history
    >>> sorted(logs)[:3]
    ['a_accuracy', 'a_kl', 'a_loss']
    """

    def __init__(self, students, name="mutual_learning", **kwargs):
        super().__init__(name=name, **kwargs)
        students = list(students)
        if len(students) < 2 or not all(
                isinstance(s, keras.Model) for s in students):
            raise ValueError(
                "MutualLearning needs a list of two or more keras.Model "
                "students, e.g. MutualLearning([student_a, student_b]).")
        names = [s.name for s in students]
        if len(set(names)) != len(names):
            raise ValueError(
                f"The students need distinct names to be logged apart, got "
                f"{names}; pass name='...' when building each.")
        self.students = students
        self._terms = None
        self._accuracy = []
        self.temperature = 1.0
        self.kl_weight = 1.0
        self._hard = None

    def compile(self, optimizer="adam", loss=None, temperature=1.0,
                kl_weight=1.0, **kwargs):
        """Sets the optimizer, the hard-label loss and the mutual term.

        Args:
            optimizer: one optimizer for all the students' weights.
            loss: the hard-label loss of each student (default: sparse
                categorical cross-entropy from logits).
            temperature: ``T`` of the mutual KL (1 in the paper).
            kl_weight: ``w``, the weight of the mutual KL.
            **kwargs: passed to ``keras.Model.compile`` (not ``metrics``:
                each student's accuracy is logged).
        """
        if "metrics" in kwargs:
            raise ValueError(
                "MutualLearning logs each student's accuracy itself; drop "
                "metrics=... from compile().")
        self.temperature = check_temperature(temperature, strict=True)
        self.kl_weight = check_number("kl_weight", kl_weight,
                                      "the paper's value is kl_weight=1.0.")
        hard = keras.losses.get(loss) if loss is not None else \
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if not isinstance(hard, keras.losses.Loss):  # a name or a function
            hard = _mean_of(hard)
        self._hard = hard
        names = [s.name for s in self.students]
        self._terms = LossTerms(
            [f"{n}_{part}" for n in names for part in ("loss", "kl")],
            name="mutual_terms")
        self._accuracy = [keras.metrics.SparseCategoricalAccuracy(
            name=f"{n}_accuracy") for n in names]
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=None):
        """Every student's logits, in order."""
        return [s(inputs, training=training) for s in self.students]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        if self._hard is None:
            raise ValueError("Call compile() before fit().")
        if y is None:
            raise ValueError(
                "MutualLearning trains on labels: pass y to fit().")
        if y_pred is None:
            y_pred = self(x, training=training)
        T = self.temperature
        k = len(y_pred)
        frozen = [ops.stop_gradient(p) for p in y_pred]
        total = ops.zeros((), "float32")
        values = []
        for i, logits in enumerate(y_pred):
            hard = ops.cast(self._hard(y, logits, sample_weight), "float32")
            kl = sum(ops.mean(kd_loss(frozen[j], logits, T))
                     for j in range(k) if j != i) / (k - 1)
            own = hard + self.kl_weight * kl
            total = total + own
            values += [own, kl]
        size = ops.cast(ops.shape(y_pred[0])[0], "float32")
        self._terms.update_state(values, size)
        extra = sum(ops.cast(loss, "float32") for loss in self.losses)
        return total + extra

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if y is not None:
            for metric, logits in zip(self._accuracy, y_pred):
                metric.update_state(y, logits, sample_weight)
        return self.get_metrics_result()

    @property
    def metrics(self):
        """Keras's loss, the mutual terms and each student's accuracy."""
        own = ([self._terms] if self.__dict__.get("_terms") else []) + list(
            self.__dict__.get("_accuracy", []))
        return super().metrics + own


def _mean_of(loss_fn):
    """A per-sample loss function reduced as Keras's losses are: the mean
    of ``values · sample_weight`` over the batch."""
    def reduced(y_true, y_pred, sample_weight=None):
        values = ops.cast(loss_fn(y_true, y_pred), "float32")
        if sample_weight is not None:
            values = values * ops.cast(sample_weight, "float32")
        return ops.mean(values)
    return reduced


def _fresh_optimizer(optimizer):
    """A new optimizer per link: a string, a factory, or a copy of an
    instance's configuration (an optimizer's state belongs to one model)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer()
    return optimizer


def distill_chain(teacher, students, x=None, y=None, compile_options=None,
                  **fit_options):
    """Distills ``teacher`` into ``students[0]``, that into ``students[1]``...

    Each link is a fresh :class:`~keras_kd.Distiller` compiled with
    ``compile_options`` (a new optimizer per link: pass a name, a factory
    or an instance, whose configuration is copied) and fit on the same
    data with ``fit_options``. A student is frozen while it teaches the
    next one, then made trainable again.

    Args:
        teacher: the trained first teacher.
        students: the models to train, in order.
        x, y: the training data, as for ``fit``.
        compile_options: keyword arguments of ``Distiller.compile``.
        **fit_options: keyword arguments of ``Distiller.fit`` (epochs,
            batch_size, callbacks, validation_data...).

    Returns:
        ``(students, histories)``: the trained students and each link's
        ``History``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd.schemes import distill_chain
    >>> def net(name, width):
    ...     return keras.Sequential([keras.Input((4,)),
    ...         keras.layers.Dense(width, activation="relu"),
    ...         keras.layers.Dense(3)], name=name)
    >>> x = np.ones((8, 4), "float32"); y = np.zeros(8, "int32")
    >>> models, histories = distill_chain(
    ...     net("teacher", 16), [net("assistant", 8), net("student", 4)], x, y,
    ...     compile_options=dict(optimizer="sgd"), epochs=1, verbose=0)
    >>> [m.name for m in models], len(histories)
    (['assistant', 'student'], 2)
    """
    from keras_kd.distiller import Distiller

    students = list(students)
    if not students:
        raise ValueError("distill_chain needs at least one student.")
    options = dict(compile_options or {})
    options.setdefault("loss", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    optimizer = options.pop("optimizer", "adam")
    histories = []
    current = teacher
    for student in students:
        distiller = Distiller(teacher=current, student=student)
        distiller.compile(optimizer=_fresh_optimizer(optimizer), **options)
        histories.append(distiller.fit(x, y, **fit_options))
        if current is not teacher:
            current.trainable = True  # it taught; it is a student again
        current = student
    return students, histories


def born_again(teacher, generations=2, x=None, y=None, make_student=None,
               compile_options=None, **fit_options):
    """Born-again networks: each generation teaches the next.

    Generation 1 learns from ``teacher``, generation k from generation
    k − 1, each with the same architecture as the teacher and fresh
    weights (Furlanello et al., "Born Again Neural Networks", ICML 2018,
    arXiv:1805.04770). The paper trains each generation with the teacher's
    distribution alone (``compile_options=dict(alpha=0.0)``); averaging the
    generations' predictions (BANE) is left to the caller.
    With ``generations=1`` this is Tf-KD_self (Yuan et al., CVPR 2020).

    Args:
        teacher: the trained generation 0.
        generations: how many students to train in turn (>= 1).
        x, y: the training data, as for ``fit``.
        make_student: ``make_student(k)`` returns generation k's untrained
            model; by default ``keras.models.clone_model(teacher)`` (fresh
            weights, same layers) named ``{teacher.name}_gen{k}``.
        compile_options: keyword arguments of ``Distiller.compile``.
        **fit_options: keyword arguments of ``Distiller.fit``.

    Returns:
        ``(models, histories)``: each generation's trained model, in order,
        and each one's ``History``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd.schemes import born_again
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)],
    ...                            name="net")
    >>> x = np.ones((8, 4), "float32"); y = np.zeros(8, "int32")
    >>> models, _ = born_again(teacher, generations=2, x=x, y=y,
    ...                        compile_options=dict(optimizer="sgd"),
    ...                        epochs=1, verbose=0)
    >>> [m.name for m in models]
    ['net_gen1', 'net_gen2']
    """
    if not isinstance(generations, int) or isinstance(generations, bool) \
            or generations < 1:
        raise ValueError(f"generations must be an integer >= 1, got "
                         f"{generations!r}; the paper trains 2 to 5.")
    if make_student is None:
        def make_student(k):
            clone = keras.models.clone_model(teacher)
            # A teacher that a Distiller froze clones into frozen layers.
            for layer in [clone] + list(clone.layers):
                layer.trainable = True
            inputs, outputs = clone.inputs, clone.outputs
            return keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                               outputs[0] if len(outputs) == 1 else outputs,
                               name=f"{teacher.name}_gen{k}")
    students = [make_student(k) for k in range(1, generations + 1)]
    return distill_chain(teacher, students, x, y, compile_options,
                         **fit_options)


def teacher_assistant_chain(teacher, assistants, student, x=None, y=None,
                            compile_options=None, **fit_options):
    """Teacher-assistant KD: teacher → assistant(s) → student.

    Each assistant, of a size between the teacher's and the student's, is
    distilled from the previous model, and the student from the last
    assistant, which narrows the capacity gap at each link (Mirzadeh et
    al., "Improved Knowledge Distillation via Teacher Assistant", AAAI
    2020, arXiv:1902.03393; the paper uses plain KD at each link).

    Args:
        teacher: the trained teacher.
        assistants: one or more untrained intermediate models, largest first.
        student: the untrained student.
        x, y: the training data, as for ``fit``.
        compile_options: keyword arguments of ``Distiller.compile``.
        **fit_options: keyword arguments of ``Distiller.fit``.

    Returns:
        ``(models, histories)``: the trained assistants then the student,
        and each link's ``History``.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd.schemes import teacher_assistant_chain
    >>> def net(name, width):
    ...     return keras.Sequential([keras.Input((4,)),
    ...         keras.layers.Dense(width, activation="relu"),
    ...         keras.layers.Dense(3)], name=name)
    >>> x = np.ones((8, 4), "float32"); y = np.zeros(8, "int32")
    >>> models, _ = teacher_assistant_chain(
    ...     net("teacher", 16), [net("assistant", 8)], net("student", 4),
    ...     x, y, compile_options=dict(optimizer="sgd"), epochs=1, verbose=0)
    >>> models[-1].name
    'student'
    """
    assistants = list(assistants) if isinstance(assistants, (list, tuple)) \
        else [assistants]
    if not assistants:
        raise ValueError("teacher_assistant_chain needs at least one "
                         "assistant; with none, use a Distiller directly.")
    return distill_chain(teacher, assistants + [student], x, y,
                         compile_options, **fit_options)
