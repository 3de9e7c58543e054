"""A run's maps in one array store (``--overlays none``): fixed-size shards of 8-bit maps, each a NumPy ``.npy``
file written in place through a memory map, and the index in the run's records.

    out/maps/00000.npy        (SHARD, H, W) uint8: the run's first SHARD maps, value round(255·s)
    out/maps/00001.npy        the next SHARD maps ...
    out/results.json          each record: "map": "maps/00000.npy", "slot": k   (the map is that file's [k])

    maps = read_maps("out/")                  # {(image, method): float32 map in [0, 1]}, read as asked
    np.load("out/maps/00000.npy", mmap_mode="r")[k]             # or one map, with NumPy alone

Why shards written in place: an ``.npz`` cannot be appended to without rewriting it, and one array per run would
need its size before the run knows what a resume leaves to do. A shard is created at its full size; the driver
copies each map into its slot (a shared mapping: in the file as soon as it is copied, whatever becomes of the
process) before the batch's journal line, so a journal line means its maps are in their shard, a killed run loses
at most the batch in flight, and a resume continues after the last slot its kept records use (a slot a dropped
record used stays unused; no map is written twice). Like the PNGs, the shards are not synced batch by batch (an
msync took 12 ms a batch of 8): the page cache survives a killed process; the run syncs them when it ends.
Memory stays flat: one shard is mapped at a time. Against a PNG per map: no encoder (0.4–0.6 ms a 224² map), 12
files instead of 3 000 for a thousand photos explained three ways, at 49 KB a 224² map on disk (MobileNetV2's
Recipro-CAM maps as PNGs: 12 KB on average, so the store takes 4× the disk for no encoder in the loop).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import CamInferError

FOLDER = "maps"
SHARD = 256                 # maps a shard holds: 12.8 MB at 224² (one shard is mapped at a time)


class MapStore:
    """The shards of a run's folder `out`, continued after the slots `rows` (the records a resume kept) use."""

    def __init__(self, out: Path, rows: list[dict]):
        self.folder = Path(out) / FOLDER
        used = [(r["map"], r["slot"]) for r in rows if "slot" in r]
        last = max(used, default=None)
        self._shard = None
        self._name = last[0] if last else None
        self._next = last[1] + 1 if last else SHARD

    def put(self, levels: np.ndarray) -> dict:
        """Copy one map's 8-bit levels into the next free slot; its record's fields ``{"map", "slot"}``."""
        if self._next >= SHARD or self._open().shape[1:] != levels.shape:
            self._start_shard(levels.shape)
        shard = self._open()
        shard[self._next] = levels
        self._next += 1
        return {"map": self._name, "slot": self._next - 1}

    def close(self) -> None:
        """Sync the open shard to disk and let it go."""
        if self._shard is not None:
            self._shard.flush()
        self._shard = None

    def _open(self):
        if self._shard is None:
            self._shard = np.load(self.folder.parent / self._name, mmap_mode="r+")
        return self._shard

    def _start_shard(self, shape: tuple) -> None:
        self.close()
        number = int(Path(self._name).stem) + 1 if self._name else 0
        self._name = f"{FOLDER}/{number:05d}.npy"
        path = self.folder.parent / self._name
        try:
            self.folder.mkdir(exist_ok=True)
            shard = np.lib.format.open_memmap(path, "w+", np.uint8, (SHARD, *shape))
            reserve(path)
        except OSError as exc:
            path.unlink(missing_ok=True)            # not left holding what blocks it had
            raise CamInferError(f"could not write '{path}' ({exc.strerror or exc}): is the folder writable, the disk "
                                "full?") from None
        self._shard, self._next = shard, 0


def reserve(path: Path) -> None:
    """Give a new shard (a sparse file) its blocks on disk now: a full disk is then an error here, where a map copied
    into a page with no block behind it would kill the process with SIGBUS. Where the file system cannot reserve
    (no fallocate), the shard stays sparse."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return
            raise


def put_maps(store: MapStore, result: dict) -> None:
    """A work result's maps (``result["maps"]``: (row position, 8-bit levels)) into `store`, each row given its
    ``map`` and ``slot`` (before the journal line that names them)."""
    for position, levels in result.pop("maps", ()):
        result["rows"][position].update(store.put(levels))


class RunMaps(Mapping):
    """The maps of a run's array store by (image, method), each read from its shard when asked, as float32 in
    [0, 1] (the 8-bit level / 255: within 1/510 of the saliency)."""

    def __init__(self, out, records: list[dict]):
        self.out = Path(out)
        self._where = {(r["image"], r["method"]): (r["map"], r["slot"]) for r in records if "slot" in r}
        self._shards: dict[str, np.ndarray] = {}

    def __getitem__(self, key) -> np.ndarray:
        name, slot = self._where[key]
        if name not in self._shards:
            self._shards[name] = np.load(self.out / name, mmap_mode="r")
        return self._shards[name][slot].astype(np.float32) / 255

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_maps(out) -> RunMaps:
    """The maps a classifier's ``--overlays none`` run wrote in `out` (its array store), by (image, method) as
    results.json names them: ``read_maps("out/")[("photos/cat.jpg", "recipro")]`` → float32 (H, W) in [0, 1]."""
    import json

    if not isinstance(out, (str, os.PathLike)):
        raise CamInferError(f"read_maps takes a run's folder (its path), not {type(out).__name__}")
    results = Path(out) / "results.json"
    try:
        records = json.loads(results.read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError):
        raise CamInferError(f"'{out}' holds no results.json of a finished folder run") from None
    maps = RunMaps(out, records)
    if not maps:
        raise CamInferError(f"the run in '{out}' wrote no maps into an array store (run with --overlays none)")
    return maps
