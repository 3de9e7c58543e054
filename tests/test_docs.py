"""The documentation site: `mkdocs build --strict` passes (internal links and anchors checked), and the pages
generated at build time come from the code: the CLI reference from the argparse definitions, one page per
registered method with its options, one page per benchmark table. (Every Python block of the pages runs in
tests/test_readme.py.)"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_shared

HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("mkdocstrings") is not None
pytestmark = pytest.mark.slow       # builds the site and draws its pages: --run-slow, as .ci/run does

needs_mkdocs = pytest.mark.skipif(not HAS_MKDOCS, reason="mkdocs is not installed (pip install -e '.[docs]')")
PICTURES = ROOT / "docs" / "img"


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def offline() -> list[str]:
    """A prefix that runs a command without a network (a private, empty network namespace), where one can be had."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net"]
    return []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built strictly, offline where possible: the build downloads nothing."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([*offline(), sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@needs_mkdocs
def test_the_site_builds_strict_with_a_page_per_method_and_benchmark(site):
    from cam_infer.methods import METHODS
    hook = load_hook()
    for name in METHODS:
        page = site / Path(hook.method_page(name)).with_suffix("") / "index.html"
        assert page.is_file(), f"no page for method {name}"
        assert f"<code>{name}</code>" in page.read_text()
    for table in sorted((ROOT / "bench").glob("*.md")):
        assert (site / "benchmarks" / table.stem / "index.html").is_file(), f"no page for bench/{table.name}"
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "Explainer" in api and "split_onnx" in api and "doc-heading" in api      # rendered from docstrings
    assert "googleapis" not in (site / "index.html").read_text()                     # no web fonts for readers either
    contributing = (site / "contributing" / "index.html").read_text()
    assert "Where things go" in contributing and "<!-- include" not in contributing   # CONTRIBUTING.md, included


@needs_mkdocs
def test_the_cli_reference_has_every_command_and_option_of_the_parser():
    from cam_infer.cli.arguments import build_parser
    page = load_hook().cli_reference()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices
    for name, command in sub.choices.items():
        assert f"## `cam-infer {name}`" in page
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in page, f"cam-infer {name} {flag} is missing from the CLI reference"


@needs_mkdocs
def test_a_method_page_shows_its_formula_options_and_measured_speed():
    from cam_infer.methods import METHODS
    page = load_hook().method_reference(METHODS["recipro"])
    assert "Byun & Lee" in page                                        # the module docstring's paper
    for option, default in (("score", "'prob'"), ("kernel", "'onehot'"), ("closed_form", "True")):
        assert f"| `{option}` | `{default}` |" in page
    assert "'gaussian3'" in page                                      # a choice that is not the default
    assert "| measured: time ÷ forward (ResNet-50, OpenVINO, 2 cores) | 1." in page   # from bench/methods.md


def test_generating_the_pages_imports_no_torch():
    code = ("import sys, importlib.util, types; sys.modules.setdefault('mkdocs', types.ModuleType('mkdocs'));"
            "s = types.ModuleType('mkdocs.structure'); f = types.ModuleType('mkdocs.structure.files'); f.File = object;"
            "sys.modules.setdefault('mkdocs.structure', s); sys.modules.setdefault('mkdocs.structure.files', f);"
            f"spec = importlib.util.spec_from_file_location('g', {str(ROOT / 'docs' / 'hooks' / 'generate.py')!r});"
            "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g);"
            "g.cli_reference(); [g.method_reference(s) for s in g.methods().values()]; g.methods_index();"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_every_method_has_its_picture_and_the_pictures_stay_small():
    from cam_infer.methods import METHODS
    missing = [name for name in METHODS if not (PICTURES / "methods" / f"{name}.jpg").is_file()]
    assert not missing, f"no picture for {missing}: run python docs/pictures.py"
    total = sum(f.stat().st_size for f in PICTURES.rglob("*") if f.is_file())
    assert total < 500_000, f"docs/img holds {total} bytes"


@needs_shared
def test_the_class_agnostic_methods_pictures_are_drawn_as_the_package_draws_them(tmp_path):
    """docs/img/methods/<method>.jpg of each class-agnostic method is what docs/pictures.py draws today (redrawn
    here, cheap ones only): pictures drawn before captions said "class-agnostic" named a class over a map that does
    not depend on it. Compared row by row, so that a caption strip that changed is seen."""
    import cv2
    import numpy as np
    from cam_infer import Explainer
    from cam_infer.methods import GRADIENT_FREE, METHODS
    spec = importlib.util.spec_from_file_location("docs_pictures", ROOT / "docs" / "pictures.py")
    pictures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pictures)
    bundle, image, _ = pictures.subject(tmp_path)
    explainer = Explainer(bundle)
    agnostic = [name for name in GRADIENT_FREE if not METHODS[name].class_specific]
    assert agnostic
    for name in agnostic:
        pictures.write_jpeg(tmp_path / f"{name}.jpg", explainer.explain([image], name).overlay(0))
        drawn, committed = (cv2.imread(str(path)).astype(np.float32)
                            for path in (tmp_path / f"{name}.jpg", PICTURES / "methods" / f"{name}.jpg"))
        assert drawn.shape == committed.shape, f"{name}.jpg is stale: run python docs/pictures.py"
        worst_row = np.abs(drawn - committed).mean(axis=(1, 2)).max()
        assert worst_row < 4, f"{name}.jpg is stale (a row differs by {worst_row:.1f}): run python docs/pictures.py"


def test_a_not_runnable_block_must_say_why():
    from test_readme import NOT_RUNNABLE, python_blocks
    assert NOT_RUNNABLE.search("<!-- not runnable: needs a cluster -->\n")
    assert not NOT_RUNNABLE.search("<!-- not runnable: -->\n")
    page = ROOT / "docs" / "migrating.md"
    reasons = [reason for _, _, reason in python_blocks(page)]
    assert any(reasons) and not all(reasons)             # their calls are marked, ours run
