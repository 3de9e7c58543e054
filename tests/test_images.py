"""Image decoding and preprocessing, against plain NumPy computations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cam_infer import CamInferError, Preprocessing, load_image
from cam_infer.images import IMAGENET_MEAN, IMAGENET_STD, as_rgb_uint8
from conftest import SHARED, needs_shared


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


def test_a_non_square_center_crop_keeps_the_aspect_ratio():
    """A 48×192 input (PP-OCR's) from a square photo: the image is enlarged until the crop fits, not stretched
    along one axis, so a 20-px square stays square (19.2 px both ways) and the mapping back agrees."""
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[90:110, 90:110] = 255
    prep = Preprocessing(input_size=(48, 192), crop="center")
    out = prep.geometry(rgb)[..., 0] > 127
    rows, cols = np.nonzero(out)
    assert out.shape == (48, 192)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1 and 18 <= cols.max() - cols.min() <= 20
    saliency = np.zeros((48, 192), np.float32)
    saliency[out] = 1.0
    back, seen = prep.to_image(saliency, rgb.shape[:2])
    assert not seen[0].any() and seen[100].all() and 49 <= seen[:, 100].sum() <= 51     # the middle 50 rows, all wide
    assert back[100, 100] > 0.9 and back[100, 60] < 0.1


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


@pytest.mark.parametrize("reopened", ["I;16", "I"])
def test_a_16_bit_pil_image_is_the_16_bit_file_not_a_white_picture(tmp_path, reopened):
    """PIL opens a 16-bit grayscale PNG as mode I;16 (older Pillows as I), and its convert('RGB') clips every value
    above 255 to white: given as a PIL image, the photo was explained as a white picture. Now it is the same
    pixels as the file's path gives."""
    from PIL import Image
    gray = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 257)
    image = Image.open(tmp_path / "deep.png")
    image = image if reopened == "I;16" else image.convert("I")
    assert image.mode == reopened
    np.testing.assert_array_equal(as_rgb_uint8(image), load_image(tmp_path / "deep.png"))
    np.testing.assert_array_equal(as_rgb_uint8(image)[..., 0], gray)


@pytest.mark.parametrize("mode", ["P", "RGB"])
def test_a_pil_image_with_a_transparent_colour_is_its_files_picture(tmp_path, mode):
    """A PNG with a transparent colour (tRNS: a palette entry, or one RGB value) is composited over black
    when its path is given; given as the PIL image Image.open returns, its transparency was dropped (the colour
    shown instead): the same file, two pictures explained. Now both are the file's."""
    from PIL import Image
    rgb = np.full((6, 8, 3), 200, np.uint8)
    rgb[:3] = 40
    image = Image.fromarray(rgb).convert(mode)
    transparent = image.getpixel((0, 0))
    image.save(tmp_path / "cutout.png", transparency=transparent)
    opened = Image.open(tmp_path / "cutout.png")
    assert "transparency" in opened.info
    expected = load_image(tmp_path / "cutout.png")
    assert expected[0, 0].tolist() == [0, 0, 0] and expected[5, 7].tolist() != [0, 0, 0]
    np.testing.assert_array_equal(as_rgb_uint8(opened), expected)


@pytest.mark.parametrize("mode, premultiplied", [("LA", "La"), ("RGBA", "RGBa")])
def test_a_premultiplied_pil_image_is_its_files_picture(tmp_path, mode, premultiplied):
    """PIL's premultiplied modes: an La image was refused with PIL's raw 'conversion from La to L not supported',
    an RGBa one lost its transparency (PIL's convert undoes the premultiplication). Both are now the picture
    composited over black, as the file's path gives it."""
    from PIL import Image
    pixels = np.random.default_rng(0).integers(0, 256, (8, 6, len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(tmp_path / "cutout.png")
    image = Image.open(tmp_path / "cutout.png").convert(premultiplied)
    np.testing.assert_array_equal(as_rgb_uint8(image), load_image(tmp_path / "cutout.png"))


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


@pytest.mark.parametrize("kind, missing", [(".jpg", 2), (".jpg", 0.5), (".png", 12), (".png", 0.01)])
def test_a_truncated_jpeg_or_png_is_refused_as_truncated(tmp_path, kind, missing):
    """A file cut short (its closing marker alone, or part of its picture): viewers show it, the missing part
    filled in; OpenCV decodes neither. The error says the file is truncated, not that it is no image."""
    from cam_infer.errors import UnreadableImage

    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = cv2.imencode(kind, rgb)[1].tobytes()
    cut = missing if isinstance(missing, int) else int(len(data) * missing)
    (tmp_path / f"whole{kind}").write_bytes(data)
    (tmp_path / f"cut{kind}").write_bytes(data[:-cut])
    assert load_image(tmp_path / f"whole{kind}").shape == (40, 30, 3)
    name = {".jpg": "JPEG: its data end before its end-of-image marker",
            ".png": "PNG: its data end before its IEND chunk"}[kind]
    with pytest.raises(UnreadableImage, match=rf"^'.*cut{kind}' is a truncated {name} \(a copy or download"):
        load_image(tmp_path / f"cut{kind}")


def test_a_png_declaring_more_pixels_than_opencv_decodes_is_an_unreadable_image(tmp_path):
    """A 100-byte PNG whose header says 60000x60000: OpenCV raises rather than return None."""
    import struct
    import zlib

    from cam_infer.errors import UnreadableImage

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(UnreadableImage, match="declares more pixels than OpenCV decodes"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("values", [[0.0, 255.0], [-0.5, 0.5], [0.0, np.nan], [0.0, np.inf]])
def test_a_float_image_outside_0_1_is_refused_not_clipped_to_white(values):
    image = np.full((4, 4, 3), values[0], np.float32)
    image[0, 0] = values[1]
    with pytest.raises(CamInferError, match=r"a float image must hold values in \[0, 1\]"):
        as_rgb_uint8(image)
    assert as_rgb_uint8(np.full((4, 4, 3), 0.5, np.float32))[0, 0, 0] == 128


def test_a_16_bit_mask_keeps_its_low_labels(tmp_path):
    """Read as an image, a 16-bit label 1 became 0 (÷257); a mask keeps every nonzero pixel."""
    from cam_infer.images import load_mask
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:9], labels[10:12, 10:20] = 1, 300
    cv2.imwrite(str(tmp_path / "m.png"), labels)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), labels > 0)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255                                  # opaque everywhere: the colour is the mask
    rgba[5, 7, 1] = 1
    cv2.imwrite(str(tmp_path / "c.png"), rgba)
    assert np.flatnonzero(load_mask(tmp_path / "c.png")).tolist() == [5 * 30 + 7]
    white = np.full((20, 30, 4), 255, np.uint8)
    white[..., 3] = 0
    white[2:4, 3:6, 3] = 255                            # white on transparent: the opaque shape
    cv2.imwrite(str(tmp_path / "w.png"), white)
    np.testing.assert_array_equal(load_mask(tmp_path / "w.png"), white[..., 3] > 0)


@pytest.mark.parametrize("fields, message", [({"crop": "left"}, "crop must be"), ({"color": "hsv"}, "color must be"),
                                             ({"std": (1, 0, 1)}, "non-zero"), ({"resize": 10}, "smaller than the input size")])
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
    got = prep.standardise(rgb)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (prep.channels, 16, 16)
    np.testing.assert_array_equal(got, _normalised(pixels, prep.scale, prep.mean, prep.std))
    if prep.channels == 3:                            # (a float image's gray is not rounded to uint8)
        np.testing.assert_array_equal(prep.standardise(rgb.astype(np.float32)), got)    # the float path
    into = np.full((2, prep.channels, 16, 16), np.nan, np.float32)
    assert np.shares_memory(prep.standardise(rgb, into[1]), into)                     # into a batch's row
    np.testing.assert_array_equal(into[1], got)
    assert np.isnan(into[0]).all()


# --- the resize filter (`interpolation`), against PIL's own Image.resize --------------------------------

PHOTOS = ("samoyed_dog.jpg", "parrot.jpg", "darknet_dog.jpg", "chelsea.png")
SIZES = ((256, 200), (331, 260), (224, 224), (500, 413))           # (width, height): shrinking and enlarging


def _pil_resized(rgb, size, resample):
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).resize(size, resample)).astype(int)


@needs_shared
@pytest.mark.parametrize("photo", PHOTOS)
def test_antialias_and_nearest_are_pils_bilinear_and_nearest(photo):
    """PIL rounds each of its two passes to uint8, in an order it picks; we round once. A triangle's weights
    are positive and sum to 1, so its pixels are within 0.5 + 0.5 of ours: one grey level at most."""
    from PIL import Image

    from cam_infer.images import resize
    rgb = load_image(SHARED / "images" / photo)
    for width, height in SIZES:
        ours = resize(rgb, width, height, "antialias").astype(int)
        theirs = _pil_resized(rgb, (width, height), Image.BILINEAR)
        assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 0.2
        assert np.array_equal(resize(rgb, width, height, "nearest"), _pil_resized(rgb, (width, height), Image.NEAREST))
    area = resize(rgb, *SIZES[0], "area").astype(int)                  # the old filter is not PIL's
    assert np.abs(area - _pil_resized(rgb, SIZES[0], Image.BILINEAR)).max() > 1


@needs_shared
@pytest.mark.parametrize("photo", PHOTOS)
def test_bicubic_is_pils_bicubic(photo):
    """The cubic's negative lobes overshoot: PIL clips the overshoot after its first pass, which may be the
    other axis than ours, so a few pixels next to saturated edges differ more than one grey level."""
    from PIL import Image

    from cam_infer.images import resize
    rgb = load_image(SHARED / "images" / photo)
    for width, height in SIZES:
        difference = np.abs(resize(rgb, width, height, "bicubic").astype(int)
                            - _pil_resized(rgb, (width, height), Image.BICUBIC))
        assert np.mean(difference > 1) < 1e-3 and np.mean(difference > 0) < 0.25


def test_bilinear_is_opencvs_and_area_keeps_the_old_rule():
    rgb = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    from cam_infer.images import resize
    assert np.array_equal(resize(rgb, 50, 40, "bilinear"), cv2.resize(rgb, (50, 40), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize(rgb, 50, 40, "area"), cv2.resize(rgb, (50, 40), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize(rgb, 150, 140, "area"), cv2.resize(rgb, (150, 140), interpolation=cv2.INTER_LINEAR))


def test_preprocessing_without_interpolation_reads_as_before():
    """A manifest written before the field: area for a crop (shrinking), bilinear for a letterbox."""
    old = Preprocessing((224, 224)).to_dict()
    del old["interpolation"]
    assert Preprocessing.from_dict(old).interpolation == "area"
    assert Preprocessing((64, 64), crop="letterbox").interpolation == "bilinear"
    recorded = Preprocessing((224, 224), interpolation="antialias").to_dict()
    assert Preprocessing.from_dict(recorded).interpolation == "antialias"
    with pytest.raises(CamInferError, match="interpolation must be one of"):
        Preprocessing((224, 224), interpolation="lanczos")


@needs_shared
def test_antialias_gives_the_torchvision_pipelines_samoyed_probability():
    """The deployment: PIL resize of the shorter side to 256 (bilinear), centre crop 224, ImageNet
    normalisation. Area interpolation moved the Samoyed's probability from 0.772 to 0.695."""
    import onnxruntime as ort
    from PIL import Image
    session = ort.InferenceSession(str(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"),
                                   providers=["CPUExecutionProvider"])

    def samoyed(x):
        logits = session.run(None, {session.get_inputs()[0].name: x[None]})[0][0].astype(np.float64)
        return float(np.exp(logits[258] - logits.max()) / np.exp(logits - logits.max()).sum())

    photo = SHARED / "images" / "samoyed_dog.jpg"
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    image = np.asarray(image.resize((round(256 * w / h), 256) if w > h else (256, round(256 * h / w)),
                                    Image.BILINEAR))
    top, left = round((image.shape[0] - 224) / 2), round((image.shape[1] - 224) / 2)
    crop = image[top:top + 224, left:left + 224].astype(np.float32) / 255
    torchvision = samoyed(((crop - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1).copy())
    antialias = samoyed(Preprocessing((224, 224), interpolation="antialias")(photo))
    area = samoyed(Preprocessing((224, 224))(photo))
    assert abs(antialias - torchvision) < 0.005 < 0.05 < abs(area - torchvision), (antialias, torchvision, area)


def test_split_records_the_interpolation_and_info_shows_it(tmp_path, tiny_onnx_path):
    from helpers import run_cli

    from cam_infer import Bundle
    result = run_cli("split", tiny_onnx_path, "--out", tmp_path / "b", "--interpolation", "antialias")
    assert result.returncode == 0, result.stderr
    assert Bundle.load(tmp_path / "b").preprocessing.interpolation == "antialias"
    info = run_cli("info", tmp_path / "b")
    assert "(antialias)" in info.stdout, info.stdout


def _with_orientation(jpeg: bytes, orientation: int, order: str = "big") -> bytes:
    """`jpeg` with an APP1 Exif segment whose IFD0 holds only the orientation tag (0x0112, SHORT)."""
    mark = b"MM" if order == "big" else b"II"
    value = orientation.to_bytes(2, order) + b"\0\0"
    tiff = mark + (42).to_bytes(2, order) + (8).to_bytes(4, order) + (1).to_bytes(2, order) + \
        (0x0112).to_bytes(2, order) + (3).to_bytes(2, order) + (1).to_bytes(4, order) + value + (0).to_bytes(4, order)
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_turned_upright_as_its_exif_orientation_says(tmp_path, orientation, order):
    """A phone photo (EXIF orientation 6: taken with the phone upright) was explained on its side: decoding keeps
    alpha and 16 bits (IMREAD_UNCHANGED), which skips the orientation. Now every orientation, in both byte orders,
    gives what OpenCV's own imread (which applies it) gives."""
    rgb = np.zeros((40, 64, 3), np.uint8)
    rgb[:10, :20] = (255, 0, 0)                         # a red corner, so that every turn and flip shows
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1])
    path = tmp_path / "phone.jpg"
    path.write_bytes(_with_orientation(encoded.tobytes(), orientation, order))
    expected = cv2.imread(str(path))[..., ::-1]
    got = load_image(path)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert got.shape[:2] == ((64, 40) if orientation >= 5 else (40, 64))


def _png_with_orientation(png: bytes, orientation: int, after_data: bool) -> bytes:
    """`png` with an ``eXIf`` chunk (IFD0 holding only the orientation tag) after IHDR or before IEND."""
    import zlib
    tiff = _with_orientation(b"\xff\xd8", orientation)[12:]             # the TIFF block of the JPEG helper
    chunk = len(tiff).to_bytes(4, "big") + b"eXIf" + tiff + zlib.crc32(b"eXIf" + tiff).to_bytes(4, "big")
    at = png.rfind(b"IEND") - 4 if after_data else 8 + 25
    return png[:at] + chunk + png[at:]


def _webp_with_orientation(webp: bytes, orientation: int) -> bytes:
    """A lossy `webp` (one VP8 chunk) as an extended WebP (VP8X with the EXIF flag) with an ``EXIF`` chunk."""
    tiff = _with_orientation(b"\xff\xd8", orientation)[12:]
    image = webp[12:]
    width = int.from_bytes(image[8 + 6:8 + 8], "little") & 0x3FFF     # VP8 key frame: the size after the start code
    height = int.from_bytes(image[8 + 8:8 + 10], "little") & 0x3FFF
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + bytes([0x08, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    exif = b"EXIF" + len(tiff).to_bytes(4, "little") + tiff + (b"\0" if len(tiff) % 2 else b"")
    body = b"WEBP" + vp8x + image + exif
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("kind", ["png", "png after the data", "webp"])
def test_a_png_or_webp_is_turned_upright_as_its_exif_orientation_says(tmp_path, orientation, kind):
    """Only a JPEG's orientation was read: a PNG (eXIf chunk) or WebP (EXIF chunk) taken on its side was explained
    on its side, while OpenCV's imread and viewers show it upright (detector boxes then in the wrong frame). Now
    both give what imread gives."""
    rgb = np.zeros((40, 64, 3), np.uint8)
    rgb[:10, :20] = (255, 0, 0)
    if kind.startswith("png"):
        data = _png_with_orientation(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes(), orientation,
                                     kind.endswith("data"))
    else:
        webp = cv2.imencode(".webp", rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 100])[1].tobytes()
        data = _webp_with_orientation(webp, orientation)
    path = tmp_path / f"phone.{kind[:4].strip()}"
    path.write_bytes(data)
    expected = cv2.imread(str(path))[..., ::-1]
    got = load_image(path)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert got.shape[:2] == ((64, 40) if orientation >= 5 else (40, 64))
