"""Pictures a person looks at: maps put back on the original image, Explanation.save/plot, several classes
per image, captions and colour bars, the demo's labelled grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED, needs_shared
from cam_infer import CamInferError, Explainer, Preprocessing
from cam_infer.postprocess import caption, overlay, overlay_picture, with_colour_bar


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (224, 224), (100, 500)])
def test_to_image_undoes_resize_and_crop(shape):
    """A map that is 1 on the model's whole view marks exactly the part of the original the crop kept; a
    map's pixel goes back where `geometry` took it from."""
    prep = Preprocessing((224, 224))
    h0, w0 = shape
    back, seen = prep.to_image(np.ones((224, 224), np.float32), shape)
    assert back.shape == seen.shape == shape
    # the crop keeps a centred square of side min(h0, w0)·224/256 of the original
    side = min(h0, w0) * 224 / 256
    rows, cols = np.nonzero(seen)
    assert abs((rows.max() - rows.min() + 1) - min(h0, side)) <= 2
    assert abs((cols.max() - cols.min() + 1) - min(w0, side)) <= 2
    assert abs((rows.min() + rows.max()) / 2 - (h0 - 1) / 2) <= 1.5
    assert abs((cols.min() + cols.max()) / 2 - (w0 - 1) / 2) <= 1.5
    assert np.all(back[~seen] == 0) and back[seen].min() > 0.99
    # a marker drawn on the original lands, through geometry, where to_image puts the map's peak
    image = np.zeros((h0, w0, 3), np.uint8)
    y, x = int(h0 * 0.45), int(w0 * 0.55)
    cv2.circle(image, (x, y), 3, (255, 255, 255), -1)
    view = prep.geometry(image)[..., 0].astype(np.float32)
    peak_back, _ = prep.to_image(view / view.max(), shape)
    py, px = np.unravel_index(np.argmax(peak_back), shape)
    assert abs(py - y) <= 3 and abs(px - x) <= 3


def test_to_image_without_crop_is_a_plain_resize():
    prep = Preprocessing((64, 96), crop="none")
    saliency = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    back, seen = prep.to_image(saliency, (128, 192))
    assert seen.all()
    np.testing.assert_allclose(back, np.clip(cv2.resize(saliency, (192, 128), interpolation=cv2.INTER_LINEAR), 0, 1))
    with pytest.raises(CamInferError, match="64x96"):
        prep.to_image(saliency[:10], (128, 192))


def test_overlay_picture_captions_and_colour_bar():
    rgb = np.full((100, 150, 3), 90, np.uint8)
    saliency = np.zeros((100, 150), np.float32)
    plain = overlay(rgb, saliency)
    picture = overlay_picture(saliency, rgb, None, caption("recipro", "tabby", 281, 0.873))
    assert picture.shape[0] > 100 and picture.shape[1] > 150
    strip = picture[:picture.shape[0] - 100]
    assert (strip < 128).any() and (strip == 255).mean() > 0.5              # dark text on a white strip
    body = picture[-100:, :150]
    np.testing.assert_array_equal(body, plain)
    bar = with_colour_bar(plain)[:, 150 + 3]                                 # the bar's first column, top to bottom
    assert tuple(bar[0]) != tuple(bar[-1])
    jet = cv2.cvtColor(cv2.applyColorMap(np.array([[255], [0]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(bar[[0, -1]], jet[:, 0])                  # 1 at the top, 0 at the bottom
    assert caption("recipro", "tabby", 281, 0.873) == "recipro: tabby (281) p=0.87"
    assert caption("eigen", None, 3, 0.5, True) == "eigen: class 3 p=0.50 [constant map]"


def test_original_overlay_greys_what_the_model_did_not_see():
    prep = Preprocessing((64, 64))
    rgb = np.full((64, 160, 3), 200, np.uint8)                              # wide: the crop drops the sides
    picture = overlay_picture(np.ones((64, 64), np.float32), rgb, prep, None, bar=False)
    assert picture.shape == (64, 160, 3)
    _, seen = prep.to_image(np.ones((64, 64), np.float32), (64, 160))
    assert (picture[~seen] == picture[~seen][0]).all()                      # grey, no heat
    assert not (picture[seen] == picture[~seen][0]).all(axis=-1).any()


@pytest.mark.parametrize("crop", ["center", "letterbox"])
@pytest.mark.parametrize("shape", [(224, 1), (1, 500), (1, 2), (2, 1)])
def test_a_one_pixel_thin_image_shows_the_pixel_the_model_saw(shape, crop):
    """Resized so that its short side is 256, a 1-pixel-thin image becomes one stretched pixel: no pixel centre
    lands inside the crop, and the pixel that covers the input's centre is what the model saw (not an empty
    window, which OpenCV could not blend). A letterbox keeps at least one pixel of each side."""
    prep = Preprocessing((224, 224), crop=crop)
    rgb = np.full((*shape, 3), 200, np.uint8)
    assert prep.geometry(rgb).shape == (224, 224, 3)            # a letterbox resized it to 0 pixels, once
    picture = overlay_picture(np.ones((224, 224), np.float32), rgb, prep, None, bar=False)
    rows, cols = prep.seen_window(shape)
    assert picture.shape == (*shape, 3) and rows.stop - rows.start >= 1 and cols.stop - cols.start >= 1
    seen = np.zeros(shape, bool)
    seen[rows, cols] = True
    centre = [int(np.argmin(np.abs(np.arange(n) * scale + shift - 111.5)))
              for n, scale, shift in zip(shape, np.diag(prep.to_model(shape))[::-1], prep.to_model(shape)[::-1, 2])]
    assert seen[tuple(centre)]
    heat = overlay(rgb[rows, cols], np.ones((rows.stop - rows.start, cols.stop - cols.start), np.float32))
    np.testing.assert_array_equal(picture[rows, cols], heat)
    grey = picture[~seen]
    assert len(grey) == 0 or (grey == grey[0]).all()


def _decoded(picture: np.ndarray, colormap=cv2.COLORMAP_JET) -> np.ndarray:
    """An alpha=1 overlay read back to values in [0,1]: each pixel's nearest colour of the colormap."""
    lut = cv2.cvtColor(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap), cv2.COLOR_BGR2RGB)[:, 0]
    distance = ((picture[..., None, :].astype(np.int32) - lut[None, None].astype(np.int32)) ** 2).sum(-1)
    return distance.argmin(-1) / 255.0


@pytest.mark.slow
def test_plain_overlay_with_geometry_puts_the_peak_where_the_crop_took_it():
    """cam_infer.overlay(photo, map, geometry=...) on a 576x768 photo (darknet_dog's size): a peak at input
    pixel (y, x) lands where torchvision's Resize(256) + CenterCrop(224) took that pixel from."""
    prep = Preprocessing((224, 224))
    photo = np.full((576, 768, 3), 128, np.uint8)
    y, x = 60.0, 170.0
    rows, cols = np.mgrid[:224, :224]
    saliency = np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * 5.0 ** 2)).astype(np.float32)
    # the crop, independently: the short side 576 → 256, the long side 768·256/576 = 341.3 → 341 pixels,
    # a centred 224 window from (16, 58); a pixel centre u of the resized image is (u + 0.5)/s − 0.5 in the photo
    s_y, s_x = 256 / 576, 341 / 768
    top, left = (256 - 224) // 2, round((341 - 224) / 2)
    expected = ((y + top + 0.5) / s_y - 0.5, (x + left + 0.5) / s_x - 0.5)
    for geometry in (prep, _Carrier(prep)):
        value = _decoded(overlay(photo, saliency, alpha=1.0, geometry=geometry))
        peak = np.argwhere(value >= value.max() - 0.02).mean(axis=0)
        assert abs(peak[0] - expected[0]) <= 1.0 and abs(peak[1] - expected[1]) <= 1.0, (peak, expected)
    stretched = (y + 0.5) * 576 / 224 - 0.5, (x + 0.5) * 768 / 224 - 0.5      # what a stretch would have drawn
    assert abs(stretched[1] - expected[1]) > 40


class _Carrier:
    """Anything that carries the bundle's preprocessing, as an Explanation or a Bundle does."""

    def __init__(self, preprocessing):
        self.preprocessing = preprocessing


def test_plain_overlay_refuses_a_map_it_would_stretch():
    photo = np.full((576, 768, 3), 128, np.uint8)
    with pytest.raises(CamInferError, match=r"224x224 map does not fit a 576x768 image.*e\.overlay\(i\)") as err:
        overlay(photo, np.ones((224, 224), np.float32))
    assert "\n" not in str(err.value)
    with pytest.raises(CamInferError, match="geometry must be an Explanation, a Bundle or a Preprocessing"):
        overlay(photo, np.ones((224, 224), np.float32), geometry="center")
    # pytorch-grad-cam's call: a map of the image's own size is blended where it is, as before
    saliency = np.random.default_rng(0).random((576, 768)).astype(np.float32)
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(saliency * 255)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    expected = np.round(0.5 * photo + 0.5 * heat.astype(float)).astype(np.uint8)
    assert np.abs(overlay(photo, saliency).astype(int) - expected).max() <= 1
    with pytest.raises(CamInferError, match="18x24 map does not fit a 576x768 image"):
        overlay(photo, np.ones((18, 24), np.float32))     # the same aspect: a centre crop would still be stretched


def test_plain_overlay_is_the_explanations_own_placement(shapes_explainer, scene_files):
    """One placement: the plain blend given the Explanation, the Bundle or the Preprocessing is the body of
    e.overlay(i) (without its caption and colour bar)."""
    e = shapes_explainer.explain(scene_files, "recipro")
    rgb = e.images[0]
    assert rgb.shape[:2] != e.saliency.shape[1:]
    h, w = rgb.shape[:2]
    body = e.overlay(0)[-h:, :w]
    for geometry in (e, shapes_explainer.bundle, e.preprocessing):
        np.testing.assert_array_equal(overlay(rgb, e.saliency[0], geometry=geometry), body)
    with pytest.raises(CamInferError, match="does not fit"):
        overlay(rgb, e.saliency[0])


@pytest.fixture(scope="module")
def shapes_explainer():
    from cam_infer.tools.demo import embedded_bundle_path
    return Explainer(embedded_bundle_path())


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    from cam_infer.tools.synthetic import scene
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i, split in enumerate(("large", "small")):
        image = cv2.copyMakeBorder(scene(split, 3, i).image, 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(30, 30, 30))
        cv2.imwrite(str(folder / f"{split}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(folder / f"{split}.png")
    return paths


def test_several_classes_per_image_equal_one_class_at_a_time(shapes_explainer, scene_files):
    ex = shapes_explainer
    for method in ("recipro", "ablation", "cam"):
        top = ex.explain(scene_files, method, top_classes=2)
        assert top.saliency.shape == (2, 2, 128, 128) and top.targets.shape == (2, 2) and top.multi
        x = ex.preprocess(scene_files)
        scores = ex.backend.forward(x)
        np.testing.assert_array_equal(top.targets, np.argsort(-scores, axis=1)[:, :2])
        for j in range(2):
            single = ex.explain(x, method, target=top.targets[:, j])
            np.testing.assert_allclose(top.saliency[:, j], single.saliency, atol=1e-5)
            np.testing.assert_allclose(top.scores[:, j], single.scores, rtol=1e-5)
        given = ex.explain(scene_files, method, target=[[0, 3], ["square", 1]])
        np.testing.assert_array_equal(given.targets, [[0, 3], [ex.bundle.labels.index("square"), 1]])
    with pytest.raises(CamInferError, match="the same length"):
        ex.explain(scene_files, "recipro", target=[[0, 1], [2]])
    with pytest.raises(CamInferError, match="either target or top_classes"):
        ex.explain(scene_files, "eigen", target=1, top_classes=2)
    with pytest.raises(CamInferError, match="top_classes must be"):
        ex.explain(scene_files, "eigen", top_classes=9)


def test_save_writes_overlays_on_the_original_images_named_by_image_method_and_label(shapes_explainer, scene_files,
                                                                                       tmp_path):
    e = shapes_explainer.explain(scene_files, "recipro", top_classes=2)
    paths = e.save(tmp_path)
    labels = shapes_explainer.bundle.labels
    expected = {f"{p.stem}_recipro_{labels[c]}.png" for p, row in zip(scene_files, e.targets) for c in row}
    assert {p.name for p in paths} == expected and len(paths) == 4
    original = cv2.imread(str(scene_files[0]))
    written = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert written.shape[1] > original.shape[1] and written.shape[0] > original.shape[0]   # + caption, colour bar
    np.testing.assert_array_equal(written, e.overlay(0, 0))
    # the map over the model's view is the same map as over the original, where the model looked
    model_view = e.overlay(0, 0, on="model")
    assert model_view.shape[0] > 128
    with pytest.raises(CamInferError, match="no original image"):
        shapes_explainer.explain(shapes_explainer.preprocess(scene_files), "eigen").overlay(0)


def test_an_overlay_index_that_names_no_map_is_one_line(shapes_explainer, scene_files):
    """overlay(True) once drew with a NumPy mask of the arrays (a bool is an int to Python)."""
    several = shapes_explainer.explain(scene_files, "recipro", top_classes=2)
    one = shapes_explainer.explain(scene_files, "recipro")
    for e, i, j, message in ((several, True, None, "no map"), (several, 0, True, "no map"), (several, 2, 0, "no map"),
                             (several, 0, 2, "no map"), (several, 0.0, 0, "no map"), (one, 0, 1, "one map per image"),
                             (one, -1, None, "no map")):
        with pytest.raises(CamInferError, match=message):
            e.overlay(i, j)
    np.testing.assert_array_equal(several.overlay(1), several.overlay(1, 0))


def test_save_keeps_apart_two_images_of_one_name(shapes_explainer, scene_files, tmp_path):
    """a/x.png and b/x.png, explained together, are two files (the second no longer overwrites the first)."""
    twins = []
    for folder, source in zip("ab", scene_files[:2]):
        (tmp_path / folder).mkdir()
        twins.append(Path(shutil.copy(source, tmp_path / folder / "x.png")))
    for method in ("recipro", "eigen"):
        e = shapes_explainer.explain(twins, method, target=0 if method == "recipro" else None)
        paths = e.save(tmp_path / "out")
        suffix = "_" + shapes_explainer.bundle.labels[0] if method == "recipro" else ""
        assert [p.name for p in paths] == [f"x_{i}_{method}{suffix}.png" for i in (0, 1)]
        for i, path in enumerate(paths):
            np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), e.overlay(i))
    # a third image really named x_1: the second x takes another name rather than overwriting it
    (tmp_path / "c").mkdir()
    third = Path(shutil.copy(scene_files[1], tmp_path / "c" / "x_1.png"))
    e = shapes_explainer.explain([*twins, third], "eigen")
    paths = e.save(tmp_path / "three")
    assert [p.name for p in paths] == ["x_0_eigen.png", "x_1_1_eigen.png", "x_1_eigen.png"]
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), e.overlay(i))


def test_plot_draws_images_by_classes(shapes_explainer, scene_files, tmp_path):
    pytest.importorskip("matplotlib")
    e = shapes_explainer.explain(scene_files, "recipro", top_classes=3)
    fig = e.plot()
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == scene_files[0].stem
    shown = fig.axes[4].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), e.overlay(1, 1))
    fig.savefig(tmp_path / "plot.png")
    assert cv2.imread(str(tmp_path / "plot.png")) is not None


def test_demo_grid_panels_are_labelled(tmp_path):
    from cam_infer.tools.demo import run_demo
    lines = []
    run_demo(tmp_path, report=lines.append)
    grid = cv2.imread(str(tmp_path / "large.png"))
    assert grid.shape[0] > 2 * 128 + 18              # legend strip + panel titles + the scaled scene
    assert "red = most evidence" in "\n".join(lines) and "each titled with the class" in "\n".join(lines)
    detection = cv2.imread(str(tmp_path / "detection.png"))
    header = detection[:detection.shape[0] - (18 + 2 * 128)]             # above the panel titles and scenes
    assert header.shape[0] > 10 and _text_lines(header)
    assert _dark_columns(header).max() <= detection.shape[1] - 4          # the legend ends inside the grid


def _dark_columns(strip: np.ndarray) -> np.ndarray:
    return np.nonzero((strip < 128).any(axis=2).any(axis=0))[0]


def _text_lines(strip: np.ndarray) -> list[int]:
    """The heights of the bands of rows that hold dark pixels (one per line of text)."""
    dark = (strip < 128).any(axis=2).any(axis=1)
    edges = np.diff(np.concatenate([[0], dark.astype(int), [0]]))
    return list(np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0])


SYNONYMS = "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"   # ImageNet 2


@pytest.mark.parametrize("width", [224, 400])
def test_long_captions_stay_readable(width):
    """An ImageNet synonym list on a 224-px overlay, and the demo's legend on a narrow grid: the text keeps
    a readable size (it shrank to ~4 px before), is wrapped at words within the picture, and what does not
    fit is left out of the middle for '...', keeping the method, class id and probability."""
    from cam_infer.tools.demo import LEGEND
    from cam_infer.postprocess import MIN_CAPTION_SCALE, caption_lines
    minimum = cv2.getTextSize("A", cv2.FONT_HERSHEY_SIMPLEX, MIN_CAPTION_SCALE, 1)[0][1]      # a capital's height
    text = caption("recipro", SYNONYMS, 2, 0.873) if width == 224 else LEGEND
    rgb = np.full((120, width, 3), 90, np.uint8)
    picture = overlay_picture(np.zeros((120, width), np.float32), rgb, None, text, bar=False)
    strip = picture[:picture.shape[0] - 120]
    bands = _text_lines(strip)
    assert len(bands) == 2 and min(bands) >= minimum, bands
    assert _dark_columns(strip).max() <= width - 4
    scale, lines = caption_lines(text, width - 8)
    assert scale >= MIN_CAPTION_SCALE and len(lines) == 2
    if width == 224:
        assert "..." in lines[0] + lines[1]
        assert lines[0].startswith("recipro: great white shark") and lines[1].endswith("(2) p=0.87")


@needs_shared
def test_real_photo_overlay_on_the_original(tmp_path):
    """A real photo through a real model: the saved overlay is the full photo, not the 224 crop."""
    from cam_infer import split_onnx
    bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=tmp_path / "b")
    photo = SHARED / "images" / "parrot.jpg"
    e = Explainer(bundle).explain([photo], "recipro")
    (path,) = e.save(tmp_path / "out")
    original = cv2.imread(str(photo))
    written = cv2.imread(str(path))
    assert written.shape[1] > original.shape[1] and written.shape[0] > original.shape[0]
    assert int(e.targets[0]) == 88


@needs_shared
def test_real_photo_plain_overlay_lands_on_the_dog(tmp_path):
    """darknet_dog.jpg (576x768) through MobileNetV2: the plain blend of e.saliency[0] is refused without the
    geometry, and with it is e.overlay(0)'s picture, the crop's outside greyed."""
    from cam_infer import split_onnx
    bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=tmp_path / "b")
    e = Explainer(bundle).explain([SHARED / "images" / "darknet_dog.jpg"], "recipro")
    rgb = e.images[0]
    with pytest.raises(CamInferError, match="e.overlay"):
        overlay(rgb, e.saliency[0])
    placed = overlay(rgb, e.saliency[0], geometry=e)
    np.testing.assert_array_equal(placed, e.overlay(0)[-rgb.shape[0]:, :rgb.shape[1]])
    _, seen = e.preprocessing.to_image(e.saliency[0], rgb.shape[:2])
    assert not seen[:, :125].any() and seen[40:535, 135:630].all()            # the crop keeps the middle


def _found(picture: np.ndarray, template: np.ndarray) -> tuple[float, tuple[int, int]]:
    """The smallest squared difference of `template` anywhere in `picture`, and where (x, y)."""
    diff = cv2.matchTemplate(picture.astype(np.float32), template.astype(np.float32), cv2.TM_SQDIFF)
    low, _, where, _ = cv2.minMaxLoc(diff)
    return low, where


def test_detection_label_is_drawn_once_and_within_the_image():
    """A box's label is one render of its text (no second, thicker shadow pass that doubles the glyphs:
    "0.51" read "0.511"), and stays inside the image."""
    from cam_infer.tools.demo import embedded_detector_path
    from cam_infer import Explainer
    from cam_infer.detection.overlay import COLOURS
    from cam_infer.tools.synthetic import detection_scene

    e = Explainer(embedded_detector_path()).explain([detection_scene(7, 3).image], "recipro")
    image_w = e.images[0].shape[1]
    assert e.items[0], "the scene's shapes are detected"
    for j, d in enumerate(e.items[0]):
        picture = e.overlay(0, j).astype(np.float32)
        text = f"{d.label} {d.score:.2f}"
        scale = float(np.clip(max(e.images[0].shape[:2]) / 900, 0.35, 0.8))    # the labels' scale for its size
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        single = np.zeros((th + base + 4, tw + 4, 3), np.uint8)               # the text once, on black
        cv2.putText(single, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, COLOURS[0], 1, cv2.LINE_AA)
        low, (x, _) = _found(picture, single)
        assert low == 0, f"label {text!r} is not one render of its text"
        assert x + single.shape[1] <= image_w


@pytest.mark.parametrize("width", [224, 768, 2201])
def test_caption_text_is_whole_inside_its_strip(width):
    """Descenders (g, p, y, parentheses) end above the strip's last row at every scale; they were cut by the
    picture below at the large scales of wide pictures."""
    picture = overlay_picture(np.zeros((50, width), np.float32), np.full((50, width, 3), 90, np.uint8), None,
                              caption("gradcampp", "spotted gypsy (pygmy)", 7, 0.5), bar=False)
    strip = picture[:picture.shape[0] - 50]
    dark_rows = np.nonzero((strip < 128).any(axis=2).any(axis=1))[0]
    assert dark_rows.min() >= 2 and dark_rows.max() <= strip.shape[0] - 2
    assert _dark_columns(strip).max() <= width - 4


def drawn_as_before(saliency, rgb, prep, text, colormap="jet", alpha=0.5):
    """The folder run's overlay as it was drawn before it was made cheaper, step by step: the map put back over
    the whole original (`to_image`), quantised with NumPy, coloured with OpenCV's BGR table then turned to RGB,
    blended, the unseen part greyed through its mask, then the colour bar and the caption concatenated on."""
    from cam_infer.postprocess import COLORMAPS, with_caption
    if prep is not None:
        saliency, seen = prep.to_image(saliency, rgb.shape[:2])
    level = np.uint8(np.round(np.clip(saliency, 0, 1) * 255))
    heat = cv2.cvtColor(cv2.applyColorMap(level, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    picture = cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0.0)
    if prep is not None:
        grey = cv2.transform(rgb, np.array([[0.35 / 3, 0.35 / 3, 0.35 / 3, 110.0]]))
        picture[~seen] = grey[~seen][:, None]
    return with_caption(with_colour_bar(picture, colormap), text)


@pytest.mark.parametrize("crop", ["center", "none", "letterbox"])
def test_the_cheaper_overlay_draws_what_the_overlay_drew_before(crop):
    """Only the seen window mapped back and blended, a lookup-table colormap, the colour bar drawn once per size,
    one picture allocated: the model's view pixel for pixel; on the original at most 1 value in 10⁴ differs, by
    ≤ 2 levels (the map is warped from the window's corner, and OpenCV's fixed-point bilinear weights can round
    the other way: less than a JPEG encode changes)."""
    rng = np.random.default_rng(3)
    prep = Preprocessing((224, 224), crop=crop)
    text = "recipro: tabby, tabby cat (281) p=0.87"
    for shape in ((375, 500), (500, 333), (224, 224), (120, 610)):
        rgb = rng.integers(0, 256, (*shape, 3), np.uint8)
        saliency = cv2.resize(rng.random((7, 7)).astype(np.float32), (224, 224)) * 1.4 - 0.2   # beyond [0, 1] too
        for colormap, alpha in (("jet", 0.5), ("viridis", 0.3)):
            np.testing.assert_array_equal(overlay_picture(saliency, prep.geometry(rgb), None, text, colormap, alpha),
                                          drawn_as_before(saliency, prep.geometry(rgb), None, text, colormap, alpha))
            new = overlay_picture(saliency, rgb, prep, text, colormap, alpha).astype(int)
            before = drawn_as_before(saliency, rgb, prep, text, colormap, alpha)
            assert new.shape == before.shape
            differ = np.abs(new - before)
            assert differ.max() <= 2 and (differ > 0).mean() <= 1e-4
