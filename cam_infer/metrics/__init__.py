"""Quality of maps: localisation against ground-truth boxes (forward passes only)."""

from .localisation import pointing_hit, pointing_game  # noqa: F401

__all__ = ["pointing_game", "pointing_hit"]
