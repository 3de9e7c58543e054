"""What a run will cost, said before it starts: runtime passes per image for each chosen method, from the
method registry's ``passes`` of each task (`methods.registry`), and a rough
time from one measured pass of each kind.

    plan = classifier_plan(explainer.bundle, variants(["recipro", "score"]), options, linear_head=True)
    print(cost_line(plan, measure(explainer.backend)))
    # cost per image: recipro 1 model pass; score ≤ 1281 model passes (≈ 21 s) — a model pass 16 ms, …

A *model pass* is one image through the whole model (the clean pass every method starts from, Score-CAM's
masked inputs); a *head row* one activation through the head graph (Recipro-CAM, Ablation-CAM); a *crop* one
k×k crop through a detector's class branch; a *reduced head row* one of ViT-ReciproCAM's short copies of a
transformer's tail (its prefix tokens, ≤ 9 neighbours and one token standing for the rest; not timed); a
*backward* one gradient pass in PyTorch (not timed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

UNITS = {"model": "model pass", "head": "head row", "reduced": "reduced head row", "crops": "crop",
         "backward": "backward"}


@dataclass(frozen=True)
class Passes:
    """Runtime rows of each kind; ``bound``: the method may run fewer (it skips constant channels, or cells
    beyond the border)."""

    model: int = 0
    head: int = 0
    crops: int = 0
    backward: int = 0
    bound: bool = False
    reduced: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(**{unit: n + getattr(other, unit) for unit, n in self.counts().items()},
                      bound=self.bound or other.bound)

    def __mul__(self, times: int) -> "Passes":
        return Passes(**{unit: n * times for unit, n in self.counts().items()}, bound=self.bound)

    def counts(self) -> dict[str, int]:
        return {unit: getattr(self, unit) for unit in UNITS}

    def describe(self) -> str:
        """'1 model pass + 1600 head rows' (≤ in front when an upper bound)."""
        parts = [f"{n} {UNITS[unit]}{'es' if unit == 'model' and n != 1 else 's' if n != 1 else ''}"
                 for unit, n in self.counts().items() if n]
        return ("≤ " if self.bound else "") + (" + ".join(parts) or "no pass")

    def seconds(self, timing: dict[str, float]) -> float | None:
        """A rough time from the measured seconds of one row of each kind (None: a kind was not measured)."""
        total = 0.0
        for unit, n in self.counts().items():
            if n and unit not in timing:
                return None
            total += n * timing.get(unit, 0.0)
        return total


@dataclass(frozen=True)
class MethodCost:
    """One method's passes: per image, and (detectors) per explained detection on top."""

    name: str
    per_image: Passes
    per_target: Passes | None = None

    def describe(self, timing: dict[str, float]) -> str:
        text = f"{self.name} {self.per_image.describe()}" + _time(self.per_image, timing)
        if self.per_target is not None and self.per_target.counts() != Passes().counts():
            text += f" + {self.per_target.describe()} per detection" + _time(self.per_target, timing)
        return text


def _time(passes: Passes, timing: dict[str, float]) -> str:
    seconds = passes.seconds(timing)
    return "" if seconds is None or seconds < 1 else f" (≈ {seconds:.0f} s)"


def clean_pass() -> Passes:
    """What every explanation starts with: the image through the model once (activations and outputs)."""
    return Passes(model=1)


def classifier_plan(bundle, variants: dict, options: dict | None = None, linear_head: bool | None = False,
                    enhancers: dict | None = None) -> list[MethodCost]:
    """Passes per image of each classifier method: `variants` maps each name (``name`` or ``name+enhancer``) to its
    (`MethodSpec`, `Enhancer` or None), as `enhancers.variants` gives them; with its options (``options[name]``) and
    the enhancer's (``enhancers[enhancer]``). `linear_head` None: not known yet (no runtime opened,
    `reads_linear_head`): a method whose closed form would save passes is given its passes without it, as a bound."""
    plan = []
    for name, (spec, enhancer) in variants.items():
        chosen = (options or {}).get(name, (options or {}).get(spec.name, {}))
        passes = clean_pass() + spec.passes(tuple(bundle.activation_shape), chosen, bool(linear_head))
        if linear_head is None:
            closed = clean_pass() + spec.passes(tuple(bundle.activation_shape), chosen, True)
            if closed.counts() != passes.counts():
                passes = Passes(**passes.counts(), bound=True)
        if enhancer is not None:
            passes = passes * enhancer.passes(*bundle.input_shape[1:], **(enhancers or {}).get(enhancer.name, {}))
        plan.append(MethodCost(name, passes))
    return plan


def reads_linear_head(bundle) -> bool | None:
    """Whether the closed forms will apply, as far as the bundle's graphs tell without opening a runtime: True for an
    ONNX float head that reads as global pooling + linear (the Explainer's float32 check of such a reading does
    not fail), False for one that does not; None where only a runtime can tell: a quantized ONNX head (its reading
    is accepted within its output's quantization steps on real cuts) and an IR head (read by running it)."""
    if bundle.graph_format != "onnx":
        return None
    import onnx

    from .bundle.head import read_linear_head
    from .bundle.qdq_tail import is_quantized
    model = onnx.load(bundle.head_path)
    read = read_linear_head(model, bundle.activation_shape[0], bundle.activation_shape[1:]) is not None
    return None if read and is_quantized(model) else read


def detection_plan(ctx, targets, specs: dict, options: dict | None = None) -> list[MethodCost]:
    """Passes per image, and per detection, of each detector method (`specs`: name → `MethodSpec`): the most any
    of `targets` can take, counted on `ctx`, a detection context without an image (`central_targets`: a detection
    at the centre of each level's grid)."""
    return [MethodCost(name, clean_pass() + per_image, per_target) for name, spec in specs.items()
            for per_image, per_target in [detection_passes(spec.implementation("detection"), ctx, targets,
                                                           (options or {}).get(name, {}))]]


def detection_passes(code, ctx, targets, options: dict) -> tuple[Passes, Passes | None]:
    """(passes per image beyond the clean pass, passes per explained detection, the most of `targets`) of a
    method's detector implementation (`methods.registry.Implementation`) with these options."""
    code.check_options(options)
    per_image = code.image_passes(ctx, **options) if code.image_passes else Passes()
    if code.passes is None:
        return per_image, None
    per_target = [code.passes(ctx, t, **options) for t in targets]
    most = max(per_target, key=lambda p: sum(p.counts().values()))
    bound = len({tuple(p.counts().values()) for p in per_target}) > 1 or most.bound
    return per_image, Passes(**most.counts(), bound=bound)


def measure(backend, detector: bool = False, rows: int = 4) -> dict[str, float]:
    """Seconds per row of a model pass and of a head row (and of a crop through a detector's cut-level
    branches, the slowest), on zeros, in batches of `rows` as the methods batch them, after a warm-up."""
    bundle = backend.bundle
    x = np.zeros((rows, *bundle.input_shape), np.float32)
    (a, _), model = _seconds(lambda: backend.observe(x), backend.observe(x[:1])[0])
    timing = {"model": model / rows, "head": _seconds(lambda: backend.head(a))[1] / rows}
    crops = []
    for i, level in enumerate(bundle.manifest.get("cut", []) if detector else []):
        if level.get("branch"):
            k = int(level["branch"]["window"])
            crops.append(_seconds(lambda: backend.branch(i, np.zeros((rows, level["shape"][0], k, k), np.float32)))[1])
    if crops:
        timing["crops"] = max(crops) / rows
    return timing


def _seconds(fn, warmed=None) -> tuple[object, float]:
    """fn's result and seconds, on its second call (unless `warmed`: the runtime already ran once)."""
    if warmed is None:
        fn()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def announce(plan: list[MethodCost], backend=None, detector: bool = False) -> str:
    """The cost line of a run, with a measured time where a method makes more than the clean pass and a
    backend is at hand (None: workers elsewhere will run it)."""
    return cost_line(plan, measure(backend, detector) if backend is not None and worth_measuring(plan) else None)


def cost_line(plan: list[MethodCost], timing: dict[str, float] | None = None) -> str:
    """One line: each method's passes per image (and its rough time), then what one pass took."""
    timing = timing or {}
    measured = ", ".join(f"a {UNITS[unit]} {_milliseconds(seconds)} ms" for unit, seconds in timing.items())
    return "cost per image: " + "; ".join(m.describe(timing) for m in plan) + (f" — measured {measured}"
                                                                                  if measured else "")


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def worth_measuring(plan: list[MethodCost]) -> bool:
    """Measure a pass only when a method makes more than the clean pass (else the line says enough)."""
    return any(m.per_image.counts() != clean_pass().counts() or m.per_target is not None and
               any(m.per_target.counts().values()) for m in plan)
