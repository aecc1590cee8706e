"""SearchResult: what :func:`keras_kd.search` found, as a table, as
``Distiller.compile`` arguments and as ``keras-kd run`` options."""

import dataclasses
import math
import warnings

__all__ = ["SearchResult", "rank_rows"]


def rank_rows(rows, direction):
    """The rows of a search best first by ``"score"`` (``direction``
    ``"max"`` or ``"min"``); a NaN or infinite score (a diverged trial) is
    ranked last, with a ``RuntimeWarning`` naming its setting.

    >>> rows = [{"setting": "a", "score": 0.5}, {"setting": "b", "score": 0.7}]
    >>> [r["setting"] for r in rank_rows(rows, "max")]
    ['b', 'a']
    """
    sign = -1.0 if direction == "max" else 1.0
    bad = [row["setting"] for row in rows if not math.isfinite(row["score"])]
    if bad:
        warnings.warn(
            f"the score of {bad} is NaN or infinite (the trial diverged, or "
            "the validation data gave NaN): it is ranked last. Lower "
            "learning_rate or check the data.", RuntimeWarning, stacklevel=3)
    return sorted(rows, key=lambda r: (
        not math.isfinite(r["score"]),
        sign * r["score"] if math.isfinite(r["score"]) else 0.0))


@dataclasses.dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        best: the best row's settings: ``{"objective", "temperature",
            "alpha", "features"}``; ``objective`` is ``None`` when the student
            alone won (then distillation did not pay on this validation set).
        best_score: the best row's validation score.
        ranking: one dict per trial, best first: the settings, ``"score"``
            (the best epoch's value of ``metric``, keras-tuner's convention),
            ``"setting"`` (a readable label) and ``"trial"`` (keras-tuner's
            trial id). The student alone is one of the rows.
        baseline_score: the student alone's score.
        student: the best row's student, with the weights of its best epoch.
        metric: the name of the score, e.g. ``"val_accuracy"``.
        direction: ``"max"`` or ``"min"``.
        validation_examples: the number of validation examples the scores
            were measured on (None when it could not be counted).
        feature_objective: the class that built the feature losses (what
            :meth:`compile_kwargs` uses for a feature pair).

    Each ranking row of an accuracy metric also holds ``"interval"``: the 95%
    Wilson interval ``[low, high]`` of that trial's accuracy on the
    ``validation_examples`` examples (:func:`wilson_interval`): the
    uncertainty of one trial's measurement on a finite validation set, not a
    spread over seeds. Rows whose intervals overlap are not told apart by
    this validation set. It is None for other metrics or an unknown count.
    """

    best: dict
    best_score: float
    ranking: list
    baseline_score: float
    student: object
    metric: str
    direction: str
    validation_examples: int = None
    feature_objective: object = None

    def table(self):
        """The ranking as a Markdown table (rank, setting, score, its 95%
        interval, gain).

        The gain is the score minus the student alone's; the interval is the
        row's ``"interval"`` (— when there is none).
        """
        n = self.validation_examples
        lines = [f"| rank | setting | {self.metric} | 95% interval"
                 + (f" (n={n})" if n else "") + " | vs student alone |",
                 "|---:|---|---:|---|---:|"]
        for rank, row in enumerate(self.ranking, 1):
            gain = row["score"] - self.baseline_score
            gain = "—" if row["objective"] is None else f"{gain:+.4f}"
            interval = row.get("interval")
            interval = ("—" if interval is None
                        else f"[{interval[0]:.4f}, {interval[1]:.4f}]")
            lines.append(f"| {rank} | {row['setting']} | {row['score']:.4f} "
                         f"| {interval} | {gain} |")
        return "\n".join(lines)

    def compile_kwargs(self):
        """The best setting as keyword arguments of
        :meth:`keras_kd.Distiller.compile`.

        ``alpha``, ``temperature``, ``distillation_loss`` and
        ``feature_losses`` (a new ``feature_objective(teacher_layer,
        student_layer)`` when the best row used a feature pair, else ``[]``);
        add the optimizer, loss and metrics. ``"hard"`` ignores the
        temperature (1.0 is given). When the student alone won, they train it
        alone: ``alpha=1.0`` (the hard-label loss only; the distillation
        loss, ``"kd"`` at T=1, gets weight 0), as the search's baseline did.

        >>> result = SearchResult(
        ...     best=dict(objective="dist", temperature=1.0, alpha=0.1,
        ...               features=None), best_score=0.9, ranking=[],
        ...     baseline_score=0.8, student=None, metric="val_accuracy",
        ...     direction="max")
        >>> result.compile_kwargs()
        {'alpha': 0.1, 'temperature': 1.0, 'distillation_loss': 'dist', 'feature_losses': []}
        """
        best = self.best
        if best["objective"] is None:
            return dict(alpha=1.0, temperature=1.0, distillation_loss="kd",
                        feature_losses=[])
        features = []
        if best.get("features"):
            make = self.feature_objective
            if make is None:
                from keras_kd.objectives import FitNet as make
            features = [make(*best["features"])]
        return dict(alpha=float(best["alpha"]),
                    temperature=float(best["temperature"] or 1.0),
                    distillation_loss=best["objective"],
                    feature_losses=features)

    def run_args(self):
        """The best setting as ``keras-kd run`` options: ``["--objective",
        NAME, "--alpha", A, "--temperature", T]``, the values of
        :meth:`compile_kwargs` (the student alone: ``--alpha 1``, whose
        distilled student is trained on the labels alone).

        Add the dataset, models and sizes the search used.

        Raises:
            ValueError: the best setting has a feature loss, which
                ``keras-kd run`` does not offer; use :meth:`compile_kwargs`
                with a :class:`keras_kd.Distiller` instead.
        """
        if self.best["objective"] is not None and self.best.get("features"):
            raise ValueError(
                "the best setting adds a feature loss ("
                + "->".join(self.best["features"]) + "), which keras-kd run "
                "does not offer (it distils logits only); train it in Python: "
                "distiller.compile(..., **result.compile_kwargs()).")
        kwargs = self.compile_kwargs()
        return ["--objective", kwargs["distillation_loss"],
                "--alpha", f"{kwargs['alpha']:.10g}",
                "--temperature", f"{kwargs['temperature']:.10g}"]

    def to_dict(self):
        """A JSON-ready dict (everything but the student and the feature
        objective); ``run_args`` is :meth:`run_args` (None when the best
        setting has a feature loss)."""
        try:
            run_args = self.run_args()
        except ValueError:
            run_args = None
        return dict(metric=self.metric, direction=self.direction,
                    best=self.best, best_score=self.best_score,
                    baseline_score=self.baseline_score,
                    validation_examples=self.validation_examples,
                    run_args=run_args, ranking=self.ranking)
