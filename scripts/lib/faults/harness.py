"""Running diskdelta under a timeout and judging what a fault did.

Every command of the fault suite goes through `run`: it starts the command
in its own process group, kills the whole group when the timeout passes
(a hang is an outcome, never a stuck harness) and returns what happened.
`judge` turns that into one of the outcome classes of the campaign table.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# Outcome classes, in the order of the table's columns. The first two are
# good; every other one is a failure of diskdelta.
DETECTED = "detected"    # non-zero exit, one error line, nothing lost
HARMLESS = "harmless"    # success, and the result is right
UNPROTECTED = "unprotected"  # success with other bytes, in a format without checksums
HANG = "hang"            # still running at the timeout
WRONG = "wrong"          # success, but the result differs
PARTIAL = "partial"      # failed, but left something under the final name
LOST = "lost"            # failed and damaged what it must not touch
UNCLEAR = "unclear"      # failed without exactly one error line, or panicked
OUTCOMES = [DETECTED, HARMLESS, UNPROTECTED, HANG, WRONG, PARTIAL, LOST, UNCLEAR]
GOOD = {DETECTED, HARMLESS, UNPROTECTED}


@dataclass
class Run:
    argv: List[str]
    rc: Optional[int]
    stdout: bytes
    stderr: str
    seconds: float
    timed_out: bool

    def error_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        cmd = " ".join(self.argv)
        if self.timed_out:
            return f"{cmd}: still running after {self.seconds:.1f} s"
        return f"{cmd}: exit {self.rc} in {self.seconds:.2f} s: {self.stderr.strip()[:400]}"


def run(argv, timeout: float, stdin=None, env=None, cwd=None,
        input_bytes: Optional[bytes] = None, keep_stdout=False) -> Run:
    """Runs argv in a new process group; on timeout the group is killed."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if input_bytes is not None else (stdin or subprocess.DEVNULL),
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(input=input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc.pid)
        out, err = proc.communicate()
    return Run([str(a) for a in argv], None if timed_out else proc.returncode,
               out or b"", err.decode(errors="replace"),
               time.monotonic() - start, timed_out)


def kill_group(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def judge(result: Run, success_ok: Callable[[], bool],
          failure_checks: Callable[[], Optional[str]] = lambda: None,
          unprotected_ok: bool = False, expect_failure=False,
          line_per_item=False) -> "Verdict":
    """The outcome of one faulty run.

    success_ok: on exit 0, is the result right?  failure_checks: on a
    non-zero exit, returns `PARTIAL:why` / `LOST:why` for damage, else None.
    unprotected_ok: the input's format carries no checksum, so a wrong but
    successful result is the format's limit, not a bug.  line_per_item: a
    batch or report command (import-diskdump, verify) names each failed item
    on its own line and ends with one summary line.
    """
    if result.timed_out:
        return Verdict(HANG, result.describe())
    if "panicked at" in result.stderr or (result.rc is not None and result.rc < 0):
        return Verdict(UNCLEAR, "crashed: " + result.describe())
    if result.rc == 0:
        if expect_failure:
            return Verdict(WRONG, "succeeded where it must fail: " + result.describe())
        if success_ok():
            return Verdict(HARMLESS, "")
        if unprotected_ok:
            return Verdict(UNPROTECTED, "")
        return Verdict(WRONG, "exit 0 with a wrong result: " + result.describe())
    damage = failure_checks()
    if damage:
        kind, _, why = damage.partition(":")
        return Verdict(kind, why + " after " + result.describe())
    lines = result.error_lines()
    if line_per_item:
        clear = bool(lines) and lines[-1].startswith("diskdelta: ")
    else:
        clear = len(lines) == 1 and lines[0].startswith("diskdelta: ")
    if not clear:
        return Verdict(UNCLEAR, f"{len(lines)} error lines: " + result.describe())
    return Verdict(DETECTED, lines[0])


@dataclass
class Verdict:
    outcome: str
    detail: str


@dataclass
class Fault:
    """One injected fault: its kind (a table row), what it is, and a
    function that injects it, runs the command and returns a Verdict."""
    kind: str
    label: str
    action: Callable[[], Verdict]
    needs: List[str] = field(default_factory=list)


# Files and bytes -----------------------------------------------------------

def sha256_file(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def flip(path: str, offset: int, mask: int = 0x01) -> int:
    """XORs one byte with mask; returns the old value."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ mask]))
    return old


def put_byte(path: str, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))


def spread(rng, size: int, count: int) -> List[int]:
    """count offsets spread over [0, size): one random offset in each of
    count equal slices, so the whole file is covered."""
    if size <= 0:
        return []
    count = min(count, size)
    return sorted({int(size * (i + rng.random()) / count) for i in range(count)})


def spread_over_files(rng, sizes: List[int], count: int):
    """(file index, offset in that file) for count offsets spread over the
    files' bytes taken end to end (see `spread`)."""
    out = []
    for pos in spread(rng, sum(sizes), count):
        k, rel = 0, pos
        while rel >= sizes[k]:
            rel -= sizes[k]
            k += 1
        out.append((k, rel))
    return out


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def copy_tree(src: str, dst: str) -> str:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def tree_digest(root: str) -> str:
    """One hash of every file's name and bytes under root."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            h.update((sha256_file(path) or "").encode())
    return h.hexdigest()


def leftovers(directory: str, keep) -> List[str]:
    """Files in directory other than `keep` (temporary outputs left behind)."""
    if not os.path.isdir(directory):
        return []
    return sorted(set(os.listdir(directory)) - set(keep))
