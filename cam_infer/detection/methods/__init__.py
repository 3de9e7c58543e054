"""Compatibility names for the detector methods, now one registry with the classifiers' (`cam_infer.methods`:
each method's module holds its detector code, registered with ``@implements(name, "detection")``; the levels
combine by `cam_infer.methods.levels`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ...methods import METHODS, explaining, get_method, implements
from ...methods.levels import same_unit, unit_free  # noqa: F401
from ..targets import central_targets  # noqa: F401

DETECTION = "detection"


@dataclass(frozen=True)
class DetectionMethod:
    """A method's detector implementation, seen as before: ``fn(ctx, targets, **options)`` (options checked)."""

    name: str
    fn: object
    cost: str
    summary: str
    class_specific: bool


def _view(name: str) -> DetectionMethod:
    spec = get_method(name, DETECTION)
    code = spec.implementation(DETECTION)
    return DetectionMethod(name, code, code.cost, spec.summary, spec.class_specific)


class _Registered(Mapping):
    def __getitem__(self, name):
        if name not in explaining(DETECTION):
            raise KeyError(name)
        return _view(name)

    def __iter__(self):
        return iter(explaining(DETECTION))

    def __len__(self):
        return len(explaining(DETECTION))


DETECTION_METHODS = _Registered()


def get_detection_method(name: str) -> DetectionMethod:
    return _view(name)


def detection_method(name: str, cost: str, class_specific: bool = True, target_passes=None, image_passes=None):
    """Register a registered method's detector code (`cam_infer.methods.implements`)."""
    if name in METHODS and METHODS[name].class_specific != class_specific:
        raise ValueError(f"method '{name}' is class-{'specific' if METHODS[name].class_specific else 'agnostic'}")
    return implements(name, DETECTION, cost=cost, passes=target_passes, image_passes=image_passes)
