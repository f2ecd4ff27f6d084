"""Faults of the repository on S3: the server killed or frozen (SIGSTOP)
mid-backup, and the backup killed with SIGKILL. Each fault starts its own
s3rver (scripts/s3-servers installs it) on a free port with its own data
directory, so faults can run side by side.

A correct outcome: the faulty backup either succeeds with a right
snapshot or fails with one clear line within the timeout (a frozen server
must not freeze the backup); then, with the server back, a rerun succeeds,
`verify --read-data` passes and every snapshot restores.
"""
import os
import signal
import socket
import subprocess
import time

from harness import DETECTED, HANG, HARMLESS, LOST, UNCLEAR, WRONG, Fault, Verdict, judge, kill_group

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KEYS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER",
        # Fail fast: a dead server is given up after this many seconds of
        # retries, a frozen one after DISKDELTA_TIMEOUT per request.
        "DISKDELTA_S3_RETRY_TIMEOUT": "3"}


def s3rver_path():
    return os.environ.get("DISKDELTA_TEST_S3RVER") or os.path.join(
        ROOT, "target", "tools", "s3rver", "node_modules", ".bin", "s3rver")


def available():
    return os.access(s3rver_path(), os.X_OK)


class Server:
    def __init__(self, scratch):
        self.data = os.path.join(scratch, "s3data")
        os.makedirs(self.data, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None
        self.start()

    def command(self):
        return [s3rver_path(), "-d", self.data, "-a", "127.0.0.1", "-p", str(self.port), "--silent"]

    def start(self):
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("s3rver did not start")

    def kill(self):
        if self.proc:
            kill_group(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def freeze(self, frozen):
        kill_group(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def location(self, name):
        return f"s3:http://127.0.0.1:{self.port}/faults/{name}"


class MotoServer(Server):
    """moto keeps objects in memory (so it cannot be killed and restarted)
    and stores an object only once its whole body has arrived, as real S3
    does. s3rver streams a PUT's body into the final file: frozen in the
    middle of a PUT the client then gives up on, it would store the prefix
    it had when resumed, a fault of the test server rather than of the
    client. The frozen-server faults therefore run against moto."""

    def command(self):
        return [moto_path(), "-H", "127.0.0.1", "-p", str(self.port)]


def moto_path():
    return os.environ.get("DISKDELTA_TEST_MOTO_SERVER") or os.path.join(
        ROOT, "target", "tools", "moto", "bin", "moto_server")


KINDS = ["server-killed", "server-frozen", "backup-killed"]


def s3_faults(ctx, rng, n):
    if not available():
        return []
    turn = rng.randrange(len(KINDS))
    out = []
    for i in range(n):
        what = KINDS[(turn + i) % len(KINDS)]
        delay = rng.uniform(0.02, 0.4)
        out.append(Fault("s3", f"{what} after {delay:.3f} s",
                         lambda scratch, w=what, d=delay: s3_fault(ctx, scratch, w, d)))
    return out


def s3_fault(ctx, scratch, what, delay):
    atomic = what == "server-frozen" and os.access(moto_path(), os.X_OK)
    server = MotoServer(scratch) if atomic else Server(scratch)
    try:
        return run_fault(ctx, scratch, server, what, delay)
    finally:
        try:
            server.freeze(False)
        except Exception:
            pass
        server.kill()


def run_fault(ctx, scratch, server, what, delay):
    fx = ctx.fx
    repo = server.location("r")
    tool = lambda *a, **kw: ctx.tool(*a, env=KEYS, **kw)
    for step in (("init", "-r", repo, "-q"),
                 ("backup", "-r", repo, fx.path("base.img"), "--name", "a", "-q")):
        r = tool(*step)
        if r.rc != 0:
            return Verdict(UNCLEAR, "setup: " + r.describe())
    argv = [ctx.tool.binary, "backup", "-r", repo, fx.path("v2.img"), "--name", "b", "-q"]
    env = dict(ctx.tool.env, **KEYS)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    time.sleep(delay)
    if what == "server-killed":
        server.kill()
    elif what == "server-frozen":
        server.freeze(True)
    else:
        kill_group(proc.pid)
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=ctx.tool.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        _, err = proc.communicate()
        timed_out = True
    from harness import Run
    result = Run([str(a) for a in argv], None if timed_out else proc.returncode, b"",
                 err.decode(errors="replace"), time.monotonic() - start, timed_out)
    if what == "server-killed":
        server.start()
    elif what == "server-frozen":
        server.freeze(False)
    if what == "backup-killed":
        verdict = Verdict(DETECTED, "killed") if result.rc != 0 else Verdict(HARMLESS, "")
        tool("unlock", "-r", repo, "-q")
    else:
        verdict = judge(result, lambda: True)
        if verdict.outcome == HANG:
            return verdict
    # The rerun completes and everything verifies and restores.
    again = tool("backup", "-r", repo, fx.path("v2.img"), "--name", "b", "-q")
    if again.timed_out:
        return Verdict(HANG, "rerun: " + again.describe())
    if again.rc != 0:
        return Verdict(LOST, "the rerun failed: " + again.describe())
    check = tool("verify", "-r", repo, "--read-data", "-q")
    if check.rc != 0:
        return Verdict(LOST, "repository does not verify: " + check.stderr.strip())
    for name, image in (("a", "base.img"), ("b", "v2.img")):
        out = os.path.join(scratch, "check.img")
        r = tool("restore", "-r", repo, name, "-o", out, "-q")
        from harness import sha256_file
        if r.rc != 0 or sha256_file(out) != ctx.expected(image):
            return Verdict(WRONG if r.rc == 0 else LOST, f"snapshot {name} does not restore: {r.describe()}")
        os.remove(out)
    return verdict
