"""Deterministic train / validation / test splits by image (light).

One rule for every place that splits a dataset (training, tuning the classical baseline,
evaluation), so that a validation image never leaks into training: the names are sorted, shuffled
with a seeded :func:`numpy.random.default_rng` permutation, the first ``round(n * test)`` go to
test, the next ``round(n * val)`` to validation and the rest to training. With at least 3 names,
validation and test get one name each at least unless their fraction is 0. It reproduces
``neuroseg.prepare.split_images`` exactly for the same names, seed and (non-zero) fractions.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import numpy as np

__all__ = ["SPLIT_NAMES", "split_names"]

SPLIT_NAMES = ("train", "val", "test")


def split_names(
    names: Iterable[str],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict[str, list[str]]:
    """Split names (image ids, file names) into ``train``, ``val`` and ``test``.

    Parameters
    ----------
    names : iterable of str
        Distinct names; their order does not matter.
    seed : int
        Seed of the shuffle; the same names and seed always give the same split.
    fractions : (float, float, float)
        Train, validation and test fractions (they need not sum to 1: validation and test are
        ``round(n * fraction)`` and train is the rest).

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.

    Raises
    ------
    ValueError
        No names, duplicate names, or fractions not three numbers in 0..1.
    """
    ids = sorted(str(n) for n in names)
    if not ids:
        raise ValueError("cannot split an empty list of names")
    if len(set(ids)) != len(ids):
        dup = next(a for a, b in pairwise(ids) if a == b)
        raise ValueError(f"names must be distinct; {dup!r} appears more than once")
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or not all(0.0 <= f <= 1.0 for f in fr) or fr[1] + fr[2] > 1.0:
        raise ValueError(f"fractions must be (train, val, test) in 0..1, got {fractions!r}")
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    n_test, n_val = (max(1, round(n * f)) if n >= 3 and f > 0 else 0 for f in (fr[2], fr[1]))
    test, val = shuffled[:n_test], shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
