"""Shared helpers of the benchmark harness: tools, builds, images, timing, tables.

Every subcommand (diff now; sync and repo later) uses these, so that all of
them measure the same way:

* time and peak RSS of one command come from GNU time (`/usr/bin/time -f
  '%e %M'`, written to a file so the command's own stderr stays separate);
  the seconds reported are the wall clock measured around the command here,
  which has finer resolution than GNU time's centiseconds;
* images are made by `examples/gen_image.rs` once and reused while their
  parameters (and the generator's source) are unchanged;
* results are printed as a table and written as JSON.
"""

import hashlib
import json
import os
import platform
import shutil
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
APT_PACKAGES = {"xdelta3": "xdelta3", "rdiff": "rdiff", "zstd": "zstd", GNU_TIME: "time"}


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


def run_timed(argv, log_path, cwd=None):
    """Runs argv under GNU time (`-f '%e %M %U %S'`), stdout and stderr to
    log_path.

    The peak RSS is GNU time's %M of that one process; CPU seconds are its
    user + system time (more than the wall time when it uses several
    cores); the seconds are our own monotonic wall clock around it."""
    fd, time_out = tempfile.mkstemp(prefix="bench-time-", dir=os.path.dirname(log_path))
    os.close(fd)
    try:
        with open(log_path, "w") as logf:
            logf.write("$ " + " ".join(argv) + "\n")
            logf.flush()
            busy_before = cpu_busy_seconds()
            if which(GNU_TIME):
                start = time.perf_counter()
                res = subprocess.run(
                    [GNU_TIME, "-f", "%e %M %U %S", "-o", time_out, *argv],
                    cwd=cwd,
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
                    argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf
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
        lines = [l.strip() for l in f.read().splitlines()[1:] if l.strip()]
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


def run_phase(steps, log_prefix, cwd=None):
    """Runs the argv lists in order; returns (measurements, failure reason)."""
    done = []
    for i, argv in enumerate(steps):
        m = run_timed(argv, f"{log_prefix}.{i}.log", cwd=cwd)
        done.append(m)
        if m.returncode != 0:
            why = m.stderr_tail or "no output"
            return done, f"{os.path.basename(argv[0])} exited {m.returncode}: {why}"
    return done, None


def mb_per_s(nbytes, seconds):
    if not seconds or nbytes is None:
        return None
    return nbytes / seconds / 1e6


# ----------------------------------------------------------------- output


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
