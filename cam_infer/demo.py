"""Moved to `cam_infer.tools.demo`; this old name is kept only until code written before the move is updated."""
import sys

from .tools import demo

sys.modules[__name__] = demo
