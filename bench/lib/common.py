"""Shared helpers of the benchmark harness: tools, builds, images, timing, tables.

Every subcommand (diff, sync, repo) uses these, so that all of them
measure the same way:

* time and peak RSS of one command come from GNU time (`/usr/bin/time -f
  '%e %M'`, written to a file so the command's own stderr stays separate);
  the seconds reported are the wall clock measured around the command here,
  which has finer resolution than GNU time's centiseconds;
* images are made by `examples/gen_image.rs` once and reused while their
  parameters (and the generator's source) are unchanged;
* results are printed as a table and written as JSON.
"""

import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GNU_TIME = "/usr/bin/time"
GEN_SOURCE = os.path.join(REPO, "examples", "gen_image.rs")
GEN_IMAGE = os.path.join(REPO, "target", "release", "examples", "gen_image")
DISKDELTA = os.path.join(REPO, "target", "release", "diskdelta")

# Debian package that provides each external program.
APT_PACKAGES = {
    "xdelta3": "xdelta3",
    "rdiff": "rdiff",
    "zstd": "zstd",
    GNU_TIME: "time",
    "mkfs.xfs": "xfsprogs",
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg, code=1):
    log(msg)
    sys.exit(code)


def parse_size(text):
    """`123`, `64K`, `2G`, `1.5G`: suffixes are powers of 1024 (as gen_image)."""
    s = text.strip()
    for suffix in ("iB", "B"):
        if s.endswith(suffix) and len(s) > len(suffix):
            s = s[: -len(suffix)]
            break
    shift = {"k": 10, "m": 20, "g": 30, "t": 40}.get(s[-1:].lower(), 0)
    if shift:
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"bad size {text!r}") from None
    if value < 0:
        raise ValueError(f"bad size {text!r}")
    return int(round(value * (1 << shift)))


def human(n):
    """Bytes in binary units: 2.00 GiB."""
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.2f} {unit}"
        v /= 1024
    return str(n)


def work_dir():
    path = os.environ.get("BENCH_DIR") or os.path.join(REPO, "bench", "work")
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def remove(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def file_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def allocated(path):
    """Bytes the file occupies on disk (holes excluded)."""
    return os.stat(path).st_blocks * 512


def dir_bytes(path):
    """`du -sb PATH`: apparent bytes of every file and directory below PATH
    (None if PATH is missing)."""
    if not os.path.exists(path):
        return None
    res = subprocess.run(["du", "-sb", path], capture_output=True, text=True)
    if res.returncode != 0:
        die(f"du -sb {path} failed: {res.stderr.strip()}")
    return int(res.stdout.split()[0])


def dir_allocated(path):
    """`du -s -B1 PATH`: bytes allocated on disk below PATH (None if missing)."""
    if not os.path.exists(path):
        return None
    res = subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True)
    if res.returncode != 0:
        die(f"du -s -B1 {path} failed: {res.stderr.strip()}")
    return int(res.stdout.split()[0])


def settle():
    """`sync; sleep 1` outside the timed region, so that the writeback of
    what was written before does not land in the next timed command."""
    subprocess.run(["sync"], check=True)
    time.sleep(1)


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- servers


def free_port(host="127.0.0.1"):
    """A TCP port of host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def descendants(root, zombies=False):
    """Live processes below root (from /proc), parents first; with
    zombies, also those that have exited and wait to be reaped."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and (zombies or fields[0] not in ("Z", "X")):
            children.setdefault(int(fields[1]), []).append(int(name))
    out, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            out.append(child)
            queue.append(child)
    return out


def kill_tree(proc, what):
    """Kills a server we started (a subprocess.Popen) and every process
    below it, by pid: the server is stopped first so that it forks nothing
    meanwhile."""
    if proc is None or proc.poll() is not None:
        return
    signal_pid(proc.pid, signal.SIGSTOP)
    for pid in descendants(proc.pid):
        signal_pid(pid, signal.SIGKILL)
    signal_pid(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log(f"{what} (pid {proc.pid}) did not exit after SIGKILL")


class Terminated(Exception):
    pass


def _raise_terminated(signum, _frame):
    raise Terminated(f"signal {signum}")


def with_server(make, body, what):
    """server = make(); server.start(); returns body(server); the server is
    stopped (server.stop()) afterwards, also on errors, Ctrl-C, SIGTERM and
    SIGHUP (then 130 is returned). start() raising RuntimeError, OSError or
    a SubprocessError ends the run with its message."""
    old = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    server = None
    try:
        server = make()
        try:
            server.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            die(str(e))
        return body(server)
    except Terminated as e:
        log(f"interrupted ({e})")
        return 130
    finally:
        if server is not None:
            server.stop()
            log(f"{what} stopped")
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------- sshd

SSH_HOST = "127.0.0.1"
SSHD = "/usr/sbin/sshd"  # by absolute path: sshd re-executes itself
PRIVSEP_DIR = "/run/sshd"  # sshd refuses to start without it
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Debian's sftp server (its default sshd_config's Subsystem); internal-sftp
# where it is missing.
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
DELAY_PROXY = os.path.join(REPO, "scripts", "delay-proxy")

APT_PACKAGES.update({"ssh": "openssh-client", "ssh-keygen": "openssh-client",
                     "scp": "openssh-client", SSHD: "openssh-server"})


class Sshd:
    """`sshd -D -e` on a free port of 127.0.0.1 with its own host key,
    client key and config in a fresh directory under `parent`.

    Mirrors tests/common/sshd.rs: root login by key only, no PAM, PATH of
    remote commands = the directory of target/release/diskdelta followed by
    the system directories, SHLVL=1 so bash skips root's ~/.bashrc (slow,
    and it may print on stdout), curve25519 key exchange only (the
    post-quantum default costs ~0.1 s of CPU per connection), an sftp
    subsystem (restic's sftp backend, scp). `stop()` kills the daemon and
    everything below it; call it from a `finally`."""

    def __init__(self, parent):
        self.dir = tempfile.mkdtemp(prefix="sshd-", dir=parent)
        if re.search(r"[\s'\"\\]", self.dir):
            raise RuntimeError(
                f"{self.dir}: the work directory must not contain whitespace or quotes "
                "(the ssh command is split on whitespace)"
            )
        self.user = _current_user()
        self.proc = None
        self.port = None
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.client_key = os.path.join(self.dir, "client_ed25519")
        self.config = os.path.join(self.dir, "sshd_config")
        self.log_path = os.path.join(self.dir, "sshd.log")

    @property
    def destination(self):
        return f"{self.user}@{SSH_HOST}"

    def start(self):
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        _keygen(self.host_key)
        _keygen(self.client_key)
        shutil.copy(self.client_key + ".pub", os.path.join(self.dir, "authorized_keys"))
        last = "?"
        for _attempt in range(5):
            self.port = free_port(SSH_HOST)
            with open(self.config, "w") as f:
                f.write(self._config_text())
            logf = open(self.log_path, "w")
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                preexec_fn=_become_subreaper,
            )
            logf.close()
            ready, last = self._wait_ready()
            if ready:
                log(f"sshd listening on {SSH_HOST}:{self.port} (pid {self.proc.pid}, {self.dir})")
                return
            self.stop(remove_dir=False)
            if "Address already in use" not in last and "Cannot bind" not in last:
                break
        raise RuntimeError(f"cannot start sshd: {last}")

    def _config_text(self):
        bin_dir = os.path.dirname(DISKDELTA)
        return (
            "# Written by bench/lib/common.py (Sshd) for one benchmark run.\n"
            f"ListenAddress {SSH_HOST}:{self.port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.dir}/authorized_keys\n"
            f"PidFile {self.dir}/sshd.pid\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            "MaxStartups 100\n"
            "LogLevel ERROR\n"
            "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n"
            f"Subsystem sftp {SFTP_SERVER if os.access(SFTP_SERVER, os.X_OK) else 'internal-sftp'}\n"
            "# SHLVL=1: bash skips ~/.bashrc for ssh commands. Only the first\n"
            "# SetEnv line counts.\n"
            f"SetEnv PATH={bin_dir}:{SYSTEM_PATH} SHLVL=1\n"
        )

    def ssh_argv(self, count_log=None, config="/dev/null"):
        """The ssh command as an argument vector. With count_log, ssh logs at
        VERBOSE into that file (not stderr), which includes its
        "Transferred: sent N, received M bytes" line at exit. config: an
        ssh_config file (proxy_config) instead of none."""
        argv = ["ssh", "-F", config]
        if count_log:
            # The first LogLevel given wins, so it goes before the others.
            argv += ["-o", "LogLevel=VERBOSE", "-E", count_log]
        argv += [
            "-p",
            str(self.port),
            "-i",
            self.client_key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        return argv

    def ssh_command(self, count_log=None, config="/dev/null"):
        """The same as one string for -e/--rsh (no quoting needed: no path
        in it contains whitespace)."""
        return " ".join(self.ssh_argv(count_log, config))

    def proxy_config(self, delay_ms):
        """An ssh_config file whose only line is a ProxyCommand through
        scripts/delay-proxy adding delay_ms in each direction (0: the same
        relay without delay). -e and DISKDELTA_RSH are split on whitespace,
        so the command goes in a file (`ssh -F FILE`), not in -o."""
        path = os.path.join(self.dir, f"ssh_config-delay-{delay_ms}")
        with open(path, "w") as f:
            f.write(f"ProxyCommand {DELAY_PROXY} {SSH_HOST} {self.port} {delay_ms}\n")
        return path

    def server_cpu_seconds(self):
        """CPU seconds of the daemon and of every process below it that has
        exited and been waited for (its own user + system time plus its
        children's, from /proc/PID/stat): per connection sshd's encryption
        and the remote command. Call wait_idle() first so that the last
        session has been reaped."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                stat = f.read()
        except (OSError, AttributeError):
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        return sum(int(x) for x in fields[11:15]) / _CLK_TCK

    def wait_idle(self, timeout=10.0):
        """Waits until no session is left below the daemon, not even one
        that has exited but is not reaped yet (the remote side of the last
        command may still be exiting when the client returns, and only once
        reaped does its CPU time reach the daemon's); False if some are
        still there after timeout seconds."""
        deadline = time.monotonic() + timeout
        while self.proc is not None and descendants(self.proc.pid, zombies=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _wait_ready(self):
        deadline = time.monotonic() + 15
        listening = False
        why = "port never accepted a connection"
        logins = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"sshd exited with {self.proc.returncode}: {self._log_text()}"
            if not listening:
                try:
                    socket.create_connection((SSH_HOST, self.port), timeout=0.2).close()
                    listening = True
                except OSError:
                    time.sleep(0.02)
                    continue
            res = subprocess.run(
                self.ssh_argv() + [self.destination, "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if res.returncode == 0:
                return True, None
            logins += 1
            why = (
                f"`ssh ... true` failed ({res.returncode}): {res.stderr.strip()}; "
                f"sshd log: {self._log_text()}"
            )
            if logins >= 3:
                break
            time.sleep(0.1)
        return False, why

    def _log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def stop(self, remove_dir=True):
        """Kills the daemon and every process below it (sessions, remote
        commands), by pid; removes the directory."""
        proc, self.proc = self.proc, None
        kill_tree(proc, "sshd")
        if remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _become_subreaper():
    """In the daemon's process before exec (the setting survives execve):
    processes orphaned below it (a remote command whose session process
    exited without waiting for it, e.g. sftp-server after restic killed its
    ssh client) are re-parented to the daemon instead of init, so that
    kill_tree still finds them and their CPU time still reaches the
    daemon's children's times (server_cpu_seconds), as sshd reaps every
    child it has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _current_user():
    res = subprocess.run(["id", "-un"], capture_output=True, text=True)
    return res.stdout.strip() or os.environ.get("USER") or "root"


def _keygen(path):
    res = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "diskdelta-bench", "-f", path],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"ssh-keygen -f {path} failed: {res.stderr.strip()}")



_SSH_TRANSFERRED = re.compile(r"Transferred: sent (\d+), received (\d+) bytes")


def ssh_counted(path):
    """(sent, received, sessions) summed over the ssh clients' Transferred
    lines in path, or None if there is none."""
    try:
        with open(path, errors="replace") as f:
            found = _SSH_TRANSFERRED.findall(f.read())
    except OSError:
        return None
    if not found:
        return None
    return sum(int(a) for a, _ in found), sum(int(b) for _, b in found), len(found)


def loopback_bytes():
    """Bytes received on the loopback interface since boot (/proc/net/dev;
    on lo every byte sent is received once: IP and TCP headers included),
    or None."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None



# ------------------------------------------------------------------ tools


def ensure_programs(programs):
    """Installs missing programs with apt-get; returns {program: reason} for
    those still missing, so the caller can skip them with that reason."""
    missing = [p for p in programs if not which(p)]
    if not missing:
        return {}
    packages = sorted({APT_PACKAGES[p] for p in missing if p in APT_PACKAGES})
    reasons = {}
    if not packages:
        return {p: "not installed" for p in missing}
    if os.geteuid() != 0:
        reason = f"not installed (run as root to install: apt-get install -y {' '.join(packages)})"
        return {p: reason for p in missing}
    log(f"installing {' '.join(packages)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        # The package lists may be missing or stale: refresh once, retry.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for p in missing:
        if not which(p):
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            reasons[p] = f"apt-get install {APT_PACKAGES.get(p, p)} failed: {tail[0]}"
    return reasons


def which(program):
    if os.path.isabs(program):
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program)


def tool_version(argv):
    """First line of a program's version output, or None."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (res.stdout.strip() or res.stderr.strip()).splitlines()
    if not out:
        return None
    # "Xdelta version 3.0.11, Copyright ..." and "*** Zstandard CLI ... ***"
    return out[0].split(", Copyright")[0].strip("* ")


def runs_ok(argv):
    """True if argv runs and exits 0."""
    try:
        res = subprocess.run(argv, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def parse_list(text, allowed, what):
    """`--WHAT a,b`: the items of text, in the order of allowed; dies (exit
    2) on an unknown item or an empty list."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        die(f"--{what}: unknown {bad or text!r}; choose from {','.join(allowed)}", 2)
    return [x for x in allowed if x in items]


def prepare(tools, no_build, subcommands, extra=(), required=(), missing_time_note=""):
    """Installs what is missing and builds; returns {tool name: skip reason}.

    tools: objects with `name` and `program` (and optionally `optional`:
    only used when already on PATH, never installed). extra: further
    programs to install (GNU time always). required: programs without which
    the command cannot run at all (dies). subcommands: diskdelta
    subcommands whose `--help` must work, else diskdelta is skipped."""
    wanted = [
        t.program for t in tools if t.name != "diskdelta" and not getattr(t, "optional", False)
    ]
    programs = list(dict.fromkeys(wanted + list(extra) + [GNU_TIME]))
    missing = ensure_programs(programs)
    for p in required:
        if p in missing:
            die(f"{p}: {missing[p]}")
    if GNU_TIME in missing:
        log(
            f"GNU time: {missing[GNU_TIME]}; measuring peak RSS with wait4() instead"
            + missing_time_note
        )
    skipped = {}
    for t in tools:
        if getattr(t, "optional", False) and not which(t.program):
            skipped[t.name] = "not found on PATH, skipped"
        elif t.program in missing:
            skipped[t.name] = missing[t.program]
    with_diskdelta = any(t.name == "diskdelta" for t in tools)
    if not no_build:
        why = cargo_build(["--example", "gen_image"], "the image generator")
        if why:
            log(why)
        if with_diskdelta:
            why = cargo_build([], "diskdelta")
            if why:
                skipped["diskdelta"] = why
    elif with_diskdelta and not os.access(DISKDELTA, os.X_OK):
        skipped["diskdelta"] = f"{DISKDELTA} is missing and --no-build was given"
    if with_diskdelta and "diskdelta" not in skipped:
        for sub in subcommands:
            if not runs_ok([DISKDELTA, sub, "--help"]):
                skipped["diskdelta"] = f"`diskdelta {sub} --help` fails (not built yet?)"
                break
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    return skipped


def git_state():
    """The commit measured, e.g. ` (commit abc1234, src/ modified)`: others
    may be editing src/ while the benchmark builds it."""
    head = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        return ""
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.*"],
        capture_output=True,
        text=True,
    )
    return f" (commit {head.stdout.strip()}{', src/ modified' if dirty.stdout.strip() else ''})"


def tool_versions(tools, skipped):
    """{name: {version, config, skipped}} for the report; diskdelta's
    version carries the commit measured."""
    out = {}
    for t in tools:
        v = None if t.name in skipped else tool_version(t.version_argv)
        if t.name == "diskdelta" and v:
            v += git_state()
        out[t.name] = {"version": v, "config": t.config, "skipped": skipped.get(t.name)}
    return out


def cargo_build(args, what):
    """Runs `cargo build --release ARGS`; returns None or a failure reason."""
    log(f"building {what}: cargo build --release {' '.join(args)}")
    res = subprocess.run(
        ["cargo", "build", "--release", *args], cwd=REPO, capture_output=True, text=True
    )
    if res.returncode == 0:
        return None
    errors = [l for l in res.stderr.splitlines() if l.startswith("error")]
    return f"cargo build --release {' '.join(args)} failed: {(errors or ['?'])[0]}"


def machine_info():
    info = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_kib"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# ----------------------------------------------------------------- images


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def ensure_image(directory, name, args, parent=None):
    """Makes DIRECTORY/NAME with `gen_image ARGS -o NAME` (run inside
    DIRECTORY, so ARGS name other images by their plain names) unless it
    already exists with the same parameters. The parameters, the generator's
    source digest and the parent image's stamp are kept in `NAME.params`, so
    changing any of them regenerates the image and everything made from it.

    Returns the stamp: a dict with the arguments and gen_image's summary."""
    path = os.path.join(directory, name)
    stamp_path = path + ".params"
    want = {
        "args": args,
        "generator_sha256": _sha256_file(GEN_SOURCE),
        "parent": parent.get("digest") if parent else None,
    }
    want["digest"] = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()
    try:
        with open(stamp_path) as f:
            have = json.load(f)
        if have.get("digest") == want["digest"] and file_size(path) == have.get("size"):
            log(f"reusing {name}: {have.get('summary', '')}")
            return have
    except (OSError, ValueError):
        pass
    remove(stamp_path, path)
    if not os.access(GEN_IMAGE, os.X_OK):
        die(f"{GEN_IMAGE} is missing: cargo build --release --example gen_image")
    log(f"generating {name}: gen_image {' '.join(args)} -o {name}")
    res = subprocess.run(
        [GEN_IMAGE, *args, "-o", name], cwd=directory, capture_output=True, text=True
    )
    if res.returncode != 0:
        die(f"gen_image failed: {res.stderr.strip()}")
    summary = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    log(summary)
    want["summary"] = summary
    want["size"] = os.stat(path).st_size
    want["allocated"] = allocated(path)
    with open(stamp_path, "w") as f:
        json.dump(want, f, indent=1)
    return want


def size_label(size):
    """2147483648 -> "2G"; sizes that are no whole K/M/G/T stay in bytes."""
    for shift, unit in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def image_dir(size):
    """Where the images of a base size live: the work directory itself at
    2 GiB (diff's default, shared by diff, sync and repo), else
    work/images-SIZE/ (shared by sync and repo)."""
    directory = work_dir()
    if size != 2 << 30:
        directory = os.path.join(directory, f"images-{size_label(size)}")
    os.makedirs(directory, exist_ok=True)
    return directory


def standard_images(size, names=("base.img", "new.img")):
    """The images every subcommand shares, made in image_dir(size):

      base.img   gen_image base --size SIZE --seed 1
      new.img    base.img with ~2% of the 4 KiB blocks rewritten in 64 KiB clusters
      grown.img  new.img plus 64 MiB of new data appended
      step3.img  new.img with another ~1% rewritten, plus 64 MiB appended
      clone.img  base.img with 2% of its 1 MiB chunks rewritten (repo --remote)
      night1..7.img  a week after base.img: each ~1% of the 4 KiB blocks rewritten
                 in 64 KiB clusters (diff --series)

    Returns (directory, {name: stamp}) for names and what they derive from."""
    directory = image_dir(size)
    recipes = {
        "base.img": (None, ["base", "--size", str(size), "--seed", "1"]),
        "new.img": (
            "base.img",
            ["mutate", "--input", "base.img", "--change", "0.02", "--cluster", "64K",
             "--seed", "2"],
        ),
        "grown.img": (
            "new.img",
            ["mutate", "--input", "new.img", "--change", "0", "--seed", "3", "--grow", "64M"],
        ),
        "step3.img": (
            "new.img",
            ["mutate", "--input", "new.img", "--change", "0.01", "--cluster", "64K",
             "--seed", "4", "--grow", "64M"],
        ),
        **{
            f"night{n}.img": (
                "base.img" if n == 1 else f"night{n - 1}.img",
                ["mutate", "--input", "base.img" if n == 1 else f"night{n - 1}.img",
                 "--change", "0.01", "--cluster", "64K", "--seed", str(20 + n)],
            )
            for n in range(1, 8)
        },
        "clone.img": (
            "base.img",
            ["mutate", "--input", "base.img", "--change", "0.02", "--cluster", "1M",
             "--seed", "5"],
        ),
    }
    stamps = {}

    def make(name):
        if name not in stamps:
            parent, args = recipes[name]
            stamps[name] = ensure_image(
                directory, name, args, parent=make(parent) if parent else None
            )
        return stamps[name]

    for name in names:
        make(name)
    return directory, stamps


def image_summaries(stamps):
    """The stamps as the reports keep them (without the digest)."""
    return {n: {k: v for k, v in s.items() if k != "digest"} for n, s in stamps.items()}


def warm_tree(path):
    """Reads every file below path once (what a tool reads from its
    repository then comes from the page cache for every tool alike)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


def sparse_source(path, size, count, extent, seed=21):
    """A SIZE sparse file with COUNT extents of random bytes at scattered,
    extent-aligned offsets (truncate + dd), reused while the layout stamp
    matches. Returns the layout: size, extent, offsets, data_bytes."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(size // extent), count))
    layout = {"size": size, "extent": extent, "offsets": [s * extent for s in slots]}
    layout["data_bytes"] = count * extent
    stamp = path + ".params"
    try:
        with open(stamp) as f:
            if json.load(f) == layout and file_size(path) == size:
                log(f"reusing {os.path.basename(path)}")
                return layout
    except (OSError, ValueError):
        pass
    remove(stamp, path)
    log(f"making {os.path.basename(path)}: truncate -s {size}, {count} x dd of {extent} bytes")
    subprocess.run(["truncate", "-s", str(size), path], check=True)
    for off in layout["offsets"]:
        write_random(path, off, extent)
    with open(stamp, "w") as f:
        json.dump(layout, f)
    return layout


def write_random(path, offset, length):
    """dd LENGTH bytes of /dev/urandom into path at OFFSET (both multiples
    of 1 MiB), keeping the rest of the file."""
    assert offset % (1 << 20) == 0 and length % (1 << 20) == 0
    subprocess.run(
        [
            "dd",
            "if=/dev/urandom",
            f"of={path}",
            "bs=1M",
            f"count={length >> 20}",
            f"seek={offset >> 20}",
            "conv=notrunc",
            "status=none",
        ],
        check=True,
    )


def data_ranges(path):
    """[(start, end)] of the file's data extents (SEEK_DATA/SEEK_HOLE)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, stop))
            pos = stop
    finally:
        os.close(fd)
    return out


def warm_sparse(path):
    """Reads the data extents only (cat would read the holes too)."""
    log(f"warming page cache: data extents of {os.path.basename(path)}")
    with open(path, "rb") as f:
        for start, stop in data_ranges(path):
            f.seek(start)
            left = stop - start
            while left > 0:
                left -= len(f.read(min(left, 1 << 20))) or left


def sparse_equal(a, b):
    """Like cmp, for huge sparse files: outside the union of both files'
    data extents both read as zeros, so only that union is compared."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    ranges = sorted(data_ranges(a) + data_ranges(b))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, stop in ranges:
            fa.seek(start)
            fb.seek(start)
            left = stop - start
            while left > 0:
                n = min(left, 1 << 20)
                if fa.read(n) != fb.read(n):
                    return False
                left -= n
    return True


def warm_cache(paths):
    """Reads the files once so every tool starts from the same warm page cache."""
    for p in paths:
        log(f"warming page cache: cat {os.path.basename(p)} > /dev/null")
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", p], stdout=null, check=True)


def same_content(a, b):
    """cmp -s: True if equal, False if different, or an error string."""
    res = subprocess.run(["cmp", "-s", a, b], capture_output=True, text=True)
    if res.returncode == 0:
        return True
    if res.returncode == 1:
        return False
    return f"cmp failed: {res.stderr.strip()}"


# ----------------------------------------------------------------- timing


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_seconds():
    """CPU seconds spent working on all cores since boot (user, nice,
    system, irq, softirq; not idle, iowait or steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def other_load(seconds=2.0):
    """Cores kept busy by other processes, sampled while we sleep."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    after = cpu_busy_seconds()
    if before is None or after is None:
        return None
    return max(0.0, (after - before) / seconds)


def load_check():
    """Samples what other processes use right before measuring; returns
    (cores busy, warning or None)."""
    busy = other_load(2.0)
    if busy is not None and busy > 0.2:
        msg = (
            f"other processes kept {busy:.1f} of {os.cpu_count()} cores busy right before "
            "measuring (a concurrent build?): the numbers are noisy; see the 'others' column"
        )
        log("warning: " + msg)
        return busy, msg
    return busy, None


def report_header(command, size, repeat, machine, busy, load_warning):
    """The fields every results JSON starts with: what ran, when, where,
    and how busy the machine was around it."""
    return {
        "command": command,
        "date": now_iso(),
        "size": size,
        "repeat": repeat,
        "machine": machine,
        "other_cores_before": None if busy is None else round(busy, 2),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "load_warning": load_warning,
    }


@dataclass
class Measurement:
    """One command run: wall seconds, peak RSS in KiB, user + system CPU
    seconds, exit status."""

    argv: list
    seconds: float
    max_rss_kib: int
    cpu_seconds: float
    # Cores that other processes kept busy meanwhile (machine-wide busy time
    # minus this command's CPU time, over its wall time): the noise level.
    other_cores: float
    returncode: int
    stderr_tail: str = ""
    log_path: str = ""


def run_timed(argv, log_path, cwd=None, env=None):
    """Runs argv under GNU time (`-f '%e %M %U %S'`), stdout and stderr to
    log_path; env: variables to set on top of ours (None: ours as they are).

    The peak RSS is GNU time's %M of that one process; CPU seconds are its
    user + system time (more than the wall time when it uses several
    cores); the seconds are our own monotonic wall clock around it."""
    fd, time_out = tempfile.mkstemp(prefix="bench-time-", dir=os.path.dirname(log_path))
    os.close(fd)
    full_env = None if env is None else dict(os.environ, **env)
    try:
        with open(log_path, "w") as logf:
            if env:
                logf.write("$ env " + " ".join(f"{k}={v}" for k, v in sorted(env.items())) + "\n")
            if cwd:
                logf.write(f"$ cd {cwd}\n")
            logf.write("$ " + " ".join(argv) + "\n")
            logf.flush()
            busy_before = cpu_busy_seconds()
            if which(GNU_TIME):
                start = time.perf_counter()
                res = subprocess.run(
                    [GNU_TIME, "-f", "%e %M %U %S", "-o", time_out, *argv],
                    cwd=cwd,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                )
                seconds = time.perf_counter() - start
                returncode = res.returncode
                rss, cpu = 0, 0.0
                with open(time_out) as f:
                    for line in f:
                        parts = line.split()
                        # GNU time adds "Command exited with non-zero status N" first.
                        if len(parts) == 4 and parts[1].isdigit():
                            rss, cpu = int(parts[1]), float(parts[2]) + float(parts[3])
            else:
                # No GNU time (and apt could not install it): the kernel's
                # rusage of the one child, which is what GNU time reports.
                start = time.perf_counter()
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                )
                _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - start
                proc.returncode = returncode = os.waitstatus_to_exitcode(status)
                rss = usage.ru_maxrss
                cpu = usage.ru_utime + usage.ru_stime
            busy_after = cpu_busy_seconds()
    finally:
        remove(time_out)
    with open(log_path, errors="replace") as f:
        lines = [l.strip() for l in f.read().splitlines() if l.strip() and not l.startswith("$ ")]
    return Measurement(
        argv=list(argv),
        seconds=seconds,
        max_rss_kib=rss,
        cpu_seconds=cpu,
        other_cores=(
            None
            if busy_before is None or busy_after is None or seconds <= 0
            else max(0.0, (busy_after - busy_before - cpu) / seconds)
        ),
        returncode=returncode,
        stderr_tail=lines[-1] if lines else "",
        log_path=log_path,
    )


@dataclass
class Phase:
    """A phase (e.g. "diff") made of one or more commands, over repeats."""

    seconds: float = None  # best (minimum) over repeats of the summed steps
    cpu_seconds: float = None  # CPU time of that fastest repeat
    other_cores: float = None  # other processes' load during that repeat
    max_rss_kib: int = None  # largest over all steps and repeats
    runs: list = field(default_factory=list)  # per repeat: list of step dicts

    def add_run(self, steps):
        total = sum(m.seconds for m in steps)
        rss = max(m.max_rss_kib for m in steps)
        if self.seconds is None or total < self.seconds:
            self.seconds = total
            self.cpu_seconds = sum(m.cpu_seconds for m in steps)
            others = [m.other_cores for m in steps if m.other_cores is not None]
            self.other_cores = max(others) if others else None
        self.max_rss_kib = rss if self.max_rss_kib is None else max(self.max_rss_kib, rss)
        self.runs.append(
            [
                {
                    "argv": m.argv,
                    "seconds": round(m.seconds, 4),
                    "cpu_seconds": round(m.cpu_seconds, 2),
                    "max_rss_kib": m.max_rss_kib,
                    "other_cores": None if m.other_cores is None else round(m.other_cores, 2),
                }
                for m in steps
            ]
        )

    def to_json(self):
        return {
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 2),
            "other_cores": None if self.other_cores is None else round(self.other_cores, 2),
            "max_rss_kib": self.max_rss_kib,
            "runs": self.runs,
        }


def run_phase(steps, log_prefix, cwd=None, env=None):
    """Runs the argv lists in order; returns (measurements, failure reason)."""
    done = []
    for i, argv in enumerate(steps):
        m = run_timed(argv, f"{log_prefix}.{i}.log", cwd=cwd, env=env)
        done.append(m)
        if m.returncode != 0:
            why = m.stderr_tail or "no output"
            return done, f"{os.path.basename(argv[0])} exited {m.returncode}: {why}"
    return done, None


def json_in(text):
    """The first JSON value in a command's log (after the `$ ...` lines)."""
    body = "\n".join(l for l in text.splitlines() if not l.startswith("$ "))
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    if not starts:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body[min(starts) :])
    except ValueError:
        return None
    return value


def mb_per_s(nbytes, seconds):
    if not seconds or nbytes is None:
        return None
    return nbytes / seconds / 1e6


# ----------------------------------------------------------------- output


def fmt(x, spec):
    """format(x, spec), or None (printed as "-") when x is None."""
    return None if x is None else format(x, spec)


def print_table(headers, rows, out=sys.stdout):
    """Plain aligned table: text columns left-aligned, numbers right-aligned."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def numeric(s):
        return s == "-" or s.replace(".", "", 1).replace(",", "").rstrip("x").isdigit()

    def fmt(row):
        parts = []
        for i, c in enumerate(row):
            parts.append(c.rjust(widths[i]) if numeric(c) else c.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    print(fmt(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(fmt(row), file=out)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    log(f"wrote {path}")
