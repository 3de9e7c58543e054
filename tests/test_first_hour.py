"""A newcomer's first hour: the README's commands in order, reproducible installs, Numba caches outside
the package, and the rough edges of issue 12 (locks, changed inputs, skipped files, class names,
user errors that were internal errors)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from conftest import ROOT
from cam_infer import CamInferError, Explainer, read_maps, split_onnx
from cam_infer.bundle import split_model
from cam_infer.fuse import fuse
from cam_infer.tasks import class_index
from cam_infer.jobs.folders import IMAGE_SUFFIXES, collect_images
from cam_infer.runs import explain_files

# --- installing ------------------------------------------------------------------------------------------


def readme_commands() -> tuple[str, str]:
    """The README's two commands: install + demo, and the test command."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    first = next(b for b in blocks if "cam-infer demo" in b)
    test = next(b for b in blocks if "pytest -q" in b and "constraints.txt" in b)
    return first, test


def test_readme_test_command_and_ci_use_the_constraints_file():
    _, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in test
    assert test.splitlines()[0] in ci and "--run-slow" in ci           # CI runs the README's command


def test_constraints_pin_every_dependency_within_the_package_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
    assert pins["torch"] == "2.13.0"                                # the CPU wheel at hand; newer pulls CUDA


@pytest.mark.skipif(not os.environ.get("CAM_INFER_CONSTRAINTS"), reason="only where .ci/run installed with -c")
def test_what_is_installed_is_what_the_constraints_say():
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    for line in (ROOT / os.environ["CAM_INFER_CONSTRAINTS"]).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            try:
                installed = Version(version(req.name))
            except PackageNotFoundError:
                continue                            # a platform-specific dependency of another package
            pinned = Version(next(iter(req.specifier)).version)
            assert installed.release == pinned.release, f"{req.name}: {installed} installed, {pinned} pinned"


def test_numba_kernels_cache_in_the_user_folder_never_in_the_package(tmp_path):
    package_cache = ROOT / "cam_infer" / "__pycache__"
    before = set(package_cache.glob("*.nb*")) if package_cache.is_dir() else set()
    code = ("import numpy as np; from cam_infer import kernels; from cam_infer.kernel_cache import numba_cache_dir;"
            "kernels.spatial_entropy(np.ones((2, 3, 3), np.float32)); print(kernels.CACHE, numba_cache_dir())")
    env = dict(os.environ, CAM_INFER_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", str(tmp_path / "cache" / "numba")]
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi")), "no kernel was cached in the user folder"
    after = set(package_cache.glob("*.nb*")) if package_cache.is_dir() else set()
    assert after == before, f"kernel caches written into the package: {sorted(after - before)}"


def test_an_unwritable_cache_folder_means_no_cache_and_no_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    code = "from cam_infer import kernels; print(kernels.CACHE)"
    env = dict(os.environ, CAM_INFER_CACHE_DIR=str(blocker / "cache"), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def _copy_of_the_checkout(dest: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.splitlines() + [str(p.relative_to(ROOT)) for p in (ROOT / "cam_infer").rglob("*")
                                                  if p.is_file() and "__pycache__" not in p.parts]:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_the_readme_commands_in_order_in_a_fresh_venv(tmp_path):
    """`pip install . && cam-infer demo`, then the test command's `pip install -e .`, then `cam-infer
    --version` and one `explain` from another folder. The dependencies come from this environment (a
    .pth file) so that nothing is downloaded; the package itself is installed as the README says."""
    first, test = readme_commands()
    assert "pip install . && cam-infer demo --out demo/" in first and "pip install" in test and "-e" in test
    checkout = _copy_of_the_checkout(tmp_path / "checkout")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)  # pip: below
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAM_INFER_CACHE_DIR")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", XDG_CACHE_HOME=str(tmp_path / "user-cache"),
               VIRTUAL_ENV=str(venv), PIP_NO_INDEX="1")

    def run(*args, cwd):
        result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result

    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    run(*pip, ".", cwd=checkout)                                          # pip install .
    run(bin_dir / "cam-infer", "demo", "--out", "demo/", cwd=checkout)    # cam-infer demo --out demo/
    assert sorted(p.name for p in (checkout / "demo").iterdir()) == ["cluttered.png", "detection.png", "large.png",
                                                                     "multiple.png", "segmentation.png", "small.png"]
    assert not list((site / "cam_infer").rglob("*.nb*")), "the demo wrote kernel caches into site-packages"
    assert list((tmp_path / "user-cache" / "cam-infer" / "numba").rglob("*.nbi"))
    run(*pip, "-e", ".", cwd=checkout)                                    # the test command's install
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = run(bin_dir / "cam-infer", "--version", cwd=elsewhere)
    assert version.stdout.strip() == "cam-infer 0.1.0"
    run(bin_dir / "cam-infer", "synthetic", "--out", "scenes", "-n", "2", cwd=elsewhere)
    bundle = run(python, "-c", "from cam_infer.tools.demo import embedded_bundle_path as p; print(p())", cwd=elsewhere)
    assert Path(bundle.stdout.strip()).is_relative_to(checkout)          # the editable install is the one used
    run(bin_dir / "cam-infer", "explain", bundle.stdout.strip(), "scenes", "--out", "out", cwd=elsewhere)
    assert len(json.loads((elsewhere / "out" / "results.json").read_text())["results"]) == 2


# --- silently wrong before: locks, changed inputs, skipped files, class names -----------------------------


def _picture(path: Path, seed: int, size=(60, 80)) -> Path:
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    ok, data = cv2.imencode(".jpg" if path.suffix in (".jfif", ".jpe") else path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def test_a_second_run_on_a_locked_folder_refuses_naming_the_holder(tmp_path, tiny_bundle):
    from cam_infer.outputs import OutputLock

    photo = _picture(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out, "explain"):         # held as another process would hold it: an OS file lock
        for command in (["explain", tiny_bundle.path, photo, "--method", "eigen", "--out", out],
                        ["audit", tiny_bundle.path, photo, "--methods", "eigen", "--metrics", "adcc", "--out", out]):
            result = run_cli(*command)
            assert_one_line_error(result, "is in use by another run (cam-infer explain, pid")
    assert not (out / "results.json").exists()
    assert run_cli("explain", tiny_bundle.path, photo, "--method", "eigen", "--out", out).returncode == 0


def test_two_concurrent_explain_runs_never_lose_records(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(24):
        _picture(photos / f"p{i:02d}.png", i)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = [subprocess.Popen([sys.executable, "-m", "cam_infer", "explain", str(tiny_bundle.path), str(photos),
                              "--method", method, "--out", str(out), "--batch-size", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for method in ("eigen", "recipro")]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    records = json.loads((out / "results.json").read_text())["results"]
    overlays = sorted(p.name for p in out.glob("*.jpg"))
    assert sorted(r["overlay"] for r in records) == overlays              # every overlay has its record
    for code, stderr in results:
        # the second run is refused while the first holds the folder, or, when it starts after the first has
        # finished, because the folder holds the other method's results (it must be given too): both lose nothing
        assert code == 0 or (code == 1 and ("is in use by another run" in stderr
                                            or "holds results of a run of methods" in stderr)), stderr
    assert any(code == 0 for code, _ in results)


def test_resume_redoes_an_image_whose_file_changed(tmp_path, tiny_bundle):
    ex = Explainer(tiny_bundle)
    photo = _picture(tmp_path / "a.png", 0)
    other = _picture(tmp_path / "b.png", 1)
    first = explain_files(ex, [photo, other], ["recipro"], tmp_path / "out", target=None)
    assert first.records[0]["input"]["size"] == photo.stat().st_size
    replacement = np.full((60, 80, 3), 255, np.uint8)
    replacement[:, :40] = 0
    cv2.imwrite(str(photo), replacement)                          # another picture under the same name
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    again = explain_files(ex, [photo, other], ["recipro"], tmp_path / "out")
    assert again.redone == [str(photo)]
    expected = ex.explain([photo], "recipro")
    record = next(r for r in again.records if r["image"] == str(photo))
    assert record["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
    assert record["input"]["size"] == photo.stat().st_size
    assert len(again.records) == 2


def test_audit_resume_redoes_an_image_whose_file_changed(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    photos.mkdir()
    a, b = _picture(photos / "a.png", 0), _picture(photos / "b.png", 1)
    args = ["audit", tiny_bundle.path, photos, "--methods", "eigen", "--metrics", "adcc", "--out", tmp_path / "r"]
    assert run_cli(*args).returncode == 0
    rows_before = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    cv2.imwrite(str(a), np.zeros((30, 30, 3), np.uint8) + 128)
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    result = run_cli(*args)
    assert result.returncode == 0 and "redid 1 image(s)" in result.stdout, result.stderr
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(rows_before) == 1 + 2 * 3          # the header; per image eigen and two baselines
    assert [r for r in rows if str(b) in r] == [r for r in rows_before if str(b) in r]     # b untouched
    assert [r for r in rows if str(a) in r] != [r for r in rows_before if str(a) in r]     # a redone


OPENCV_4 = pytest.mark.skipif(int(cv2.__version__.split(".")[0]) < 5, reason="OpenCV 4 reads no GIF by default")


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".tif", ".tiff", ".webp", ".bmp", ".pgm", ".ppm",
                                    pytest.param(".gif", marks=OPENCV_4)])
def test_every_suffix_opencv_decodes_is_found_in_folders(tmp_path, suffix):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    path = tmp_path / f"x{suffix}"
    ok, data = cv2.imencode(".jpg" if suffix in (".jfif", ".jpe") else suffix, image[..., 0] if suffix == ".pgm" else image)
    assert ok
    path.write_bytes(data.tobytes())
    assert suffix in IMAGE_SUFFIXES
    assert collect_images([tmp_path]).files == [path]


def test_skipped_files_are_counted_and_listed(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _picture(photos / "a.png", 0)
    _picture(photos / "sub" / "b.jfif", 1)
    (photos / "notes.txt").write_text("not an image")
    (photos / "sub" / "model.onnx").write_bytes(b"\0")
    result = run_cli("explain", tiny_bundle.path, photos, "--method", "eigen", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 file(s) that are not images" in result.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(Path(p).name for p in data["skipped"]) == ["model.onnx", "notes.txt"]
    assert len(data["results"]) == 2                                       # the .jfif too
    audit = run_cli("audit", tiny_bundle.path, photos, "--methods", "eigen", "--metrics", "adcc", "--out", tmp_path / "r")
    assert audit.returncode == 0 and "skipped 2 file(s)" in audit.stdout
    assert len(json.loads((tmp_path / "r" / "summary.json").read_text())["skipped"]) == 2


IMAGENET_LIKE = ["tench", "crane", "tabby", "tiger cat", "crane", "Persian cat"]


def test_an_ambiguous_label_lists_its_classes_and_an_unknown_one_suggests():
    with pytest.raises(CamInferError, match=r"'crane' is ambiguous: classes 1, 4"):
        class_index("crane", IMAGENET_LIKE, 6)
    with pytest.raises(CamInferError, match=r"unknown class label 'tabby cat'.*did you mean .*'tabby' \(2\)"):
        class_index("tabby cat", IMAGENET_LIKE, 6)
    assert class_index("tiger cat", IMAGENET_LIKE, 6) == 3 and class_index("5", IMAGENET_LIKE, 6) == 5
    with pytest.raises(CamInferError, match="integer index or a label string, not 281.0"):
        class_index(281.0, IMAGENET_LIKE, 6)
    with pytest.raises(CamInferError, match="not True"):
        class_index(True, IMAGENET_LIKE, 6)


def test_explain_with_a_float_target_is_the_packages_error(tiny_bundle):
    ex = Explainer(tiny_bundle)
    x = np.zeros((1, *tiny_bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match="not 2.0"):
        ex.explain(x, "eigen", target=2.0)


@pytest.mark.parametrize("call, message", [
    (lambda b, x: Explainer(None), "a bundle is a folder .* not NoneType"),
    (lambda b, x: Explainer(123), "a bundle is a folder .* not int"),
    (lambda b, x: Explainer(b, threads="2"), "threads must be a positive integer, not '2'"),
    (lambda b, x: Explainer(b, foo=1), "the onnxruntime backend takes no option 'foo'; it takes provider, device"),
    (lambda b, x: Explainer(b, backend="openvino", hint="latency", bar=2),
     "the openvino backend takes no option 'bar'"),
    (lambda b, x: Explainer(b).explain(x, method=None), r"method must be one method's name \(a str\), not NoneType"),
    (lambda b, x: Explainer(b).explain(x, method=["recipro", "eigen"]), "method must be one method's name"),
    (lambda b, x: Explainer(b).explain(5), "explain.. takes image paths, RGB arrays .* not int"),
    (lambda b, x: Explainer(b).explain(None), "explain.. takes image paths, RGB arrays .* not NoneType"),
    (lambda b, x: Explainer(b).explain(x.astype(np.int64)), r"a preprocessed \(N,C,H,W\) batch must be floating point"),
    (lambda b, x: Explainer(b).explain([ROOT / "cam_infer"]), "is a folder, not an image"),
    (lambda b, x: Explainer(b).explain([None]), r"an image is a path, an RGB array .* or a PIL image, not NoneType"),
    (lambda b, x: Explainer(b).explain([b"\xff\xd8"]), r"an image is a path, an RGB array .* not bytes"),
    (lambda b, x: Explainer(b).explain(np.full((40, 50, 3), 200, np.uint16)),     # 8-bit pixels in a wide type
     "a uint16 image holds values up to 65535, and this one none above 255"),
    (lambda b, x: split_onnx(None, out="unused"), "model is an .onnx path or an onnx.ModelProto, not NoneType"),
    (lambda b, x: split_onnx(b.features_path, layer=None, out="unused"), "layer is a name .* or 'auto', not None"),
    (lambda b, x: split_onnx(b.features_path, out=3), "out is a folder's path, not int"),
    (lambda b, x: split_onnx(b.features_path, out="unused", preprocessing={"meen": [1, 2, 3]}),
     "preprocessing has no field 'meen'; its fields: input_size"),
    (lambda b, x: split_onnx(b.features_path, out="unused", labels=5), "labels are a list of class names"),
    (lambda b, x: split_model(b.features_path, out="unused", bogus=1), "split takes no option 'bogus'"),
    (lambda b, x: Explainer(b).explain(x, upsampled="no"), "upsampled must be True or False, not 'no'"),
    (lambda b, x: Explainer(b).explain(x, enhance_options={"a": 1}), "give the enhancer with enhance="),
    (lambda b, x: fuse(b, 3), r"method must be one method's name \(a str\), not int"),     # None: the default
    (lambda b, x: Explainer(b, backend="openvino", device=0), "device is an OpenVINO device's name"),
    (lambda b, x: Explainer(b, memory_budget_mb="512"), "memory_budget_mb must be a positive number"),
    (lambda b, x: Explainer(b, backend=["openvino"]), "backend is a runtime's name"),
    (lambda b, x: Explainer(b).explain(x).overlay(0, alpha="0.5"), "alpha must be a number in"),
    (lambda b, x: Explainer(b).explain(x).overlay(0, colormap=["jet"]), "unknown colormap"),
    (lambda b, x: Explainer(b).explain(x).save(None), "folder is a folder's path, not NoneType"),
    (lambda b, x: read_maps(None), "read_maps takes a run's folder"),
    (lambda b, x: Explainer(b).explain(np.full_like(x, 200.0)),          # raw 0–255 pixels, never normalised
     r"the batch's values span 200 … 200, far outside what this bundle's preprocessing gives a photo"),
    (lambda b, x: Explainer(b).explain(np.full((40, 50, 3), 90, np.uint8), "recipro").overlay(0, 3),
     r"no map \(0, 3\): this explanation has one map per image"),
])
def test_api_misuse_is_the_packages_error_not_a_type_or_index_error(tiny_bundle, call, message):
    x = np.zeros((1, *tiny_bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match=message):
        call(tiny_bundle, x)


def test_a_pil_image_is_read_by_its_colours_alone_or_in_a_list(tiny_bundle):
    """A PIL image alone was refused and in a list taken as np.asarray: a palette image then became its indices."""
    pil = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
    ex = Explainer(tiny_bundle)
    want = ex.explain(rgb, "recipro").maps
    np.testing.assert_array_equal(ex.explain(pil.fromarray(rgb), "recipro").maps, want)
    np.testing.assert_array_equal(ex.explain([pil.fromarray(rgb)], "recipro").maps, want)
    palette = pil.fromarray(rgb).convert("P")                      # 256 colours: its RGB, not its index map
    np.testing.assert_array_equal(ex.explain([palette], "recipro").maps,
                                  ex.explain(np.asarray(palette.convert("RGB")), "recipro").maps)


def test_numpy_scalars_are_taken_where_python_ones_are(tiny_bundle):
    """top_k=np.int64(8) was refused while target and top_classes take NumPy integers; target=np.array(1), what
    argmax() returns, was a TypeError."""
    ex = Explainer(tiny_bundle)
    x = np.random.default_rng(0).standard_normal((2, *tiny_bundle.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(ex.explain(x, "score", top_k=np.int64(2)).maps, ex.explain(x, "score", top_k=2).maps)
    np.testing.assert_array_equal(ex.explain(x, "cam", target=np.array(1)).targets, [1, 1])


def test_overlay_of_a_one_map_explanation_takes_j_0_as_its_map(tiny_bundle):
    e = Explainer(tiny_bundle).explain(np.full((40, 50, 3), 90, np.uint8), "recipro")
    np.testing.assert_array_equal(e.overlay(0, 0), e.overlay(0))
    stack = np.stack([np.full((40, 50, 3), v, np.uint8) for v in (90, 200)])      # (N,H,W,3) photos, still taken
    both = Explainer(tiny_bundle).explain(stack, "recipro")
    np.testing.assert_array_equal(both.overlay(0), e.overlay(0))
    wide = Explainer(tiny_bundle).explain(stack.astype(np.uint16) * 257, "recipro")   # 16-bit photos too
    np.testing.assert_array_equal(wide.maps, both.maps)


def test_explain_takes_a_generator_of_paths(tiny_bundle, tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.full((40, 50, 3), 60 + 100 * i, np.uint8))
    explainer = Explainer(tiny_bundle)
    from_glob = explainer.explain(sorted(tmp_path.glob("*.png")).__iter__(), "recipro")
    listed = explainer.explain(sorted(tmp_path.glob("*.png")), "recipro")
    assert from_glob.names == ["p0", "p1"]
    np.testing.assert_array_equal(from_glob.maps, listed.maps)


@pytest.fixture(scope="module")
def crane_bundle(tmp_path_factory):
    from tiny_onnx import tiny_cnn

    from cam_infer import split_onnx
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("crane\nowl\ncrane\ntabby\n")
    return split_onnx(tiny_cnn(), layer="auto", out=tmp_path_factory.mktemp("b") / "b", labels=labels)


def test_cli_target_ambiguous_or_unknown_is_one_line(tmp_path, crane_bundle):
    photo = _picture(tmp_path / "a.png", 0)
    assert_one_line_error(run_cli("explain", crane_bundle.path, photo, "--target", "crane", "--out", tmp_path / "o"),
                          "classes 0, 2 are all called 'crane'")
    assert_one_line_error(run_cli("explain", crane_bundle.path, photo, "--target", "tabby cat", "--out", tmp_path / "o"),
                          "did you mean 'tabby' (3)")


def test_audit_boxes_take_indices_and_labels_and_refuse_unknown_ones(tmp_path, crane_bundle):
    photo = _picture(tmp_path / "a.png", 0, size=(64, 64))
    ex = Explainer(crane_bundle)
    predicted = int(ex.explain([photo], "eigen").targets[0])
    base = ["audit", crane_bundle.path, photo, "--methods", "eigen", "--metrics", "pointing", "--tolerance", "64"]
    whole = [0, 0, 63, 63]
    boxes = tmp_path / "boxes.json"
    for i, label in enumerate((predicted, str(predicted)) + ((crane_bundle.labels[predicted],)
                                                             if crane_bundle.labels[predicted] != "crane" else ())):
        boxes.write_text(json.dumps({"a.png": [{"box": whole, "label": label}]}))
        result = run_cli(*base, "--boxes", boxes, "--out", tmp_path / f"r{i}")       # boxes changed: a new audit
        assert result.returncode == 0, result.stderr
        assert "pointing 1.000" in result.stdout, result.stdout          # a box of the class, the whole image
    boxes.write_text(json.dumps({"a.png": [{"box": whole, "label": "zebra"}]}))
    assert_one_line_error(run_cli(*base, "--boxes", boxes, "--out", tmp_path / "rz"), "unknown class label 'zebra'")
    boxes.write_text(json.dumps({"a.png": [{"box": whole, "label": 243}]}))
    assert_one_line_error(run_cli(*base, "--boxes", boxes, "--out", tmp_path / "ri"), "class 243 is out of range")
    assert_one_line_error(run_cli(*base, "--out", tmp_path / "rn"), "needs ground-truth boxes")


def test_the_report_says_how_many_images_each_metric_is_over(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _picture(photos / f"p{i}.png", i, size=(64, 64))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"p0.png": [[0, 0, 63, 63]]}))               # one image of three has a box
    result = run_cli("audit", tiny_bundle.path, photos, "--methods", "eigen", "--metrics", "adcc,pointing",
                     "--boxes", boxes, "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "pointing 1.000 (n=1)" in result.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["counts"]["eigen"]["pointing"] == 1 and summary["counts"]["eigen"]["adcc"] == 3
    assert "(n=1)" in (tmp_path / "r" / "index.html").read_text()


def test_audit_overlay_names_are_relative_to_the_input_folder(tmp_path, tiny_bundle):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _picture(photos / "sub" / "both.png", 0)
    result = run_cli("audit", tiny_bundle.path, photos, "--methods", "eigen", "--metrics", "adcc", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "r" / "overlays").iterdir()] == ["sub%2Fboth.png__eigen.png"]


# --- internal errors that are user errors ----------------------------------------------------------------


def test_out_that_is_a_file_is_one_line(tmp_path, tiny_bundle):
    photo = _picture(tmp_path / "a.png", 0)
    existing = tmp_path / "existing"
    existing.write_text("x")
    assert_one_line_error(run_cli("audit", tiny_bundle.path, photo, "--methods", "eigen", "--out", existing),
                          "is a file, not a folder")
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photo, "--out", existing), "is a file, not a folder")


@pytest.mark.skipif(os.name == "nt" or shutil.which("unshare") is None, reason="needs unshare to mount read-only")
def test_read_only_outputs_are_one_line(tmp_path, tiny_bundle, tiny_onnx_path):
    """A read-only file system (a bind mount in a private mount namespace), as users meet on containers."""
    photo = _picture(tmp_path / "a.png", 0)
    ro = tmp_path / "ro"
    ro.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {ro} {ro} && touch {ro}/x"],
                           capture_output=True, text=True)
    if "Read-only" not in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:100]}")
    commands = [["split", tiny_onnx_path, "--out", ro / "b"],
                ["fuse", tiny_bundle.path, "--method", "eigen", "--out", ro / "m.onnx"],
                ["audit", tiny_bundle.path, photo, "--methods", "eigen", "--metrics", "adcc", "--out", ro / "r"],
                ["explain", tiny_bundle.path, photo, "--out", ro / "e"]]
    for command in commands:
        line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "cam_infer", *map(str, command)])
        result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {ro} {ro} && exec {line}"],
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
        assert_one_line_error(result, "ead-only")


def test_info_json_into_a_closed_pipe_exits_quietly(tiny_bundle):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = f"'{sys.executable}' -m cam_infer info '{tiny_bundle.path}' --json | head -c 10 >/dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.stderr == "" and result.returncode == 0


# --- what users of the other libraries reach for first ---------------------------------------------------


def test_the_readme_overlay_snippet_runs(tmp_path):
    """The classifiers guide's "Explain from Python" block, run as written with its placeholders filled in."""
    from cam_infer.tools.demo import embedded_bundle_path
    text = (ROOT / "docs" / "guides" / "classifiers.md").read_text()
    block = re.search(r"## Explain from Python\n\n```python\n(.*?)\n```", text, re.S).group(1)
    from cam_infer.tools.synthetic import scene
    for name, split in (("cat.jpg", "large"), ("dog.png", "small")):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(scene(split, 0, 0).image, cv2.COLOR_RGB2BGR))
    code = block.replace('"bundle/"', repr(str(embedded_bundle_path()))).replace('"out/"', repr(str(tmp_path / "o")))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    names = {}
    try:
        exec(compile(code, "classifiers.md", "exec"), names)
    finally:
        os.chdir(cwd)
    assert len(list((tmp_path / "o").glob("*.png"))) >= 2
    h, w = names["e"].images[0].shape[:2]
    np.testing.assert_array_equal(names["blend"], names["picture"][-h:, :w])   # the plain blend, placed as e.overlay
