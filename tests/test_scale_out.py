"""Scale-out: worker processes on this machine (--workers) and a real Ray cluster (--ray) write the same
files as one process; killed workers and drivers lose nothing; unreadable images are reported once.

The Ray tests start a real cluster with `ray start --head` inside a private network namespace, where the
only interface is loopback (tests/ray_scenarios.py); they skip, saying why, where Ray is not installed or
no namespace can be made."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import assert_one_line_error, run_cli, without_progress

from cam_infer.jobs.journal import JOURNAL
from cam_infer.tools.synthetic import write_scenes

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
    pictures = sorted(p.name for p in a.glob("*.jpg"))
    assert pictures == sorted(p.name for p in b.glob("*.jpg")) and len(pictures) == 32
    for name in pictures:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- worker processes on this machine --------------------------------------------------------------------

@pytest.mark.integration
def test_worker_processes_write_the_same_files_as_one_process(scenes, local, tmp_path):
    audit = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", tmp_path / "audit",
                    "--workers", "2")
    explain = run_cli("explain", SHAPES, scenes, "--method", "recipro,eigen", "--out", tmp_path / "explain",
                      "--workers", "2")
    assert audit.returncode == 0 and explain.returncode == 0, audit.stderr + explain.stderr
    assert_same_audit(local / "audit", tmp_path / "audit")
    assert_same_explain(local / "explain", tmp_path / "explain")


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory):
    """48 scenes, six batches of the audit's eight, and their audit in one process: a worker killed after the
    first batch is written leaves batches to do (with two, the second could be done before the kill lands)."""
    folder = tmp_path_factory.mktemp("many")
    write_scenes(folder, "cluttered", 48)
    out = tmp_path_factory.mktemp("many-local") / "audit"
    audit = run_cli("audit", SHAPES, folder, "--boxes", folder / "boxes.json", *AUDIT, "--out", out)
    assert audit.returncode == 0, audit.stderr
    return folder, out


@pytest.mark.integration
def test_a_killed_worker_process_stops_the_run_in_one_line_and_the_rerun_completes_it(many_scenes, tmp_path):
    scenes, reference = many_scenes
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cam_infer", "audit", str(SHAPES), str(scenes), "--boxes", str(scenes / "boxes.json"),
            *AUDIT, "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and process.poll() is None and killed is None:
        journal = out / JOURNAL                           # the settings, then one line per batch done
        workers = spawned_workers(process.pid)
        if journal.exists() and journal.read_text().count("\n") >= 2 and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=120)
    assert killed is not None, "the run ended before a worker could be killed"
    assert process.returncode == 1 and all(line.startswith("cost per image: ") for line in stdout.splitlines())
    assert len(without_progress(stderr)) == 1, stderr
    assert "a worker process died" in stderr and "again to resume" in stderr
    again = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert_same_audit(reference, out)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal and /proc are Linux's")
@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_a_killed_or_terminated_driver_and_the_rerun_completes_it(many_scenes, tmp_path, sent):
    """A driver killed (SIGKILL: no chance to stop its pool) or terminated (SIGTERM: systemd, docker stop, timeout)
    left its workers running, orphaned with their models loaded, holding its stdout open. Now the workers end with
    it (the parent-death signal), a SIGTERM ends the run as Ctrl-C does (exit 143, the journal kept), and the rerun
    completes the files."""
    scenes, reference = many_scenes
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cam_infer", "audit", str(SHAPES), str(scenes), "--boxes", str(scenes / "boxes.json"),
            *AUDIT, "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and process.poll() is None:
        workers = spawned_workers(process.pid)
        if (out / JOURNAL).exists() and (out / JOURNAL).read_text().count("\n") >= 2 and len(workers) == 2:
            os.kill(process.pid, sent)
            break
        time.sleep(0.02)
    assert len(workers) == 2, "the run ended before its driver could be stopped"
    _, stderr = process.communicate(timeout=120)
    if sent == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.strip().endswith("cam-infer: terminated (run the same command again to resume)"), stderr
        journaled = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()[1:]]
        rows = (out / "metrics.csv").read_text().splitlines()[1:]      # what the journal has, not 2 s older
        assert len(rows) == sum(len(entry["rows"]) for entry in journaled) > 0
    deadline = time.time() + 30
    while time.time() < deadline and any(map(_running, workers)):
        time.sleep(0.1)
    alive = [pid for pid in workers if _running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their driver"
    again = run_cli("audit", SHAPES, scenes, "--boxes", scenes / "boxes.json", *AUDIT, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert_same_audit(reference, out)


@pytest.mark.integration
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_terminated_run_exits_without_waiting_for_the_batch_in_flight(tmp_path, workers):
    """A SIGTERM during a long batch (SS-CAM with 2 000 samples: minutes per image) stopped the run at once but the
    process exited only when the batch in its pool thread ended (Python joins those threads at exit). Now it exits
    within seconds, 143, saying so, and nothing is recorded as done."""
    scenes = tmp_path / "scenes"
    write_scenes(scenes, "large", 2, seed=0)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cam_infer", "explain", str(SHAPES), str(scenes / "large_00000.png"),
            str(scenes / "large_00001.png"), "--method", "ss-cam", "--option", "samples=2000", "--batch-size", "1",
            "--out", str(out), *workers]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None and not (out / JOURNAL).exists():
        time.sleep(0.05)
    time.sleep(2 if not workers else 6)         # inside the first image's passes (the workers start first)
    assert process.poll() is None, "the run ended before it could be stopped"
    spawned = spawned_workers(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    waited = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().endswith("cam-infer: terminated (run the same command again to resume)"), stderr
    assert waited < 15, f"exited {waited:.0f} s after the SIGTERM: it waited for the batch in flight"
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_running, spawned)):
        time.sleep(0.1)
    assert len(spawned) == (2 if workers else 0) and not any(map(_running, spawned)), "its workers outlived it"
    assert not (out / "results.json").exists() or "large_00000" not in (out / "results.json").read_text()


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie waits for its new parent to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:")) != "Z"


def _exit_on_die(item):
    """A worker's work: the item back, or, for ("die", marker), the marker written and the process gone."""
    kind, marker = item
    if kind == "die":
        Path(marker).write_text("")
        os._exit(1)
    return kind


def test_a_pool_found_broken_when_the_next_item_is_sent_is_the_one_line(tmp_path, monkeypatch):
    """A worker dies while the driver is still reading items: the next `submit` finds the pool broken and says the
    one line that a broken result says (before: BrokenProcessPool's traceback). The items wait until the real pool
    (recorded as it is made) knows it is broken."""
    from concurrent.futures import ProcessPoolExecutor

    from cam_infer.errors import CamInferError
    from cam_infer.parallel import processes
    pools = []

    class Recorded(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(processes, "ProcessPoolExecutor", Recorded)
    marker = tmp_path / "died"

    def items():
        yield ("die", str(marker))
        deadline = time.monotonic() + 60
        while not (pools and pools[0]._broken) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield ("live", None)

    with pytest.raises(CamInferError, match="a worker process died") as raised:
        list(processes.Processes(1, 1).map(_exit_on_die, items()))
    assert marker.exists()
    frames = [frame.name for frame in raised.traceback]
    assert "_submitted" in frames and "_result" not in frames, frames           # found at the submit


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


def guide_scale_out_snippet() -> str:
    """The first Python block of the scale-out guide, as written."""
    text = (ROOT / "docs" / "guides" / "scale-out.md").read_text()
    return re.search(r"```python\n(.*?)\n```", text, re.S).group(1)


def run_script(code: str, folder: Path, scenes: Path) -> subprocess.CompletedProcess:
    """`code` as a script in `folder`, beside bundle/ (the embedded ShapesNet) and photos/ (4 scenes)."""
    shutil.copytree(SHAPES, folder / "bundle")
    (folder / "photos").mkdir()
    for path in sorted(scenes.glob("*.png"))[:4]:
        shutil.copy(path, folder / "photos")
    (folder / "script.py").write_text(code)
    return subprocess.run([sys.executable, "script.py"], capture_output=True, text=True, cwd=folder,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


@pytest.mark.integration
def test_the_guide_scale_out_snippet_runs_as_a_script(scenes, tmp_path):
    result = run_script(guide_scale_out_snippet(), tmp_path, scenes)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*_recipro.jpg"))) == 4
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["errors"] == []


def test_a_script_starting_workers_without_the_main_guard_is_one_line(scenes, tmp_path):
    """The snippet without `if __name__ == "__main__":`: spawned workers would import the script again and
    die starting workers themselves (before: "a worker process died" and a traceback from each worker). Now
    the parent refuses before any worker starts: its one CamInferError, nothing from a worker."""
    guarded = guide_scale_out_snippet()
    unguarded = re.sub(r"\nif __name__ == .__main__.:[^\n]*\n", "\n", guarded)
    unguarded = "\n".join(line[4:] if line.startswith("    ") else line for line in unguarded.splitlines())
    assert unguarded != guarded and "__main__" not in unguarded
    result = run_script(unguarded, tmp_path, scenes)
    line = unguarded.splitlines().index(next(t for t in unguarded.splitlines() if "workers=2" in t)) + 1
    assert result.returncode == 1
    assert result.stderr.count("Traceback") == 1 and "RuntimeError" not in result.stderr     # the parent's only
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"cam_infer.errors.CamInferError: '{tmp_path / 'script.py'}' starts worker processes at line "
                    f"{line}, outside `if __name__ == \"__main__\":`; each worker imports the script again and "
                    "would start workers itself: put the run under that guard")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script,line", [
    ("from cam_infer.parallel.processes import unguarded_line\n\ndef main():\n    print(unguarded_line())\n\n"
     "main()\n", 6),
    ("from cam_infer.parallel.processes import unguarded_line\n\ndef main():\n    print(unguarded_line())\n\n"
     "if __name__ == '__main__':\n    main()\n", None),
])
def test_only_a_script_whose_workers_would_start_workers_is_told_to_guard(tmp_path, script, line):
    """Workers started through a function the script's top level calls: outside the guard, the line of that
    call; under the guard, nothing (never refuse a script that works). The guide snippet's tests above
    start them directly, with and without the guard."""
    (tmp_path / "script.py").write_text(script)
    result = subprocess.run([sys.executable, "script.py"], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(line), result.stderr


def test_a_package_main_or_a_command_string_is_not_reimported_by_workers():
    code = "from cam_infer.parallel.processes import unguarded_line; print(unguarded_line())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "None", result.stderr


def test_without_ray_the_flag_says_how_to_install_it(scenes, tmp_path):
    """Ray absent (an import that fails, as on a box without it): one line with the install command."""
    code = ("import sys; sys.modules['ray'] = None; from cam_infer.cli import main; "
            f"sys.exit(main(['audit', {str(SHAPES)!r}, {str(scenes)!r}, '--methods', 'recipro', '--metrics', 'adcc', "
            f"'--out', {str(tmp_path / 'o')!r}, '--ray', 'auto']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert_one_line_error(result, "pip install 'cam-infer[ray]'")


def test_ray_auto_without_a_cluster_is_one_line_in_cam_infers_terms(scenes, tmp_path):
    """`--ray auto` where no cluster runs: Ray's own search finds none (its process scan and its address file
    are told to find nothing, so clusters other tests start do not count) and raises its real error; the line
    says what to give --ray, never Ray's `--address` flag, which cam-infer does not have."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'cam-infer[ray]'); .ci/run installs it")
    code = ("import functools, sys; import ray._private.services as services; "
            "services.find_gcs_addresses = functools.cache(lambda: []); "
            "services.find_bootstrap_address = lambda *a, **k: None; from cam_infer.cli import main; "
            f"sys.exit(main(['explain', {str(SHAPES)!r}, {str(scenes)!r}, '--method', 'eigen', "
            f"'--out', {str(tmp_path / 'o')!r}, '--ray', 'auto']))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=dict(env, PYTHONPATH=str(ROOT)), timeout=120)
    assert_one_line_error(result, "Could not find any running Ray instance; --ray auto joins the one cluster")
    assert "--ray HOST:PORT" in result.stderr and "--ray local" in result.stderr
    assert "--address" not in result.stderr and "RAY_ADDRESS" not in result.stderr


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
    assert len(rows) == 1 + (2 + 3) * 16 and "broken.png" not in "".join(rows)    # 2 methods and 3 baselines
