"""The throughput table (issue: audits that outgrow one machine): images per second of folder runs
on this machine's 2 cores, by where the work runs, next to the model's own throughput forward rate.

- Images: JPEGs cut from the photos of ../shared/data/images (random crops, longer side 500 px, as
  ImageNet's validation images are), 1 000 of them (10 000 for the memory check).
- Bundles: MobileNetV2 (torchvision weights) and ResNet-50 (seed-0 weights), exported from `models/` as in
  bench/seed_methods.py.
- Pipeline ceiling (the first tables): what the deployment itself reads through the same files, measured in
  the same process as explain and alternated with it run by run: decode + the bundle's preprocessing in a
  thread per core feeding the unsplit model's forward pass with every core (ONNX Runtime: batches of 8 on
  one session, each decoded and run in a thread of cores + 1, as explain's batches are; OpenVINO:
  THROUGHPUT hint, an AsyncInferQueue of batch-1 requests), no explanation. Beside it `explain --method
  recipro` (the explainer opened once, as the command opens it: OpenVINO in throughput mode; the files all
  written; `--overlays none`, `jpg` and `png`) at the same precision: float32 on both runtimes, and
  OpenVINO's default (auto: bf16 on this CPU). Fewer images than below (300 MobileNetV2, 100 ResNet-50) to
  keep the runs short on a shared machine: read the ratios, not the rates.
- Beside each pipeline table, pytorch-grad-cam's GradCAM loop over the same files (below), float32, its rate over
  the float32 ceilings and explain's JPEG-overlay rate over it.
- Overlay: a JPEG overlay of a map over a 500-px photo drawn and encoded, one thread, as today and as it was
  drawn before (`drawn_as_before`), alternated round by round.
- Ceiling (the later tables): the unsplit model on OpenVINO CPU, THROUGHPUT hint, an AsyncInferQueue of its
  optimal number of requests, batch 1, one preprocessed image over and over: images/s of the model alone.
- `cam-infer explain --method recipro` (overlays written) and `cam-infer audit --methods recipro --metrics
  adcc,insertion,deletion`, each as a whole command (start-up included), in one process (today's latency
  mode), with --workers 2, and on a Ray cluster started beforehand with `ray start --head --num-cpus 2`
  (--ray ADDRESS: 2 actors x 1 thread).
- pytorch-grad-cam 1.5.7's GradCAM and EigenCAM over the same files as its users loop: read, preprocess,
  cam(), show_cam_on_image, write a PNG (torch 2.13 CPU, 2 threads). It is installed into the work folder
  with pip --target; its module-level `torchvision` imports are met by a stand-in whose functions raise
  (the registry's torchvision does not load beside the CPU torch here; the loop never calls them).
- Memory: peak resident memory (VmHWM) of the driver and of each worker over explain runs of 1 000 and
  10 000 images (one process, pipelined; --workers 2; Ray) on each runtime, and /usr/bin/time -v's maximum
  (the driver or its largest child).

    python bench/throughput.py --work /tmp/cam-throughput --out bench/throughput.md
    python bench/throughput.py --quick --out bench/throughput.md     # the pipeline and overlay tables, minutes
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cam_infer.tools.bench import Report  # noqa: E402

RAY_PORT = 6392
RUNTIMES = (("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "auto"))   # auto: bf16 on this CPU
GRAD_CAM = ["grad-cam==1.5.7", "ttach==0.0.3", "scipy", "scikit-learn", "tqdm"]


def images(folder: Path, n: int) -> Path:
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    photos = [cv2.imread(str(p)) for p in sorted((SHARED / "images").iterdir())
              if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".jfif")]
    photos = [p for p in photos if p is not None]
    rng = np.random.default_rng(0)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        s = rng.uniform(0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        scale = 500 / max(ch, cw)
        crop = cv2.resize(p[y:y + ch, x:x + cw], (max(1, round(cw * scale)), max(1, round(ch * scale))),
                          interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def ceiling(bundle: Path, work: Path, seconds: float = 10.0) -> float:
    """Images/s of the unsplit model alone: OpenVINO THROUGHPUT hint, its optimal number of requests."""
    import numpy as np
    import onnx
    import openvino as ov

    from cam_infer.backends.sessions import FLOAT32, openvino_compiled, openvino_model
    from cam_infer.fuse.assemble import plain_model
    path = work / f"{bundle.name}_plain.onnx"
    onnx.save(plain_model(bundle), path)
    model = openvino_model(path)
    model.reshape([1, 3, 224, 224])
    compiled = openvino_compiled(model, FLOAT32.but(hint="throughput"))
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    for _ in range(20):
        queue.start_async({0: x})
    queue.wait_all()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            queue.start_async({0: x})
        queue.wait_all()
        done += 50
    return done / (time.perf_counter() - start)


class PipelineCeiling:
    """Images/s of the reference pipeline on `files`: decode + preprocess (the bundle's own, in a thread per
    core; OpenCV releases the GIL) feeding the unsplit model's forward pass at float32 with every core, no
    explanation. ONNX Runtime: one session (all intra-op threads), batches of `batch`; OpenVINO: THROUGHPUT
    hint, an AsyncInferQueue of its optimal number of batch-1 requests. `precision`: as explain's run."""

    def __init__(self, bundle: Path, backend: str, work: Path, batch: int = 8, precision: str = "f32"):
        import onnx

        from cam_infer import Bundle
        from cam_infer.backends.sessions import FLOAT32, onnxruntime_session, openvino_compiled, openvino_model
        from cam_infer.fuse.assemble import plain_model
        self.prep, self.backend, self.batch = Bundle.load(bundle).preprocessing, backend, batch
        path = work / f"{bundle.name}_plain.onnx"
        onnx.save(plain_model(bundle), path)
        if backend == "onnxruntime":
            self.session = onnxruntime_session(path, FLOAT32.but(precision=precision))
            self.input = self.session.get_inputs()[0].name
        else:
            import openvino as ov
            model = openvino_model(path)
            model.reshape([1, 3, *self.prep.input_size])
            compiled = openvino_compiled(model, FLOAT32.but(hint="throughput", precision=precision))
            self.queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def _x(self, path):
        from cam_infer.images import load_image
        return self.prep.standardise(self.prep.geometry(load_image(path)))

    def rate(self, files: list[Path]) -> float:
        import numpy as np

        from cam_infer.parallel import cores, ordered_threads
        start = time.perf_counter()
        if self.backend == "onnxruntime":                # pipelined as explain's batches are: one thread per
            batches = [files[i:i + self.batch] for i in range(0, len(files), self.batch)]     # core, and one more
            def forward(chunk):
                return self.session.run(None, {self.input: np.stack([self._x(f) for f in chunk])})

            for _ in ordered_threads(forward, batches, cores() + 1):
                pass
        else:
            for x in ordered_threads(self._x, files, cores() + 1):
                self.queue.start_async({0: x[None]})
            self.queue.wait_all()
        return len(files) / (time.perf_counter() - start)


KINDS = {   # what explain writes: explain_files' arguments
    "maps": {"overlays": "none"},                                   # the run's array store (the default)
    "map PNGs": {"overlays": "none", "maps": "png"},
    "jpg": {"overlays": "jpg"},                                     # over the original photo (the default)
    "jpg model": {"overlays": "jpg", "on": "model"},                # over the model's 224² view
    "png": {"overlays": "png"},
}


def explain_rate(explainer, folder: Path, out: Path, kind: str) -> float:
    """Images/s of `explain --method recipro` over `folder` (an explainer opened once, as the command opens it;
    a fresh output folder; the run's files all written), writing `kind` (KINDS)."""
    from cam_infer.runs import explain_files

    files = len(list(folder.glob("*.jpg")))
    start = time.perf_counter()
    explain_files(explainer, [folder], ["recipro"], out, restart=True, progress=False, **KINDS[kind])
    return files / (time.perf_counter() - start)


def pipeline_part(name: str, bundle: Path, folder: Path, work: Path, rounds: int, report,
                  grad_cam: bool = False) -> None:
    """Explain's rate over the reference pipeline's ceiling, on each runtime, the two alternated run by run; with
    `grad_cam`, pytorch-grad-cam's GradCAM loop over the same files beside them (`grad_cam_rate`, float32 like
    the f32 rows), run after them: its rate, over each float32 ceiling, and explain's JPEG-overlay rate over it."""
    import statistics

    from cam_infer.backends.sessions import leave_the_cores_to_the_runtime
    from cam_infer.jobs.explainers import open_explainer
    leave_the_cores_to_the_runtime()
    files = sorted(folder.glob("*.jpg"))
    report(f"\n**{name}** 224×224, the same precision on both sides, {len(files)} JPEGs (500 px), medians of {rounds} "
           f"alternated rounds; load average {os.getloadavg()[0]:.1f} at the start, on 2 cores (shared)\n")
    report("| runtime | precision | ceiling: decode + preprocess + forward, img/s "
           "| maps only (`--overlays none`: the array store) | ÷ ceiling | maps as PNGs (`--maps png`) | ÷ ceiling "
           "| JPEG overlays (default: on the photo) | ÷ ceiling | JPEG overlays on the model's view (`--on model`) "
           "| ÷ ceiling | PNG overlays | ÷ ceiling |\n"
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    measured = {}
    for backend, precision in RUNTIMES:
        ceiling_run = PipelineCeiling(bundle, backend, work, precision=precision)
        explainer = open_explainer(bundle, backend, precision=precision, hint="throughput")   # as the CLI opens it
        ceiling_run.rate(files[:16])                               # warm-up: first runs compile and allocate
        explain_rate(explainer, folder, work / "pipeline_out", "maps")
        rates: dict[str, list] = {"ceiling": [], **{kind: [] for kind in KINDS}}
        ratios: dict[str, list] = {kind: [] for kind in KINDS}
        for _ in range(rounds):
            for kind in KINDS:
                top = ceiling_run.rate(files)
                rate = explain_rate(explainer, folder, work / "pipeline_out", kind)
                rates["ceiling"].append(top)
                rates[kind].append(rate)
                ratios[kind].append(rate / top)
        m = {k: statistics.median(v) for k, v in rates.items()}
        r = {k: statistics.median(v) for k, v in ratios.items()}
        report(f"| {backend} | {explainer.backend.precision} | {m['ceiling']:.0f} | {m['maps']:.0f} | "
               f"**{r['maps']:.2f}** | {m['map PNGs']:.0f} | {r['map PNGs']:.2f} | {m['jpg']:.0f} | "
               f"**{r['jpg']:.2f}** | {m['jpg model']:.0f} | **{r['jpg model']:.2f}** | {m['png']:.0f} | "
               f"{r['png']:.2f} |")
        measured[backend, explainer.backend.precision] = m
    if grad_cam:
        loop = statistics.median(grad_cam_rate(name, "gradcam", files, work) for _ in range(rounds))
        beside = "; ".join(f"{backend} f32: {loop / m['ceiling']:.2f} of its ceiling, explain with JPEG overlays "
                           f"{m['jpg'] / loop:.1f}× its rate" for (backend, precision), m in measured.items()
                           if precision == "f32")
        report(f"\npytorch-grad-cam 1.5.7's GradCAM loop over the same {len(files)} files (read, preprocess, cam(), "
               f"show_cam_on_image, a PNG written; torch float32, 2 threads; median of {rounds} runs after the table): "
               f"**{loop:.1f} img/s**; {beside}.\n")


def drawn_as_before(saliency, rgb, prep, text):
    """The overlay as folder runs drew it before (what `overlay_picture` now draws for less): the map put back over
    the whole photo, quantised in NumPy, OpenCV's BGR colormap turned to RGB, blended, the unseen part greyed
    through its mask, the colour bar and the caption concatenated on."""
    import cv2
    import numpy as np

    from cam_infer.postprocess import with_caption, with_colour_bar
    saliency, seen = prep.to_image(saliency, rgb.shape[:2])
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(np.clip(saliency, 0, 1) * 255)), cv2.COLORMAP_JET),
                        cv2.COLOR_BGR2RGB)
    picture = cv2.addWeighted(rgb, 0.5, heat, 0.5, 0.0)
    grey = cv2.transform(rgb, np.array([[0.35 / 3, 0.35 / 3, 0.35 / 3, 110.0]]))
    picture[~seen] = grey[~seen][:, None]
    return with_caption(with_colour_bar(picture), text)


def overlay_part(folder: Path, rounds: int, report) -> None:
    """Milliseconds per 500-px photo of a JPEG overlay (drawn + encoded, one thread), today's against the
    drawing before, alternated round by round on the same photos and maps."""
    import statistics

    import cv2
    import numpy as np

    from cam_infer import Preprocessing
    from cam_infer.images import load_image
    from cam_infer.postprocess import encode_picture, overlay_picture
    cv2.setNumThreads(1)
    prep, text = Preprocessing((224, 224)), "recipro: tabby, tabby cat (281) p=0.87"
    photos = [load_image(f) for f in sorted(folder.glob("*.jpg"))[:100]]
    rng = np.random.default_rng(0)
    maps = [cv2.resize(rng.random((7, 7)).astype(np.float32), (224, 224)) for _ in photos]
    views = [prep.geometry(rgb) for rgb in photos]
    ways = {"today": lambda s, rgb, view: overlay_picture(s, rgb, prep, text),
            "before": lambda s, rgb, view: drawn_as_before(s, rgb, prep, text),
            "model": lambda s, rgb, view: overlay_picture(s, view, None, text)}
    times: dict[str, list] = {k: [] for k in ways}
    for _ in range(rounds + 1):                                   # the first round warms up
        for name, draw in ways.items():
            start = time.thread_time()                            # this thread's CPU: what the shared cores give
            for s, rgb, view in zip(maps, photos, views):
                encode_picture(draw(s, rgb, view), "jpg")
            times[name].append((time.thread_time() - start) / len(photos) * 1000)
    before, today, model = (statistics.median(times[k][1:]) for k in ("before", "today", "model"))
    report(f"\n**JPEG overlay** (map put back, greyed border, caption, colour bar, encode), CPU ms per 500-px photo, "
           f"one thread, {len(photos)} photos, median of {rounds} alternated rounds; load average "
           f"{os.getloadavg()[0]:.1f}\n")
    report(f"| on the photo, drawn as before | on the photo, today | speed-up "
           f"| on the model's 224² view (`--on model`) |\n|---:|---:|---:|---:|\n"
           f"| {before:.2f} | {today:.2f} | {before / today:.1f}× | {model:.2f} |")


STALLED_AFTER = 600      # seconds a whole command may take before its stacks are dumped and it is stopped
BOUNDED = """import faulthandler, sys
faulthandler.dump_traceback_later({seconds}, exit=True)
from cam_infer.cli import main
sys.exit(main(sys.argv[1:]))"""


def timed_cli(*args, seconds: float = STALLED_AFTER) -> tuple[float | None, str]:
    """(seconds, stderr) of a whole `cam-infer` command; (None, where it stood) when it ran past `seconds`: the
    driver's Python stacks are dumped then (faulthandler) and the command stopped."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", BOUNDED.format(seconds=seconds), *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    if "Timeout (" in result.stderr:
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', result.stderr)
        ours = [f"{Path(f).name}:{line} {name}" for f, line, name in frames if "cam_infer" in f][:3]
        return None, f"stalled after {seconds} s in " + " < ".join(ours or ["(no cam_infer frame)"])
    if result.returncode:
        raise SystemExit(f"{args}: {result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stderr


def grad_cam_rate(name: str, method: str, files: list[Path], work: Path) -> float:
    """pytorch-grad-cam's loop over the files, in a subprocess with its packages on the path."""
    target = work / "grad-cam"
    if not (target / "pytorch_grad_cam").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *GRAD_CAM],
                       check=True, capture_output=True)
        for extra in ("numpy", "numpy.libs"):                       # keep the venv's numpy
            subprocess.run(["rm", "-rf", str(target / extra)], check=True)
        for old in target.glob("numpy-*.dist-info"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
    shim = work / "torchvision-stand-in" / "torchvision"
    (shim / "transforms").mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text('"""Not torchvision: names pytorch-grad-cam imports; using them raises."""\n')
    (shim / "transforms" / "__init__.py").write_text(
        "def _absent(*args, **kwargs):\n    raise NotImplementedError('no torchvision here')\n\n\n"
        "Compose = Normalize = ToTensor = Resize = _absent\n")
    (shim / "transforms" / "functional.py").write_text("from . import _absent as resize  # noqa: F401\n")
    list_file = work / "grad_cam_files.txt"
    list_file.write_text("\n".join(map(str, files)))
    code = GRAD_CAM_LOOP.format(root=str(ROOT), name=name, method=method, files=str(list_file),
                                out=str(work / f"grad_cam_{name}_{method}"))
    env = dict(os.environ, PYTHONPATH=f"{shim.parent}{os.pathsep}{target}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return float(result.stdout.strip().splitlines()[-1])


GRAD_CAM_LOOP = '''
import sys, time
from pathlib import Path
import cv2, numpy as np, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/bench")
from pytorch_grad_cam import GradCAM, EigenCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from cam_infer import Preprocessing
from seed_methods import torch_model, LAYERS
torch.set_num_threads(2)
model = torch_model({name!r})
layer = [getattr(model, LAYERS[{name!r}])]
cam = {{"gradcam": GradCAM, "eigencam": EigenCAM}}[{method!r}](model=model, target_layers=layer)
prep = Preprocessing((224, 224))
out = Path({out!r}); out.mkdir(parents=True, exist_ok=True)
files = Path({files!r}).read_text().splitlines()
start = time.perf_counter()
for f in files:
    rgb = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
    view = prep.geometry(rgb)
    x = torch.from_numpy(prep.standardise(view)[None])
    grayscale = cam(input_tensor=x, targets=None)[0]
    picture = show_cam_on_image(view.astype(np.float32) / 255, grayscale, use_rgb=True)
    cv2.imwrite(str(out / (Path(f).stem + ".png")), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
print(len(files) / (time.perf_counter() - start))
'''


class PeakMemory:
    """Peak resident memory (VmHWM, MiB) of a driver and of its workers, sampled every 0.2 s: its spawned
    children, or the Ray actors doing the run's work."""

    def __init__(self, driver: int):
        self.driver, self.peaks, self._stop = driver, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for pid, role in self._processes():
                peak = _vm_hwm(pid)
                if peak is not None:
                    self.peaks[(role, pid)] = max(self.peaks.get((role, pid), 0), peak)
            time.sleep(0.2)

    def _processes(self):
        yield self.driver, "driver"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (command.startswith("ray::") and "RayWorker" in command) or (
                    "spawn_main" in command and _parent(int(entry.name)) == self.driver):
                yield int(entry.name), "worker"

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        driver = max((v for (role, _), v in self.peaks.items() if role == "driver"), default=0.0)
        worker = max((v for (role, _), v in self.peaks.items() if role == "worker"), default=0.0)
        return driver, worker


def _vm_hwm(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else None


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"PPid:\s+(\d+)", text).group(1))


def memory_run(args: list[str]) -> tuple[float, float, float, float]:
    """seconds, driver peak, worker peak (VmHWM, MiB) and /usr/bin/time -v's maximum resident set (MiB)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cam_infer", *map(str, args)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    time.sleep(0.3)
    children = [int(p) for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    monitor = PeakMemory(children[0] if children else process.pid)
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    driver, worker = monitor.stop()
    if process.returncode:
        raise SystemExit(stderr[-2000:])
    maximum = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024
    return seconds, driver, worker, maximum


RAY_TEMP = "/tmp/cam-throughput-ray"      # the cluster's own folder: its processes name it on their command line


def ray_cluster(action: str) -> None:
    """Start a one-node cluster on 127.0.0.1, or stop the one this script started: its processes alone (`ray stop`
    would end every Ray cluster of this user on the machine)."""
    import signal

    ray = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    if action == "start":
        subprocess.run(ray + ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(RAY_PORT),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                              "--temp-dir", RAY_TEMP], check=True, capture_output=True, env=env, timeout=300)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):        # the raylet and the GCS ignore SIGTERM while they serve
        named = _processes_naming(RAY_TEMP)
        for pid in named + [pid for pid in _all_pids() if _parent(pid) in named]:      # and its workers (ray::...)
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(2)


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in _all_pids():
        try:
            if pid != os.getpid() and text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def main() -> None:
    from seed_methods import bundle_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-throughput")
    parser.add_argument("--out")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--audit-n", default="mobilenet_v2=1000,resnet50=200",
                        help="images audited per model (insertion and deletion are 56 passes an image)")
    parser.add_argument("--memory-n", default="1000,10000")
    parser.add_argument("--memory-where", default="one,--workers,--ray", help="runs of the memory part")
    parser.add_argument("--where", default="one,--workers,--ray", help="runs of the explain and audit parts")
    parser.add_argument("--memory-backends", default="onnxruntime,openvino", help="runtimes of the memory part")
    parser.add_argument("--memory-overlays", default="jpg,none", help="what the memory part's runs write (--overlays)")
    parser.add_argument("--parts", default="pipeline,grad-cam-beside,overlay,explain,audit,grad-cam,memory",
                        help="grad-cam-beside: pytorch-grad-cam's loop under each pipeline table")
    parser.add_argument("--pipeline-n", default="mobilenet_v2=300,resnet50=100",
                        help="images of the pipeline part per model (its ratios settle within a few hundred images)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="mobilenet_v2,resnet50", help="models of the explain, audit and grad-cam "
                        "parts")
    parser.add_argument("--quick", action="store_true",
                        help="the pipeline (with pytorch-grad-cam beside) and overlay tables alone, on fewer images "
                             "(mobilenet_v2=150,resnet50=50), 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.parts, args.pipeline_n = "pipeline,grad-cam-beside,overlay", "mobilenet_v2=150,resnet50=50"
        args.rounds = 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    parts = args.parts.split(",")
    folder = images(work / f"images_{args.n}", args.n)
    files = sorted(folder.glob("*.jpg"))
    audit_n = dict((k, int(v)) for k, v in (item.split("=") for item in args.audit_n.split(",")))
    address = f"127.0.0.1:{RAY_PORT}"
    if "pipeline" in parts:
        report("**Explain over the pipeline ceiling** (one process, batches of 8 pipelined in threads)")
        for name, n in (item.split("=") for item in args.pipeline_n.split(",")):
            pipeline_part(name, bundle_for(name, work), images(work / f"images_{n}", int(n)), work, args.rounds, report,
                          grad_cam="grad-cam-beside" in parts)
    if "overlay" in parts:
        overlay_part(folder, args.rounds, report)
    wheres = [(label, flags) for label, flags in (("one process (pipelined)", []), ("--workers 2", ["--workers", "2"]),
                                                  ("--ray (2 actors × 1 thread)", ["--ray", address]))
              if label.split()[0] in args.where.split(",")]
    if ("memory" in parts and "--ray" in args.memory_where) or (
            {"explain", "audit"} & set(parts) and "--ray" in args.where):
        ray_cluster("start")
    try:
        if {"explain", "audit", "grad-cam"} & set(parts):
            for name in args.models.split(","):
                bundle = bundle_for(name, work)
                top = ceiling(bundle, work)
                report(f"\n**{name}** 224×224, 2 cores. Ceiling, the unsplit model alone on OpenVINO "
                       f"(THROUGHPUT hint, async requests, batch 1): **{top:.0f} images/s**\n")
                report("| run | where | images | images/s | ÷ ceiling |\n|---|---|---:|---:|---:|")
                if "explain" in parts:
                    for backend in ("onnxruntime", "openvino"):
                        for label, flags in wheres:
                            seconds, said = timed_cli("explain", bundle, folder, "--method", "recipro", "--backend",
                                                      backend, "--out", work / "explain_out", "--force", *flags)
                            if seconds is None:
                                report(f"| explain --method recipro, {backend} | {label} | {len(files)} | {said} | |")
                                continue
                            rate = len(files) / seconds
                            report(f"| explain --method recipro, {backend} | {label} | {len(files)} | {rate:.1f} | "
                                   f"{rate / top:.2f} |")
                if "audit" in parts:
                    subset = work / f"audit_{name}_{audit_n[name]}"
                    subset.mkdir(exist_ok=True)
                    for f in files[:audit_n[name]]:
                        link = subset / f.name
                        if not link.exists():
                            link.symlink_to(f)
                    for label, flags in wheres:
                        seconds, said = timed_cli("audit", bundle, subset, "--methods", "recipro", "--metrics",
                                                  "adcc,insertion,deletion", "--backend", "openvino", "--out",
                                                  work / "audit_out", "--force", *flags)
                        if seconds is None:
                            report(f"| audit recipro × adcc, insertion, deletion, openvino | {label} | "
                                   f"{audit_n[name]} | {said} | |")
                            continue
                        rate = audit_n[name] / seconds
                        report(f"| audit recipro × adcc, insertion, deletion, openvino | {label} | {audit_n[name]} | "
                               f"{rate:.2f} | {rate / top:.3f} |")
                if "grad-cam" in parts:
                    for method in ("gradcam", "eigencam"):
                        rate = grad_cam_rate(name, method, files, work)
                        report(f"| pytorch-grad-cam {method} loop (torch, 2 threads) | one process | {len(files)} | "
                               f"{rate:.1f} | {rate / top:.2f} |")
        if "memory" in parts:
            bundle = bundle_for("mobilenet_v2", work)
            report("\n**Peak memory**, `explain --method recipro` on mobilenet_v2, MiB: the driver's and the largest "
                   "worker's peak resident set (VmHWM), and /usr/bin/time -v's maximum; load average "
                   f"{os.getloadavg()[0]:.1f} at the start\n")
            report("| runtime | writes (`--overlays`) | where | images | seconds | driver | worker | time -v |\n"
                   "|---|---|---|---:|---:|---:|---:|---:|")
            runs = [(b, o, n) for b in args.memory_backends.split(",") for o in args.memory_overlays.split(",")
                    for n in map(int, args.memory_n.split(","))]
            chosen = args.memory_where.split(",")
            wheres = [(label, flags) for label, flags in (("one process (pipelined)", []), ("--workers 2",
                      ["--workers", "2"]), ("--ray", ["--ray", address])) if label.split()[0] in chosen]
            for (backend, overlays, n), (label, flags) in ((run, where) for run in runs for where in wheres):
                seconds, driver, worker, maximum = memory_run(
                    ["explain", bundle, images(work / f"images_{n}", n), "--method", "recipro", "--out",
                     work / "memory_out", "--force", "--backend", backend, "--overlays", overlays, *flags])
                report(f"| {backend} | {overlays} | {label} | {n} | {seconds:.0f} | {driver:.0f} | {worker:.0f} | "
                       f"{maximum:.0f} |")
    finally:
        ray_cluster("stop")             # a no-op when none was started
    report.write(args.out)


if __name__ == "__main__":
    main()
