"""A run's maps in one array store (`--overlays none`): the maps a PNG each would hold, in shards that a killed
run resumes without losing or duplicating a map, read back with one call."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from cam_infer import Explainer, read_maps
from cam_infer.jobs import driver, map_store
from cam_infer.postprocess import read_map
from cam_infer.runs import explain_files

METHODS = ["recipro", "eigen"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(7):
        cv2.imwrite(str(folder / f"p{i}.jpg"), rng.integers(0, 256, (80 + 9 * i, 110, 3), np.uint8))
    return folder


def records(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def test_the_array_store_holds_the_maps_the_pngs_hold(photos, tiny_bundle, tmp_path):
    ex = Explainer(tiny_bundle)
    explain_files(ex, [photos], METHODS, tmp_path / "array", overlays="none", batch_size=3)
    explain_files(ex, [photos], METHODS, tmp_path / "png", overlays="none", maps="png", batch_size=3)
    assert sorted(p.name for p in (tmp_path / "array").iterdir() if not p.name.startswith(".")) == [
        "maps", "results.json"] and [p.name for p in (tmp_path / "array" / "maps").iterdir()] == ["00000.npy"]
    maps = read_maps(tmp_path / "array")
    pngs = {(r["image"], r["method"]): read_map(tmp_path / "png" / r["map"]) for r in records(tmp_path / "png")}
    assert len(maps) == 14 and set(maps) == set(pngs)
    for key, png in pngs.items():
        np.testing.assert_array_equal(maps[key], png)            # the same 8-bit levels, whichever file holds them
    shard = np.load(tmp_path / "array" / "maps" / "00000.npy")   # NumPy alone reads a map at its record's slot
    record = records(tmp_path / "array")[5]
    np.testing.assert_array_equal(shard[record["slot"]] / np.float32(255), maps[record["image"], record["method"]])


def test_a_killed_run_resumes_without_losing_or_duplicating_a_map(photos, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(map_store, "SHARD", 4)                   # several shards, one left half full by the kill
    ex = Explainer(tiny_bundle)
    whole = tmp_path / "whole"
    explain_files(ex, [photos], METHODS, whole, overlays="none", batch_size=2)
    appended = driver.Journal.append

    def killed_after_two_batches(journal, entry):
        if sum(1 for _ in open(journal.path)) == 3:            # the header and two batches' lines
            raise KeyboardInterrupt
        appended(journal, entry)

    out = tmp_path / "resumed"
    monkeypatch.setattr(driver.Journal, "append", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        explain_files(ex, [photos], METHODS, out, overlays="none", batch_size=2)
    monkeypatch.setattr(driver.Journal, "append", appended)
    explain_files(ex, [photos], METHODS, out, overlays="none", batch_size=2)
    resumed = records(out)
    assert sorted((r["image"], r["method"]) for r in resumed) == sorted((r["image"], r["method"])
                                                                        for r in records(whole))
    assert len({(r["map"], r["slot"]) for r in resumed}) == 14        # every map has a slot of its own
    expected, got = read_maps(whole), read_maps(out)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])

    changed = photos / "p3.jpg"                                   # a changed photo: redone into a new slot
    before = {(r["map"], r["slot"]) for r in resumed}
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    explain_files(ex, [photos], METHODS, out, overlays="none", batch_size=2)
    redone = [r for r in records(out) if r["image"] == str(changed)]
    assert len(records(out)) == 14 and len(redone) == 2
    assert not {(r["map"], r["slot"]) for r in redone} & before
    for r in redone:
        np.testing.assert_array_equal(read_maps(out)[r["image"], r["method"]], expected[r["image"], r["method"]])


def test_the_cli_writes_maps_into_the_array_store_and_refuses_it_for_a_detector(photos, tiny_bundle, tmp_path):
    result = run_cli("explain", tiny_bundle.path, photos, "--method", "recipro", "--out", tmp_path / "out",
                     "--overlays", "none")
    assert result.returncode == 0, result.stderr
    assert "7 maps (7 images x 1 methods)" in result.stdout
    assert len(read_maps(tmp_path / "out")) == 7 and not list((tmp_path / "out").glob("*.png"))
    from cam_infer.tools.demo import embedded_detector_path
    assert_one_line_error(run_cli("explain", embedded_detector_path(), photos / "p0.jpg", "--out", tmp_path / "d",
                                  "--overlays", "none", "--maps", "array"), "--maps array is for classifiers")


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no fallocate on this OS")
def test_a_full_disk_at_a_new_shard_is_one_error_not_a_bus_error(photos, tiny_bundle, tmp_path, monkeypatch):
    """A shard was a sparse file: on a full disk the first map copied into a page with no block behind it killed the
    run with SIGBUS (exit 135, no message, no results.json). Its blocks are now reserved when it is made."""
    from cam_infer import CamInferError

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CamInferError, match=r"could not write '.*00000\.npy' \(No space left on device\): is the "
                                            r"folder writable, the disk full\?"):
        explain_files(Explainer(tiny_bundle), [photos], METHODS, tmp_path / "out", overlays="none", progress=False)
    assert not (tmp_path / "out" / "maps" / "00000.npy").exists()
    monkeypatch.undo()
    explain_files(Explainer(tiny_bundle), [photos], METHODS, tmp_path / "out", overlays="none", progress=False)
    assert len(read_maps(tmp_path / "out")) == 14
