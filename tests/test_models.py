"""The seed's shallow CNN and the small U-Net: shapes, parameter counts, precision policy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from neuroseg.models import build_model, output_size

# The seed notebook's model.summary() at tile 400.
SEED_SUMMARY = [
    ("Rescaling", (None, 400, 400, 3), 0),
    ("Conv2D", (None, 198, 198, 196), 14_896),
    ("MaxPooling2D", (None, 99, 99, 196), 0),
    ("Conv2D", (None, 95, 95, 256), 1_254_656),
    ("MaxPooling2D", (None, 47, 47, 256), 0),
    ("Conv2D", (None, 45, 45, 512), 1_180_160),
    ("Conv2D", (None, 45, 45, 512), 262_656),
    ("Conv2DTranspose", (None, 50, 50, 1), 18_433),
]


def test_shallow_is_the_seeds_network():
    model = build_model("shallow")
    got = [
        (type(layer).__name__, layer.output.shape, layer.count_params()) for layer in model.layers
    ]
    assert got == [(name, tuple(shape), n) for name, shape, n in SEED_SUMMARY]
    assert model.count_params() == 2_730_801
    assert output_size(model) == 50
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_shallow_small_tile_and_width_scaling():
    model = build_model("shallow", tile=64, width=8)
    y = model(np.zeros((2, 64, 64, 3), np.float32))
    assert tuple(y.shape) == (2, 8, 8, 1) and output_size(model) == 8
    convs = [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == [8, 10, 21, 21]  # the seed's 196:256:512:512 proportions


def test_unet_is_small_full_resolution_and_fully_convolutional():
    model = build_model("unet")
    assert model.count_params() < 500_000
    assert output_size(model, tile=400) == 400
    for side in (32, 48):
        y = model(np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)).astype("f4"))
        assert tuple(y.shape) == (1, side, side, 1)
        assert 0.0 <= float(np.min(y)) and float(np.max(y)) <= 1.0
    plain = build_model("unet", width=4, depth=2, batch_norm=False)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    assert plain.count_params() < build_model("unet", width=4, depth=2).count_params()


def test_models_rescale_raw_pixels_inside():
    for name in ("shallow", "unet"):
        model = build_model(name, tile=64, width=4, depth=2)
        assert isinstance(model.layers[1 if name == "unet" else 0], keras.layers.Rescaling)
        assert model.get_layer("rescale").scale == pytest.approx(1 / 255)


def test_mixed_precision_computes_in_bfloat16_with_float32_output():
    model = build_model("unet", width=4, depth=2, mixed_precision=True)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.get_layer("prob").compute_dtype == "float32"
    y = model(np.zeros((1, 32, 32, 3), np.float32))
    assert str(y.dtype) == "<dtype: 'float32'>"
    shallow = build_model("shallow", tile=64, width=4, mixed_precision=True)
    assert shallow.layers[1].compute_dtype == "bfloat16"
    assert shallow.layers[-1].compute_dtype == "float32"


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="too small"):
        build_model("shallow", tile=30)
    with pytest.raises(ValueError, match="divisible"):
        build_model("unet", tile=100, depth=3)
    with pytest.raises(ValueError, match="pass tile"):
        output_size(build_model("unet", width=2, depth=1))


def test_three_class_head_is_a_float32_softmax_even_in_bfloat16():
    binary = build_model("unet", width=4, depth=2)
    for mixed in (False, True):
        model = build_model("unet", width=4, depth=2, head="three_class", mixed_precision=mixed)
        assert model.name == "unet" and model.get_layer("prob").compute_dtype == "float32"
        assert model.count_params() == binary.count_params() + 2 * (4 + 1)  # 2 more 1x1 filters
        x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("f4")
        y = np.asarray(model(x))
        assert y.shape == (2, 32, 32, 3) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)
    shallow = build_model("shallow", tile=64, width=8, head="three_class")
    assert tuple(shallow(np.zeros((1, 64, 64, 3), "f4")).shape) == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="unknown head"):
        build_model("unet", head="distance")


def test_centre_head_adds_a_sigmoid_channel_beside_the_softmax():
    three = build_model("unet", width=4, depth=2, head="three_class")
    for mixed in (False, True):
        model = build_model(
            "unet", width=4, depth=2, head="three_class", centre=True, mixed_precision=mixed
        )
        assert model.count_params() == three.count_params() + 4 + 1  # one more 1x1 filter
        assert model.get_layer("prob").compute_dtype == "float32"
        x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("f4")
        y = np.asarray(model(x))
        assert y.shape == (2, 32, 32, 4) and y.dtype == np.float32
        np.testing.assert_allclose(y[..., :3].sum(axis=-1), 1.0, atol=1e-5)
        assert 0.0 < y[..., 3].min() and y[..., 3].max() < 1.0
    for kw in ({"head": "binary"}, {"head": "three_class", "name": "shallow", "tile": 64}):
        with pytest.raises(ValueError, match="centre needs"):
            build_model(kw.pop("name", "unet"), centre=True, **kw)


def _as_trained(model, rng):
    """The model with BatchNorm statistics as after training, not the defaults."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                 rng.uniform(0.2, 3, n)]
            )  # fmt: skip
    return model


def test_folding_batch_norm_keeps_the_outputs():
    from neuroseg.models import fold_batch_norm

    rng = np.random.default_rng(4)
    for head, centre in (("binary", False), ("three_class", False), ("three_class", True)):
        model = _as_trained(build_model("unet", width=4, depth=2, head=head, centre=centre), rng)
        folded = fold_batch_norm(model)
        assert folded.name == "unet" and folded.output_shape == model.output_shape
        assert not any(isinstance(la, keras.layers.BatchNormalization) for la in folded.layers)
        x = rng.uniform(0, 255, (2, 32, 48, 3)).astype("f4")
        np.testing.assert_allclose(
            np.asarray(folded(x)), np.asarray(model(x, training=False)), atol=2e-5
        )
    with pytest.raises(ValueError, match="only the unet"):
        fold_batch_norm(build_model("shallow", tile=64, width=4))


def test_space_to_depth_and_back_are_the_known_rearrangement():
    import tensorflow as tf

    from neuroseg.models import DepthToSpace, SpaceToDepth

    x = np.arange(2 * 4 * 6 * 3, dtype="f4").reshape(2, 4, 6, 3)
    s = np.asarray(SpaceToDepth(2)(x))
    assert s.shape == (2, 2, 3, 12)
    # position (0, 1) holds the 2x2 block at rows 0-1, columns 2-3: row-major pixels, RGB each
    block = np.concatenate([x[0, 0, 2], x[0, 0, 3], x[0, 1, 2], x[0, 1, 3]])
    np.testing.assert_array_equal(s[0, 0, 1], block)
    np.testing.assert_array_equal(s, tf.nn.space_to_depth(x, 2).numpy())
    np.testing.assert_array_equal(np.asarray(DepthToSpace(2)(s)), x)
    assert SpaceToDepth(2).compute_output_shape((None, None, 8, 3)) == (None, None, 4, 12)
    assert DepthToSpace(2).compute_output_shape((None, 4, None, 12)) == (None, 8, None, 3)


def test_space_to_depth_unet_keeps_the_input_size_and_halves_the_activations():
    from neuroseg.models import stride

    rng = np.random.default_rng(5)
    for head, centre, channels in (("binary", False, 1), ("three_class", True, 4)):
        model = build_model("unet", width=4, depth=2, head=head, centre=centre, space_to_depth=True)
        x = rng.uniform(0, 255, (2, 16, 24, 3)).astype("f4")
        y = np.asarray(model(x, training=False))
        assert y.shape == (2, 16, 24, channels) and y.dtype == np.float32
        if head == "three_class":
            np.testing.assert_allclose(y[..., :3].sum(axis=-1), 1.0, atol=1e-5)
        # the first convolution already works on 2x2 blocks: half the rows of the input
        first = model.get_layer("down0_conv1")
        assert first.input.shape[-1] == 12 and first.output.shape[-1] == 4
        assert model.compute_output_shape((1, 16, 16, 3))[1] == 16
    assert stride(2) == 4 and stride(2, True) == 8
    with pytest.raises(ValueError, match=r"2\*\*\(depth \+ 1\).* = 8"):
        build_model("unet", tile=36, width=4, depth=2, space_to_depth=True)  # 36 = 4 * 9
    with pytest.raises(ValueError, match="space_to_depth needs"):
        build_model("shallow", tile=64, space_to_depth=True)


def test_space_to_depth_unet_folds_saves_and_loads(tmp_path):
    from neuroseg.models import fold_batch_norm

    rng = np.random.default_rng(6)
    model = build_model("unet", width=4, depth=2, head="three_class", space_to_depth=True)
    model = _as_trained(model, rng)
    x = rng.uniform(0, 255, (1, 16, 32, 3)).astype("f4")
    want = np.asarray(model(x, training=False))
    folded = fold_batch_norm(model)
    assert any(la.name == "space_to_depth" for la in folded.layers)
    np.testing.assert_allclose(np.asarray(folded(x)), want, atol=2e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_array_equal(np.asarray(keras.saving.load_model(path)(x)), want)


def test_model_cards_name_the_stem():
    from neuroseg.models import describe_unet

    assert describe_unet({"width": 8, "depth": 4}) == "U-Net, width 8, depth 4"
    stem = describe_unet({"width": 16, "depth": 3, "space_to_depth": True})
    assert stem.startswith("U-Net, width 16, depth 3, space-to-depth stem")
