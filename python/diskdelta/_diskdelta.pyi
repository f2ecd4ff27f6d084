"""The native module; use the ``diskdelta`` package's functions instead."""

from typing import Callable, List, Optional

_Progress = Optional[Callable[[int, Optional[int]], None]]

class DiskdeltaError(Exception): ...
class DeltaCorrupt(DiskdeltaError): ...
class ResultMismatch(DeltaCorrupt): ...
class BaseMismatch(DiskdeltaError): ...
class IoFailure(DiskdeltaError): ...
class RepositoryError(DiskdeltaError): ...
class RepositoryDamaged(RepositoryError): ...

def diff(
    old: str,
    new: str,
    out: str,
    block_size: int = 4096,
    compress: str = "zstd:3",
    threads: Optional[int] = None,
    progress: _Progress = None,
) -> str: ...
def apply(
    delta: str,
    base: str,
    out: str,
    progress: _Progress = None,
    format: Optional[str] = None,
    block_size: Optional[int] = None,
) -> str: ...
def apply_in_place(
    delta: str,
    target: str,
    check_base: Optional[str] = None,
    verify: bool = False,
    progress: _Progress = None,
) -> str: ...
def info(delta: str) -> str: ...

class Repository:
    def __init__(
        self,
        location: str,
        password: Optional[str] = None,
        create: bool = False,
        encrypt: bool = True,
        chunk_size: Optional[int] = None,
    ) -> None: ...
    @property
    def location(self) -> str: ...
    def backup(
        self, source: str, name: Optional[str] = None, tags: List[str] = ..., progress: _Progress = None
    ) -> str: ...
    def snapshots(self) -> str: ...
    def restore(self, snapshot: str, out: str, progress: _Progress = None) -> str: ...
    def verify(self, read_data: bool = False) -> str: ...
    def forget(
        self,
        snapshots: List[str] = ...,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        name: Optional[str] = None,
        prune: bool = False,
        dry_run: bool = False,
    ) -> str: ...
