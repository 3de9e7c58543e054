"""Moved to `cam_infer.tools.synthetic`; this old name is kept only until code written before the move is updated."""
import sys

from .tools import synthetic

sys.modules[__name__] = synthetic
