"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

The distribution sampled from (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", for top-p; Fan et al. 2018 for top-k):

* ``p_i ∝ exp(z_i / T)`` for temperature ``T > 0``;
* top-k: only the ``k`` largest ``p_i`` are kept (ties at the k-th value
  broken by the lower id);
* top-p (nucleus): of the tokens sorted by decreasing ``p_i``, the shortest
  prefix whose mass reaches ``top_p`` is kept (the first token always);
* what is kept is renormalised. ``T = 0`` is greedy: ``argmax_i z_i``.

A draw is ``u ~ U[0, 1)`` from ``numpy.random.default_rng(seed)``; the token
is the first whose cumulative probability (in id order) exceeds ``u``, so
one seed gives one sequence of tokens.
"""

import numpy as np


def check_options(temperature, top_k, top_p):
    """Refuses bad sampling options, naming the fix.

    >>> check_options(0.0, 5, None)
    Traceback (most recent call last):
    ...
    ValueError: top_k and top_p restrict sampling, which needs temperature > 0 (temperature=0 is greedy): pass e.g. temperature=1.0.
    """
    if isinstance(temperature, bool) or not isinstance(
            temperature, (int, float, np.floating, np.integer)) or not (
            np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 is greedy), "
                         f"got {temperature!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(
            top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}.")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(
            top_p, (int, float, np.floating)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}.")
    if temperature == 0 and (top_k is not None or top_p is not None):
        raise ValueError(
            "top_k and top_p restrict sampling, which needs temperature > 0 "
            "(temperature=0 is greedy): pass e.g. temperature=1.0.")


def probabilities(logits, temperature=1.0, top_k=None, top_p=None):
    """The float64 distribution a token is drawn from (see the module).

    >>> np.round(probabilities([0.0, np.log(3.0), -9.0], top_k=2), 3)
    array([0.25, 0.75, 0.  ])
    >>> probabilities([0.0, np.log(3.0), -9.0], top_p=0.7).tolist()
    [0.0, 1.0, 0.0]
    """
    check_options(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature=0 is greedy (no distribution); pass "
                         "temperature > 0.")
    z = np.asarray(logits, "float64").reshape(-1) / float(temperature)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.ones(p.size, bool)
    if top_k is not None:
        keep[order[top_k:]] = False
    if top_p is not None:
        sorted_p = np.where(keep[order], p[order], 0.0)
        before = np.cumsum(sorted_p) - sorted_p  # mass of better tokens
        keep[order[before >= top_p * sorted_p.sum()]] = False
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def choose(logits, rng, temperature=0.0, top_k=None, top_p=None):
    """The next token id: ``argmax`` for ``temperature=0``, else one draw
    from :func:`probabilities` with ``rng`` (a ``numpy.random.Generator``).

    >>> choose([0.1, 2.0, 0.3], None)
    1
    >>> rng = np.random.default_rng(0)
    >>> [choose([0.0, 0.0, 0.0], rng, temperature=1.0) for _ in range(4)]
    [1, 0, 0, 0]
    """
    if temperature == 0:
        check_options(temperature, top_k, top_p)
        return int(np.argmax(logits))
    p = probabilities(logits, temperature, top_k, top_p)
    index = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
    return min(index, int(np.flatnonzero(p)[-1]))
