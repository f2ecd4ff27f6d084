"""diff-dd's API, so scripts port by changing one import:

    from diskdelta.compat import CreateDiff, RestoreDiff

``CreateDiff(iffd, dffd, offd, block_size).start()`` writes the delta of
``dffd`` (NEW) against ``iffd`` (OLD) to ``offd``; ``RestoreDiff(iffd, dffd,
offd, block_size).start()`` writes ``iffd`` (the base) with the delta
``dffd`` applied to ``offd``. ``ResoreDiff`` is diff-dd's spelling. The
arguments are binary file objects: real files, pipes, ``sys.stdin.buffer``,
or any object with ``read`` (inputs) or ``write`` (output) only. Deltas are
diskdelta's checksummed format; the result of ``RestoreDiff`` is verified
against the digest the delta records. ``RestoreDiff(..., format="diff-dd-py")``
reads deltas written by diff-dd 1.0.4 itself.

Objects with a file descriptor that is a regular file or block device are
read by the library directly, from their start. Everything else passes
through a named pipe that a thread of this module feeds or drains.
"""

import os
import stat
import tempfile
import threading

from . import apply as _apply
from . import diff as _diff

__all__ = ["CreateDiff", "RestoreDiff", "ResoreDiff"]

_CHUNK = 1 << 20


class _Pump(threading.Thread):
    """Copies ``obj`` into the FIFO ``path`` (``into=True``) or the FIFO
    into ``obj``."""

    def __init__(self, obj, path, into):
        super().__init__(daemon=True)
        self.obj, self.path, self.into, self.error = obj, path, into, None

    def run(self):
        try:
            if self.into:
                with open(self.path, "wb", buffering=0) as fifo:
                    while True:
                        chunk = self.obj.read(_CHUNK)
                        if not chunk:
                            break
                        fifo.write(chunk)
            else:
                with open(self.path, "rb", buffering=0) as fifo:
                    while True:
                        chunk = fifo.read(_CHUNK)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            n = self.obj.write(view)
                            view = view[n if n is not None else len(view):]
        except BaseException as e:  # re-raised by _run
            self.error = e


def _direct_path(obj):
    """``/proc/self/fd/N`` for a regular file or block device, else None."""
    try:
        fd = obj.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return f"/proc/self/fd/{fd}"
    return None


def _run(inputs, output, call):
    with tempfile.TemporaryDirectory(prefix="diskdelta-compat-") as tmp:
        pumps, paths = [], []
        for i, obj in enumerate(inputs):
            path = _direct_path(obj)
            if path is None:
                path = os.path.join(tmp, f"in{i}")
                os.mkfifo(path, 0o600)
                pumps.append(_Pump(obj, path, into=True))
            paths.append(path)
        out_path = os.path.join(tmp, "out")
        os.mkfifo(out_path, 0o600)
        pumps.append(_Pump(output, out_path, into=False))
        for p in pumps:
            p.start()
        error = None
        try:
            result = call(paths, out_path)
        except BaseException as e:
            error = e
            # Unblock pumps still waiting for the other end of their FIFO.
            for p in pumps:
                if p.is_alive():
                    try:
                        fd = os.open(p.path, os.O_RDWR | os.O_NONBLOCK)
                        os.close(fd)
                    except OSError:
                        pass
        for p in pumps:
            p.join()
        if error is not None:
            raise error
        for p in pumps:
            if p.error is not None:
                raise p.error
    if hasattr(output, "flush"):
        output.flush()
    return result


_PY_HEADER = 32768


def _write_diff_dd_py(new, out, block_size):
    """diff-dd 1.0.4's own format (docs/formats/diff-dd.md): a 32 KiB
    header of NULs, then every block of NEW after its number (u64,
    little-endian as on x86-64 and aarch64), then the block count."""
    out.write(bytes(_PY_HEADER))
    index = 0
    while True:
        block = new.read(block_size)
        # File objects may return short reads (pipes): fill the block.
        while block and len(block) < block_size:
            more = new.read(block_size - len(block))
            if not more:
                break
            block += more
        if not block:
            break
        out.write(index.to_bytes(8, "little"))
        out.write(block)
        index += 1
        if len(block) < block_size:
            break
    out.write(index.to_bytes(8, "little"))
    if hasattr(out, "flush"):
        out.flush()
    return index


class CreateDiff:
    """diff-dd's ``CreateDiff``: the delta of ``dffd`` against ``iffd``.

    ``format="diff-dd-py"`` writes diff-dd 1.0.4's own format for readers
    that know no other (every block of NEW, no checksums, ``iffd`` unused).
    """

    def __init__(self, iffd, dffd, offd, block_size=4096, compress="zstd:3",
                 format="diskdelta"):
        if format not in ("diskdelta", "diff-dd-py"):
            raise ValueError(f"unknown format {format!r} (diskdelta or diff-dd-py)")
        self.iffd, self.dffd, self.offd = iffd, dffd, offd
        self.block_size, self.compress, self.format = block_size, compress, format

    def start(self):
        """Runs the diff; returns a ``diskdelta.DiffResult`` (the number of
        blocks written for ``format="diff-dd-py"``)."""
        if self.format == "diff-dd-py":
            return _write_diff_dd_py(self.dffd, self.offd, self.block_size)
        return _run(
            [self.iffd, self.dffd],
            self.offd,
            lambda p, out: _diff(p[0], p[1], out, self.block_size, self.compress),
        )


class RestoreDiff:
    """diff-dd's ``RestoreDiff``: ``iffd`` with the delta ``dffd`` applied."""

    def __init__(self, iffd, dffd, offd, block_size=4096, format=None):
        self.iffd, self.dffd, self.offd = iffd, dffd, offd
        self.block_size, self.format = block_size, format

    def start(self):
        """Runs the restore; returns a ``diskdelta.ApplyResult``. A delta
        written by diff-dd itself needs ``format="diff-dd-py"`` (its files
        carry no header to detect), with its ``block_size``."""
        foreign = self.format not in (None, "diskdelta")
        return _run(
            [self.iffd, self.dffd],
            self.offd,
            lambda p, out: _apply(
                p[1], p[0], out, format=self.format,
                block_size=self.block_size if foreign else None,
            ),
        )


ResoreDiff = RestoreDiff
