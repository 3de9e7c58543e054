"""The method registry: one `MethodSpec` per method, for every task, declared once, in the method's own module.

    @method("recipro", needs="head", cost="1 feature pass + h·w head rows (none on GAP→linear heads)",
            bench={"recipro": {}, "recipro (head passes)": {"closed_form": False}})
    def recipro(ctx: Context, *, score: Literal["prob", "logit"] = "prob", closed_form: bool = True) -> np.ndarray:
        ...

    @fused("recipro", class_specific=True)          # optional: the method as ONNX nodes, for `cam-infer fuse`
    def recipro_onnx(f: Fusion, *, score="prob", closed_form=True) -> str:
        ...

    @implements("recipro", "detection", cost="≤ 26 crops per target", passes=target_passes)
    def recipro_detections(ctx, targets, *, score: Literal["anchor", "match"] = "anchor", block: int = 1):
        ...                                          # where a task changes the computation: its own code

The keyword-only arguments are the options: their annotations give the types (a ``Literal`` lists the
choices), their defaults the defaults; every value is checked before the method runs, for every task. The CLI's help
and choices, ``--method all``, the benchmark cases, `fuse` and the docs' method table and pages all read this
registry; a name registered twice is an error.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np

from ..backends.base import Backend
from ..bundle import Bundle
from ..bundle.head import LinearHead
from ..errors import CamInferError, MethodNotApplicable
from ..numerics import probabilities_of, within_rounding

NEEDS = ("features", "attention", "linear_head", "head", "model", "gradients")
DEFAULT_METHOD = "recipro"


def require_logits(score: str, output_kind: str) -> None:
    """``score="logit"`` reads logits: refused on a model that ends in a softmax."""
    if score == "logit" and output_kind == "probabilities":
        raise CamInferError("score='logit' needs a model that outputs logits; this one ends in a softmax")


@dataclass
class Context:
    """What a method may use. `outputs` are the head's scores on `activations` (probabilities for
    bundles whose output kind is ``probabilities``)."""

    x: np.ndarray                  # (N,C,H,W) model input
    activations: np.ndarray        # (N,K,h,w)
    targets: np.ndarray            # (N,) class explained per image
    outputs: np.ndarray            # (N,C) head(activations)
    backend: Backend
    bundle: Bundle
    linear_head: LinearHead | None = field(default=None)
    gradients: np.ndarray | None = field(default=None)   # (N,K,h,w) ∂y_target/∂A, pre-softmax y
    gradient_source: Callable | None = field(default=None)  # (x, activations, targets) → gradients, for methods
                                                             # that need them at other inputs (noisy, scaled)
    finer: object = field(default=None)            # a `cam_infer.finer.Finer`: explain F(y), not y_c
    finer_refs: np.ndarray | None = field(default=None)    # (N,R) its reference classes per image
    prefix: np.ndarray | None = field(default=None)        # (N,P,D) a token model's prefix tokens, set apart
    attention: list | None = field(default=None)           # [(N,T,T) per block]: attention probabilities, fused
                                                           # over the heads by the method's head_fusion
    position_products: np.ndarray | None = field(default=None)  # (N,h·w,C) Aᵀ Wᵀ of the linear head, from the
                                                                 # clean pass (`bundle/positions.py`)

    def features(self, x: np.ndarray) -> np.ndarray:
        """The cut at other inputs x (noisy, scaled) as the methods see it, (N,K,h,w): a token model's patch grid."""
        tokens = self.bundle.tokens
        a = self.backend.features(x)
        return a if tokens is None else tokens.split(a)[0]

    def head(self, i: int, rows: np.ndarray) -> np.ndarray:
        """The head's outputs on rows (R,K,h,w) made from image i's activations (masked, ablated): on a token
        model the rows go back into tokens with image i's prefix tokens kept (`bundle.tokens.TokenLayout`)."""
        tokens = self.bundle.tokens
        return self.backend.head(rows if tokens is None else tokens.join(rows, self.prefix[i]))

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities of head outputs: a softmax unless the model already ends in one."""
        return probabilities_of(outputs, self.bundle.output_kind)

    def class_scores(self, outputs: np.ndarray, i: int, kind: str) -> np.ndarray:
        """The score a method explains, for each row of outputs (R,C) of image i's variants: the class logit
        or probability; with Finer-CAM, its objective on the logits."""
        c = int(self.targets[i])
        if self.finer is not None:
            return self.finer.objective(outputs, c, self.finer_refs[i])
        return (self.probabilities(outputs) if kind == "prob" else outputs)[:, c]


def flat_within_rounding(ctx: Context, values: np.ndarray, outputs: np.ndarray, score: str) -> np.ndarray:
    """A map's class scores `values`, read from head `outputs` computed at the backend's precision, made constant
    (their mean: the map is then reported degenerate) where they span no more than the format's rounding of one
    output, or one step of a quantized file's scores (`numerics.within_rounding`): such a map is rounding noise,
    and drawn it would point anywhere."""
    probability = score == "prob" and ctx.finer is None and ctx.bundle.output_kind == "logits"
    step = ctx.bundle.scores_step if ctx.finer is None else 0.0
    if within_rounding(values, outputs, ctx.backend.precision, probability, step):
        return np.full_like(values, values.mean())
    return values


@dataclass(frozen=True)
class Option:
    """One keyword option of a method: its default, its type and, for a ``Literal``, its choices."""

    name: str
    default: object
    kind: tuple[type, ...] | None = None        # accepted Python types (None: anything)
    choices: tuple | None = None
    optional: bool = False                      # None is accepted

    def check(self, method: str, value) -> None:
        if value is None and self.optional:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise CamInferError(f"{method}: {self.name} must be one of {', '.join(map(repr, self.choices))}, "
                                    f"not {value!r}")
            return
        numpy_kind = (np.integer,) * (int in (self.kind or ())) + (np.floating,) * (float in (self.kind or ()))
        if self.kind and (not isinstance(value, (*self.kind, *numpy_kind))
                          or (isinstance(value, bool) and bool not in self.kind)):
            names = " or ".join(k.__name__ for k in self.kind) + (" or None" if self.optional else "")
            raise CamInferError(f"{method}: {self.name} must be {names}, not {value!r}")

    def describe(self) -> str:
        if self.choices:
            return f"`{self.name}=" + "\\|".join(repr(c).replace("'", '"') for c in self.choices) + "`"
        return f"`{self.name}={self.default!r}`".replace("'", '"')


CLASSIFICATION = "classification"
TASK_NOUNS = {"classification": "classifications", "detection": "detections"}   # what a method of the task explains
MODELS = {"classification": "classifiers", "detection": "detectors", "segmentation": "segmenters"}


def explains(task: str) -> str:
    return TASK_NOUNS.get(task, f"{task} models")


def check_options(options: dict, accepted: dict[str, Option], owner: str, short: str, where: str = "",
                  note: str = "") -> None:
    """Refuse an option `owner` (a method, an enhancer) does not take, naming those it takes (`where`: for which
    task; `note`: where the option belongs), then check each value."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CamInferError(f"{owner} has no option {', '.join(unknown)}{where}{note}; its options{where}: "
                            f"{', '.join(accepted) or 'none'}")
    for key, value in options.items():
        accepted[key].check(short, value)


@dataclass(frozen=True)
class Implementation:
    """A method's code for one task, its options (from its keyword-only signature) and what it costs.

    ``passes`` counts its runtime passes, in the task's terms: for classifiers ((K,h,w), options, linear head?)
    → `cost.Passes` beyond the clean pass; for detectors (ctx, target, **options) → the passes of one target,
    with ``image_passes`` (ctx, **options) → the passes its targets share."""

    method: str
    task: str
    fn: Callable
    options: dict[str, Option]
    cost: str                       # what one image (or target) costs, in words (bench and docs)
    in_all: bool = True             # part of the task's `--method all`
    passes: Callable | None = None
    image_passes: Callable | None = None

    def check_options(self, options: dict) -> None:
        unknown, spec = set(options) - set(self.options), METHODS.get(self.method)
        elsewhere = [t for t in (spec.tasks if spec and unknown else ()) if t != self.task
                     and unknown <= set(spec.implementation(t).options)]
        task = f" for {explains(self.task)}" if elsewhere or self.task != CLASSIFICATION else ""
        check_options(options, self.options, f"method '{self.method}'", self.method, task,
                      f" (an option for {' and '.join(MODELS.get(t, t) for t in elsewhere)})" if elsewhere else "")

    def defaults(self) -> dict:
        return {name: option.default for name, option in self.options.items()}

    def __call__(self, *args, **options):
        self.check_options(options)
        return self.fn(*args, **options)


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package knows about a method: its code for each task it explains (`implementation`),
    and what every task shares (its name, needs, summary, whether the map depends on the class)."""

    name: str
    needs: str                      # one of NEEDS
    summary: str                    # one line: what it computes
    bench: dict[str, dict]          # benchmark cases: shown name → options
    implementations: dict[str, Implementation]    # task → its code
    fused: Callable | None = None   # (Fusion, **options) → map tensor name, for `cam-infer fuse`
    class_specific: bool = True     # the map depends on the class explained
    agnostic_on_linear_head: bool = False   # ... but not at a cut a GAP→linear head follows
    floor: Callable | None = None   # (explainer, x, options) → (full passes, images per call), for bench

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks whose models it explains."""
        return tuple(self.implementations)

    def implementation(self, task: str = CLASSIFICATION) -> Implementation:
        """Its code for a task: a callable that checks the options, then runs."""
        if task not in self.implementations:
            raise CamInferError(f"method '{self.name}' does not explain {explains(task)}; choose one of: "
                                f"{', '.join(explaining(task))}")
        return self.implementations[task]

    @property
    def fn(self) -> Callable:
        """The classifier's function: (Context, **options) → (N,h,w) maps before ReLU and normalisation."""
        return self.implementation().fn

    @property
    def options(self) -> dict[str, Option]:
        """The classifier's options."""
        return self.implementation().options

    @property
    def cost(self) -> str:
        return self.implementation().cost

    @property
    def in_all(self) -> bool:
        """Part of a classifier's `--method all` (False: many times Score-CAM's passes)."""
        return CLASSIFICATION in self.implementations and self.implementations[CLASSIFICATION].in_all

    def passes(self, shape: tuple[int, int, int], options: dict, linear_head: bool):
        """The runtime passes one classifier image costs beyond its clean pass (`cost.Passes`), with these
        options: none for methods of the features alone, one backward for the gradient family, else the method's own."""
        from ..cost import Passes
        chosen = self.implementation()
        chosen.check_options(options)
        if chosen.passes is not None:
            return chosen.passes(shape, {**chosen.defaults(), **options}, linear_head)
        return Passes(backward=1) if self.gradient else Passes()

    def defaults(self, task: str = CLASSIFICATION) -> dict:
        return self.implementation(task).defaults()

    @property
    def gradient(self) -> bool:
        return self.needs == "gradients"

    def applies(self, has_linear_head: bool) -> str | None:
        """Why this method cannot run on a bundle (None: it can)."""
        if self.needs == "linear_head" and not has_linear_head:
            return (f"method '{self.name}' needs a head that is global average pooling followed by a linear layer, "
                    "and this bundle's head is not; use recipro, ablation or score")
        return None

    def check_options(self, options: dict, task: str = CLASSIFICATION) -> None:
        self.implementation(task).check_options(options)

METHODS: dict[str, MethodSpec] = {}


def method(name: str, *, needs: str = "features", cost: str, bench: dict | None = None, floor: Callable | None = None,
           in_all: bool = True, passes: Callable | None = None, class_specific: bool = True,
           agnostic_on_linear_head: bool = False):
    """Register a method under `name`, with the decorated function as its classifier implementation; its
    keyword-only arguments are its options. The first line of the function's docstring is its summary;
    `cost` says its passes in words, `passes` counts them (`MethodSpec.passes`). ``class_specific=False``:
    its map does not depend on the class (also said by its ONNX builder, `fused`); ``agnostic_on_linear_head``:
    not where the cut is followed by a GAP→linear head (the explainer's `linear_head`). Other tasks' code:
    `implements`."""
    if needs not in NEEDS:
        raise ValueError(f"method '{name}': needs must be one of {NEEDS}, not {needs!r}")

    def register(fn):
        if name in METHODS:
            raise ValueError(f"method name '{name}' is registered twice ({METHODS[name].fn.__module__} and "
                             f"{fn.__module__})")
        code = Implementation(name, CLASSIFICATION, fn, options_of(fn), cost, in_all, passes)
        METHODS[name] = MethodSpec(name, needs, summary_of(fn, name), {name: {}} if bench is None else bench,
                                   {CLASSIFICATION: code}, floor=floor, class_specific=class_specific,
                                   agnostic_on_linear_head=agnostic_on_linear_head)
        return fn
    return register


def implements(name: str, task: str, *, cost: str, passes: Callable | None = None,
               image_passes: Callable | None = None, in_all: bool = True):
    """Register a registered method's code for another task, in the method's own module, where that task
    changes the computation (e.g. a detector's levels and targets):

        @implements("recipro", "detection", cost="≤ 26 crops per target", passes=target_passes)
        def recipro_detections(ctx, targets, *, score: Literal["anchor", "match"] = "anchor", block: int = 1):

    Its keyword-only arguments are its options for that task, checked as the classifier's are."""
    def register(fn):
        if name not in METHODS:
            raise ValueError(f"@implements('{name}', '{task}') before @method('{name}')")
        if task in METHODS[name].implementations:
            raise ValueError(f"method '{name}' has two implementations for {explains(task)}")
        code = Implementation(name, task, fn, options_of(fn), cost, in_all, passes, image_passes)
        METHODS[name] = replace(METHODS[name], implementations={**METHODS[name].implementations, task: code})
        return fn
    return register


def fused(name: str, *, class_specific: bool):
    """Register the ONNX builder of an already registered method (its options: a subset of the method's,
    plus builder-only ones such as eigen's ``squarings``)."""
    def register(fn):
        if name not in METHODS:
            raise ValueError(f"@fused('{name}') before @method('{name}')")
        if METHODS[name].fused is not None:
            raise ValueError(f"method '{name}' has two ONNX builders")
        if not METHODS[name].class_specific and class_specific:
            raise ValueError(f"method '{name}' is class-agnostic and its ONNX builder says otherwise")
        METHODS[name] = replace(METHODS[name], fused=fn, class_specific=class_specific)
        return fn
    return register


def summary_of(fn: Callable, default: str) -> str:
    """The first line of a function's docstring."""
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0] if doc else default


def explaining(task: str) -> list[str]:
    """The methods that explain a task's models, in the registry's order."""
    return [name for name, spec in METHODS.items() if task in spec.implementations]


def in_all(task: str) -> list[str]:
    """What ``--method all`` runs for a task: its gradient-free methods that are not many times Score-CAM's cost."""
    return [name for name in explaining(task)
            if not METHODS[name].gradient and METHODS[name].implementations[task].in_all]


def options_of(fn: Callable) -> dict[str, Option]:
    hints = typing.get_type_hints(fn)
    options = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind != p.KEYWORD_ONLY:
            continue
        options[p.name] = _option(p.name, p.default, hints.get(p.name))
    return options


def _option(name: str, default, hint) -> Option:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return Option(name, default, choices=tuple(typing.get_args(hint)))
    if args and typing.get_origin(args[0]) is Literal:
        return Option(name, default, choices=tuple(typing.get_args(args[0])), optional=optional)
    kinds = tuple(a for a in (args or [hint]) if isinstance(a, type))
    if float in kinds:
        kinds = (*kinds, int)
    return Option(name, default, kinds or None, optional=optional)


def get_method(name: str, task: str | None = None) -> MethodSpec:
    """The method registered under `name`; with a task, one that explains that task's models."""
    if name not in METHODS:
        import difflib
        names = list(METHODS) if task is None else explaining(task)
        close = difflib.get_close_matches(name, names, n=2)
        raise CamInferError(f"unknown method '{name}'" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                                          if close else "") + f"; choose one of: {', '.join(names)}")
    if task is not None:
        METHODS[name].implementation(task)
    return METHODS[name]


def split_variant(name: str) -> tuple[str, str | None]:
    """A method name with an optional enhancer suffix: 'recipro+sess' → ('recipro', 'sess'),
    'gradcam++' → ('gradcam++', None)."""
    method, plus, enhancer = name.rpartition("+")
    return (method, enhancer) if method and enhancer else (name, None)


def class_agnostic(method: str) -> bool:
    """True for a method whose map does not depend on the class explained (activation, eigen, entropy), also
    inside an enhancer ('eigen+sess'): its one map per image must never be shown under a class name."""
    return not get_method(split_variant(method)[0]).class_specific


def class_agnostic_note(methods) -> str:
    """The one line that says a class asked for does not apply to these class-agnostic methods."""
    return (f"{', '.join(methods)}: class-agnostic (the map does not depend on the class), one map per image; "
            "the class asked for is not used")


def require_linear_head(ctx: Context, name: str) -> LinearHead:
    if ctx.linear_head is None and ctx.bundle.tokens is not None:
        raise MethodNotApplicable(f"method '{name}' needs a head that is global average pooling followed by a linear "
                                  "layer, and a transformer's head (a LayerNorm, then its class token or pooled "
                                  "tokens, then a linear layer) is not one; use recipro, ablation or score")
    if ctx.linear_head is None:
        raise MethodNotApplicable(METHODS[name].applies(False))
    return ctx.linear_head
