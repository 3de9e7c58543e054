"""Moved to `cam_infer.tools.bench`; this old name is kept only until code written before the move is updated."""
import sys

from .tools import bench

sys.modules[__name__] = bench
