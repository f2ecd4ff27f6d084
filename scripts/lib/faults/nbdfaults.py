"""Faults of the NBD paths.

- `nbd-export-pack`: a byte of a pack flipped, then every snapshot read
  through `diskdelta nbd` by `nbdcopy`. A correct outcome: each copy is
  either the snapshot's exact bytes or an error (never other bytes); the
  server keeps answering new clients afterwards, stops on SIGINT, and the
  repository is left as it was.
- `nbd-source-killed`: the NBD source of a backup (qemu-nbd serving an
  image) killed with SIGKILL after a random delay. A correct outcome: the
  backup fails with one clear line within the timeout (or, when it was
  already done, succeeds with the right snapshot), and the repository
  verifies with every snapshot it had still restoring.
"""
import glob
import os
import shutil
import signal
import subprocess
import time

from harness import (DETECTED, HANG, HARMLESS, LOST, UNCLEAR, WRONG, Fault, Verdict, copy_tree,
                     flip, kill_group, run, sha256_file, spread_over_files, tree_digest)


def available():
    return all(shutil.which(t) for t in ("nbdcopy", "nbdinfo", "qemu-nbd"))


def wait_for_socket(path, proc, seconds=20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def uri(socket_path, export=""):
    return f"nbd+unix:///{export}?socket={socket_path}"


# A damaged pack read through the export -----------------------------------------

def export_pack_faults(ctx, rng, n):
    if not available():
        return []
    repo = ctx.fx.path("repo")
    packs = sorted(f for f in glob.glob(os.path.join(repo, "data", "*", "*")) if os.path.isfile(f))
    sizes = [os.path.getsize(f) for f in packs]
    faults = []
    for k, rel in spread_over_files(rng, sizes, n):
        label = os.path.relpath(packs[k], repo)
        faults.append(Fault(
            "nbd-export-pack", f"flip of {label} at byte {rel}, then nbdcopy of every export",
            lambda scratch, path=packs[k], rel=rel, mask=rng.randrange(1, 256):
                export_damaged(ctx, scratch, path, rel, mask)))
    return faults


def export_damaged(ctx, scratch, pack, pos, mask):
    repo = copy_tree(ctx.fx.path("repo"), os.path.join(scratch, "repo"))
    target = os.path.join(repo, os.path.relpath(pack, ctx.fx.path("repo")))
    flip(target, pos, mask)
    sock = os.path.join(scratch, "nbd.sock")
    snaps = ctx.snapshot_images()
    server = subprocess.Popen(
        [ctx.tool.binary, "nbd", "-r", repo, *[s for s, _ in snaps], "--socket", sock, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ctx.tool.env,
        start_new_session=True)
    try:
        if not wait_for_socket(sock, server):
            kill_group(server.pid)
            _, err = server.communicate()
            return Verdict(UNCLEAR, "the server did not start: " + err.decode(errors="replace")[:400])
        failed = []
        for snap, image in snaps:
            out = os.path.join(scratch, "copy.img")
            copy = run(["nbdcopy", uri(sock, snap), out], ctx.tool.timeout)
            if copy.timed_out:
                return Verdict(HANG, copy.describe())
            if copy.rc == 0 and sha256_file(out) != ctx.expected(image):
                return Verdict(WRONG, f"nbdcopy of {snap[:8]} succeeded with other bytes")
            if copy.rc != 0:
                failed.append(f"{snap[:8]}: {copy.stderr.strip().splitlines()[:1]}")
            if os.path.exists(out):
                os.remove(out)
        # The server goes on serving after the failed reads.
        info = run(["nbdinfo", "--size", uri(sock, snaps[0][0])], ctx.tool.timeout, keep_stdout=True)
        if info.timed_out:
            return Verdict(HANG, "a new client after the damage: " + info.describe())
        if info.rc != 0:
            return Verdict(LOST, "the server stopped serving: " + info.describe())
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=ctx.tool.timeout)
        except subprocess.TimeoutExpired:
            return Verdict(HANG, "diskdelta nbd still running after SIGINT")
        stderr = err.decode(errors="replace")
        if "panicked at" in stderr:
            return Verdict(UNCLEAR, "the server panicked: " + stderr[:400])
        flip(target, pos, mask)
        if tree_digest(repo) != ctx.repo_digest:
            return Verdict(LOST, "diskdelta nbd changed the repository")
        if failed:
            return Verdict(DETECTED, "; ".join(failed))
        return Verdict(HARMLESS, "")
    finally:
        kill_group(server.pid)
        server.wait()


# The NBD source of a backup killed ------------------------------------------------

def source_killed_faults(ctx, rng, n):
    if not available():
        return []
    return [Fault("nbd-source-killed", f"backup of an NBD source, qemu-nbd killed after {d:.3f} s",
                  lambda scratch, d=d: source_killed(ctx, scratch, d))
            for d in (rng.uniform(0.0, 0.06) for _ in range(n))]


def source_killed(ctx, scratch, delay):
    import cases  # noqa: E402  (the repository checks live there)
    repo = copy_tree(ctx.fx.path("repo"), os.path.join(scratch, "repo"))
    sock = os.path.join(scratch, "source.sock")
    source = subprocess.Popen(
        ["qemu-nbd", "--read-only", "--persistent", "--shared=8", "--format=raw",
         "--socket", sock, ctx.fx.path("v2.img")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not wait_for_socket(sock, source):
            return Verdict(UNCLEAR, "qemu-nbd did not start")
        backup = subprocess.Popen(
            [ctx.tool.binary, "backup", "-r", repo, uri(sock), "--name", "k", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ctx.tool.env,
            start_new_session=True)
        time.sleep(delay)
        kill_group(source.pid)
        try:
            _, err = backup.communicate(timeout=ctx.tool.timeout)
        except subprocess.TimeoutExpired:
            kill_group(backup.pid)
            backup.communicate()
            return Verdict(HANG, "backup still running after its NBD source was killed")
        stderr = err.decode(errors="replace")
        lines = [line for line in stderr.splitlines() if line.strip()]
        if "panicked at" in stderr or backup.returncode < 0:
            return Verdict(UNCLEAR, "crashed: " + stderr[:400])
        snaps = ctx.snapshot_images()
        if backup.returncode == 0:
            if not cases.restores(ctx, repo, "k", "v2.img", scratch):
                return Verdict(WRONG, "the backup succeeded but its snapshot does not restore v2.img")
            verdict = Verdict(HARMLESS, "")
        else:
            if len(lines) != 1 or not lines[0].startswith("diskdelta: "):
                return Verdict(UNCLEAR, f"{len(lines)} error lines: {stderr[:400]}")
            listed = ctx.tool("snapshots", "-r", repo, "--json", keep_stdout=True)
            if b'"k"' in listed.stdout:
                return Verdict(LOST, "a failed backup left a snapshot")
            verdict = Verdict(DETECTED, lines[0])
        ctx.tool("unlock", "-r", repo, "-q")
        why = cases.repo_intact(ctx, repo, scratch, snaps)
        if why:
            return Verdict(LOST, why.partition(":")[2])
        return verdict
    finally:
        kill_group(source.pid)
        source.wait()
