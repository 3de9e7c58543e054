"""Image decoding and preprocessing, against plain NumPy computations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cam_infer import CamInferError, Preprocessing, load_image
from cam_infer.images import as_rgb_uint8


def test_default_is_torchvision_imagenet_convention():
    prep = Preprocessing(input_size=(224, 224))
    assert prep.resize == 256 and prep.crop == "center" and prep.color == "rgb"
    assert prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)
    assert Preprocessing(input_size=(192, 192)).resize == 219


def test_normalisation_matches_numpy_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    prep = Preprocessing(input_size=(8, 8), crop="none", mean=(10, 20, 30), std=(2, 4, 8), scale=1.0, color="bgr")
    expected = (rgb[..., ::-1].astype(np.float32) - [10, 20, 30]) / [2, 4, 8]
    np.testing.assert_allclose(prep(rgb), expected.transpose(2, 0, 1), rtol=1e-6)


def test_center_crop_keeps_the_middle_of_a_wide_image():
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, 100:200] = 255                                     # a white band in the middle third
    out = Preprocessing(input_size=(50, 50), resize=50, crop="center").geometry(rgb)
    assert out.shape == (50, 50, 3) and out.min() == 255


@pytest.mark.parametrize("make, name", [
    (lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "gray.png"),
    (lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]), "alpha.png"),
    (lambda rgb: rgb[..., ::-1].astype(np.uint16) * 257, "deep.png"),
])
def test_grayscale_alpha_and_16_bit_images_are_converted(tmp_path, make, name):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / name), make(rgb))
    image = load_image(tmp_path / name)
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    if name != "gray.png":
        np.testing.assert_array_equal(image, rgb)


def test_transparent_pixels_become_black():
    rgba = np.full((2, 2, 4), 200, np.uint8)
    rgba[..., 3] = [[0, 255], [255, 255]]
    rgb = as_rgb_uint8(rgba)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [200, 200, 200]


def test_unreadable_images_are_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for path in ("notes.jpg", "empty.png"):
        with pytest.raises(CamInferError, match="not a readable image"):
            load_image(tmp_path / path)
    with pytest.raises(CamInferError, match="does not exist"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("fields, message", [({"crop": "left"}, "crop must be"), ({"color": "hsv"}, "color must be"),
                                             ({"std": (1, 0, 1)}, "non-zero"), ({"resize": 10}, "crop would not fit")])
def test_bad_preprocessing_options_are_errors(fields, message):
    with pytest.raises(CamInferError, match=message):
        Preprocessing(input_size=(32, 32), **fields)


@pytest.mark.parametrize("options", [{}, {"color": "bgr"}, {"channels": 1}, {"mean": (0.5,) * 3, "std": (0.5,) * 3}])
def test_uint8_pixels_are_normalised_through_a_table_to_the_same_floats(options):
    from cam_infer.images import _normalised
    prep = Preprocessing((16, 16), **options)
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    pixels = rgb[..., ::-1] if prep.color == "bgr" else rgb
    if prep.channels == 1:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    got = prep.normalise(rgb)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (prep.channels, 16, 16)
    np.testing.assert_array_equal(got, _normalised(pixels, prep.scale, prep.mean, prep.std))
    if prep.channels == 3:                            # (a float image's gray is not rounded to uint8)
        np.testing.assert_array_equal(prep.normalise(rgb.astype(np.float32)), got)    # the float path
    into = np.full((2, prep.channels, 16, 16), np.nan, np.float32)
    assert np.shares_memory(prep.normalise(rgb, into[1]), into)                     # into a batch's row
    np.testing.assert_array_equal(into[1], got)
    assert np.isnan(into[0]).all()
