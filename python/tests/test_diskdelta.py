"""The Python package against real files, pipes, the diskdelta command and
the real diff-dd 1.0.4 (scripts/test sets DISKDELTA_TEST_PYDIFFDD)."""

import io
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

import diskdelta
from diskdelta.compat import CreateDiff, ResoreDiff, RestoreDiff

ROOT = Path(__file__).resolve().parents[2]
CLI = os.environ.get("DISKDELTA_BIN", str(ROOT / "target" / "debug" / "diskdelta"))
MIB = 1 << 20


def image(path, size, seed):
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size // 2)) + bytearray(b"log line: all is well\n" * (size // 44))
    data = data[:size] + bytearray(max(0, size - len(data)))
    path.write_bytes(data)
    return bytes(data)


def changed(data, seed, edits=40):
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(0, len(out) - 9000)
        out[at:at + rng.randrange(1, 9000)] = rng.randbytes(9000)[: rng.randrange(1, 9000)]
    return bytes(out[: len(data)]) + bytes(max(0, len(data) - len(out)))


@pytest.fixture
def pair(tmp_path):
    old = image(tmp_path / "old.img", 24 * MIB, 1)
    new = changed(old, 2)
    (tmp_path / "new.img").write_bytes(new)
    return tmp_path, old, new


def test_diff_apply_info_round_trip(pair):
    d, old, new = pair
    r = diskdelta.diff(d / "old.img", d / "new.img", d / "delta")
    assert r.new_size == len(new) and r.delta_bytes == (d / "delta").stat().st_size
    a = diskdelta.apply(d / "delta", d / "old.img", d / "out.img")
    assert a.verified and (d / "out.img").read_bytes() == new
    info = diskdelta.info(d / "delta")
    assert info.checksums and info.new_digest == r.new_digest
    (d / "target.img").write_bytes(old)
    a = diskdelta.apply_in_place(d / "delta", d / "target.img", verify=True)
    assert a.mode == "in-place" and a.verified
    assert (d / "target.img").read_bytes() == new


def test_seed_examples_ported_by_the_import(pair, monkeypatch):
    d, old, new = pair
    monkeypatch.chdir(d)
    # diff-dd's README, "API Usage", with local paths.
    iffd = open('old.img', 'rb')
    dffd = open('new.img', 'rb')
    offd = open('diff_disk_copy.ddd', 'wb')

    differ = CreateDiff(iffd=iffd, dffd=dffd, offd=offd, block_size=16384)
    differ.start()
    offd.close()

    iffd = open('old.img', 'rb')
    dffd = open('diff_disk_copy.ddd', 'rb')
    offd = open('disk.img', 'wb')

    differ_retore = ResoreDiff(iffd=iffd, dffd=dffd, offd=offd, block_size=16384)
    differ_retore.start()
    offd.close()
    assert Path("disk.img").read_bytes() == new


def test_compat_through_objects_with_read_and_write_only(pair):
    d, old, new = pair

    class Reader:
        def __init__(self, data):
            self.f = io.BytesIO(data)

        def read(self, n):
            return self.f.read(n)

    out = io.BytesIO()
    CreateDiff(Reader(old), Reader(new), out).start()
    restored = io.BytesIO()
    RestoreDiff(Reader(old), Reader(out.getvalue()), restored).start()
    assert restored.getvalue() == new


def test_compat_through_pipes(pair):
    d, old, new = pair
    r, w = os.pipe()

    def feed():
        with open(w, "wb") as f:
            f.write(new)

    t = threading.Thread(target=feed)
    t.start()
    with open(r, "rb") as new_pipe, open(d / "old.img", "rb") as o, open(d / "p.delta", "wb") as out:
        CreateDiff(o, new_pipe, out).start()
    t.join()
    with open(d / "old.img", "rb") as o, open(d / "p.delta", "rb") as delta, open(d / "p.img", "wb") as out:
        RestoreDiff(o, delta, out).start()
    assert (d / "p.img").read_bytes() == new


def test_deltas_cross_between_python_and_the_command(pair):
    d, old, new = pair
    diskdelta.diff(d / "old.img", d / "new.img", d / "py.delta")
    subprocess.run([CLI, "apply", "-q", d / "py.delta", "--base", d / "old.img", "-o", d / "cli.img"],
                   check=True)
    assert (d / "cli.img").read_bytes() == new
    subprocess.run([CLI, "diff", "-q", d / "old.img", d / "new.img", "-o", d / "cli.delta"], check=True)
    diskdelta.apply(d / "cli.delta", d / "old.img", d / "py.img")
    assert (d / "py.img").read_bytes() == new


def test_errors_are_the_documented_exceptions(pair):
    d, old, new = pair
    diskdelta.diff(d / "old.img", d / "new.img", d / "delta")
    (d / "short.img").write_bytes(old[: len(old) // 2])
    with pytest.raises(diskdelta.BaseMismatch) as e:
        diskdelta.apply(d / "delta", d / "short.img", d / "out.img")
    assert "does not match the delta" in str(e.value) and "\n" not in str(e.value)
    assert not (d / "out.img").exists()
    damaged = bytearray((d / "delta").read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    (d / "bad").write_bytes(damaged)
    with pytest.raises(diskdelta.DeltaCorrupt):
        diskdelta.apply(d / "bad", d / "old.img", d / "out.img")
    assert not (d / "out.img").exists()
    with pytest.raises(diskdelta.IoFailure):
        diskdelta.info(d / "missing")
    with pytest.raises(ValueError):
        diskdelta.diff(d / "old.img", d / "new.img", d / "x", compress="gzip")
    assert issubclass(diskdelta.DeltaCorrupt, diskdelta.DiskdeltaError)


def test_other_threads_run_while_a_diff_works(pair):
    d, old, new = pair
    counts = []
    done = threading.Event()

    def spin():
        n = 0
        while not done.is_set():
            n += 1
        counts.append(n)

    t = threading.Thread(target=spin)
    t.start()
    seen = []
    diskdelta.diff(d / "old.img", d / "new.img", d / "delta", progress=lambda done_, total: seen.append(done_))
    done.set()
    t.join()
    assert counts[0] > 1000
    assert seen and seen[-1] == len(new)


def test_repository_round_trip(pair):
    d, old, new = pair
    repo = diskdelta.Repository(d / "repo", password="secret", create=True)
    first = repo.backup(d / "old.img", name="vm1", tags=["nightly"])
    second = repo.backup(d / "new.img", name="vm1")
    assert second.parent == first.snapshot and second.reused_chunks > 0
    snaps = repo.snapshots()
    assert [s.name for s in snaps] == ["vm1", "vm1"] and snaps[0].tags == ["nightly"]
    r = repo.restore("vm1", d / "restored.img")
    assert r.digest_checked and (d / "restored.img").read_bytes() == new
    assert repo.verify(read_data=True).ok
    report = repo.forget(keep_last=1, prune=True)
    assert report.removed == 1 and len(repo.snapshots()) == 1
    with pytest.raises(diskdelta.RepositoryError):
        diskdelta.Repository(d / "repo", password="wrong")
    # The command reads what Python wrote.
    out = subprocess.run([CLI, "snapshots", "-r", d / "repo", "--json"], check=True, capture_output=True,
                         env=dict(os.environ, DISKDELTA_PASSWORD="secret")).stdout
    assert second.snapshot in out.decode()


@pytest.mark.skipif(not os.environ.get("DISKDELTA_TEST_PYDIFFDD"),
                    reason="DISKDELTA_TEST_PYDIFFDD (the real diff-dd 1.0.4, set by scripts/test) not set")
def test_a_file_of_the_real_diff_dd_reads_through_the_compat_api(pair):
    d, old, new = pair
    subprocess.run([os.environ["DISKDELTA_TEST_PYDIFFDD"], "--if", d / "old.img", "--df", d / "new.img",
                    "--of", d / "real.ddd", "-b", "8192"], check=True, capture_output=True)
    with open(d / "old.img", "rb") as i, open(d / "real.ddd", "rb") as df, open(d / "out.img", "wb") as o:
        ResoreDiff(iffd=i, dffd=df, offd=o, block_size=8192, format="diff-dd-py").start()
    assert (d / "out.img").read_bytes() == new


@pytest.mark.skipif(not os.environ.get("DISKDELTA_TEST_PYDIFFDD"),
                    reason="DISKDELTA_TEST_PYDIFFDD (the real diff-dd 1.0.4, set by scripts/test) not set")
def test_the_seed_format_written_for_old_readers(pair):
    d, old, new = pair
    with open(d / "old.img", "rb") as i, open(d / "new.img", "rb") as n, open(d / "py.ddd", "wb") as o:
        CreateDiff(i, n, o, block_size=8192, format="diff-dd-py").start()
    (d / "target.img").write_bytes(old)
    subprocess.run([os.environ["DISKDELTA_TEST_PYDIFFDD"], "--mode", "restore", "--if", d / "old.img",
                    "--df", d / "py.ddd", "--of", d / "target.img", "-b", "8192"],
                   check=True, capture_output=True)
    assert (d / "target.img").read_bytes() == new
    # And diskdelta reads it back.
    with open(d / "old.img", "rb") as i, open(d / "py.ddd", "rb") as df, open(d / "back.img", "wb") as o:
        RestoreDiff(i, df, o, block_size=8192, format="diff-dd-py").start()
    assert (d / "back.img").read_bytes() == new
