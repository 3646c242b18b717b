"""Deterministic splits by name."""

from __future__ import annotations

import pytest

from neuroseg.prepare import split_images
from neuroseg.splits import split_names


def test_split_is_deterministic_disjoint_and_complete():
    names = [f"img_{i:03d}.png" for i in range(150)]
    s = split_names(names, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [106, 22, 22]
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(names)
    assert s == split_names(list(reversed(names)), seed=0)  # input order does not matter
    assert s != split_names(names, seed=1)
    assert all(s[k] == sorted(s[k]) for k in s)


def test_split_reproduces_prepare_split_images():
    names = [f"n{i}" for i in range(37)]
    for seed in (0, 7):
        assert split_names(names, seed=seed) == split_images(names, seed=seed)


def test_small_and_zero_fractions():
    assert split_names(["a", "b"]) == {"train": ["a", "b"], "val": [], "test": []}
    s = split_names("abcd", fractions=(0.9, 0.05, 0.05))
    assert len(s["val"]) == len(s["test"]) == 1
    assert split_names("abcd", fractions=(1.0, 0.0, 0.0))["train"] == list("abcd")


def test_split_validates():
    with pytest.raises(ValueError, match="empty"):
        split_names([])
    with pytest.raises(ValueError, match="distinct"):
        split_names(["a", "b", "a"])
    with pytest.raises(ValueError, match="fractions"):
        split_names(["a"], fractions=(0.5, 0.6, 0.6))


def test_prepare_split_fractions_enter_the_version_only_when_changed():
    from flows.prepare import PrepareParams
    from neuroseg.prepare import SPLIT_FRACTIONS, prepared_version

    recs = [{"image_id": f"i{k}", "sha256": f"h{k}", "mask_sha256": f"m{k}"} for k in range(5)]
    plain = prepared_version(recs, tile=128, min_overlap=32, seed=0)
    same = prepared_version(recs, tile=128, min_overlap=32, seed=0, fractions=SPLIT_FRACTIONS)
    every = prepared_version(recs, tile=128, min_overlap=32, seed=0, fractions=(1.0, 0.0, 0.0))
    assert plain == same != every
    ids = [r["image_id"] for r in recs]
    assert split_images(ids, seed=0, fractions=(1.0, 0.0, 0.0))["train"] == ids
    assert PrepareParams(val_fraction=0, test_fraction=0).fractions() == (1.0, 0.0, 0.0)
    assert PrepareParams().fractions() == SPLIT_FRACTIONS
    with pytest.raises(ValueError, match="exceeds 1"):
        PrepareParams(val_fraction=0.6, test_fraction=0.5)
