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
from typing import Callable, List, Optional, Sequence, Union

from . import _diskdelta
from ._diskdelta import (  # noqa: F401  (re-exported)
    BaseMismatch,
    DeltaCorrupt,
    DiskdeltaError,
    IoFailure,
    RepositoryDamaged,
    RepositoryError,
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
    "RepositoryError",
    "RepositoryDamaged",
    "Repository",
    "BackupResult",
    "Snapshot",
    "RestoreResult",
    "VerifyReport",
    "ForgetReport",
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
    # Version 3: records copied from another offset of OLD.
    copy_extents: int = 0
    copied_bytes: int = 0


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
    delta: PathLike,
    base: PathLike,
    out: PathLike,
    progress: Optional[Progress] = None,
    format: Optional[str] = None,
    block_size: Optional[int] = None,
) -> ApplyResult:
    """Rebuilds NEW from ``base`` and ``delta`` into ``out``, verified against
    the NEW digest the delta records before a file ``out`` is published.

    ``format`` reads a foreign delta (``diff-dd-v1``, ``diff-dd-v2``,
    ``diff-dd-py``; detected when ``None``), ``block_size`` its record size
    where the format does not store one."""
    return _fields(
        ApplyResult,
        _diskdelta.apply(
            os.fspath(delta), os.fspath(base), os.fspath(out), progress, format, block_size
        ),
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


@dataclass(frozen=True)
class BackupResult:
    """What ``Repository.backup`` did (``diskdelta backup --json``)."""

    snapshot: str
    name: str
    parent: Optional[str]
    size: int
    digest: str
    bytes_read: int
    bytes_sent: int
    new_chunks: int
    reused_chunks: int
    zero_chunks: int
    new_bytes: int
    bytes_added: int
    dedup_ratio: float
    adopted_packs: int
    seconds: float


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a repository."""

    id: str
    name: str
    time: str
    size: int
    digest: str
    source: str
    host: str
    parent: Optional[str]
    tags: List[str]
    chunk_size: int


@dataclass(frozen=True)
class RestoreResult:
    """What ``Repository.restore`` did (``diskdelta restore --json``)."""

    snapshot: str
    size: int
    digest: str
    digest_checked: bool
    bytes_written: int
    chunks_fetched: int
    chunks_unchanged: int
    seconds: float
    damaged_index_files: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class VerifyReport:
    """What ``Repository.verify`` found (``diskdelta verify --json``):
    problems are listed in ``errors`` and ``damaged_snapshots``, not raised."""

    snapshots: int
    packs: int
    chunks_read: int
    orphan_packs: int
    errors: List[str]
    damaged_snapshots: list

    @property
    def ok(self) -> bool:
        return not self.errors and not self.damaged_snapshots


@dataclass(frozen=True)
class ForgetReport:
    """What ``Repository.forget`` did (``diskdelta forget --json``)."""

    dry_run: bool
    decisions: list
    removed: int
    prune: Optional[dict]


class Repository:
    """A diskdelta repository: a local directory, ``s3:...`` or
    ``ssh://...``, as ``diskdelta -r`` takes it.

    ``password`` opens an encrypted repository (else ``DISKDELTA_PASSWORD``);
    ``create=True`` makes a new one (encrypted unless ``encrypt=False``).
    """

    def __init__(
        self,
        location: PathLike,
        password: Optional[str] = None,
        create: bool = False,
        encrypt: bool = True,
        chunk_size: Optional[int] = None,
    ):
        self._repo = _diskdelta.Repository(
            os.fspath(location), password, create, encrypt, chunk_size
        )

    @property
    def location(self) -> str:
        return self._repo.location

    def backup(
        self,
        source: PathLike,
        name: Optional[str] = None,
        tags: Sequence[str] = (),
        progress: Optional[Progress] = None,
    ) -> BackupResult:
        """Backs up a file or block device as a new snapshot of ``name``
        (default ``HOST-FILE``), incremental against its latest snapshot."""
        return _fields(
            BackupResult, self._repo.backup(os.fspath(source), name, list(tags), progress)
        )

    def snapshots(self) -> List[Snapshot]:
        """The snapshots, oldest first."""
        names = set(Snapshot.__dataclass_fields__)
        return [
            Snapshot(**{k: v for k, v in s.items() if k in names})
            for s in json.loads(self._repo.snapshots())
        ]

    def restore(
        self, snapshot: str, out: PathLike, progress: Optional[Progress] = None
    ) -> RestoreResult:
        """Writes ``snapshot`` (id, unique prefix, or name: its latest) to
        ``out``, every chunk verified."""
        return _fields(RestoreResult, self._repo.restore(snapshot, os.fspath(out), progress))

    def verify(self, read_data: bool = False) -> VerifyReport:
        """Checks the structure, with ``read_data`` every chunk too."""
        return _fields(VerifyReport, self._repo.verify(read_data))

    def forget(
        self,
        snapshots: Sequence[str] = (),
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        name: Optional[str] = None,
        prune: bool = False,
        dry_run: bool = False,
    ) -> ForgetReport:
        """Removes ``snapshots``, or those a keep policy does not keep;
        ``prune`` then removes the data no snapshot uses."""
        return _fields(
            ForgetReport,
            self._repo.forget(
                list(snapshots), keep_last, keep_daily, keep_weekly, keep_monthly, name, prune,
                dry_run,
            ),
        )
