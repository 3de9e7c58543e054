"""``python -m cam_infer.methods``: print the README's method table, made from the registry."""

from . import METHODS  # noqa: F401  (registers every method)
from .registry import methods_table

print(methods_table())
