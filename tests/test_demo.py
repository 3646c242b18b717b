"""`neuroseg demo` end to end at a small size with the shipped model (train is tested apart)."""

from __future__ import annotations

import pytest

from neuroseg import storage
from tests.conftest import FNC_ROOT

pytestmark = pytest.mark.slow


def test_demo_small(prefect_api, tmp_path, capsys):
    """With the real FNC yellow samples when ../shared has them, else synthetic only."""
    from flows.demo import DemoParams, demo

    real = FNC_ROOT / "yellow"
    has_real = (real / "images").is_dir()
    root = str(tmp_path / "root")
    params = DemoParams(
        root=root,
        plates=1,
        images_per_plate=2,
        train_images=4,
        train=False,
        height=480,
        width=640,
        real_images=str(real) if has_real else None,
    )
    out = demo(params)
    text = capsys.readouterr().out
    assert "[9/9] where to look" in text
    assert out["cells"] > 0
    nuclei = out["nuclei"]
    if nuclei is not None:  # the shipped nuclei model on real (or 12-bit synthetic) images
        assert nuclei["cells"] > 0
        assert len(storage.list_files(nuclei["labels"])) == nuclei["images"]
        from flows.demo import nuclei_source

        if nuclei_source(params):  # real images with labels/: scored against them
            assert 0.0 <= nuclei["f1_50"] <= 1.0 and "against the annotations" in text
    plates = {u.rsplit("/", 2)[-2] for u in storage.list_files(storage.join(root, "cells"))}
    if has_real:  # 2 synthetic uploads + 2 real images as plate REAL, scored against masks
        assert "on the 2 real image(s)" in text
        assert out["nightly"]["images"] == 4
        assert plates == {"plate_id=P001", "plate_id=REAL"}
    else:
        assert out["nightly"]["images"] == 2 and plates == {"plate_id=P001"}
