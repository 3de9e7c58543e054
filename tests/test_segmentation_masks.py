"""Ground-truth masks for audits: the two layouts, and one-line refusals."""

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED

from cam_infer.audit.masks import read_truth, voc_palette, write_label_image
from cam_infer.errors import CamInferError
from cam_infer.tools.synthetic import scene, segmentation_labels

CLASSES = ["background", "circle", "square", "triangle", "cross"]


def test_a_voc_label_image_round_trips_with_void_left_out(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 3:9] = 2
    labels[10:12] = 255
    write_label_image(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "P"
        assert tuple(image.getpalette()[12 * 3:13 * 3]) == (64, 0, 128)      # VOC's dog colour
    truth = read_truth(tmp_path, "a.jpg", (20, 30), CLASSES)
    assert sorted(truth.regions) == [0, 2]
    np.testing.assert_array_equal(truth.region(2), labels == 2)
    np.testing.assert_array_equal(truth.valid, labels != 255)
    assert not truth.region(4).any()


def test_one_mask_per_class_in_a_folder_per_class_may_overlap(tmp_path):
    for name, rows in (("circle", slice(0, 6)), ("cross", slice(4, 10))):
        (tmp_path / name).mkdir()
        mask = np.zeros((10, 10), np.uint8)
        mask[rows] = 255
        Image.fromarray(mask).save(tmp_path / name / "b.png")
    truth = read_truth(tmp_path, "b.png", (10, 10), CLASSES)
    assert sorted(truth.regions) == [1, 4]
    assert (truth.region(1) & truth.region(4)).sum() == 20
    assert truth.valid.all()


def test_the_synthetic_scenes_label_images_mark_the_instances():
    s = scene("multiple", 1, 3)
    labels = segmentation_labels(s)
    np.testing.assert_array_equal(labels == s.label + 1, s.masks.any(axis=0))
    assert set(np.unique(labels)) == {0, s.label + 1}


@pytest.mark.parametrize("case, message", [
    ("missing", "no ground-truth mask for c.png: expected"),
    ("size", "is 8x6 but its image is 10x10"),
    ("index", "has class index 7 but the model has 5 classes"),
    ("folder", "has a folder 'dog' that is no class of the model"),
    ("rgb", "is a RGB image; a mask is an 8-bit index or greyscale PNG"),
])
def test_bad_masks_are_refused_in_one_line(tmp_path, case, message):
    if case == "size":
        write_label_image(tmp_path / "c.png", np.zeros((6, 8), np.uint8))
    elif case == "index":
        write_label_image(tmp_path / "c.png", np.full((10, 10), 7, np.uint8))
    elif case == "folder":
        for name in ("circle", "dog"):
            (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "circle" / "c.png")
    elif case == "rgb":
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(CamInferError, match=message) as error:
        read_truth(tmp_path, "c.png", (10, 10), CLASSES)
    assert "\n" not in str(error.value)


def test_the_palette_is_voc_s():
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]


@pytest.mark.parametrize("crop", ["center", "letterbox"])
def test_masks_follow_the_model_s_resize_and_crop_as_boxes_do(tmp_path, crop):
    from cam_infer.images import Preprocessing

    side = 128 if crop == "center" else 160                    # both at ×0.5: the letterbox pads 16 rows each side
    prep = Preprocessing(input_size=(side, side), resize=128, crop=crop)
    labels = np.zeros((256, 320), np.uint8)
    labels[60:120, 40:100] = 3                                  # box [40, 60, 99, 119], even bounds: exact at ×0.5
    write_label_image(tmp_path / "d.png", labels)
    truth = read_truth(tmp_path, "d.jpg", (256, 320), CLASSES).in_input(prep)
    x1, y1, x2, y2 = prep.box_to_input([40, 60, 99, 119], (256, 320))
    expected = np.zeros((side, side), bool)
    expected[y1:y2 + 1, x1:x2 + 1] = True
    np.testing.assert_array_equal(truth.region(3), expected)
    assert truth.valid.sum() == (128 * 128 if crop == "center" else 128 * 160)


def test_synthetic_segmentation_scenes_are_written_with_their_label_images(tmp_path):
    from helpers import run_cli

    result = run_cli("synthetic", "--split", "segmentation", "-n", "4", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    for i, split in enumerate(("large", "small", "multiple", "cluttered")):
        s = scene(split, 1, i)
        name = f"{split}_{i:05d}.png"
        image = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"))
        np.testing.assert_array_equal(image, s.image)
        truth = read_truth(tmp_path / "masks", name, (128, 128), CLASSES)
        np.testing.assert_array_equal(truth.region(s.label + 1), s.masks.any(axis=0))


@pytest.mark.skipif(not (SHARED / "segmentation").is_dir(), reason="../shared/data is not present")
def test_the_labelled_dog_as_a_voc_label_image_matches_deeplab_s_own_dog(tmp_path):
    """The Oxford-IIIT-Pets-style trimap of ../shared/data (0 pet, 1 background, 2 border) written as a VOC
    label image (dog = 12, border void) agrees with DeepLabV3's own ArgMax: the mask format carries real truth."""
    import cv2
    import openvino as ov

    folder = SHARED / "segmentation"
    trimap = np.asarray(Image.open(folder / "dog_segmentation_mask_256.bmp"))
    write_label_image(tmp_path / "dog.png", np.choose(trimap, [12, 0, 255]).astype(np.uint8))
    labels = (folder / "pascal_voc_segmentation_labels.txt").read_text().split()
    truth = read_truth(tmp_path, "dog.bmp", (256, 256), labels)
    assert labels[12] == "dog" and sorted(truth.regions) == [0, 12]

    photo = np.asarray(Image.open(folder / "dog_segmentation_256.bmp").convert("RGB"))
    model = ov.Core().compile_model(str(folder / "deeplabv3_mnv2_dm05_pascal_quant.tflite"), "CPU")
    x = cv2.resize(photo, (513, 513), interpolation=cv2.INTER_LINEAR)[None]
    classes = np.asarray(model(x)[0])[0].astype(np.uint8)
    predicted = cv2.resize(classes, (256, 256), interpolation=cv2.INTER_NEAREST) == 12
    dog, valid = truth.region(12), truth.valid
    iou = (predicted & dog & valid).sum() / ((predicted | dog) & valid).sum()
    assert iou > 0.7, iou
