"""diskdelta: block-level deltas of disk images, from Python.

The functions call the diskdelta library directly (not the command), with
the GIL released while they work, so other Python threads run. Results are
dataclasses with the same fields as the command's ``--json`` output;
failures raise the exceptions below with the command's one-line messages.

>>> import diskdelta
>>> r = diskdelta.diff("base.img", "new.img", "changes.ddelta")   # doctest: +SKIP
>>> diskdelta.apply("changes.ddelta", "base.img", "restored.img")  # doctest: +SKIP

``diskdelta.compat`` has diff-dd's ``CreateDiff``/``RestoreDiff`` API on
file objects.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

from . import _diskdelta
from ._diskdelta import (  # noqa: F401  (re-exported)
    BaseMismatch,
    DeltaCorrupt,
    DiskdeltaError,
    IoFailure,
    ResultMismatch,
)

__all__ = [
    "diff",
    "apply",
    "apply_in_place",
    "info",
    "DiffResult",
    "ApplyResult",
    "DeltaInfo",
    "DiskdeltaError",
    "DeltaCorrupt",
    "BaseMismatch",
    "ResultMismatch",
    "IoFailure",
]

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class DiffResult:
    """What ``diff`` did (the fields of ``diskdelta diff --json``)."""

    format: str
    old_size: int
    new_size: int
    extents: int
    changed_bytes: int
    delta_bytes: int
    seconds: float
    old_digest: Optional[str]
    new_digest: str
    bytes_read: int
    change_tracked: bool


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply``/``apply_in_place`` did (``diskdelta apply --json``)."""

    mode: str
    format: str
    new_size: int
    extents: int
    changed_bytes: int
    check_base: str
    verified: bool
    new_digest: Optional[str]
    seconds: float
    notes: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta holds (``diskdelta info --json``); every record verified."""

    format: str
    version: Optional[int]
    checksums: bool
    block_size: Optional[int]
    old_size: Optional[int]
    new_size: Optional[int]
    extents: int
    raw_extents: int
    zstd_extents: int
    zstd_ref_extents: int
    zero_extents: int
    changed_bytes: int
    stored_bytes: int
    delta_bytes: int
    compression_ratio: float
    old_digest: Optional[str]
    new_digest: Optional[str]
    base_samples: int
    change_tracked: bool


def _fields(cls, text):
    data = json.loads(text)
    names = {f for f in cls.__dataclass_fields__}
    return cls(**{k: v for k, v in data.items() if k in names})


def diff(
    old: PathLike,
    new: PathLike,
    out: PathLike,
    block_size: int = 4096,
    compress: str = "zstd:3",
    threads: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> DiffResult:
    """Writes the delta of ``new`` against ``old`` to ``out``.

    A regular-file ``out`` is written under a temporary name, read back and
    verified, then renamed. ``compress``: ``none``, ``zstd`` or
    ``zstd:LEVEL``. ``progress(done, total)`` is called about every 100 ms
    with the bytes of ``new`` read.
    """
    return _fields(
        DiffResult,
        _diskdelta.diff(
            os.fspath(old), os.fspath(new), os.fspath(out), block_size, compress, threads,
            progress,
        ),
    )


def apply(
    delta: PathLike, base: PathLike, out: PathLike, progress: Optional[Progress] = None
) -> ApplyResult:
    """Rebuilds NEW from ``base`` and ``delta`` into ``out``, verified against
    the NEW digest the delta records before a file ``out`` is published."""
    return _fields(
        ApplyResult,
        _diskdelta.apply(os.fspath(delta), os.fspath(base), os.fspath(out), progress),
    )


def apply_in_place(
    delta: PathLike,
    target: PathLike,
    check_base: Optional[str] = None,
    verify: bool = False,
    progress: Optional[Progress] = None,
) -> ApplyResult:
    """Changes ``target`` (which holds the delta's OLD) into NEW, writing only
    the changed extents, after the whole delta was verified and the base
    checked (``check_base``: ``none``, ``sample`` (default) or ``full``)."""
    return _fields(
        ApplyResult,
        _diskdelta.apply_in_place(
            os.fspath(delta), os.fspath(target), check_base, verify, progress
        ),
    )


def info(delta: PathLike) -> DeltaInfo:
    """Describes a delta; every record is verified on the way."""
    return _fields(DeltaInfo, _diskdelta.info(os.fspath(delta)))
