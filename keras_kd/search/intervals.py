"""How far a measured accuracy, or a difference of two, may sit from the
truth: the intervals of the search's ranking and of the report."""

import math

import numpy as np

__all__ = ["Z_95", "wilson_interval", "paired_difference_interval"]

# The 97.5% quantile of the standard normal: a two-sided 95% interval.
Z_95 = 1.959963984540054


def wilson_interval(successes, n, z=Z_95):
    """The Wilson score interval of a binomial proportion (95% by default).

    The interval of one trial's accuracy measured on ``n`` examples, of
    which ``successes`` are right: how far that accuracy may sit from the
    model's accuracy on the distribution the ``n`` examples are drawn from.
    It is not an interval over seeds or over retraining (each trial of
    :func:`search` trains once), and the score it is computed for is the best
    epoch's, picked on the same examples, so it is, if anything, optimistic.

    With ``p = successes / n``::

        centre = (p + z² / 2n) / (1 + z² / n)
        half   = z / (1 + z² / n) · sqrt(p (1 - p) / n + z² / 4n²)

    Args:
        successes: the number of correct examples, 0 <= successes <= n
            (NumPy arrays work element-wise).
        n: the number of examples, >= 1.
        z: the normal quantile; the default gives a two-sided 95% interval.

    Returns:
        ``(low, high)``, floats (arrays for array input) in [0, 1].

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``[0, n]``.

    >>> [round(v, 4) for v in wilson_interval(90, 100)]
    [0.8256, 0.9448]
    """
    successes = np.asarray(successes, dtype="float64")
    n = np.asarray(n, dtype="float64")
    if np.any(n < 1) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(
            f"wilson_interval needs n >= 1 examples and 0 <= successes <= n, "
            f"got successes={successes.tolist()!r}, n={n.tolist()!r}; pass "
            "counts, e.g. wilson_interval(90, 100).")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = np.clip(centre - half, 0.0, 1.0)
    high = np.clip(centre + half, 0.0, 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def paired_difference_interval(correct_a, correct_b, z=Z_95):
    """The difference of two models' accuracies on the same examples, with
    its 95% interval (Newcombe's hybrid score interval for paired data).

    When two models are scored on the same test set, their accuracies are
    paired proportions: the examples both get right, or both get wrong, say
    nothing about the difference, and two Wilson intervals that overlap do
    not show that the difference could be 0. This interval uses the pairing.
    It is an interval over test examples, for the two trained models: not
    over seeds or retraining.

    With ``n`` examples, ``a`` right for both models, ``b`` right for model A
    only, ``c`` right for model B only and ``d`` wrong for both, the
    accuracies are ``p1 = (a + b) / n`` and ``p2 = (a + c) / n`` and the
    difference is ``D = p1 - p2 = (b - c) / n``. With ``(l1, u1)`` and
    ``(l2, u2)`` the Wilson intervals of ``p1`` and ``p2``
    (:func:`wilson_interval`) and ``phi`` the correlation of the two
    models' correctness, corrected as Newcombe does (``A = ad - bc``;
    ``phi = (A - n/2) / sqrt((a+b)(c+d)(a+c)(b+d))`` when ``A > n/2``,
    ``0`` when ``0 <= A <= n/2``, ``A / sqrt(...)`` when ``A < 0``; ``0``
    when a margin is empty)::

        low  = D - sqrt((p1 - l1)² + (u2 - p2)² - 2 phi (p1 - l1)(u2 - p2))
        high = D + sqrt((p2 - l2)² + (u1 - p1)² - 2 phi (p2 - l2)(u1 - p1))

    This is method 10 of R. G. Newcombe, "Improved confidence intervals for
    the difference between binomial proportions based on paired data",
    Statistics in Medicine 17 (1998) 2635-2650, in the form of M. W.
    Fagerland, S. Lydersen and P. Laake, "Recommended tests and confidence
    intervals for paired binomial proportions", Statistics in Medicine 33
    (2014) 2850-2875 (their "Newcombe square-and-add" interval, which they
    recommend; it stays inside [-1, 1] and behaves at 0 or n discordant
    examples, where the Wald interval does not). On their example (Cavo et
    al., 2012: ``a, b, c, d = 59, 6, 16, 80``) it gives -0.0621, 95% CI
    -0.1186 to -0.0046.

    Args:
        correct_a: per-example correctness of model A (booleans or 0/1),
            e.g. ``argmax(logits_a, -1) == labels``.
        correct_b: the same for model B, on the same examples in the same
            order.
        z: the normal quantile; the default gives a two-sided 95% interval.

    Returns:
        ``(difference, low, high)``: accuracy of A minus accuracy of B and
        its interval, floats in [-1, 1]. The difference is beyond the
        interval's noise when ``low > 0`` (A better) or ``high < 0``.

    Raises:
        ValueError: the two arrays differ in length, are empty or hold
            values other than 0 and 1.

    >>> correct_a = [True] * 65 + [False] * 96     # Cavo et al.'s table:
    >>> correct_b = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    >>> [round(v, 4) for v in paired_difference_interval(correct_a, correct_b)]
    [-0.0621, -0.1186, -0.0046]
    """
    a_right = np.asarray(correct_a).reshape(-1)
    b_right = np.asarray(correct_b).reshape(-1)
    if (a_right.shape != b_right.shape or a_right.size == 0 or not all(
            np.isin(v, (0, 1)).all() for v in (a_right, b_right))):
        raise ValueError(
            "paired_difference_interval needs two equally long, non-empty "
            "arrays of per-example correctness (True/False or 1/0), got "
            f"shapes {a_right.shape} and {b_right.shape}; pass e.g. "
            "argmax(logits, -1) == labels for each model.")
    a_right, b_right = a_right.astype(bool), b_right.astype(bool)
    n = a_right.size
    both = int(np.sum(a_right & b_right))
    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = float(both + only_a) * (only_b + neither) * \
        (both + only_b) * (only_a + neither)
    cross = float(both) * neither - float(only_a) * only_b
    if margins == 0.0 or 0.0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    difference = p1 - p2
    low = difference - math.sqrt(max(
        (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0))
    high = difference + math.sqrt(max(
        (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0))
    return float(difference), max(low, -1.0), min(high, 1.0)
