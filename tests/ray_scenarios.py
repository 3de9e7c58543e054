"""Scale-out scenarios on a real Ray cluster, run by tests/test_scale_out.py inside a private network
namespace (`unshare --net`: only a loopback interface, so every socket Ray opens is bound to 127.0.0.1).

    python tests/ray_scenarios.py BUNDLE SCENES OUT

starts `ray start --head` on 127.0.0.1 with 2 CPUs, then, each into its own folder under OUT:
- ``same``: the audit and explain of SCENES with --ray ADDRESS;
- ``worker``: the audit, one Ray worker process killed with SIGKILL once 4 images are written;
- ``driver``: the audit, its driver killed with SIGKILL once 4 images are written, then run again;
- ``unreadable``: the audit of SCENES plus a file that is not an image;
and writes OUT/scenarios.json (return codes, what was killed, stderr tails) for the test to check. Every
wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 6391
ADDRESS = f"127.0.0.1:{PORT}"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def main(bundle: str, scenes: str, out: str) -> None:
    out_root = Path(out)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    started = subprocess.run(RAY + ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(PORT),
                                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                             env=ENV, capture_output=True, text=True, timeout=120)
    report = {"started": started.returncode, "start_log": started.stderr[-2000:]}
    try:
        if started.returncode == 0:
            report.update(scenarios(bundle, scenes, out_root))
    finally:
        subprocess.run(RAY + ["stop", "--force"], env=ENV, capture_output=True, timeout=120)
        (out_root / "scenarios.json").write_text(json.dumps(report, indent=1))


def scenarios(bundle: str, scenes: str, out: Path) -> dict:
    audit = ["audit", bundle, scenes, "--boxes", str(Path(scenes) / "boxes.json"), "--methods", "recipro,score",
             "--option", "score.top_k=16", "--ray", ADDRESS]
    report = {}
    same = cli(*audit, "--out", out / "same_audit")
    explained = cli("explain", bundle, scenes, "--method", "recipro,eigen", "--ray", ADDRESS, "--out",
                    out / "same_explain")
    report["same"] = {"audit": same.returncode, "explain": explained.returncode,
                      "stderr": (same.stderr + explained.stderr)[-2000:]}

    process = start(*audit, "--out", out / "worker")
    killed = kill_when(out / "worker", process, lambda: workers_of_ray())
    process.wait(timeout=300)
    report["worker"] = {"killed": killed, "returncode": process.returncode, "stderr": process.stderr.read()[-2000:]}

    process = start(*audit, "--out", out / "driver")
    killed = kill_when(out / "driver", process, lambda: [process.pid])
    process.wait(timeout=300)
    again = cli(*audit, "--out", out / "driver")
    report["driver"] = {"killed": killed, "first": process.returncode, "again": again.returncode,
                        "stderr": again.stderr[-2000:]}

    mixed = out / "mixed"
    shutil.copytree(scenes, mixed)
    (mixed / "broken.png").write_bytes(b"not a picture at all")
    broken = cli(*audit[:2], str(mixed), *audit[3:], "--out", out / "unreadable")
    report["unreadable"] = {"returncode": broken.returncode, "stdout": broken.stdout, "stderr": broken.stderr}
    return report


def cli(*args, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "cam_infer", *map(str, args)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_when(out: Path, process, targets, images: int = 4, timeout: float = 240) -> list[int]:
    """SIGKILL the processes `targets()` names once metrics.csv holds `images` images (2 rows each) and the
    run is still going; returns the pids killed (none: the run ended first or never got there)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        csv = out / "metrics.csv"
        if csv.exists() and csv.read_text().count("\n") >= 1 + 2 * images:
            pids = targets()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return pids[:1] if pids else []
        time.sleep(0.02)
    return []


def workers_of_ray() -> list[int]:
    """The Ray actor processes doing the run's work (their command line names the actor class)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command.startswith("ray::") and "RayWorker" in command:
                found.append(int(entry.name))
    return sorted(found)[:1]


if __name__ == "__main__":
    main(*sys.argv[1:4])
