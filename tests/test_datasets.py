"""neuroseg.datasets: FNC layout discovery, COCO polygons and RLE, binary masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroseg import storage
from neuroseg.datasets import (
    Sample,
    coco_instance_masks,
    decode_rle,
    find_fnc_samples,
    fnc_shared_root,
    instances_to_binary,
    rle_counts_from_string,
)
from neuroseg.images import encode_png, read_image, read_mask

# --------------------------------------------------------------------------------------------
# FNC layout
# --------------------------------------------------------------------------------------------

_PNG = encode_png(np.zeros((4, 5), dtype=np.uint8))


def _make_layout(root: str) -> None:
    for key in (
        "images/b.tif",
        "images/a.png",
        "images/c.PNG",
        "images/notes.txt",
        "images/sub/deep.png",
        "masks/a.png",
        "masks/b.png",  # same stem, other suffix
        "masks/z.png",  # a mask without an image: ignored
        "masks/c.txt",
    ):
        storage.write_bytes(storage.join(root, *key.split("/")), _PNG)


def _check_layout(root: str) -> None:
    samples = find_fnc_samples(root)
    j = storage.join
    assert samples == [
        Sample("a", j(root, "images", "a.png"), j(root, "masks", "a.png")),
        Sample("b", j(root, "images", "b.tif"), j(root, "masks", "b.png")),
        Sample("c", j(root, "images", "c.PNG"), None),
    ]


def test_find_fnc_samples_local(tmp_path):
    _make_layout(str(tmp_path / "ds"))
    _check_layout(str(tmp_path / "ds"))


def test_find_fnc_samples_s3(s3_bucket):
    root = s3_bucket + "/datasets/fnc"
    _make_layout(root)
    _check_layout(root)


def test_exact_mask_name_wins_over_same_stem(tmp_path):
    root = str(tmp_path)
    for key in ("images/a.tif", "masks/a.tif", "masks/a.png"):
        storage.write_bytes(storage.join(root, *key.split("/")), _PNG)
    [sample] = find_fnc_samples(root)
    assert sample.mask_uri == storage.join(root, "masks", "a.tif")


def test_missing_images_folder_gives_empty_list(tmp_path):
    assert find_fnc_samples(str(tmp_path)) == []


def test_ambiguous_image_ids_raise(tmp_path):
    root = str(tmp_path)
    for key in ("images/a.png", "images/a.tif"):
        storage.write_bytes(storage.join(root, *key.split("/")), _PNG)
    with pytest.raises(ValueError, match="ambiguous"):
        find_fnc_samples(root)


def test_several_masks_of_one_stem_raise(tmp_path):
    root = str(tmp_path)
    for key in ("images/a.png", "masks/a.tif", "masks/a.tiff"):
        storage.write_bytes(storage.join(root, *key.split("/")), _PNG)
    with pytest.raises(ValueError, match=r"a\.png: several masks"):
        find_fnc_samples(root)


@pytest.mark.fnc
def test_real_fnc_samples(fnc_root):
    assert fnc_shared_root() == fnc_root
    yellow = find_fnc_samples(fnc_root / "yellow")
    assert [s.name for s in yellow] == ["Mar23bS1C2R3_VLPAGr_200x", "Mar24bS1C2R3_LHl_200x"]
    red = find_fnc_samples(str(fnc_root / "red"))
    assert len(red) == 4
    for s in yellow + red:
        assert s.mask_uri is not None
    mask = read_mask(yellow[0].mask_uri)
    image = read_image(yellow[0].image_uri)
    assert mask.shape == image.shape[:2] == (1200, 1600)
    assert set(np.unique(mask)) <= {0, 255}


# --------------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------------


def _encode_counts(counts: list[int]) -> str:
    """pycocotools' rleToString, transcribed for the round-trip test (not used by the code)."""
    out = []
    for i, cnt in enumerate(counts):
        x = cnt - counts[i - 2] if i > 2 else cnt
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_compressed_rle_hand_encoded():
    # 10 -> ':' ; 40 -> 'X1' (8 | more, then 1) ; 35 -> 'S1' ; 15 is stored as 15 - 40 = -25
    # -> 'W' (7 | more) then 'O' (31, sign bit set): -25 + 40 = 15.
    assert rle_counts_from_string(":X1S1WO") == [10, 40, 35, 15]
    assert rle_counts_from_string(b"3250") == [3, 2, 5, 2]
    assert rle_counts_from_string("") == []


def test_rle_decodes_column_major():
    # 10x10: column 0 empty, columns 1-4 full, columns 5-7 and rows 0-4 of column 8 empty,
    # rows 5-9 of column 8 and column 9 full.
    expected = np.zeros((10, 10), dtype=bool)
    expected[:, 1:5] = True
    expected[5:, 8] = True
    expected[:, 9] = True
    got = decode_rle({"size": [10, 10], "counts": ":X1S1WO"})
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(decode_rle({"size": [10, 10], "counts": [10, 40, 35, 15]}), got)
    # non-square: h=4, w=3, counts [3, 2, 5, 2] -> (row 3, col 0), (row 0, col 1), (2..3, col 2)
    small = decode_rle({"size": [4, 3], "counts": "3250"})
    want = np.zeros((4, 3), dtype=bool)
    want[3, 0] = want[0, 1] = True
    want[2:, 2] = True
    np.testing.assert_array_equal(small, want)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
)
def test_rle_round_trip_random_masks(h, w, seed, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    flat = np.concatenate([[False], mask.T.ravel(), [not mask.T.ravel()[-1]]])
    change = np.flatnonzero(flat[1:] != flat[:-1])
    counts = np.diff(np.concatenate([[0], change])).tolist()
    assert sum(counts) == h * w
    assert rle_counts_from_string(_encode_counts(counts)) == counts
    got = decode_rle({"size": [h, w], "counts": _encode_counts(counts)})
    np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize(
    ("rle", "word"),
    [
        ({"size": [2, 2], "counts": [1, 2]}, "sum to 3"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, "non-negative"),
        ({"size": [2, 2], "counts": "X"}, "ends in the middle"),
        ({"size": [2, 2], "counts": "1\x7f"}, "invalid character"),
        ({"size": [2, 2], "counts": "12M"}, "negative count"),
        ({"counts": [4]}, "'size' and 'counts'"),
        ({"size": "2x2", "counts": [4]}, "height, width"),
    ],
)
def test_bad_rle_raises(rle, word):
    with pytest.raises(ValueError, match=word):
        decode_rle(rle)


# --------------------------------------------------------------------------------------------
# COCO instance masks
# --------------------------------------------------------------------------------------------


def _coco() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "a.tif", "height": 5, "width": 6},
            {"id": 9, "file_name": "b.tif", "height": 10, "width": 10},
        ],
        "annotations": [
            # square x 1..4, y 1..3: pixel centres (c + 0.5, r + 0.5) inside are rows 1-2,
            # columns 1-3 (pycocotools gives the same)
            {
                "id": 1,
                "image_id": 7,
                "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]],
                "bbox": [1, 1, 3, 2],
                "area": 6,
                "iscrowd": 0,
            },
            # a crowd region: not an instance
            {
                "id": 2,
                "image_id": 7,
                "segmentation": {"size": [5, 6], "counts": [0, 30]},
                "iscrowd": 1,
            },
            # uncompressed RLE, overlapping the square at (row 2, col 3): later wins
            {
                "id": 3,
                "image_id": 7,
                "segmentation": {"size": [5, 6], "counts": [17, 2, 11]},
                "iscrowd": 0,
            },
            {
                "id": 4,
                "image_id": 9,
                "segmentation": {"size": [10, 10], "counts": ":X1S1WO"},
                "iscrowd": 0,
            },
            # triangle x, y >= 1, x + y <= 6.2, painted over the RLE instance
            {
                "id": 5,
                "image_id": 9,
                "segmentation": [[1, 1, 5.2, 1, 1, 5.2]],
                "iscrowd": 0,
            },
        ],
    }


def _expected() -> dict[str, np.ndarray]:
    a = np.zeros((5, 6), dtype=np.int32)
    a[1:3, 1:4] = 1
    a[2:4, 3] = 2  # flat indices 17, 18 column-major: (2, 3), (3, 3)
    b = np.zeros((10, 10), dtype=np.int32)
    b[:, 1:5] = 1
    b[5:, 8] = 1
    b[:, 9] = 1
    tri = np.zeros((10, 10), dtype=bool)  # centres: row, col >= 0.5 and row + col <= 5.2
    for r in range(1, 5):
        tri[r, 1 : 6 - r] = True
    b[tri] = 2
    return {"a.tif": a, "b.tif": b}


def test_coco_instance_masks_known_answer():
    got = coco_instance_masks(_coco())
    want = _expected()
    assert list(got) == ["a.tif", "b.tif"]
    for name in want:
        assert got[name].dtype == np.int32 and got[name].flags.c_contiguous
        np.testing.assert_array_equal(got[name], want[name])


def test_coco_from_uri_and_name_filter(tmp_path, s3_bucket):
    local = tmp_path / "annotations.json"
    local.write_text(json.dumps(_coco()))
    remote = s3_bucket + "/datasets/live/annotations.json"
    storage.write_json(remote, _coco())
    for uri in (str(local), remote):
        got = coco_instance_masks(uri, image_names=["b.tif"])
        assert list(got) == ["b.tif"]
        np.testing.assert_array_equal(got["b.tif"], _expected()["b.tif"])


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (lambda c: c.pop("annotations"), "'images' and 'annotations'"),
        (lambda c: c["images"].append(dict(c["images"][0], id=99)), "appears twice"),
        (lambda c: c["annotations"].append({"image_id": 42, "segmentation": []}), "42"),
        (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3]]), "odd number"),
        (lambda c: c["annotations"][0].update(segmentation="x"), "polygons or an RLE"),
        (
            lambda c: c["annotations"][2].update(segmentation={"size": [6, 5], "counts": [30]}),
            r"a\.tif: RLE size 6x5",
        ),
        (lambda c: c["images"][0].pop("height"), "height"),
    ],
)
def test_bad_coco_raises(change, word):
    coco = _coco()
    change(coco)
    with pytest.raises(ValueError, match=word):
        coco_instance_masks(coco)


def test_unknown_image_name_raises():
    with pytest.raises(ValueError, match=r"not in 'images': nope\.tif"):
        coco_instance_masks(_coco(), image_names=["a.tif", "nope.tif"])


def test_instances_to_binary():
    inst = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.int32)
    out = instances_to_binary(inst)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 255, 255], [255, 255, 0]])
    np.testing.assert_array_equal(
        instances_to_binary(_expected()["a.tif"]) > 0, _expected()["a.tif"] > 0
    )
    with pytest.raises(ValueError, match="2-D integer"):
        instances_to_binary(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D integer"):
        instances_to_binary(np.zeros((2, 2, 2), dtype=np.int32))


def test_agrees_with_pycocotools_where_installed():
    """Cross-check with the reference implementation (not a dependency; skipped without it)."""
    cm = pytest.importorskip("pycocotools.mask")
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = ndi.gaussian_filter(rng.random((h, w)), 2) > 0.5
        rle = cm.encode(np.asfortranarray(m.astype(np.uint8)))
        got = decode_rle({"size": rle["size"], "counts": rle["counts"].decode()})
        np.testing.assert_array_equal(got, m)
    ious = []
    for _ in range(50):
        ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
        rad = rng.uniform(8, 25, 7)
        poly = np.stack([35 + rad * np.cos(ang), 30 + rad * np.sin(ang)], 1).ravel().tolist()
        ref = cm.decode(cm.frPyObjects([poly], 60, 70))[..., 0] > 0
        coco = {
            "images": [{"id": 1, "file_name": "p", "height": 60, "width": 70}],
            "annotations": [{"image_id": 1, "segmentation": [poly]}],
        }
        got = coco_instance_masks(coco)["p"] > 0
        ious.append((got & ref).sum() / (got | ref).sum())
    assert np.median(ious) > 0.95
