"""Every Python snippet of the README and of the documentation pages (docs/**/*.md) runs as written: each
block is saved as a script and run with `python` in a folder holding the files it names (a model, a bundle,
photos), as a reader would run it. A docs block that cannot run here is preceded by
`<!-- not runnable: the reason -->`, and is skipped with that reason.

Every command of the README's ```bash blocks runs too, line by line in that folder: a `cam-infer` line as
`python -m cam_infer` (a `split` starts without the bundle it writes; a model file given where a bundle is
taken is split into a cache inside the folder); a `cam-infer serve` line starts the server, which must
answer /v2/health/ready, the block's `curl` lines are sent to it (with `--fail`), and it must stop cleanly
on SIGTERM. Install lines (`pip`, `python3 -m venv`) are left to the fresh-venv replay of the README's two
commands in tests/test_first_hour.py; any other line fails the test, so no command goes unchecked.

The files a snippet may name, and what stands in for them here:
- `model.onnx`: a small ONNX classifier; `bundle/`: its split; `cat.jpg`, `dog.png`, `photos/`: scenes;
- `bundles/mobilenet`: the real MobileNetV2 split (../shared/data), `mobilenetv2.onnx` the file it is split
  from, `imagenet_classes.txt` its class names, `samoyed.jpg` a real photo; `yolov8n.onnx`: a real YOLOv8n
  (../shared/data/deployed/nudenet_320n.onnx) and `street.jpg` a photo it detects in.
A snippet that talks to `cam-infer serve` gets a real server on a free port in place of port 8000.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import urllib.request

import cv2
import onnx
import pytest

from conftest import HAS_TORCH, ROOT, SHARED, needs_shared
from tiny_onnx import tiny_cnn

README = ROOT / "README.md"
pytestmark = pytest.mark.slow       # replays the documentation as scripts: --run-slow, as .ci/run does

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
    if any(name in code for name in ("bundles/mobilenet", "mobilenetv2.onnx", "samoyed.jpg", "yolov8n.onnx",
                                     "street.jpg")):
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
    from cam_infer.tools.synthetic import scene
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
        shutil.copy(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", work / "mobilenetv2.onnx")
        shutil.copy(SHARED / "imagenet_classes.txt", work / "imagenet_classes.txt")
        shutil.copy(SHARED / "images" / "samoyed_dog.jpg", work / "samoyed.jpg")
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


# --- the README's commands ----------------------------------------------------------------------------------

INSTALLS = ("pip ", "python3 -m venv ")


def bash_blocks(page: Path = README) -> list[tuple[int, str]]:
    """(line, code) of every ```bash block of a page."""
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```bash\n(.*?)\n```", text, re.S)]


def command_cases():
    for line, code in bash_blocks():
        commands = [c for c in code.splitlines() if c.strip() and not c.startswith(INSTALLS)]
        marks = needs(code) if commands else [pytest.mark.skip(
            reason="installs: tests/test_first_hour.py replays them in a fresh virtual environment (--run-slow)")]
        yield pytest.param(commands, id=f"README.md line {line}", marks=marks)


def cli(words: list[str]) -> list[str]:
    """`cam-infer ...` as this checkout's `python -m cam_infer ...`."""
    assert words[0] == "cam-infer", words
    return [sys.executable, "-m", "cam_infer", *words[1:]]


def start_server(words: list[str], work: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """The README's `cam-infer serve` line on a free port; (process, port) once it answers ready."""
    process = subprocess.Popen([*cli(words), "--port", "0"], cwd=work, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = process.stdout.readline()
    port = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not port:
        process.kill()
        raise AssertionError(f"{shlex.join(words)}: the server did not start: {line}{process.stderr.read()}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/v2/health/ready", timeout=60) as answer:
        assert answer.status == 200
    return process, int(port.group(1))


@pytest.mark.parametrize("commands", command_cases())
def test_the_readme_commands_run_as_written(commands, folder, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CAM_INFER_CACHE_DIR=str(tmp_path / "cache"))
    server = None
    try:
        for command in commands:
            words = shlex.split(command, comments=True)
            if words[:2] == ["cam-infer", "serve"]:
                server = start_server(words, work, env)
                continue
            if words[0] == "curl":
                assert server, f"{command}: no `cam-infer serve` line before it in its block"
                run = ["curl", "--fail", "--silent", "--show-error",
                       *(w.replace("127.0.0.1:8000", f"127.0.0.1:{server[1]}") for w in words[1:])]
            else:
                if words[:2] == ["cam-infer", "split"]:       # a reader starts without the bundle it writes
                    shutil.rmtree(work / words[words.index("--out") + 1], ignore_errors=True)
                run = cli(words)
            result = subprocess.run(run, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n---\n{result.stderr[-3000:]}"
    finally:
        if server:
            server[0].send_signal(signal.SIGTERM)
            assert server[0].wait(timeout=60) == 0, server[0].stderr.read()[-3000:]


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as MkDocs and GitHub make them."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in headings}


def test_every_readme_link_leads_to_a_file_of_the_repository():
    """The site is not hosted: the README links to the pages in docs/ (and to bench/, CONTRIBUTING.md)."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert len(links) > 20
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), f"{link}: link to the page in the repository"
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else README
        assert target.is_file(), f"{link}: no such file"
        assert not anchor or anchor in heading_anchors(target), f"{link}: no such heading"
