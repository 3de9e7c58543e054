"""``python -m cam_infer.methods [bench/*.md]``: print the method table of the docs, made from the registry;
given benchmark tables, with their ResNet-50/OpenVINO ratios."""

import sys
from pathlib import Path

from . import METHODS  # noqa: F401  (registers every method)
from .registry import measured_ratios, methods_table

files = sys.argv[1:]
print(methods_table(measured_ratios(Path(f).read_text() for f in files) if files else None))
