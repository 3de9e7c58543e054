"""Where compiled Numba kernels are cached: a per-user cache folder, never inside the installed package.

Numba's ``cache=True`` writes next to the module by default. Inside ``site-packages`` those files
outlive ``pip uninstall`` and, left behind as a bare ``cam_infer/__pycache__``, shadow a later
editable install as an empty namespace package. So the kernels of this package are cached in

- ``$CAM_INFER_CACHE_DIR/numba`` when that variable is set, else
- the platform's user cache folder: ``$XDG_CACHE_HOME/cam-infer`` or ``~/.cache/cam-infer`` (Linux),
  ``~/Library/Caches/cam-infer`` (macOS), ``%LOCALAPPDATA%\\cam-infer`` (Windows), then ``/numba``.

When that folder cannot be written, the kernels are compiled in each process (nothing is cached).
Other packages' Numba caches are left as they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENVIRONMENT_VARIABLE = "CAM_INFER_CACHE_DIR"
PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The folder for this package's caches (it may not exist yet)."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cam-infer"


def numba_cache_dir() -> Path:
    return cache_dir() / "numba"


def use_user_cache() -> bool:
    """Send the caches of this package's kernels to `numba_cache_dir()`; returns whether kernels may be
    cached at all (False: compile in every process, write nothing)."""
    try:
        from numba.core.caching import CacheImpl, UserProvidedCacheLocator
    except ImportError:          # a Numba without this hook: never fall back to writing in the package
        return False
    if not any(c.__name__ == "CamInferCacheLocator" for c in CacheImpl._locator_classes):
        CacheImpl._locator_classes.insert(0, _locator_class(UserProvidedCacheLocator))
    return _writable(numba_cache_dir())


def _locator_class(base):
    class CamInferCacheLocator(base):
        """Numba cache locator for functions defined in this package only."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(numba_cache_dir() / self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            try:
                inside = Path(py_file).resolve().is_relative_to(PACKAGE)
            except (OSError, ValueError):
                inside = False
            if not inside:
                return None
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    return CamInferCacheLocator


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False
