"""Every fault kind: how it is injected and what a correct outcome is.

Each kind is a generator `make(ctx, rng, n)` of n Faults. A Fault's action
takes its own scratch directory, so faults can run side by side. The suite
asks each kind for a fixed number of faults with a fixed seed; the campaign
picks kinds and parameters at random.
"""
import glob
import json
import os
import shutil
import subprocess
import threading
import time

from harness import (DETECTED, HARMLESS, HANG, LOST, PARTIAL, WRONG, UNCLEAR, Fault,
                     Verdict, copy_tree, flip, judge, kill_group, leftovers,
                     sha256_file, spread, spread_over_files, tree_digest)

from fixtures import CHUNK_SIZE  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Context:
    """What the cases share: fixtures, the tool, optional services."""

    def __init__(self, fx, tool, sshd, mounts):
        self.fx = fx
        self.tool = tool
        self.sshd = sshd
        self.mounts = mounts
        self.repo_digest = tree_digest(fx.path("repo"))
        self.snaps = fx.snapshots(fx.path("repo"))

    def snaps_oldest_of_a(self) -> str:
        """The snapshot `forget --keep-last 1` removes: the older of name a."""
        of_a = sorted((s for s in self.snaps if s["name"] == "a"), key=lambda s: s["time"])
        return of_a[0]["id"]

    def expected(self, image: str) -> str:
        return self.fx.hashes[image]

    def snapshot_images(self):
        """(snapshot id, image file it must restore to), for the fixture repo."""
        by_source = {"base.img": "base.img", "v1.img": "v1.img", "v2.img": "v2.img"}
        return [(s["id"], by_source[os.path.basename(s["source"])]) for s in self.snaps]


def out_absent(path: str, allowed=()):
    """A failure check: nothing under the final name, no temporary left."""
    def check():
        if os.path.exists(path):
            return f"{PARTIAL}:{path} exists"
        extra = [n for n in leftovers(os.path.dirname(path), allowed)
                 if n.startswith("." + os.path.basename(path)) or n.startswith(os.path.basename(path))]
        if extra:
            return f"{PARTIAL}:temporary files left: {extra}"
        return None
    return check


def file_is(path: str, digest: str):
    return lambda: sha256_file(path) == digest


def all_of(*checks):
    def check():
        for c in checks:
            why = c()
            if why:
                return why
        return None
    return check


# Deltas ---------------------------------------------------------------------

DELTA_FORMATS = {
    # name: (fixture file, extra apply flags, carries checksums, NEW image)
    "native": ("d.native", [], True, "v1.img"),
    "native1": ("d.native1", [], True, "v1.img"),
    # zstd-ref records (compressed against OLD), base.img -> near.img
    "native-ref": ("d.ref", [], True, "near.img"),
    "v2": ("d.v2", [], False, "v1.img"),
    "v1": ("d.v1", ["--format", "diff-dd-v1", "--block-size", "512"], False, "v1.img"),
    "py": ("d.py", ["--format", "diff-dd-py", "--block-size", "8192"], False, "v1.img"),
}


def delta_faults(fmt: str, damage: str):
    def make(ctx, rng, n):
        name, flags, checksums, new_image = DELTA_FORMATS[fmt]
        src = ctx.fx.path(name)
        if not os.path.exists(src):
            return []
        size = os.path.getsize(src)
        faults = []
        turn = rng.randrange(2)
        for i, pos in enumerate(spread(rng, size, n)):
            in_place = (i + turn) % 2 == 1
            mask = rng.randrange(1, 256)
            faults.append(Fault(
                f"delta-{fmt}-{damage}",
                f"{damage} of {name} at byte {pos}/{size}" + (" (in place)" if in_place else ""),
                lambda scratch, pos=pos, mask=mask, in_place=in_place:
                    apply_damaged(ctx, scratch, src, flags, checksums, damage, pos, mask, in_place,
                                  new_image)))
        return faults
    return make


def apply_damaged(ctx, scratch, src, flags, checksums, damage, pos, mask, in_place,
                  new_image="v1.img"):
    delta = os.path.join(scratch, "delta")
    shutil.copyfile(src, delta)
    if damage == "flip":
        flip(delta, pos, mask)
    else:
        os.truncate(delta, pos)
    want = ctx.expected(new_image)
    if in_place:
        target = os.path.join(scratch, "target.img")
        shutil.copyfile(ctx.fx.path("base.img"), target)
        result = ctx.tool("apply", delta, "--in-place", target, "-q", *flags)
        base = ctx.expected("base.img")

        def untouched():
            if checksums and sha256_file(target) != base:
                return f"{LOST}:in-place target changed by a refused delta"
            return None
        return judge(result, file_is(target, want), untouched, unprotected_ok=not checksums)
    out = os.path.join(scratch, "out.img")
    result = ctx.tool("apply", delta, "--base", ctx.fx.path("base.img"), "-o", out, "-q", *flags)
    return judge(result, file_is(out, want), out_absent(out), unprotected_ok=not checksums)


def series_faults(damage: str):
    """The second delta of a series damaged: `apply d.native d.next`
    (stream or in place) must refuse it, or give v2.img."""
    def make(ctx, rng, n):
        src = ctx.fx.path("d.next")
        size = os.path.getsize(src)
        turn = rng.randrange(2)
        faults = []
        for i, pos in enumerate(spread(rng, size, n)):
            in_place = (i + turn) % 2 == 1
            mask = rng.randrange(1, 256)
            faults.append(Fault(
                f"series-{damage}",
                f"{damage} of d.next at byte {pos}/{size}" + (" (in place)" if in_place else ""),
                lambda scratch, pos=pos, mask=mask, in_place=in_place:
                    apply_series_damaged(ctx, scratch, src, damage, pos, mask, in_place)))
        return faults
    return make


def apply_series_damaged(ctx, scratch, src, damage, pos, mask, in_place):
    delta = os.path.join(scratch, "d.next")
    shutil.copyfile(src, delta)
    if damage == "flip":
        flip(delta, pos, mask)
    else:
        os.truncate(delta, pos)
    first = ctx.fx.path("d.native")
    want = ctx.expected("v2.img")
    if in_place:
        target = os.path.join(scratch, "target.img")
        shutil.copyfile(ctx.fx.path("base.img"), target)
        result = ctx.tool("apply", first, delta, "--in-place", target, "-q")
        base = ctx.expected("base.img")

        def untouched():
            if sha256_file(target) != base:
                return f"{LOST}:in-place target changed by a refused series"
            return None
        return judge(result, file_is(target, want), untouched)
    out = os.path.join(scratch, "out.img")
    result = ctx.tool("apply", first, delta, "--base", ctx.fx.path("base.img"), "-o", out, "-q")
    return judge(result, file_is(out, want), out_absent(out))


def signature_faults(damage: str):
    """A damaged signature of base.img: `diff --signature SIG v1.img` must
    refuse it, or write a delta that turns base.img into v1.img."""
    def make(ctx, rng, n):
        src = ctx.fx.path("base.sig")
        size = os.path.getsize(src)
        faults = []
        for pos in spread(rng, size, n):
            mask = rng.randrange(1, 256)
            faults.append(Fault(
                f"signature-{damage}", f"{damage} of base.sig at byte {pos}/{size}",
                lambda scratch, pos=pos, mask=mask:
                    diff_damaged_signature(ctx, scratch, src, damage, pos, mask)))
        return faults
    return make


def diff_damaged_signature(ctx, scratch, src, damage, pos, mask):
    sig = os.path.join(scratch, "base.sig")
    shutil.copyfile(src, sig)
    if damage == "flip":
        flip(sig, pos, mask)
    else:
        os.truncate(sig, pos)
    out = os.path.join(scratch, "d.delta")
    result = ctx.tool("diff", "--signature", sig, ctx.fx.path("v1.img"), "-o", out, "-q")

    def delta_makes_v1():
        made = os.path.join(scratch, "made.img")
        applied = ctx.tool("apply", out, "--base", ctx.fx.path("base.img"), "-o", made, "-q")
        return applied.rc == 0 and sha256_file(made) == ctx.expected("v1.img")
    return judge(result, delta_makes_v1, out_absent(out))


# Repository files -------------------------------------------------------------

REPO_FILES = {
    "pack": "data/*/*",
    "index": "index/*",
    "snapshot": "snapshots/*",
    "config": "config",
    "lock": "locks/*",
}


def repo_faults(part: str, damage: str):
    def make(ctx, rng, n):
        files = sorted(glob.glob(os.path.join(ctx.fx.path("repo"), REPO_FILES[part])))
        if part == "lock":
            files = [None]  # made per fault: a live shared lock
        faults = []
        sizes = [os.path.getsize(f) if f else len(lock_text()) for f in files]
        commands = REPO_COMMANDS[part]
        turn = rng.randrange(len(commands))
        for i, (k, rel) in enumerate(spread_over_files(rng, sizes, n)):
            command = commands[(i + turn) % len(commands)]
            path = files[k]
            label = (os.path.relpath(path, ctx.fx.path("repo")) if path else "locks/<live>")
            faults.append(Fault(
                f"{part}-{damage}", f"{damage} of {label} at byte {rel}, then {command}",
                lambda scratch, path=path, rel=rel, command=command, mask=rng.randrange(1, 256):
                    repo_damaged(ctx, scratch, path, rel, mask, damage, command)))
        return faults
    return make


def lock_text() -> str:
    return json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                       "time": int(time.time()), "exclusive": False,
                       "command": "backup"})


# What reads each part. `backup` writes; the others must change nothing.
REPO_COMMANDS = {
    "pack": ["restore", "verify"],
    "index": ["restore", "verify", "backup"],
    "snapshot": ["restore", "verify", "snapshots"],
    "config": ["restore", "backup"],
    "lock": ["gc", "backup"],
}


def repo_damaged(ctx, scratch, path, pos, mask, damage, command):
    repo = copy_tree(ctx.fx.path("repo"), os.path.join(scratch, "repo"))
    if path is None:
        target = os.path.join(repo, "locks", "0123456789abcdef0123456789abcdef")
        with open(target, "w") as f:
            f.write(lock_text())
        original = None
    else:
        target = os.path.join(repo, os.path.relpath(path, ctx.fx.path("repo")))
        with open(target, "rb") as f:
            original = f.read()
    if damage == "flip":
        flip(target, pos, mask)
    else:
        os.truncate(target, pos)

    def repair():
        if original is None:
            os.remove(target)
        else:
            with open(target, "wb") as f:
                f.write(original)

    out = os.path.join(scratch, "out.img")
    snap, image = ctx.snapshot_images()[0]
    if command == "restore":
        result = ctx.tool("restore", "-r", repo, snap, "-o", out, "-q")
        ok = file_is(out, ctx.expected(image))
        failed = out_absent(out)
    elif command == "verify":
        result = ctx.tool("verify", "-r", repo, "--read-data", "-q")

        def ok():
            # A verify that passes promises that every snapshot restores.
            return all(restores(ctx, repo, s, img, scratch) for s, img in ctx.snapshot_images())
        failed = lambda: None
    elif command == "snapshots":
        result = ctx.tool("snapshots", "-r", repo, "--json", keep_stdout=True)
        ok = lambda: True
        failed = lambda: None
    elif command == "backup":
        result = ctx.tool("backup", "-r", repo, ctx.fx.path("v2.img"), "--name", "c", "-q")

        def ok():
            repair()
            return restores(ctx, repo, "c", "v2.img", scratch)
        failed = lambda: None
    elif command == "gc":
        result = ctx.tool("gc", "-r", repo, "-q")

        def ok():
            repair()
            return all(restores(ctx, repo, s, img, scratch) for s, img in ctx.snapshot_images())
        failed = lambda: None
    verdict = judge(result, ok, failed, line_per_item=command == "verify")
    if verdict.outcome in (DETECTED, HARMLESS) and command != "backup":
        # Read-only commands (and gc, which finds nothing to remove here)
        # leave the repository as it was.
        if os.path.exists(target) or original is not None:
            repair()
        if tree_digest(repo) != ctx.repo_digest:
            return Verdict(LOST, f"{command} changed the repository")
    return verdict


def restores(ctx, repo, snap, image, scratch) -> bool:
    out = os.path.join(scratch, "check.img")
    result = ctx.tool("restore", "-r", repo, snap, "-o", out, "-q")
    good = result.rc == 0 and sha256_file(out) == ctx.expected(image)
    if os.path.exists(out):
        os.remove(out)
    return good


# Sync resume state ------------------------------------------------------------

def sync_state_faults(damage: str):
    def make(ctx, rng, n):
        # The state is about 300 bytes of JSON; positions are drawn in it.
        return [Fault(f"sync-state-{damage}", f"{damage} of the sync resume state at {frac:.3f}",
                      lambda scratch, frac=frac, mask=rng.randrange(1, 256):
                          sync_resumed(ctx, scratch, damage, frac, mask))
                for frac in (rng.random() for _ in range(n))]
    return make


def interrupted_sync(ctx, scratch):
    """A local sync of v1 onto a copy of base, killed once its resume state
    says a quarter is done. Returns (target, state path) or None."""
    target = os.path.join(scratch, "t.img")
    state = os.path.join(scratch, ".t.img.diskdelta-sync")
    size = os.path.getsize(ctx.fx.path("v1.img"))
    for _ in range(5):
        shutil.copyfile(ctx.fx.path("base.img"), target)
        proc = subprocess.Popen([ctx.tool.binary, "sync", ctx.fx.path("v1.img"), target, "-q",
                                 "-b", "4K"],
                                env=dict(ctx.tool.env, DISKDELTA_SYNC_CHECKPOINT_MS="0"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + ctx.tool.timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(state) as f:
                    if json.load(f)["offset"] >= size // 4:
                        break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.001)
        kill_group(proc.pid)
        proc.wait()
        if os.path.exists(state):
            return target, state
    return None


def sync_resumed(ctx, scratch, damage, frac, mask):
    """A damaged resume state, then the same sync again: the target must
    end up as v1 whatever the damage."""
    made = interrupted_sync(ctx, scratch)
    if made is None:
        return Verdict(HANG, "no sync could be interrupted with a resume state")
    target, state = made
    with open(state, "rb") as f:
        text = bytearray(f.read())
    pos = int(frac * len(text))
    if damage == "flip":
        text[pos] ^= mask
    else:
        del text[pos:]
    with open(state, "wb") as f:
        f.write(bytes(text))
    result = ctx.tool("sync", ctx.fx.path("v1.img"), target, "-q", "-b", "4K")
    return judge(result, file_is(target, ctx.expected("v1.img")))


# diskdump stores --------------------------------------------------------------

def diskdump_faults(part: str, damage: str):
    def make(ctx, rng, n):
        store = ctx.fx.path("diskdump")
        if not os.path.isdir(store):
            return []
        pattern = "manifests/*/*.manifest" if part == "manifest" else "??/??/*"
        files = sorted(glob.glob(os.path.join(store, ".blockstore", pattern)))
        sizes = [os.path.getsize(f) for f in files]
        faults = []
        for k, rel in spread_over_files(rng, sizes, n):
            faults.append(Fault(
                f"diskdump-{part}-{damage}",
                f"{damage} of {os.path.relpath(files[k], store)} at byte {rel}",
                lambda scratch, f=files[k], rel=rel, mask=rng.randrange(1, 256):
                    diskdump_damaged(ctx, scratch, f, rel, mask, damage)))
        return faults
    return make


def diskdump_damaged(ctx, scratch, path, pos, mask, damage):
    store = copy_tree(ctx.fx.path("diskdump"), os.path.join(scratch, "dd"))
    target = os.path.join(store, os.path.relpath(path, ctx.fx.path("diskdump")))
    if damage == "flip":
        flip(target, pos, mask)
    else:
        os.truncate(target, pos)
    repo = os.path.join(scratch, "repo")
    ctx.tool.ok("init", "-r", repo, "-q")
    result = ctx.tool("import-diskdump", store, "-r", repo, "-q")
    # Whatever was imported must be exactly right, failure or not.
    snaps = ctx.fx.snapshots(repo)

    def all_right():
        for s in snaps:
            image = "base.img" if s["time"].startswith("2026-12-01") else "v1.img"
            if not restores(ctx, repo, s["id"], image, scratch):
                return False
        return True

    def imported_right():
        return None if all_right() else f"{LOST}:an imported snapshot does not restore"
    return judge(result, lambda: len(snaps) == 2 and all_right(), imported_right,
                 line_per_item=True)


# The wire ---------------------------------------------------------------------

RELAY = os.path.join(HERE, "relay.py")


def wire_faults(command: str):
    modes = ["flip", "drop", "stall"]

    def make(ctx, rng, n):
        if not ctx.sshd.available():
            return []
        faults = []
        turn = rng.randrange(6)
        for i in range(turn, turn + n):
            mode = modes[i % 3]
            direction = ["up", "down"][(i // 3) % 2]
            # Up carries requests (small) or, for a sync to the remote
            # side, data; down carries scans and data.
            after = rng.randrange(16, 200_000 if direction == "down" else 20_000)
            faults.append(Fault(
                f"wire-{command}", f"{command}: {mode} {direction} after {after} bytes",
                lambda scratch, mode=mode, direction=direction, after=after, seed=rng.randrange(1 << 30):
                    wire_fault(ctx, scratch, command, mode, direction, after, seed)))
        return faults
    return make


def relay_command(ctx, mode, direction, after, seed) -> str:
    return (f"python3 -B {RELAY} --mode {mode} --direction {direction} "
            f"--after {after} --seed {seed} -- {ctx.sshd.command()}")


def wire_fault(ctx, scratch, command, mode, direction, after, seed):
    rsh = relay_command(ctx, mode, direction, after, seed)
    if command in SSH_REPO_COMMANDS:
        return ssh_repo_run(ctx, scratch, command,
                            {"DISKDELTA_RSH": rsh, "DISKDELTA_REMOTE_PATH": ctx.tool.binary})
    return remote_run(ctx, scratch, command, ["-e", rsh], {})


def fresh_repo(ctx, scratch) -> str:
    repo = os.path.join(scratch, "repo")
    ctx.tool.ok("init", "-r", repo, "--chunk-size", CHUNK_SIZE, "-q")
    return repo


# Commands on a repository reached over ssh:// (diskdelta serve --repo).
SSH_REPO_COMMANDS = ("push", "restore-ssh")


def ssh_repo_run(ctx, scratch, command, env):
    """push: a backup of the local v2 into a copy of the repository served
    over ssh://; restore-ssh: a restore of snapshot b (v2) from it. A fault
    must be detected (and leave the repository verifying, with no new
    snapshot) or harmless; the rerun without the fault must succeed."""
    if command == "push":
        repo = fresh_repo(ctx, scratch)
    else:
        repo = copy_tree(ctx.fx.path("repo"), os.path.join(scratch, "repo"))
    url = f"ssh://127.0.0.1{repo}"
    clean = {"DISKDELTA_RSH": ctx.sshd.command(), "DISKDELTA_REMOTE_PATH": ctx.tool.binary}
    if command == "push":
        argv = ["backup", "-r", url, ctx.fx.path("v2.img"), "--name", "r", "-q"]
        verdict = backup_verdict(ctx, scratch, repo, ctx.tool(*argv, env=env))
    else:
        out = os.path.join(scratch, "out.img")
        result = ctx.tool("restore", "-r", url, "b", "-o", out, "-q", env=env)

        def ok():
            return os.path.exists(out) and sha256_file(out) == ctx.expected("v2.img")

        def nothing_written():
            if os.path.exists(out):
                return f"{PARTIAL}:a failed restore left {out}"
            return None
        verdict = judge(result, ok, nothing_written)
        if verdict.outcome == DETECTED:
            verdict = verified(ctx, repo, verdict)
    if verdict.outcome == DETECTED and command == "push":
        again = ctx.tool(*argv, env=clean)
        if again.rc != 0 or not restores(ctx, repo, "r", "v2.img", scratch):
            return Verdict(LOST, "the rerun did not finish the backup: " + again.describe())
    return verdict


def remote_run(ctx, scratch, command, extra, env):
    """sync of v1 onto a copy of base on the remote side, or a backup of the
    remote v1 into a copy of the repository; then the same without the
    fault, which must finish the job (the sync resumes)."""
    if command == "sync":
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(ctx.fx.path("base.img"), target)
        argv = ["sync", ctx.fx.path("v1.img"), f"127.0.0.1:{target}", "-q"]
        result = ctx.tool(*argv, *extra, env=env)
        ok = file_is(target, ctx.expected("v1.img"))
        verdict = judge(result, ok)
        if verdict.outcome == DETECTED:
            again = ctx.tool(*argv, "-e", ctx.sshd.command())
            if again.rc != 0 or not ok():
                return Verdict(LOST, "the rerun did not finish the sync: " + again.describe())
        return verdict
    # A new repository: the wire dedups against the whole repository, so
    # only into an empty one does the whole image cross the faulty link.
    repo = fresh_repo(ctx, scratch)
    argv = ["backup", "-r", repo, f"127.0.0.1:{ctx.fx.path('v2.img')}", "--name", "r", "-q"]
    return backup_verdict(ctx, scratch, repo, ctx.tool(*argv, *extra, env=env))


def backup_verdict(ctx, scratch, repo, result):
    """A backup of v2 as snapshot r into the empty `repo`: either it
    restores, or it failed, wrote no snapshot and the repository verifies."""
    def ok():
        return restores(ctx, repo, "r", "v2.img", scratch)

    def nothing_written():
        if ctx.fx.snapshots(repo):
            return f"{PARTIAL}:a failed backup wrote a snapshot"
        return None
    verdict = judge(result, ok, nothing_written)
    if verdict.outcome == DETECTED:
        return verified(ctx, repo, verdict)
    return verdict


def verified(ctx, repo, verdict):
    check = ctx.tool("verify", "-r", repo, "--read-data", "-q")
    if check.rc != 0:
        return Verdict(LOST, "repository does not verify: " + check.describe())
    return verdict


def remote_killed_faults(command: str):
    def make(ctx, rng, n):
        if not ctx.sshd.available():
            return []
        return [Fault(f"remote-killed-{command}", f"{command}: remote killed after {d:.2f} s",
                      lambda scratch, d=d: remote_killed(ctx, scratch, command, d))
                for d in (rng.uniform(0.05, 0.6) for _ in range(n))]
    return make


def remote_killed(ctx, scratch, command, delay):
    wrapper = os.path.join(scratch, "remote-diskdelta")
    with open(wrapper, "w") as f:
        f.write(f"""#!/bin/sh
{ctx.tool.binary} "$@" &
child=$!
( sleep {delay}; kill -9 $child 2>/dev/null ) &
wait $child
""")
    os.chmod(wrapper, 0o755)
    if command in SSH_REPO_COMMANDS:
        return ssh_repo_run(ctx, scratch, command,
                            {"DISKDELTA_RSH": ctx.sshd.command(), "DISKDELTA_REMOTE_PATH": wrapper})
    verdict = remote_run(ctx, scratch, command,
                         ["-e", ctx.sshd.command(), "--remote-path", wrapper], {})
    return verdict


# Pipes ------------------------------------------------------------------------

def stdout_closed_faults(ctx, rng, n):
    commands = ["diff", "apply", "restore"]
    turn = rng.randrange(3)
    return [Fault("stdout-closed", f"{commands[(i + turn) % 3]} | head -c {k}",
                  lambda scratch, c=commands[(i + turn) % 3], k=k: stdout_closed(ctx, c, k))
            for i, k in enumerate(rng.choice([0, 1, 1000, 65536, 1 << 20]) for _ in range(n))]


def stdout_closed(ctx, command, keep):
    fx = ctx.fx
    argv = {"diff": ["diff", fx.path("base.img"), fx.path("v1.img")],
            "apply": ["apply", fx.path("d.native"), "--base", fx.path("base.img")],
            "restore": ["restore", "-r", fx.path("repo"), "a"]}[command]
    start = time.monotonic()
    proc = subprocess.Popen([ctx.tool.binary, *argv, "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ctx.tool.env, start_new_session=True)
    got = proc.stdout.read(keep) if keep else b""
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=ctx.tool.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        _, err = proc.communicate()
        timed_out = True
    from harness import Run
    result = Run([command, "| head -c", str(keep)], None if timed_out else proc.returncode,
                 got, err.decode(errors="replace"), time.monotonic() - start, timed_out)
    # The output is larger than what is kept: success would be a lie.
    return judge(result, lambda: False, expect_failure=True)


def fifo_faults(ctx, rng, n):
    commands = ["diff", "backup", "apply-base"]
    turn = rng.randrange(3)
    return [Fault("fifo-stops", f"{commands[(i + turn) % 3]} from a FIFO that stops after {k} bytes",
                  lambda scratch, c=commands[(i + turn) % 3], k=k: fifo_stops(ctx, scratch, c, k))
            for i, k in enumerate(rng.randrange(0, 64 << 20) for _ in range(n))]


def fifo_stops(ctx, scratch, command, stop_after):
    """The writer of a FIFO dies (kill -9) after stop_after bytes: the
    reader sees a short image. It must finish with what it got (a pipe
    cannot say it was cut) or fail; never hang, and never write anything
    but the image it read."""
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo)
    source = ctx.fx.path("base.img" if command == "apply-base" else "v1.img")
    prefix = os.path.join(scratch, "prefix.img")
    with open(source, "rb") as f, open(prefix, "wb") as p:
        p.write(f.read(stop_after))

    def writer():
        try:
            with open(fifo, "wb") as w, open(prefix, "rb") as f:
                shutil.copyfileobj(f, w)
        except OSError:
            pass
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    out = os.path.join(scratch, "out")
    fx = ctx.fx
    if command == "diff":
        result = ctx.tool("diff", fx.path("base.img"), fifo, "-o", out, "-q")

        def ok():
            check = os.path.join(scratch, "check.img")
            r = ctx.tool("apply", out, "--base", fx.path("base.img"), "-o", check, "-q")
            return r.rc == 0 and sha256_file(check) == sha256_file(prefix)
        failed = out_absent(out)
    elif command == "backup":
        repo = copy_tree(fx.path("repo"), os.path.join(scratch, "repo"))
        result = ctx.tool("backup", "-r", repo, fifo, "--name", "f", "-q")

        def ok():
            check = os.path.join(scratch, "check.img")
            r = ctx.tool("restore", "-r", repo, "f", "-o", check, "-q")
            return r.rc == 0 and sha256_file(check) == sha256_file(prefix)
        failed = lambda: None
    else:
        result = ctx.tool("apply", fx.path("d.native"), "--base", fifo, "-o", out, "-q")
        # The delta names OLD's digest: a short OLD must be refused.
        ok = file_is(out, ctx.expected("v1.img"))
        failed = out_absent(out)
    t.join(timeout=5)
    return judge(result, ok, failed)


# Out of space -----------------------------------------------------------------

ENOSPC_COMMANDS = ["diff", "apply", "restore", "backup", "sync", "import-diskdump", "init"]


def enospc_faults(ctx, rng, n):
    if not ctx.mounts.tmpfs_ok():
        return []
    faults = []
    turn = rng.randrange(len(ENOSPC_COMMANDS))
    for i in range(turn, turn + n):
        command = ENOSPC_COMMANDS[i % len(ENOSPC_COMMANDS)]
        if command == "import-diskdump" and not os.path.isdir(ctx.fx.path("diskdump")):
            continue
        free = rng.choice([0, 4096, 65536, 300_000, 1 << 20, 8 << 20, 30 << 20])
        faults.append(Fault("enospc", f"{command} with {free} bytes free",
                            lambda scratch, c=command, free=free: enospc(ctx, scratch, c, free)))
    return faults


def enospc(ctx, scratch, command, free):
    fx = ctx.fx
    mnt = os.path.join(scratch, "small")
    os.makedirs(mnt)
    # The repository commands get a copy of the repository first.
    needs_repo = command in ("backup",)
    base = tree_size(fx.path("repo")) + (1 << 20) if needs_repo else 0
    ctx.mounts.tmpfs(mnt, base + free + (1 << 20))
    try:
        if needs_repo:
            shutil.copytree(fx.path("repo"), os.path.join(mnt, "repo"))
        fill(mnt, free)
        out = os.path.join(mnt, "out")
        if command == "diff":
            r = ctx.tool("diff", fx.path("base.img"), fx.path("v1.img"), "-o", out, "-q")
            v = judge(r, lambda: apply_matches(ctx, scratch, out), out_absent(out, ["filler"]))
        elif command == "apply":
            r = ctx.tool("apply", fx.path("d.native"), "--base", fx.path("base.img"), "-o", out, "-q")
            v = judge(r, file_is(out, ctx.expected("v1.img")), out_absent(out, ["filler"]))
        elif command == "restore":
            r = ctx.tool("restore", "-r", fx.path("repo"), "b", "-o", out, "-q")
            v = judge(r, file_is(out, ctx.expected("v2.img")), out_absent(out, ["filler"]))
        elif command == "sync":
            r = ctx.tool("sync", fx.path("v1.img"), out, "-q")
            v = judge(r, file_is(out, ctx.expected("v1.img")))
            if v.outcome == DETECTED:
                ctx.mounts.grow(mnt, 200 << 20)
                again = ctx.tool("sync", fx.path("v1.img"), out, "-q")
                if again.rc != 0 or sha256_file(out) != ctx.expected("v1.img"):
                    v = Verdict(LOST, "sync did not finish once space was free: " + again.describe())
        elif command == "init":
            repo = os.path.join(mnt, "newrepo")
            r = ctx.tool("init", "-r", repo, "-q")
            v = judge(r, lambda: ctx.tool("verify", "-r", repo, "-q").rc == 0)
            if v.outcome == DETECTED and os.path.exists(os.path.join(repo, "config")):
                # A half-made repository must not look like one.
                if ctx.tool("snapshots", "-r", repo).rc == 0:
                    v = Verdict(PARTIAL, "a failed init left a usable-looking repository")
        elif command == "import-diskdump":
            repo = os.path.join(mnt, "ddrepo")
            ctx.tool.ok("init", "-r", os.path.join(scratch, "probe"), "-q")
            r = ctx.tool("import-diskdump", fx.path("diskdump"), "-r", repo, "-q")
            v = judge(r, lambda: len(fx.snapshots(repo)) == 2, lambda: repo_intact(ctx, repo, scratch, []))
        elif command == "backup":
            repo = os.path.join(mnt, "repo")
            r = ctx.tool("backup", "-r", repo, fx.path("v2.img"), "--name", "n", "-q")
            v = judge(r, lambda: restores(ctx, repo, "n", "v2.img", scratch),
                      lambda: repo_intact(ctx, repo, scratch, ctx.snapshot_images()))
        return v
    finally:
        ctx.mounts.umount(mnt)


def apply_matches(ctx, scratch, delta):
    check = os.path.join(scratch, "check.img")
    r = ctx.tool("apply", delta, "--base", ctx.fx.path("base.img"), "-o", check, "-q")
    return r.rc == 0 and sha256_file(check) == ctx.expected("v1.img")


def repo_intact(ctx, repo, scratch, snapshots):
    """After a failed write: the repository verifies and the snapshots it
    had still restore."""
    if not os.path.exists(os.path.join(repo, "config")):
        return None
    check = ctx.tool("verify", "-r", repo, "--read-data", "-q")
    if check.rc != 0:
        return f"{LOST}:repository does not verify: {check.stderr.strip()}"
    for snap, image in snapshots:
        if not restores(ctx, repo, snap, image, scratch):
            return f"{LOST}:snapshot {snap[:8]} no longer restores"
    return None


def tree_size(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def fill(mnt, free):
    """Fills the file system until only `free` bytes remain."""
    st = os.statvfs(mnt)
    avail = st.f_bavail * st.f_frsize
    size = max(0, avail - free)
    with open(os.path.join(mnt, "filler"), "wb") as f:
        while size > 0:
            step = min(size, 1 << 20)
            try:
                f.write(b"\xff" * step)
            except OSError:
                break
            size -= step


# Read errors ------------------------------------------------------------------

EIO_COMMANDS = ["diff-new", "diff-old", "backup", "sync", "hash", "apply-base"]


def eio_faults(ctx, rng, n):
    if not ctx.mounts.eio_ok():
        return []
    size = os.path.getsize(ctx.fx.path("v1.img"))
    faults = []
    turn = rng.randrange(len(EIO_COMMANDS))
    for i in range(turn, turn + n):
        command = EIO_COMMANDS[i % len(EIO_COMMANDS)]
        offset = rng.randrange(0, size) // 512 * 512
        faults.append(Fault("eio", f"{command}: EIO at byte {offset}",
                            lambda scratch, c=command, o=offset: eio(ctx, scratch, c, o)))
    return faults


def eio(ctx, scratch, command, offset):
    fx = ctx.fx
    bad = lambda name: ctx.mounts.eio_path(name, offset, 512)
    out = os.path.join(scratch, "out")
    if command == "diff-new":
        r = ctx.tool("diff", fx.path("base.img"), bad("v1.img"), "-o", out, "-q")
        failed = out_absent(out)
    elif command == "diff-old":
        r = ctx.tool("diff", bad("base.img"), fx.path("v1.img"), "-o", out, "-q")
        failed = out_absent(out)
    elif command == "apply-base":
        r = ctx.tool("apply", fx.path("d.native"), "--base", bad("base.img"), "-o", out, "-q")
        failed = out_absent(out)
    elif command == "hash":
        r = ctx.tool("hash", bad("v1.img"), keep_stdout=True)
        failed = lambda: None
    elif command == "sync":
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(fx.path("base.img"), target)
        r = ctx.tool("sync", bad("v1.img"), target, "-q")
        failed = lambda: None
    else:
        repo = copy_tree(fx.path("repo"), os.path.join(scratch, "repo"))
        r = ctx.tool("backup", "-r", repo, bad("v1.img"), "--name", "e", "-q")
        failed = lambda: (f"{PARTIAL}:a failed backup wrote a snapshot"
                          if len(fx.snapshots(repo)) != len(ctx.snaps) else None)
    v = judge(r, lambda: False, failed, expect_failure=True)
    if v.outcome == DETECTED and "Input/output error" not in r.stderr:
        return Verdict(UNCLEAR, "the error does not name the I/O error: " + r.stderr.strip())
    return v


# kill -9 ----------------------------------------------------------------------

KILL_COMMANDS = ["backup", "gc", "forget-prune", "sync", "apply-in-place", "restore",
                 "restore-in-place", "apply-in-place-ref"]


def kill9_faults(ctx, rng, n):
    turn = rng.randrange(len(KILL_COMMANDS))
    return [Fault("kill-9", f"{KILL_COMMANDS[i % len(KILL_COMMANDS)]} killed after {d:.3f} s",
                  lambda scratch, c=KILL_COMMANDS[i % len(KILL_COMMANDS)], d=d:
                      killed(ctx, scratch, c, d))
            for i, d in enumerate((rng.uniform(0.0, 0.5) for _ in range(n)), turn)]


def killed(ctx, scratch, command, delay):
    """Runs command, kills it with SIGKILL after delay; then the rerun must
    complete with the right result and the repository must verify."""
    fx = ctx.fx
    repo = os.path.join(scratch, "repo")
    snaps = ctx.snapshot_images()
    if command in ("backup", "gc", "forget-prune"):
        copy_tree(fx.path("repo"), repo)
    if command == "backup":
        argv = ["backup", "-r", repo, fx.path("v2.img"), "--name", "k", "-q"]
        done = lambda: restores(ctx, repo, "k", "v2.img", scratch)
        snaps = snaps + [("k", "v2.img")]
    elif command == "gc":
        # Something for gc to remove: forget the first snapshot.
        ctx.tool.ok("forget", "-r", repo, snaps[0][0], "-q")
        snaps = snaps[1:]
        argv = ["gc", "-r", repo, "-q"]
        done = lambda: True
    elif command == "forget-prune":
        argv = ["forget", "-r", repo, "--keep-last", "1", "--prune", "-q"]
        snaps = [s for s in snaps if s[0] != ctx.snaps_oldest_of_a()]
        done = lambda: True
    elif command == "sync":
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(fx.path("base.img"), target)
        argv = ["sync", fx.path("v1.img"), target, "-q"]
        done = file_is(target, ctx.expected("v1.img"))
    elif command == "apply-in-place":
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(fx.path("base.img"), target)
        argv = ["apply", fx.path("d.native"), "--in-place", target, "-q"]
        done = file_is(target, ctx.expected("v1.img"))
    elif command == "apply-in-place-ref":
        # zstd-ref records: a rerun needs the redo journal for a cut write.
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(fx.path("base.img"), target)
        argv = ["apply", fx.path("d.ref"), "--in-place", target, "-q"]
        done = file_is(target, ctx.expected("near.img"))
    elif command == "restore":
        out = os.path.join(scratch, "out.img")
        argv = ["restore", "-r", fx.path("repo"), "b", "-o", out, "-q"]
        done = file_is(out, ctx.expected("v2.img"))
    else:
        target = os.path.join(scratch, "t.img")
        shutil.copyfile(fx.path("v1.img"), target)
        argv = ["restore", "-r", fx.path("repo"), "b", "--in-place", target, "-q"]
        done = file_is(target, ctx.expected("v2.img"))
    proc = subprocess.Popen([ctx.tool.binary, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ctx.tool.env, start_new_session=True)
    time.sleep(delay)
    kill_group(proc.pid)
    proc.communicate()
    if command == "restore" and proc.returncode != 0 and os.path.exists(out):
        return Verdict(PARTIAL, "a killed restore left its output under the final name")
    if command in ("backup", "gc", "forget-prune"):
        ctx.tool("unlock", "-r", repo, "-q")
    again = ctx.tool(*argv)
    if again.timed_out:
        return Verdict(HANG, "rerun: " + again.describe())
    if again.rc != 0:
        return Verdict(LOST, "the rerun failed: " + again.describe())
    if not done():
        return Verdict(WRONG, "the rerun's result is wrong")
    if command in ("backup", "gc", "forget-prune"):
        why = repo_intact(ctx, repo, scratch, snaps)
        if why:
            return Verdict(LOST, why.partition(":")[2])
    return Verdict(HARMLESS, "")


# The table of kinds -------------------------------------------------------------

# kind name -> (generator, faults in the suite)
KINDS = {}
_DELTA_COUNTS = {"native1": (20, 10), "native-ref": (40, 20)}
for _fmt in DELTA_FORMATS:
    _flips, _cuts = _DELTA_COUNTS.get(_fmt, (50, 30 if _fmt in ("native", "v2") else 20))
    KINDS[f"delta-{_fmt}-flip"] = (delta_faults(_fmt, "flip"), _flips)
    KINDS[f"delta-{_fmt}-cut"] = (delta_faults(_fmt, "cut"), _cuts)
KINDS["series-flip"] = (series_faults("flip"), 20)
KINDS["series-cut"] = (series_faults("cut"), 10)
KINDS["signature-flip"] = (signature_faults("flip"), 20)
KINDS["signature-cut"] = (signature_faults("cut"), 10)
for _part in REPO_FILES:
    KINDS[f"{_part}-flip"] = (repo_faults(_part, "flip"), 50)
    KINDS[f"{_part}-cut"] = (repo_faults(_part, "cut"), 20)
KINDS["sync-state-flip"] = (sync_state_faults("flip"), 50)
KINDS["sync-state-cut"] = (sync_state_faults("cut"), 20)
for _part in ("manifest", "block"):
    KINDS[f"diskdump-{_part}-flip"] = (diskdump_faults(_part, "flip"), 50)
    KINDS[f"diskdump-{_part}-cut"] = (diskdump_faults(_part, "cut"), 20)
KINDS["wire-sync"] = (wire_faults("sync"), 12)
KINDS["wire-backup"] = (wire_faults("backup"), 12)
KINDS["remote-killed-sync"] = (remote_killed_faults("sync"), 4)
KINDS["remote-killed-backup"] = (remote_killed_faults("backup"), 4)
KINDS["wire-push"] = (wire_faults("push"), 12)
KINDS["wire-restore-ssh"] = (wire_faults("restore-ssh"), 6)
KINDS["remote-killed-push"] = (remote_killed_faults("push"), 4)
KINDS["stdout-closed"] = (stdout_closed_faults, 9)
KINDS["fifo-stops"] = (fifo_faults, 9)
KINDS["enospc"] = (enospc_faults, 14)
KINDS["eio"] = (eio_faults, 12)
KINDS["kill-9"] = (kill9_faults, 16)

import s3  # noqa: E402  (its cases need the table's helpers above)
KINDS["s3"] = (s3.s3_faults, 9)

import nbdfaults  # noqa: E402
KINDS["nbd-export-pack"] = (nbdfaults.export_pack_faults, 8)
KINDS["nbd-source-killed"] = (nbdfaults.source_killed_faults, 6)
