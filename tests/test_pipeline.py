"""Pipelined folder runs: batches overlapped in threads (in input order, a bounded number in flight), and what
a run writes per image and method (`--overlays jpg|png|none`)."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from cam_infer import Explainer, parallel
from cam_infer.errors import CamInferError
from cam_infer.parallel import STAGES, InProcess
from cam_infer.postprocess import read_map
from cam_infer.runs import explain_files


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(7):
        cv2.imwrite(str(folder / f"p{i}.jpg"), rng.integers(0, 256, (90 + 7 * i, 120, 3), np.uint8))
    return folder


def test_in_process_batches_overlap_in_threads_in_input_order_with_a_bounded_lookahead():
    together = threading.Barrier(2, timeout=10)       # the first two items only finish while both are in flight
    taken, given = [], []

    def items():
        for i in range(20):
            taken.append(i)
            assert len(taken) - len(given) <= STAGES      # never more than STAGES read ahead of the consumer
            yield i

    def work(i):
        if i < 2:
            together.wait()
        time.sleep(0.01 * ((7 * i) % 3))             # finish out of order
        return i * i

    for result in InProcess().map(work, items()):
        given.append(result)
    assert given == [i * i for i in range(20)]


def test_an_error_in_a_batch_stops_the_run_with_it():
    def work(i):
        if i == 3:
            raise CamInferError("bad batch")
        return i

    seen = []
    with pytest.raises(CamInferError, match="bad batch"):
        for result in InProcess().map(work, iter(range(50))):
            seen.append(result)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("overlays", ["png", "none"])
def test_the_pipelined_run_writes_what_one_batch_at_a_time_writes(overlays, photos, tiny_bundle, tmp_path, monkeypatch):
    ex = Explainer(tiny_bundle)
    for stages, out in ((1, tmp_path / "serial"), (STAGES, tmp_path / "pipelined")):
        monkeypatch.setattr(parallel, "make_runner", lambda *args, stages=stages, **kwargs: InProcess(stages))
        explain_files(ex, [photos], ["recipro", "eigen"], out, batch_size=2, overlays=overlays, maps="png")
    serial, pipelined = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("serial", "pipelined"))
    untimed = [[{k: v for k, v in r.items() if k != "milliseconds"} for r in run["results"]]
               for run in (serial, pipelined)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 14
    files = sorted(p.name for p in (tmp_path / "serial").iterdir() if p.suffix == ".png")
    assert len(files) == 14 and files == sorted(p.name for p in (tmp_path / "pipelined").iterdir()
                                                if p.suffix == ".png")
    for name in files:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pipelined" / name).read_bytes(), name


def test_maps_alone_are_the_saliency_in_8_bits_and_a_lost_map_is_redone(photos, tiny_bundle, tmp_path):
    ex = Explainer(tiny_bundle)
    images = sorted(photos.iterdir())
    results = explain_files(ex, images, ["recipro", "eigen"], tmp_path, overlays="none", maps="png", batch_size=3)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{f.stem}_{m}.map.png" for f in images for m in ("recipro", "eigen")] + ["results.json"])
    assert all("overlay" not in r for r in results.records)
    for method in ("recipro", "eigen"):
        e = ex.explain(images, method)                           # the same images, explained on their own
        for i, f in enumerate(images):
            record = next(r for r in results.records if r["image"] == str(f) and r["method"] == method)
            # 8 bits: round(255·s)/255 is within half a step (1/510) of s; 1e-6 for float32 saliency
            np.testing.assert_allclose(read_map(tmp_path / record["map"]), e.saliency[i], rtol=0, atol=1 / 510 + 1e-6)
    first = json.loads((tmp_path / "results.json").read_text())["results"]
    (tmp_path / f"{images[2].stem}_eigen.map.png").unlink()
    explain_files(ex, images, ["recipro", "eigen"], tmp_path, overlays="none", maps="png", batch_size=3)
    final = json.loads((tmp_path / "results.json").read_text())["results"]
    kept = [r for r in first if r["map"] != f"{images[2].stem}_eigen.map.png"]
    assert final[:len(kept)] == kept and len(final) == len(first)            # only the lost map redone
    assert (tmp_path / f"{images[2].stem}_eigen.map.png").is_file()


def test_jpeg_overlays_are_the_png_overlays_within_jpeg_loss(tiny_bundle, tmp_path):
    ex = Explainer(tiny_bundle)
    smooth = tmp_path / "photos"                                 # photo-like: smooth, not per-pixel noise
    smooth.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        cv2.imwrite(str(smooth / f"s{i}.png"), cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (160, 120),
                                                          interpolation=cv2.INTER_CUBIC))
    for kind in ("png", "jpg"):
        explain_files(ex, [smooth], ["recipro"], tmp_path / kind, overlays=kind)
    for f in sorted(smooth.iterdir()):
        jpeg = (tmp_path / "jpg" / f"{f.stem}_recipro.jpg").read_bytes()
        assert jpeg[:3] == b"\xff\xd8\xff"                       # a JPEG, not a PNG under another name
        lossless = cv2.imread(str(tmp_path / "png" / f"{f.stem}_recipro.png")).astype(np.float64)
        lossy = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
        assert lossy.shape == lossless.shape
        # quality 90 on smooth photos, captions and a colour bar: a 30 dB PSNR bound (mean squared error
        # under 65 grey levels², JPEG's usual "visually lossless" floor); a PNG read as JPEG would fail it
        assert 10 * np.log10(255 ** 2 / np.mean((lossy - lossless) ** 2)) > 30


def test_an_unknown_overlay_kind_is_a_one_line_error(photos, tiny_bundle, tmp_path):
    with pytest.raises(CamInferError, match="--overlays takes jpg, png, none"):
        explain_files(Explainer(tiny_bundle), [photos], ["recipro"], tmp_path, overlays="gif")


def test_the_cli_writes_maps_alone_and_refuses_to_resume_with_other_overlays(photos, tiny_bundle, tmp_path):
    result = run_cli("explain", tiny_bundle.path, photos, "--method", "recipro", "--out", tmp_path,
                     "--overlays", "none", "--maps", "png")
    assert result.returncode == 0, result.stderr
    assert "7 maps (7 images x 1 methods)" in result.stdout
    assert len(list(tmp_path.glob("*.map.png"))) == 7 and not list(tmp_path.glob("*.jpg"))
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photos, "--method", "recipro", "--out", tmp_path),
                          "holds results of a run with other settings")


def test_a_detectors_maps_alone_are_its_detections_saliency_in_8_bits(tmp_path):
    from cam_infer.tools.demo import embedded_detector_path
    from cam_infer.tools.synthetic import detection_scene

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(detection_scene(5, 3).image, cv2.COLOR_RGB2BGR))
    result = run_cli("explain", embedded_detector_path(), image, "--method", "recipro", "--out", tmp_path / "out",
                     "--overlays", "none")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert "overlay" not in record and record["detections"] and not list((tmp_path / "out").glob("*.jpg"))
    e = Explainer(embedded_detector_path()).explain([image], "recipro")
    maps = [read_map(tmp_path / "out" / d["map"]) for d in record["detections"]]
    for written, d in zip(maps, e.items[0]):                  # half an 8-bit step, as for a classifier's maps
        np.testing.assert_allclose(written, d.saliency, rtol=0, atol=1 / 510 + 1e-6)
    np.testing.assert_allclose(read_map(tmp_path / "out" / record["map"]), np.max(maps, axis=0), atol=1 / 510 + 1e-6)
