"""The `Task` interface: what differs between kinds of model, and nothing else.

The `Explainer` does what every model kind shares: open the bundle on a runtime, read the images, run the
clean pass, call the method, time it. Its task does the rest, through the hooks below.
"""

from __future__ import annotations

import numpy as np

from ..errors import CamInferError, MethodNotApplicable


class Task:
    """A kind of model (classification, detection, ...): one instance per opened `Explainer`.

    A new task is one module in `cam_infer.tasks` with a subclass registered in `TASKS` under the name its
    bundles carry in ``bundle.json`` (``"task"``). It implements:

    - ``requests``: the `Explainer.explain` arguments it takes beyond images, method and ``target``; any
      other given to its bundles is a one-line error (``boxes=`` on a classifier).
    - ``open()``, ``linear_head()``: what it reads once per bundle (a detector's anchor grid, a classifier's
      verified linear head).
    - ``run_method(spec, ctx, targets, options)``: one call of the method's implementation for this task
      (``method(name)`` looks it up) → raw maps, one per target.
    - ``observe(x)``: the clean pass, the cut and the outputs in one call (the backend's: activations
      (N,K,h,w), a detector's packed cut set, a token model's patch tokens on their grid (`bundle.tokens`),
      with the attention where the method reads it).
    - ``contexts(spec, x, activations, outputs, request, originals)``: from the request and the clean
      outputs, the targets (classes; detections or boxes) and what a method implementation gets to compute
      their maps: its context (the input, the cut, the clean outputs, how a target's score is read on
      perturbed outputs). Returns a list of jobs ``(context, targets, ...)``, one method call each: the
      whole batch for a classifier, one image for a detector; the rest of a job is the task's.
    - ``request_for(spec, n, request)``: the request as a method takes it (optional).
    - ``explanation(spec, method, jobs, maps, ...)``: the raw maps → normalised saliency and the
      `Explanation`, one map and one record per explained target (how the levels of a cut set combine is
      the method's, by the rule of its units, `methods.levels`).

    The tasks: `tasks.classification`, `tasks.detection`, `tasks.segmentation` (a class over a region). A
    token model (a vision transformer) is a cut kind, not a task: its tokens (N,T,D) are read on their grid
    (`bundle.tokens`) under the classification task."""

    name: str = ""
    requests: frozenset = frozenset()

    def __init__(self, explainer):
        self.explainer = explainer
        self.bundle = explainer.bundle

    def open(self) -> None:
        """Read what the task needs of its bundle, once, after the runtime is open."""

    def linear_head(self):
        """A head whose closed forms the methods may use instead of head passes (`bundle.head`), or None."""
        return None

    def class_agnostic(self, spec) -> bool:
        """Whether method `spec`'s map on this task's bundle does not depend on the class explained."""
        return not spec.class_specific

    def request_for(self, spec, n: int, request: dict) -> dict:
        """The request as method `spec` takes it for n images (a classifier drops the class of a
        class-agnostic method, with a warning)."""
        return request

    def observe(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the cut, the model's outputs) of a batch, in one pass."""
        return self.explainer.backend.observe(x)

    def observe_for(self, spec, x: np.ndarray, options: dict | None = None):
        """The clean pass method `spec` needs: `observe`, except for a method of a transformer's attention
        (``needs="attention"``), whose pass also returns the attention probabilities of every block, fused over
        the heads as its ``head_fusion`` option says: the cut is then (tokens, [(N,T,T) per block])."""
        if spec.needs != "attention":
            return self.observe(x)
        if not self.bundle.attention:
            if self.bundle.tokens is not None and self.bundle.tokens.prefix == 0:
                from ..methods.rollout import no_class_token
                raise no_class_token(spec.name)
            raise MethodNotApplicable(f"method '{spec.name}' reads a vision transformer's attention over all its "
                                      "tokens, and this bundle's graph has none (a CNN, or a Swin's attention within "
                                      "windows)")
        head_fusion = (options or {}).get("head_fusion", spec.defaults(self.name).get("head_fusion", "mean"))
        spec.check_options(options or {}, self.name)
        tokens, attention, outputs = self.explainer.backend.attention(x, head_fusion)
        return (tokens, attention), outputs

    def grid_of(self, activations: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The cut as the methods see it, (N,K,h,w), and a token model's prefix tokens (N,P,D) set apart."""
        tokens = self.bundle.tokens
        return (activations, None) if tokens is None else tokens.split(activations)

    def method(self, name: str):
        """The method `name` (`methods.MethodSpec`), refused unless it explains this task's models."""
        from ..methods import get_method
        return get_method(name, self.name)

    def explained_in_pass(self, spec, x, request, options, originals, names, start):
        """The Explanation computed inside the runtime's clean pass, where the task does so for this call; None:
        the general path (`observe_for`, `contexts`, `run_method`, `explanation`) runs."""
        return None

    def run_method(self, spec, ctx, targets, options: dict) -> np.ndarray | list:
        raise NotImplementedError

    def contexts(self, spec, x, activations, outputs, request: dict, originals):
        raise NotImplementedError

    def explanation(self, spec, method, jobs, maps, request, options, originals, names, model_outputs, start):
        raise NotImplementedError

    def check_request(self, request: dict) -> None:
        """A request argument this task does not take → a one-line error naming the task that does."""
        for name, value in request.items():
            if value is not None and name not in self.requests:
                raise CamInferError(f"{name}= does not apply to this bundle: it is a {self.name} model "
                                    f"(arguments for it: target{''.join(', ' + r for r in sorted(self.requests))})")


def box_corners(box) -> list[float]:
    """A box [x1, y1, x2, y2] as four finite floats, or one line (a NaN corner is no box)."""
    try:
        corners = [float(v) for v in box]
    except (TypeError, ValueError):
        raise CamInferError(f"a box is four numbers [x1, y1, x2, y2], not {box!r}") from None
    if not np.isfinite(corners).all():
        raise CamInferError(f"a box's corners must be finite numbers, not {corners}")
    return corners


def class_index(value, labels: list[str] | None, classes: int) -> int:
    """A class given by label or index (int or digit string) → its index, checked. A digit string is an index
    first, and a label where no class has that index (PP-OCR's labels '0' and '180': '180' is class 1).

    A label that several classes share (ImageNet's 'crane': 134 the bird, 517 the machine) is an error
    that lists them; an unknown label suggests the closest labels."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str)):
        raise CamInferError(f"a class is an integer index or a label string, not {value!r} "
                            f"({type(value).__name__})")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        labels = labels or []
        matches = [i for i, label in enumerate(labels) if label == value]
        if len(matches) > 1:
            raise CamInferError(f"class label '{value}' is ambiguous: classes {', '.join(map(str, matches))} are all "
                                f"called '{value}'; give the index instead")
        if not matches:
            raise CamInferError(f"unknown class label '{value}'" + (_suggestions(value, labels) if labels
                                                                    else "; this bundle has no labels"))
        return matches[0]
    index = int(value)
    named = [i for i, label in enumerate(labels or []) if isinstance(value, str) and label == value.strip()]
    if named and not 0 <= index < classes:
        return named[0]                          # a label that is a number ('180'): the class it names
    if not 0 <= index < classes:
        raise CamInferError(f"class {index} is out of range: this model has classes 0..{classes - 1}")
    return index


def _suggestions(value: str, labels: list[str]) -> str:
    import difflib

    lower = {label.lower(): label for label in labels}
    words = [w for w in value.lower().replace("_", " ").split() if len(w) > 2]
    close = difflib.get_close_matches(value.lower(), list(lower), n=5, cutoff=0.6)
    close += [key for key in lower if any(w in key.split() for w in words) and key not in close][:5 - len(close)]
    if not close:
        return "; no label is close to it (cam-infer info BUNDLE --json lists them)"
    return "; did you mean " + ", ".join(f"'{lower[c]}' ({labels.index(lower[c])})" for c in close) + "?"
