"""Scale-out: worker processes on this machine (--workers) and a real Ray cluster (--ray) write the same
files as one process; killed workers and drivers lose nothing; unreadable images are reported once.

The Ray tests start a real cluster with `ray start --head` inside a private network namespace, where the
only interface is loopback (tests/ray_scenarios.py); they skip, saying why, where Ray is not installed or
no namespace can be made."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import assert_one_line_error, run_cli

from cam_infer.synthetic import write_scenes

SHAPES = ROOT / "cam_infer" / "data" / "shapes"
AUDIT = ["--methods", "recipro,score", "--option", "score.top_k=16"]
HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, "cluttered", 16)
    return folder


@pytest.fixture(scope="module")
def local(scenes, tmp_path_factory):
    """The reference: the audit and explain in one process."""
    out = tmp_path_factory.mktemp("local")
    audit = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", out / "audit")
    explain = run_cli("explain", SHAPES, scenes, "--method", "recipro,eigen", "--out", out / "explain")
    assert audit.returncode == 0 and explain.returncode == 0, audit.stderr + explain.stderr
    return out


def assert_same_audit(a: Path, b: Path) -> None:
    for name in ("metrics.csv", "summary.json", "index.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.name for p in (a / "overlays").iterdir()) == sorted(p.name for p in (b / "overlays").iterdir())
    for p in (a / "overlays").iterdir():
        assert p.read_bytes() == (b / "overlays" / p.name).read_bytes(), p.name


def assert_same_explain(a: Path, b: Path) -> None:
    """The same overlays, byte for byte, and the same records but for their timings."""
    first, second = (json.loads((x / "results.json").read_text()) for x in (a, b))
    untimed = [{k: v for k, v in r.items() if k != "milliseconds"} for r in first["results"]]
    assert untimed == [{k: v for k, v in r.items() if k != "milliseconds"} for r in second["results"]]
    assert first["settings"] == second["settings"] and first["errors"] == second["errors"]
    pngs = sorted(p.name for p in a.glob("*.png"))
    assert pngs == sorted(p.name for p in b.glob("*.png")) and len(pngs) == 32
    for name in pngs:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- worker processes on this machine --------------------------------------------------------------------

def test_worker_processes_write_the_same_files_as_one_process(scenes, local, tmp_path):
    audit = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", tmp_path / "audit",
                    "--workers", "2")
    explain = run_cli("explain", SHAPES, scenes, "--method", "recipro,eigen", "--out", tmp_path / "explain",
                      "--workers", "2")
    assert audit.returncode == 0 and explain.returncode == 0, audit.stderr + explain.stderr
    assert_same_audit(local / "audit", tmp_path / "audit")
    assert_same_explain(local / "explain", tmp_path / "explain")


def test_a_killed_worker_process_stops_the_run_in_one_line_and_the_rerun_completes_it(scenes, local, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cam_infer", "audit", str(SHAPES), str(scenes), "--boxes", str(scenes / "boxes.json"),
            *AUDIT, "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and process.poll() is None and killed is None:
        csv = out / "metrics.csv"
        workers = spawned_workers(process.pid)
        if csv.exists() and csv.read_text().count("\n") >= 1 + 2 * 3 and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=120)
    assert killed is not None, "the run ended before a worker could be killed"
    assert process.returncode == 1 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert "a worker process died" in stderr and "again to resume" in stderr
    again = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert_same_audit(local / "audit", out)


def spawned_workers(parent: int) -> list[int]:
    """The pool's worker processes under `parent` (spawned: their command line runs multiprocessing's spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and "spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


def test_bad_scale_out_settings_are_one_line_errors(scenes, tmp_path):
    for flags, fragment in ((["--workers", "0"], "workers must be a positive integer or 'auto'"),
                            (["--workers", "many"], "workers must be a positive integer or 'auto'"),
                            (["--threads", "0"], "threads must be a positive integer")):
        assert_one_line_error(run_cli("explain", SHAPES, scenes, "--out", tmp_path / "x", *flags), fragment)


def test_without_ray_the_flag_says_how_to_install_it(scenes, tmp_path):
    """Ray absent (an import that fails, as on a box without it): one line with the install command."""
    code = ("import sys; sys.modules['ray'] = None; from cam_infer.cli import main; "
            f"sys.exit(main(['audit', {str(SHAPES)!r}, {str(scenes)!r}, '--methods', 'recipro', '--metrics', 'adcc', "
            f"'--out', {str(tmp_path / 'o')!r}, '--ray', 'auto']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert_one_line_error(result, "pip install 'cam-infer[ray]'")


# --- a real Ray cluster ------------------------------------------------------------------------------------

def can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def ray_runs(scenes, tmp_path_factory):
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'cam-infer[ray]'); .ci/run installs it")
    if not can_unshare():
        pytest.skip("no private network namespace here (unshare --net needs root): a test cluster would listen on "
                    "every interface")
    out = tmp_path_factory.mktemp("ray")
    result = subprocess.run(["unshare", "--net", sys.executable, str(ROOT / "tests" / "ray_scenarios.py"), str(SHAPES),
                             str(scenes), str(out)], capture_output=True, text=True, timeout=1500)
    assert (out / "scenarios.json").exists(), result.stderr[-3000:]
    report = json.loads((out / "scenarios.json").read_text())
    assert report["started"] == 0, report["start_log"]
    return out, report


@pytest.mark.integration
def test_a_ray_cluster_writes_the_same_files_as_one_process(ray_runs, local):
    out, report = ray_runs
    assert report["same"]["audit"] == 0 and report["same"]["explain"] == 0, report["same"]["stderr"]
    assert_same_audit(local / "audit", out / "same_audit")
    assert_same_explain(local / "explain", out / "same_explain")


@pytest.mark.integration
def test_a_killed_ray_worker_is_replaced_and_its_image_retried(ray_runs, local):
    out, report = ray_runs
    assert report["worker"]["killed"], "no Ray worker was running when 4 images were done"
    assert report["worker"]["returncode"] == 0, report["worker"]["stderr"]
    assert_same_audit(local / "audit", out / "worker")


@pytest.mark.integration
def test_a_killed_ray_driver_resumes_to_the_same_files(ray_runs, local):
    out, report = ray_runs
    assert report["driver"]["killed"] and report["driver"]["first"] == -signal.SIGKILL
    assert report["driver"]["again"] == 0, report["driver"]["stderr"]
    assert_same_audit(local / "audit", out / "driver")


@pytest.mark.integration
def test_an_unreadable_image_on_ray_is_reported_once_and_the_rest_done(ray_runs, local):
    out, report = ray_runs
    run = report["unreadable"]
    assert run["returncode"] == 1 and "could not be read" in run["stderr"].strip().splitlines()[-1]
    errors = json.loads((out / "unreadable" / "errors.json").read_text())
    assert [Path(e["image"]).name for e in errors] == ["broken.png"]
    rows = (out / "unreadable" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 16 and "broken.png" not in "".join(rows)
