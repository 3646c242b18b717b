"""Plate summaries per well: known answers for counts, density, sizes, flags and markers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroseg.quality import plate_flags
from neuroseg.summary import marker_calls, otsu_threshold, plate_summary, well_id


@pytest.mark.parametrize(
    ("image_id", "well"),
    [
        ("IXMtest_A06_s6_w1B9577918", "A06"),
        ("plate1-B12-f03", "B12"),
        ("x_h7", "H07"),
        ("P001_0", ""),  # a plate id is no well
        ("RT359S3C1R1_r1", ""),
    ],
)
def test_well_id(image_id, well):
    assert well_id(image_id) == well


def test_well_pattern_is_configurable():
    assert well_id("run3_well-C4_t0", r"well-(?P<well>[A-H]\d+)") == "C04"


def _plate():
    """Five 100x100 images of 2 µm pixels (0.04 mm² each) in wells A01 and B02, one without a
    pixel size; B02's second image is out of focus (left out), one image is empty."""
    images = pd.DataFrame(
        {
            "plate_id": "P",
            "image_id": ["p_A01_1", "p_A01_2", "p_B02_1", "p_B02_2", "p_B02_3"],
            "height": 100,
            "width": 100,
            "pixel_size_um": [2.0, 2.0, 2.0, 2.0, np.nan],
            "cells": [2, 1, 0, 4, 1],
            "focus_score": [1.0, 1.0, 1.0, 0.1, 1.0],
            "saturated_fraction": 0.0,
            "empty": [False, False, True, False, False],
        }
    )
    cells = pd.DataFrame(
        {
            "image_id": ["p_A01_1"] * 2 + ["p_A01_2"] + ["p_B02_2"] * 4 + ["p_B02_3"],
            "area_px": [10, 30, 20, 5, 5, 5, 5, 40],
            "area_um2": [40.0, 120.0, 80.0, 20, 20, 20, 20, np.nan],
            "mean_intensity_neun": [50.0, 500, 900, 1, 1, 1, 1, 700],
            "mean_intensity_c_fos": [10.0, 12, 200, 0, 0, 0, 0, 210],
        }
    )
    return cells, plate_flags(images)


def test_plate_summary_known_answers():
    cells, images = _plate()
    df = plate_summary(cells, images, markers={"neun": 400, "c_fos": "otsu"}).set_index("well")
    assert list(df.index) == ["A01", "B02", "all"]
    a, b, whole = df.loc["A01"], df.loc["B02"], df.loc["all"]
    assert (a["images"], a["images_flagged"], a["cells"]) == (2, 0, 3)
    assert a["imaged_area_mm2"] == pytest.approx(0.08) and a["cells_per_mm2"] == pytest.approx(37.5)
    assert a["median_area_px"] == 20 and a["median_area_um2"] == 80
    # B02: the out-of-focus image's 4 cells are left out and counted beside; the empty image
    # counts (0 cells on 0.04 mm²); the image of unknown size adds cells but no area
    assert (b["images"], b["images_flagged"], b["cells"]) == (3, 1, 1)
    assert b["cells_in_flagged_images"] == 4
    assert b["imaged_area_mm2"] == pytest.approx(0.04) and b["cells_per_mm2"] == 0
    assert b["median_area_um2"] != b["median_area_um2"]  # NaN: its one cell has no µm
    assert whole["cells"] == 4 and whole["cells_per_mm2"] == pytest.approx(3 / 0.12)
    # neun > 400: 500, 900, 700 of the 4 unflagged cells; c_fos by Otsu over 10, 12, 200, 210
    assert whole["threshold_neun"] == 400 and whole["positive_neun"] == 3
    assert whole["fraction_positive_neun"] == pytest.approx(0.75)
    assert whole["threshold_c_fos"] == 106 and whole["fraction_positive_c_fos"] == 0.5
    assert a["fraction_positive_c_fos"] == pytest.approx(1 / 3)


def test_marker_calls_missing_channel_and_bad_rules():
    cells = pd.DataFrame({"mean_intensity_a": [1.0, 5.0]})
    calls, thresholds = marker_calls(cells, {"a": 2, "b": "otsu"})
    assert calls["positive_a"].tolist() == [False, True]
    assert calls["positive_b"].tolist() == [False, False] and thresholds["b"] is None
    with pytest.raises(ValueError, match="number or 'otsu'"):
        marker_calls(cells, {"a": "mean"})


def test_otsu_threshold_exact():
    assert otsu_threshold(np.array([10, 12, 200, 210.0])) == 106  # between 12 and 200
    # two clusters of different sizes: the split between them, whatever the gap's position
    values = np.r_[np.full(90, 5.0), np.full(10, 7.0), np.full(30, 100.0)]
    assert otsu_threshold(values) == 53.5
    assert otsu_threshold(np.array([3.0, 3.0])) is None
    assert otsu_threshold(np.array([], float)) is None


def test_marker_options_of_the_command_line():
    from neuroseg.cli import _markers

    assert _markers(["neun=800", "c_fos=otsu"]) == {"neun": 800.0, "c_fos": "otsu"}
    with pytest.raises(ValueError, match="CHANNEL=THRESHOLD"):
        _markers(["neun"])
    with pytest.raises(ValueError, match="number or 'otsu'"):
        _markers(["neun=bright"])
