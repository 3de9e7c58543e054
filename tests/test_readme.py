"""Every Python snippet of the README and of the documentation pages (docs/**/*.md) runs as written: each
block is saved as a script and run with `python` in a folder holding the files it names (a model, a bundle,
photos), as a reader would run it. A docs block that cannot run here is preceded by
`<!-- not runnable: the reason -->`, and is skipped with that reason.

The files a snippet may name, and what stands in for them here:
- `model.onnx`: a small ONNX classifier; `bundle/`: its split; `cat.jpg`, `dog.png`, `photos/`: scenes;
- `bundles/mobilenet`: the real MobileNetV2 split (../shared/data); `yolov8n.onnx`: a real YOLOv8n
  (../shared/data/deployed/nudenet_320n.onnx) and `street.jpg` a photo it detects in.
A snippet that talks to `cam-infer serve` gets a real server on a free port in place of port 8000.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import onnx
import pytest

from conftest import HAS_TORCH, ROOT, SHARED, needs_shared
from tiny_onnx import tiny_cnn

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
NOT_RUNNABLE = re.compile(r"<!-- not runnable: ([^>]*\S)\s*-->\s*$")


def python_blocks(page: Path = README) -> list[tuple[int, str, str | None]]:
    """(line, code, why it is not runnable or None) of every ```python block of a page."""
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1), _not_runnable(text[:m.start()]))
            for m in re.finditer(r"```python\n(.*?)\n```", text, re.S)]


def _not_runnable(before: str) -> str | None:
    """The reason given just before a block for not running it, if any."""
    mark = NOT_RUNNABLE.search(before)
    return mark.group(1) if mark else None


def needs(code: str) -> list:
    """The marks a snippet's own needs call for: shared data, torch, a server."""
    marks = []
    if any(name in code for name in ("bundles/mobilenet", "yolov8n.onnx", "street.jpg")):
        marks.append(needs_shared)
    if any(word in code for word in ("gradients=", "from_torch", "import torch")):
        marks.append(pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed"))
    if ".plot(" in code:
        marks.append(pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                        reason="matplotlib is not installed"))
    if "tritonclient" in code:
        marks += [pytest.mark.integration,
                  pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")]
    return marks


def cases():
    for page in PAGES:
        for line, code, reason in python_blocks(page):
            marks = [pytest.mark.skip(reason=f"marked not runnable: {reason}")] if reason else needs(code)
            yield pytest.param(page, code, id=f"{page.relative_to(ROOT)} line {line}", marks=marks)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with every file the snippets name."""
    from cam_infer import split_onnx
    from cam_infer.synthetic import scene
    work = tmp_path_factory.mktemp("readme")
    onnx.save(tiny_cnn(), work / "model.onnx")
    split_onnx(work / "model.onnx", layer="auto", out=work / "bundle")
    (work / "photos").mkdir()
    for index, (name, split) in enumerate((("cat.jpg", "large"), ("dog.png", "small"), ("photos/a.png", "multiple"),
                                           ("photos/b.jpg", "cluttered"))):
        cv2.imwrite(str(work / name), cv2.cvtColor(scene(split, 0, index).image, cv2.COLOR_RGB2BGR))
    if SHARED.is_dir():
        split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=work / "bundles" / "mobilenet",
                   labels=SHARED / "imagenet_classes.txt")
        shutil.copy(SHARED / "deployed" / "nudenet_320n.onnx", work / "yolov8n.onnx")
        cv2.imwrite(str(work / "street.jpg"), cv2.imread(str(SHARED / "deployed" / "basketball1.png")))
    return work


def serve_for(code: str, work: Path, page: Path = README):
    """A real `cam-infer serve` of the model the snippet's page serves, or None when the snippet calls no server."""
    if "tritonclient" not in code:
        return None
    served = re.search(r"cam-infer serve (\S+)", page.read_text()).group(1)
    process = subprocess.Popen([sys.executable, "-m", "cam_infer", "serve", served, "--port", "0"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = process.stdout.readline()
    port = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not port:
        process.kill()
        raise AssertionError(f"the server did not start: {line}{process.stderr.read()}")
    return process, port.group(1)


@pytest.mark.parametrize(("page", "code"), cases())
def test_the_python_snippet_runs_as_written(page, code, folder, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    for written in re.findall(r"out=\"([^\"]+)/\"", code):          # a snippet that writes a bundle starts without it
        shutil.rmtree(work / written, ignore_errors=True)
    server = serve_for(code, work, page)
    if server:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server[1]}")
    (work / "snippet.py").write_text(code + "\n")
    try:
        result = subprocess.run([sys.executable, "snippet.py"], cwd=work, capture_output=True, text=True, timeout=600,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        if server:
            server[0].send_signal(signal.SIGTERM)
            server[0].wait(timeout=60)
    assert result.returncode == 0, f"{code}\n---\n{result.stderr[-3000:]}"
