"""`bench/run access`: instant access to snapshots (`diskdelta nbd`) against
a full restore of the same snapshot.

Measured, each with a freshly started server (its chunk cache cold, the
repository's packs in the page cache, as for the restore it is compared
with):

- time to first byte: from starting `diskdelta nbd` to the first byte a
  libnbd client reads (connect retried until the socket is there), for the
  standard SIZE image and for a sparse 1 TiB snapshot;
- sequential read: `nbdcopy URI null:` of the snapshot against
  `diskdelta restore -o /dev/null` (best of --repeat);
- random 4 KiB reads: fio's nbd engine, one job, queue depth 1, p50/p99
  completion latency over --fio-seconds;
- peak RSS of the server (VmHWM) after an nbdcopy, for --cache-size 64M
  and 256M.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import common

PASSWORD = "diskdelta-bench"


class _Tool:
    name = "diskdelta"
    program = common.DISKDELTA


def add_arguments(sub):
    p = sub.add_parser(
        "access",
        help="diskdelta nbd: time to first byte, nbdcopy vs restore, fio latency, RSS",
        description="Instant access to a snapshot over NBD against a full restore.",
    )
    p.add_argument("--size", default="2G", help="image size (default 2G)")
    p.add_argument("--sparse-size", default="1T", help="size of the sparse snapshot (default 1T)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best counts")
    p.add_argument("--fio-seconds", type=int, default=10, help="fio run time (default 10)")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.set_defaults(func=cmd_access)


def _env():
    return dict(os.environ, DISKDELTA_PASSWORD=PASSWORD)


class _Server:
    """A `diskdelta nbd` child; stopped (SIGINT, then killed) on exit."""

    def __init__(self, repo, spec, sock, cache="256M"):
        common.remove(sock)
        self.sock = sock
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [common.DISKDELTA, "nbd", "-r", repo, spec, "--socket", sock, "--cache-size", cache, "-q"],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.uri = f"nbd+unix:///{spec}?socket={sock}"

    def first_byte(self):
        """Seconds from the start to the first byte read."""
        import nbd

        deadline = self.started + 60
        while True:
            h = nbd.NBD()
            try:
                h.connect_uri(self.uri)
                h.pread(1, 0)
                t = time.monotonic() - self.started
                h.shutdown()
                return t
            except nbd.Error:
                if self.proc.poll() is not None:
                    common.die(f"diskdelta nbd exited: {self.proc.stderr.read().decode(errors='replace')}")
                if time.monotonic() > deadline:
                    common.die("diskdelta nbd did not serve within 60 s")
                time.sleep(0.002)

    def peak_rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        common.remove(self.sock)


def _import_nbd():
    """libnbd's Python module: Debian installs it for the system python3,
    which may not be the python3 on PATH."""
    try:
        import nbd  # noqa: F401
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")
        try:
            import nbd  # noqa: F401,F811
        except ImportError:
            common.die("python3 -m nbd is missing: apt-get install python3-libnbd")


def _timed(argv, env=None):
    t = time.monotonic()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        common.die(f"{argv[0]} failed: {r.stderr.decode(errors='replace')[-500:]}")
    return time.monotonic() - t


def cmd_access(args):
    size = common.parse_size(args.size)
    sparse_size = common.parse_size(args.sparse_size)
    skipped = common.prepare([_Tool()], args.no_build, ["nbd"], extra=["nbdcopy", "fio"])
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")
    _import_nbd()
    machine = common.machine_info()
    directory, stamps = common.standard_images(size, names=("base.img",))
    image = os.path.join(directory, "base.img")
    work = os.path.join(common.work_dir(), "access")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    repo = os.path.join(work, "repo")
    d = common.DISKDELTA
    # Plain, as `bench/run repo` measures by default (an encrypted one adds
    # its unlock, about the same for restore and nbd).
    subprocess.run([d, "init", "-q", "-r", repo, "--no-encryption"], env=_env(), check=True)
    common.log("backing up the image (not measured)")
    subprocess.run([d, "backup", "-q", "-r", repo, image, "--name", "vm"], env=_env(), check=True)
    sparse = os.path.join(work, "sparse.img")
    common.sparse_source(sparse, sparse_size, 8, 1 << 20)
    common.log(f"backing up a sparse {common.human(sparse_size)} image (not measured)")
    subprocess.run([d, "backup", "-q", "-r", repo, sparse, "--name", "sparse"], env=_env(), check=True)
    common.remove(sparse, sparse + ".params")
    sock = os.path.join(work, "nbd.sock")
    _, load_warning = common.load_check()

    # Warm the packs in the page cache, as restore and the server both find them.
    common.warm_tree(os.path.join(repo, "data"))
    results = {}

    ttfb = {}
    for spec in ("vm", "sparse"):
        best = None
        for _ in range(args.repeat):
            with _Server(repo, spec, sock) as s:
                t = s.first_byte()
            best = t if best is None else min(best, t)
        ttfb[spec] = best
    results["first_byte_seconds"] = ttfb

    restore = min(_timed([d, "restore", "-q", "-r", repo, "vm", "-o", "/dev/null"], _env())
                  for _ in range(args.repeat))
    copies, rss = [], {}
    for cache in ("64M", "256M"):
        for _ in range(args.repeat):
            with _Server(repo, "vm", sock, cache) as s:
                s.first_byte()
                t = _timed(["nbdcopy", s.uri, "null:"])
                if cache == "256M":
                    copies.append(t)
                rss[cache] = max(rss.get(cache, 0), s.peak_rss_kib())
    copy = min(copies)
    results["restore_seconds"] = restore
    results["nbdcopy_seconds"] = copy
    results["peak_rss_kib"] = rss

    with _Server(repo, "vm", sock) as s:
        s.first_byte()
        out = subprocess.run(
            ["fio", "--name=randread", "--ioengine=nbd", f"--uri={s.uri}", "--rw=randread",
             "--bs=4k", "--iodepth=1", "--time_based", f"--runtime={args.fio_seconds}",
             "--output-format=json"],
            capture_output=True, text=True,
        )
    if out.returncode != 0:
        common.die(f"fio failed: {out.stderr[-500:]}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["read"]
    pct = job["clat_ns"]["percentile"]
    lat = {"p50_us": pct["50.000000"] / 1000, "p99_us": pct["99.000000"] / 1000, "iops": job["iops"]}
    results["fio_randread_4k"] = lat

    ratio = restore / copy
    targets = {
        "first byte, SIZE": {"seconds": ttfb["vm"], "target": "< 0.5 s", "met": ttfb["vm"] < 0.5},
        "first byte, sparse": {"seconds": ttfb["sparse"], "target": "< 2 s", "met": ttfb["sparse"] < 2},
        "nbdcopy vs restore": {"ratio": ratio, "target": ">= 0.9x", "met": ratio >= 0.9},
    }
    for cache, kib in rss.items():
        bound = common.parse_size(cache) // 1024 + 64 * 1024
        targets[f"peak RSS, --cache-size {cache}"] = {"kib": kib, "bound_kib": bound, "met": kib <= bound}

    print(f"\nsnapshot {common.human(size)} (standard base.img) and a sparse {common.human(sparse_size)} one\n")
    rows = [
        ["first byte, " + common.human(size), f"{ttfb['vm']:.3f} s", "< 0.5 s", "met" if targets["first byte, SIZE"]["met"] else "MISSED"],
        ["first byte, sparse " + common.human(sparse_size), f"{ttfb['sparse']:.3f} s", "< 2 s", "met" if targets["first byte, sparse"]["met"] else "MISSED"],
        ["restore -o /dev/null", f"{restore:.2f} s ({common.mb_per_s(size, restore):.0f} MB/s)", "", ""],
        ["nbdcopy URI null:", f"{copy:.2f} s ({common.mb_per_s(size, copy):.0f} MB/s)", "", ""],
        ["nbdcopy / restore speed", f"{ratio:.2f}x", ">= 0.9x", "met" if ratio >= 0.9 else "MISSED"],
        ["fio randread 4K p50 / p99", f"{lat['p50_us']:.0f} / {lat['p99_us']:.0f} us ({lat['iops']:.0f} IOPS)", "", ""],
    ]
    for cache, kib in rss.items():
        t = targets[f"peak RSS, --cache-size {cache}"]
        rows.append([f"peak RSS, --cache-size {cache}", f"{kib // 1024} MiB", f"<= {t['bound_kib'] // 1024} MiB",
                     "met" if t["met"] else "MISSED"])
    common.print_table(["measure", "value", "target", ""], rows)
    if load_warning:
        print(f"  note: {load_warning}")
    out = {
        "command": "access",
        "date": common.now_iso(),
        "size": size,
        "sparse_size": sparse_size,
        "repeat": args.repeat,
        "machine": machine,
        "images": common.image_summaries(stamps),
        "results": results,
        "targets": targets,
    }
    common.write_json(os.path.join(common.work_dir(), "results-access.json"), out)
    shutil.rmtree(repo, ignore_errors=True)
    return 0
