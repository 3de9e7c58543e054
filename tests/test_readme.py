"""Every Python snippet of the README and of the documentation pages (docs/**/*.md) runs as written: each
block is saved as a script and run with `python` in a folder holding the files it names (a model, a bundle,
photos), as a reader would run it. A docs block that cannot run here is preceded by
`<!-- not runnable: the reason -->`, and is skipped with that reason.

Every command of the ```bash blocks (and every `$ ` line of the ```console blocks) of the README and the docs
runs too, line by line in that folder: a `cam-infer` line as `python -m cam_infer` (a `split` starts without the
bundle it writes; a model file given where a bundle is taken is split into a cache inside the folder; a console
block's command must print the fields the page shows); a `cam-infer serve` line starts the server, which must
answer /v2/health/ready, the block's `curl` lines are sent to it (with `--fail`, the port it asked for replaced
by the one it has), and it must stop cleanly on SIGTERM. Install lines (`pip`, `python3 -m venv`) are not run:
the README's are replayed in a fresh virtual environment by tests/test_first_hour.py, and any other may name
only extras the package declares. Any other line fails the test, so no command goes unchecked.

The files a snippet may name, and what stands in for them here:
- `model.onnx`: a small ONNX classifier; `bundle/`: its split; `cat.jpg`, `dog.png`, `photos/`: scenes;
- `bundles/mobilenet`: the real MobileNetV2 split (../shared/data), `mobilenetv2.onnx` the file it is split
  from, `imagenet_classes.txt` its class names, `samoyed.jpg` a real photo; `yolov8n.onnx`: a real YOLOv8n
  (../shared/data/deployed/nudenet_320n.onnx) and `street.jpg` a photo it detects in; the deployed files of
  ../shared/data under the names the guides give them (`DEPLOYED`); `images/` with `boxes.json` (the small
  classifier's labels) and `truth.json` (the detector's); `cam_infer/data/shapes` and
  `tests/data/transformers/vit_legacy.onnx` as in a checkout.
A snippet that talks to `cam-infer serve` gets a real server on a free port in place of port 8000.
"""

from __future__ import annotations

import importlib.util
import json
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
import openvino as ov
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
                                     "street.jpg", "truth.json", *DEPLOYED)):
        marks.append(needs_shared)
    if any(word in code for word in ("gradients=", "from_torch", "import torch", "gradcam", "layercam")):
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


TINY_LABELS = ("tabby cat", "golden retriever", "red fox", "goldfish")
DEPLOYED = {"squeezenet.onnx": "models/squeezenet1.1-fp32.onnx", "ppocr_cls.onnx": "deployed/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            **{name: f"deployed/{name}" for name in ("mobilenetv2-12-int8.onnx", "tf2onnx_mobilenet_v1_0.25_128_quant.onnx",
                                                     "mobilenet_v1_0.5_160_quant.tflite", "imagenet_labels_1001.txt")}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with every file the snippets name."""
    from cam_infer import split_onnx
    from cam_infer.tools.synthetic import scene
    work = tmp_path_factory.mktemp("readme")
    onnx.save(tiny_cnn(), work / "model.onnx")
    (work / "labels.txt").write_text("\n".join(TINY_LABELS) + "\n")
    split_onnx(work / "model.onnx", layer="auto", out=work / "bundle", labels=work / "labels.txt")
    ov.save_model(ov.convert_model(work / "model.onnx"), work / "model.xml")
    (work / "photos").mkdir()
    (work / "images").mkdir()
    boxes = {}
    for index, (name, split) in enumerate((("cat.jpg", "large"), ("dog.png", "small"), ("photos/a.png", "multiple"),
                                           ("photos/b.jpg", "cluttered"))):
        picture = scene(split, 0, index)
        cv2.imwrite(str(work / name), cv2.cvtColor(picture.image, cv2.COLOR_RGB2BGR))
        shutil.copy(work / name, work / "images" / Path(name).name)
        boxes[Path(name).name] = [{"box": [int(v) for v in box], "label": TINY_LABELS[0]} for box in picture.boxes]
    (work / "boxes.json").write_text(json.dumps(boxes))
    shutil.copytree(ROOT / "cam_infer" / "data" / "shapes", work / "cam_infer" / "data" / "shapes")   # as in a checkout
    (work / "tests" / "data" / "transformers").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "transformers" / "vit_legacy.onnx", work / "tests" / "data" / "transformers")
    if SHARED.is_dir():
        for name, source in DEPLOYED.items():
            (work / name).symlink_to(SHARED / source)
        (work / "truth.json").write_text(json.dumps({name: [{"box": [0, 0, 60, 60], "label": 0}] for name in boxes}))
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
    shutil.copytree(folder, work, symlinks=True)
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


# --- the commands of the README and of the docs ------------------------------------------------------------

INSTALLS = ("pip ", "python3 -m venv ")
EXTRAS = set(re.findall(r"^(\w+) = \[", (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
                                                  .split("\n[")[0], re.M))


def shell_blocks(page: Path = README) -> list[tuple[int, list[str], str | None]]:
    """(line, commands, why it is not runnable or None) of every ```bash block of a page (each line a command, a
    trailing backslash joining the next) and of every ```console block (its `$ ` lines)."""
    text = page.read_text()
    blocks = []
    for m in re.finditer(r"```(bash|console)\n(.*?)\n```", text, re.S):
        lines = m.group(2).replace("\\\n", " ").splitlines()
        if m.group(1) == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        blocks.append((text[:m.start()].count("\n") + 1, [c for c in lines if c.strip()], _not_runnable(text[:m.start()])))
    return blocks


def console_outputs(page: Path) -> dict[str, list[str]]:
    """A ```console block's command → the first word of each line it shows printed (the fields of `info`)."""
    outputs = {}
    for block in re.findall(r"```console\n(.*?)\n```", page.read_text(), re.S):
        for command, shown in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n?)*)", block, re.M):
            outputs[command] = [line.split()[0] for line in shown.splitlines() if line.strip()]
    return outputs


README_INSTALLS = [c for _, block, _ in shell_blocks(README) for c in block if c.startswith(INSTALLS)]


def command_cases():
    for page in PAGES:
        for line, commands, reason in shell_blocks(page):
            case = f"{page.relative_to(ROOT)} line {line}"
            if reason:
                marks = [pytest.mark.skip(reason=f"marked not runnable: {reason}")]
            elif all(c in README_INSTALLS for c in commands):
                marks = [pytest.mark.skip(reason="the README's installs: tests/test_first_hour.py replays them in a "
                                                 "fresh virtual environment (--run-slow)")]
            else:
                marks = needs("\n".join(commands))
            yield pytest.param(page, commands, id=case, marks=marks)


def cli(words: list[str]) -> list[str]:
    """`cam-infer ...` as this checkout's `python -m cam_infer ...`."""
    assert words[0] == "cam-infer", words
    return [sys.executable, "-m", "cam_infer", *words[1:]]


def check_install(command: str) -> None:
    """An install line is not run here (it would download): one of the README's is replayed in a fresh virtual
    environment by tests/test_first_hour.py; any other may name only extras the package declares and files
    the repository has."""
    if command in README_INSTALLS:
        return
    for named in re.findall(r"cam-infer\[([^\]]*)\]|\.\[([^\]]*)\]", command):
        unknown = {e.strip() for e in ",".join(named).split(",") if e.strip()} - EXTRAS
        assert not unknown, f"{command}: the package declares no extra {sorted(unknown)}"
    for file in re.findall(r"-c (\S+)", command):
        assert (ROOT / file).is_file(), f"{command}: no {file} in the repository"


def start_server(words: list[str], work: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """A `cam-infer serve` line on a free port (the port it names replaced by 0); (process, port) once it answers
    ready."""
    words = [*words[:words.index("--port")], *words[words.index("--port") + 2:]] if "--port" in words else words
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


def port_asked(words: list[str]) -> str:
    """The port a `cam-infer serve` line asks for (8000 when it names none)."""
    return words[words.index("--port") + 1] if "--port" in words else "8000"


@pytest.mark.parametrize(("command", "fault"), [("pip install 'cam-infer[serve,nosuch]'", "no extra ['nosuch']"),
                                               ('pip install -c nosuch.txt -e ".[docs]"', "no nosuch.txt")])
def test_an_install_line_naming_what_the_package_lacks_fails(command, fault):
    with pytest.raises(AssertionError, match=re.escape(fault)):
        check_install(command)


@pytest.mark.parametrize(("page", "commands"), command_cases())
def test_the_commands_run_as_written(page, commands, folder, tmp_path):
    """Each command of a block in turn, in the folder; a console block's command also prints the fields shown."""
    work = tmp_path / "work"
    shutil.copytree(folder, work, symlinks=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CAM_INFER_CACHE_DIR=str(tmp_path / "cache"), TOKEN="a-token")
    shown = console_outputs(page)
    servers = {}                                   # the port a line asked for → (process, the port it has)
    started = []                                   # every server, also one a later line on its port replaced
    try:
        for command in commands:
            if command.startswith(INSTALLS):
                check_install(command)
                continue
            words = shlex.split(command, comments=True)
            if words[:2] == ["cam-infer", "serve"]:
                servers[port_asked(words)] = start_server(words, work, env)
                started.append(servers[port_asked(words)][0])
                continue
            if words[0] == "curl":
                assert servers, f"{command}: no `cam-infer serve` line before it in its block"
                for asked, (_, port) in servers.items():
                    words = [w.replace(f"127.0.0.1:{asked}", f"127.0.0.1:{port}") for w in words]
                run = ["curl", "--fail", "--silent", "--show-error", *words[1:]]
            else:
                if words[:2] == ["cam-infer", "split"]:       # a reader starts without the bundle it writes
                    shutil.rmtree(work / words[words.index("--out") + 1], ignore_errors=True)
                run = cli(words)
            result = subprocess.run(run, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n---\n{result.stderr[-3000:]}"
            if command in shown:
                printed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
                assert printed == shown[command], f"{command}: prints {printed}, the page shows {shown[command]}"
    finally:                                       # two lines on one port (serve.md) left the first running
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            assert process.wait(timeout=60) == 0, process.stderr.read()[-3000:]


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
