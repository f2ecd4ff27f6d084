"""`bench/run sync` and `bench/run sync-memory`.

sync: `diskdelta sync` next to `rsync -I --inplace --no-whole-file` (and
bdsync, diskrsync when they are on PATH), each making an old copy of
base.img on the "remote" side equal to new.img, through a real OpenSSH
sshd on 127.0.0.1 that it starts and stops itself (common.Sshd). Per tool it
measures wall seconds, bytes on the wire, and the peak RSS of both the
local process and the remote one; `--sweep` adds diskdelta's block sizes.

sync-memory: diskdelta alone, a 1 TiB sparse source (a few hundred MiB of
data) synced to a missing remote target and then again unchanged: peak RSS
of both ends is what matters.

Bytes on the wire are counted the same way for every tool: each ssh client
runs with `-o LogLevel=VERBOSE -E LOG`, so it appends its own "Transferred:
sent N, received M bytes" line (the TCP payload it wrote and read, i.e. the
encrypted stream including key exchange and packet overhead) to LOG, not to
stderr; every session of a run is summed. Next to it each tool's own figure
is kept (diskdelta's JSON, rsync's --stats).

The peak RSS of the remote side comes from a wrapper the remote shell runs
instead of the tool (`--remote-path` for diskdelta, `--rsync-path` for
rsync): `exec /usr/bin/time -a -o FILE -f '%M %U %S' TOOL "$@"`.
`PEERS` below holds every command line.
"""

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass

import common
from common import log

HOST = common.SSH_HOST
SSHD = common.SSHD
DEFAULT_SIZES = "1G,2G"
SWEEP_BLOCKS = "4K,16K,64K,256K,1M"
RSS_TARGET_MIB = 256  # the target, on either end
SPEED_TARGET = 3.0  # diskdelta at least 3x as fast as rsync
WIRE_TARGET = 0.6  # at most 0.6x rsync's bytes on the wire
# Wire bound: 1.2 x the zstd -1 size of the changed 4 KiB blocks + 1 MiB.
BOUND_FACTOR, BOUND_SLACK = 1.2, 1 << 20
REFERENCE_BLOCK = 4096

# The Debian packages of the programs this module needs (common.ensure_programs
# installs from this table).
common.APT_PACKAGES.update(
    {
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        SSHD: "openssh-server",
        "rsync": "rsync",
        "zstd": "zstd",
    }
)
REQUIRED = ["ssh", "ssh-keygen", SSHD, "rsync", "zstd", common.GNU_TIME]


# ------------------------------------------------------------------- sshd

# The daemon itself is common.Sshd (shared with `repo --remote`).
Sshd = common.Sshd


def _with_sshd(parent, body):
    """Runs body(sshd) with a started daemon that is killed afterwards,
    also on errors, Ctrl-C, SIGTERM and SIGHUP."""
    return common.with_server(lambda: Sshd(parent), body, "sshd")


# ------------------------------------------------------------------ tools


@dataclass
class Run:
    """What a tool's command line needs for one run."""

    sshd: Sshd
    source: str
    target: str  # path on the remote side (the same machine)
    prefix: str  # log path prefix of this run
    block: str = None  # diskdelta --block-size, None for its default

    @property
    def count_log(self):
        return self.prefix + ".ssh.log"

    @property
    def remote_time(self):
        return self.prefix + ".remote-time"

    @property
    def wrapper(self):
        return self.prefix + ".remote.sh"

    @property
    def ssh(self):
        return self.sshd.ssh_command(self.count_log)

    def remote(self, path):
        return f"{self.sshd.destination}:{path}"


@dataclass
class Tool:
    name: str
    program: str  # what must be installed (or be on PATH)
    version_argv: list
    # (Run) -> argv lists, timed together
    steps: object
    config: str
    # The program the remote side runs, wrapped for its peak RSS (None:
    # the tool cannot be told to run a wrapper).
    remote_program: str = None
    # (log text) -> dict of the tool's own figures
    self_report: object = None
    optional: bool = False  # only when found on PATH, never installed


def _diskdelta_steps(r):
    argv = [common.DISKDELTA, "sync", "-q", "--json", "-e", r.ssh, "--remote-path", r.wrapper]
    if r.block:
        argv += ["--block-size", r.block]
    return [argv + [r.source, r.remote(r.target)]]


def _diskdelta_report(text):
    start = text.find("{")
    if start < 0:
        return {}
    try:
        j, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return {}
    out = {
        k: j.get(k)
        for k in (
            "source_size",
            "changed_blocks",
            "changed_bytes",
            "payload_bytes",
            "wire_bytes_sent",
            "wire_bytes_received",
            "seconds",
            "verified",
        )
    }
    if out["wire_bytes_sent"] is not None and out["wire_bytes_received"] is not None:
        out["wire_bytes"] = out["wire_bytes_sent"] + out["wire_bytes_received"]
    return out


def _rsync_steps(r):
    return [
        [
            "rsync",
            "-I",
            "--inplace",
            "--no-whole-file",
            "--stats",
            "-e",
            r.ssh,
            f"--rsync-path={r.wrapper}",
            r.source,
            r.remote(r.target),
        ]
    ]


_RSYNC_STATS = {
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
    "Literal data": "literal_bytes",
    "Matched data": "matched_bytes",
}


def _rsync_report(text):
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _RSYNC_STATS:
            digits = value.strip().split(" ")[0].replace(",", "")
            if digits.isdigit():
                out[_RSYNC_STATS[key.strip()]] = int(digits)
    if "bytes_sent" in out and "bytes_received" in out:
        out["wire_bytes"] = out["bytes_sent"] + out["bytes_received"]
    return out


def _bdsync_steps(r):
    # bdsync's README: `bdsync "ssh host bdsync --server" LOCAL REMOTE > patch`,
    # then `ssh host "bdsync --patch=REMOTE" < patch`. Both steps are timed.
    patch = r.prefix + ".bdsync"
    remote = shlex.quote(f"{r.ssh} {r.sshd.destination} {r.wrapper} --server")
    return [
        ["sh", "-c", f"bdsync {remote} {r.source} {r.target} > {patch}"],
        [
            "sh",
            "-c",
            f"{r.ssh} {r.sshd.destination} "
            f"{shlex.quote(r.wrapper + ' --patch=' + r.target)} < {patch}",
        ],
    ]


def _diskrsync_steps(r):
    ssh_flags = " ".join(r.sshd.ssh_argv(r.count_log)[1:])
    # --no-compress: a plain image target (the default writes spgz).
    return [
        [
            "diskrsync",
            "--no-compress",
            f"--ssh-flags={ssh_flags}",
            r.source,
            r.remote(r.target),
        ]
    ]


PEERS = [
    Tool(
        name="diskdelta",
        program=common.DISKDELTA,
        version_argv=[common.DISKDELTA, "--version"],
        steps=_diskdelta_steps,
        config="sync -q --json -e SSH --remote-path WRAPPER (default 16 KiB blocks)",
        remote_program=common.DISKDELTA,
        self_report=_diskdelta_report,
    ),
    Tool(
        name="rsync",
        program="rsync",
        version_argv=["rsync", "--version"],
        steps=_rsync_steps,
        config="-I --inplace --no-whole-file --stats -e SSH --rsync-path=WRAPPER "
        "(block size: rsync's default, ~sqrt(size))",
        remote_program="rsync",
        self_report=_rsync_report,
    ),
    Tool(
        name="bdsync",
        program="bdsync",
        version_argv=["bdsync", "--help"],
        steps=_bdsync_steps,
        config="bdsync 'SSH HOST WRAPPER --server' SRC DST > patch; SSH HOST "
        "'WRAPPER --patch=DST' < patch (both timed)",
        remote_program="bdsync",
        optional=True,
    ),
    Tool(
        name="diskrsync",
        program="diskrsync",
        version_argv=["diskrsync", "--help"],
        steps=_diskrsync_steps,
        config="--no-compress --ssh-flags=... (remote RSS not measured: the remote "
        "command is fixed)",
        optional=True,
    ),
]
TOOL_NAMES = [t.name for t in PEERS]


def _write_wrapper(r, program):
    """The remote side runs this instead of PROGRAM: GNU time appends the
    peak RSS and CPU seconds of PROGRAM (and what it waited for) to
    r.remote_time."""
    real = common.which(program) or program
    with open(r.wrapper, "w") as f:
        f.write("#!/bin/sh\n# Written by bench/lib/sync.py: peak RSS of the remote side.\n")
        if common.which(common.GNU_TIME):
            f.write(f"exec {common.GNU_TIME} -a -o {r.remote_time} -f '%M %U %S' {real} \"$@\"\n")
        else:
            f.write(f'exec {real} "$@"\n')
    os.chmod(r.wrapper, 0o755)


def _remote_usage(path):
    """(peak RSS KiB, CPU s) over every line GNU time appended, or Nones.
    The remote process may still be exiting when the local one returns:
    wait a little for its line."""
    deadline = time.monotonic() + 3
    while True:
        rss, cpu, found = 0, 0.0, False
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0].isdigit():
                        found = True
                        rss = max(rss, int(parts[0]))
                        cpu += float(parts[1]) + float(parts[2])
        except OSError:
            pass
        if found or time.monotonic() > deadline:
            return (rss, cpu) if found else (None, None)
        time.sleep(0.05)


# ----------------------------------------------------------------- images


def _images(size):
    """base.img and new.img of that size, shared with `bench/run diff` and
    `bench/run repo` (see common.standard_images)."""
    return common.standard_images(size, ("base.img", "new.img"))


def _reference(base, new, scratch):
    """The changed 4 KiB blocks of new against base, and the size of those
    blocks (as they are in new) compressed by `zstd -1`."""
    blocks_file = os.path.join(scratch, "changed-blocks.bin")
    changed = 0
    chunk = 1 << 20
    with open(base, "rb") as a, open(new, "rb") as b, open(blocks_file, "wb") as out:
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if not x and not y:
                break
            if x == y:
                continue
            for off in range(0, max(len(x), len(y)), REFERENCE_BLOCK):
                bx, by = x[off : off + REFERENCE_BLOCK], y[off : off + REFERENCE_BLOCK]
                if bx != by:
                    changed += 1
                    out.write(by)
    with open(blocks_file, "rb") as f:
        res = subprocess.run(["zstd", "-1", "-c"], stdin=f, capture_output=True)
    common.remove(blocks_file)
    if res.returncode != 0:
        return {"changed_blocks": changed, "error": res.stderr.decode(errors="replace")}
    zstd_bytes = len(res.stdout)
    return {
        "block": REFERENCE_BLOCK,
        "changed_blocks": changed,
        "changed_bytes": changed * REFERENCE_BLOCK,
        "zstd1_bytes": zstd_bytes,
        "wire_bound_bytes": int(BOUND_FACTOR * zstd_bytes + BOUND_SLACK),
    }


def _prepare_run(base, new, target):
    """Outside the timed region: target := a sparse copy of base; both
    images read into the page cache; then `sync; sleep 1`, so that the
    writeback of the copy does not land in the timed run."""
    common.remove(target, _resume_state(target))
    subprocess.run(["cp", "--sparse=always", base, target], check=True)
    common.warm_cache([base, new])
    subprocess.run(["sync"], check=True)
    time.sleep(1)


def _resume_state(target):
    d, n = os.path.split(target)
    return os.path.join(d, f".{n}.diskdelta-sync")


# ---------------------------------------------------------------- running


def _measure_once(tool, r, verify):
    """Runs the tool's steps once; returns a dict for the JSON."""
    common.remove(r.count_log, r.remote_time)
    if tool.remote_program:
        _write_wrapper(r, tool.remote_program)
    steps, why = common.run_phase(tool.steps(r), r.prefix)
    remote_rss, remote_cpu = _remote_usage(r.remote_time) if tool.remote_program else (None, None)
    counted = common.ssh_counted(r.count_log)
    seconds = sum(m.seconds for m in steps)
    local_cpu = sum(m.cpu_seconds for m in steps)
    # Other processes' load: machine-wide busy time minus both ends' CPU
    # (sshd's own encryption on the server side still counts as "other").
    others = [m.other_cores * m.seconds for m in steps if m.other_cores is not None]
    other = None
    if others and seconds > 0:
        other = max(0.0, (sum(others) - (remote_cpu or 0.0)) / seconds)
    own = {}
    if tool.self_report:
        for m in steps:
            with open(m.log_path, errors="replace") as f:
                own.update(tool.self_report(f.read()))
    out = {
        "steps": [
            {
                "argv": m.argv,
                "seconds": round(m.seconds, 4),
                "cpu_seconds": round(m.cpu_seconds, 2),
                "max_rss_kib": m.max_rss_kib,
                "log": m.log_path,
            }
            for m in steps
        ],
        "seconds": round(seconds, 4),
        "local_cpu_seconds": round(local_cpu, 2),
        "local_rss_kib": max((m.max_rss_kib for m in steps), default=None),
        "remote_cpu_seconds": None if remote_cpu is None else round(remote_cpu, 2),
        "remote_rss_kib": remote_rss,
        "other_cores": None if other is None else round(other, 2),
        "ssh_sent": counted[0] if counted else None,
        "ssh_received": counted[1] if counted else None,
        "ssh_sessions": counted[2] if counted else None,
        "wire_bytes": counted[0] + counted[1] if counted else None,
        "self_reported": own,
        "status": "ok",
        "reason": None,
    }
    if why:
        out.update(status="FAILED", reason=why)
        return out
    if tool.name == "diskdelta" and own.get("verified") is False:
        out.update(status="FAILED", reason="diskdelta reported verified: false")
        return out
    same = verify()
    if same is not True:
        out.update(
            status="FAILED",
            reason="target differs from the source after the sync" if same is False else same,
        )
    return out


def _summarize(runs):
    """Per tool and size: the fastest run counts for seconds, the largest
    RSS of any run for RSS; wire bytes are those of the fastest run."""
    ok = [x for x in runs if x["status"] == "ok"]
    if not runs:
        return {"status": "skipped"}
    bad = [x for x in runs if x["status"] != "ok"]
    best = min(ok or runs, key=lambda x: x["seconds"])

    def peak(key):
        values = [x[key] for x in runs if x.get(key) is not None]
        return max(values) if values else None

    return {
        "status": "ok" if not bad else "FAILED",
        "reason": bad[0]["reason"] if bad else None,
        "seconds": best["seconds"],
        "seconds_all": [x["seconds"] for x in runs],
        "cpu_seconds": round(best["local_cpu_seconds"] + (best["remote_cpu_seconds"] or 0), 2),
        "other_cores": best["other_cores"],
        "wire_bytes": best["wire_bytes"],
        "wire_bytes_all": [x["wire_bytes"] for x in runs],
        "self_wire_bytes": best["self_reported"].get("wire_bytes"),
        "self_reported": best["self_reported"],
        "local_rss_kib": peak("local_rss_kib"),
        "remote_rss_kib": peak("remote_rss_kib"),
        "runs": runs,
    }


def _prepare(tools, no_build):
    """Installs what is missing and builds; returns {tool name: skip reason}.
    Dies when ssh, sshd or rsync cannot be had."""
    return common.prepare(
        tools,
        no_build,
        subcommands=("sync",),
        extra=REQUIRED,
        required=("ssh", "ssh-keygen", SSHD),
        missing_time_note=" (no remote RSS)",
    )


def _versions(tools, skipped):
    out = common.tool_versions(tools, skipped)
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    out["ssh"] = {"version": (ssh.stderr or ssh.stdout).strip(), "config": "see sshd_config"}
    return out


# ------------------------------------------------------------------- sync


def add_arguments(sub):
    p = sub.add_parser(
        "sync",
        help="diskdelta sync vs rsync (bdsync, diskrsync) through sshd on 127.0.0.1",
        description="Times syncing new.img onto a copy of base.img over ssh to 127.0.0.1.",
    )
    p.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"comma-separated base image sizes, K/M/G suffixes (default {DEFAULT_SIZES})",
    )
    p.add_argument("--size", help="one size only (overrides --sizes)")
    p.add_argument(
        "--tools", default=",".join(TOOL_NAMES), help=f"subset of {','.join(TOOL_NAMES)}"
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="runs per tool and size; the fastest counts"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also run diskdelta alone at each of --block-sizes, at the largest size",
    )
    p.add_argument(
        "--block-sizes", default=SWEEP_BLOCKS, help=f"block sizes of --sweep ({SWEEP_BLOCKS})"
    )
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument(
        "--images",
        choices=("synthetic", "real"),
        default="synthetic",
        help="generated images at --sizes (default), or the real set: ext4 and xfs of system "
        "files, night 6 synced onto night 7 (bench/lib/real_images.py; needs root)",
    )
    p.set_defaults(func=cmd_sync)

    m = sub.add_parser(
        "sync-memory",
        help="diskdelta sync peak RSS (both ends) on a 1 TiB sparse source",
        description="Peak RSS of both ends of diskdelta sync: a 1 TiB sparse source to a "
        "missing remote target, then again unchanged.",
    )
    m.add_argument("--size", default="1T", help="source size (default 1T)")
    m.add_argument(
        "--data", default="256M", help="data written at scattered offsets (default 256M)"
    )
    m.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    m.set_defaults(func=cmd_sync_memory)


def _parse_sizes(text):
    try:
        sizes = sorted({common.parse_size(s) for s in text.split(",") if s.strip()})
    except ValueError as e:
        common.die(str(e), 2)
    if not sizes or sizes[0] < 1 << 20:
        common.die("sizes must be at least 1M", 2)
    return sizes


def cmd_sync(args):
    sizes = _parse_sizes(args.size or args.sizes)
    if args.repeat < 1:
        common.die("--repeat must be at least 1", 2)
    names = common.parse_list(args.tools, TOOL_NAMES, "tools")
    blocks = []
    for b in args.block_sizes.split(","):
        if b.strip() and b.strip() not in blocks:
            blocks.append(b.strip())
    for b in blocks:
        try:
            common.parse_size(b)
        except ValueError as e:
            common.die(f"--block-sizes: {e}", 2)
    if args.sweep and "diskdelta" not in names:
        common.die("--sweep needs diskdelta in --tools", 2)
    tools = [t for t in PEERS if t.name in names]
    machine = common.machine_info()
    skipped = _prepare(tools, args.no_build)

    work = common.work_dir()
    scratch = os.path.join(work, "sync", "run")
    logs = os.path.join(scratch, "logs")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(logs)

    def body(sshd):
        return _sync_body(args, sizes, tools, blocks, skipped, machine, sshd, scratch, logs)

    return _with_sshd(scratch, body)


def _sync_body(args, sizes, tools, blocks, skipped, machine, sshd, scratch, logs):
    report = {
        "command": "sync",
        "date": common.now_iso(),
        "sizes": sizes,
        "repeat": args.repeat,
        "machine": machine,
        "wire_counting": "ssh -o LogLevel=VERBOSE -E LOG: sum of the clients' 'Transferred: "
        "sent N, received M bytes' (TCP payload, encrypted, with key exchange)",
        "tools": _versions(tools, skipped),
        "per_size": [],
        "sweep": None,
        "logs": logs,
    }
    for t in tools:
        if t.name in skipped:
            print(f"{t.name}: {skipped[t.name]}")
    pairs = [None] * len(sizes)
    if args.images == "real":
        import real_images

        _directory, paths, stamps = real_images.real_images(2 << 30, ("ext4", "xfs"))
        sizes = [2 << 30] * 2
        pairs = [
            (f"{fs} night 6->7", paths[fs][6], paths[fs][7],
             {k: v for k, v in stamps.items() if k in (f"{fs}-6.img", f"{fs}-7.img")})
            for fs in ("ext4", "xfs")
        ]
    report["image_set"] = args.images
    for size, pair in zip(sizes, pairs):
        report["per_size"].append(
            _sync_size(size, tools, skipped, args.repeat, sshd, scratch, logs, pair)
        )
        _print_size(report["per_size"][-1], report)
    if args.sweep and "diskdelta" not in skipped:
        report["sweep"] = _sweep(max(sizes), blocks, args.repeat, sshd, scratch, logs)
        _print_sweep(report["sweep"])
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print("tools:")
    for name, t in report["tools"].items():
        print(f"  {name}: {t['version'] or '-'}; {t['config']}")
    print(f"logs: {logs}")
    common.write_json(os.path.join(common.work_dir(), "results-sync.json"), report)
    failed = [
        s for s in report["per_size"] if s["results"].get("diskdelta", {}).get("status") == "FAILED"
    ]
    if report["sweep"]:
        failed += [x for x in report["sweep"]["results"] if x["status"] == "FAILED"]
    return 1 if failed else 0


def _sync_size(size, tools, skipped, repeat, sshd, scratch, logs, pair=None):
    """pair: (label, base, new, stamps) of the real image set, or None for
    the synthetic base.img -> new.img of that size."""
    if pair:
        label, base, new, stamps = pair
        label = label.replace(" ", "-").replace(">", "")
    else:
        label = common.size_label(size)
        directory, stamps = _images(size)
        base, new = os.path.join(directory, "base.img"), os.path.join(directory, "new.img")
    log(f"{label}: finding the changed 4 KiB blocks and their zstd -1 size")
    common.warm_cache([base, new])
    reference = _reference(base, new, scratch)
    busy, load_warning = common.load_check()
    runs = {t.name: [] for t in tools if t.name not in skipped}
    for i in range(repeat):
        # Repeats outside, tools inside: drift over time hits every tool.
        for t in tools:
            if t.name in skipped:
                continue
            target = os.path.join(scratch, f"target-{t.name}.img")
            log(f"{label}: {t.name} run {i + 1}/{repeat}: resetting the target")
            _prepare_run(base, new, target)
            r = Run(sshd, new, target, os.path.join(logs, f"{label}-{t.name}-{i}"))
            x = _measure_once(t, r, lambda: common.same_content(target, new))
            common.remove(target, _resume_state(target))
            log(
                f"{label}: {t.name}: {x['status']} {x['seconds']:.2f} s, "
                f"wire {x['wire_bytes']} bytes" + (f" ({x['reason']})" if x["reason"] else "")
            )
            runs[t.name].append(x)
    results = {}
    for t in tools:
        if t.name in skipped:
            results[t.name] = {"status": "skipped", "reason": skipped[t.name]}
        else:
            results[t.name] = _summarize(runs[t.name])
    return {
        "size": size,
        "pair": [os.path.basename(base), os.path.basename(new)],
        "images": common.image_summaries(stamps),
        "reference": reference,
        "other_cores_before": None if busy is None else round(busy, 2),
        "load_warning": load_warning,
        "results": results,
        "targets": _targets(results, reference),
    }


def _targets(results, reference):
    """The issue's targets for diskdelta, each with its value and whether it
    is met (None when a value is missing)."""
    dd, rs = results.get("diskdelta", {}), results.get("rsync", {})
    out = []
    if dd.get("status") != "ok":
        return out

    def div(a, b):
        return a / b if a is not None and b else None

    if rs.get("status") == "ok":
        speed = div(rs["seconds"], dd["seconds"])
        out.append(
            {
                "name": "speed vs rsync",
                "value": speed,
                "target": f">= {SPEED_TARGET:g}x",
                "met": None if speed is None else speed >= SPEED_TARGET,
            }
        )
        wire = div(dd["wire_bytes"], rs["wire_bytes"])
        out.append(
            {
                "name": "wire vs rsync",
                "value": wire,
                "target": f"<= {WIRE_TARGET:g}x",
                "met": None if wire is None else wire <= WIRE_TARGET,
            }
        )
    bound = reference.get("wire_bound_bytes")
    out.append(
        {
            "name": "wire vs bound",
            "value": dd["wire_bytes"],
            "bound": bound,
            "target": f"<= {BOUND_FACTOR:g} x zstd -1 of changed 4K blocks + 1 MiB",
            "met": None if bound is None or dd["wire_bytes"] is None else dd["wire_bytes"] <= bound,
        }
    )
    rss = [x for x in (dd["local_rss_kib"], dd["remote_rss_kib"]) if x is not None]
    out.append(
        {
            "name": "peak RSS",
            "value": max(rss) if rss else None,
            "target": f"<= {RSS_TARGET_MIB} MiB on either end",
            "met": None if len(rss) < 2 else max(rss) <= RSS_TARGET_MIB * 1024,
        }
    )
    return out


def _sweep(size, blocks, repeat, sshd, scratch, logs):
    label = common.size_label(size)
    directory, _ = _images(size)
    base, new = os.path.join(directory, "base.img"), os.path.join(directory, "new.img")
    tool = next(t for t in PEERS if t.name == "diskdelta")
    common.load_check()
    runs = {b: [] for b in blocks}
    for i in range(repeat):
        for b in blocks:
            target = os.path.join(scratch, "target-sweep.img")
            log(f"sweep {label}: block {b} run {i + 1}/{repeat}")
            _prepare_run(base, new, target)
            r = Run(sshd, new, target, os.path.join(logs, f"sweep-{label}-{b}-{i}"), block=b)
            x = _measure_once(tool, r, lambda: common.same_content(target, new))
            common.remove(target, _resume_state(target))
            log(f"sweep {label}: block {b}: {x['status']} {x['seconds']:.2f} s")
            runs[b].append(x)
    return {
        "size": size,
        "repeat": repeat,
        "results": [dict(block=b, **_summarize(runs[b])) for b in blocks],
    }


# ----------------------------------------------------------------- output


def _mb(n):
    return None if n is None else f"{n / 1e6:.2f}"


def _mib(kib):
    return None if kib is None else f"{kib / 1024:.0f}"


def _print_size(s, report):
    size, ref, results = s["size"], s["reference"], s["results"]
    m = report["machine"]
    print()
    old_name, new_name = s.get("pair", ["base.img", "new.img"])
    print(
        f"sync {new_name} onto a copy of {old_name} through sshd on {HOST}, "
        f"{common.human(size)} ({common.size_label(size)})"
    )
    for name, st in s["images"].items():
        print(f"  {name}: {st.get('summary', '')}")
    if "zstd1_bytes" in ref:
        print(
            f"  changed 4 KiB blocks: {ref['changed_blocks']:,} ({_mb(ref['changed_bytes'])} MB); "
            f"zstd -1 of them: {_mb(ref['zstd1_bytes'])} MB; wire bound 1.2 x that + 1 MiB = "
            f"{_mb(ref['wire_bound_bytes'])} MB"
        )
    print(
        f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; best of {report['repeat']} "
        "run(s) (all runs' seconds in brackets); MB = 10^6 bytes"
    )
    print(
        "  wire MB: counted by ssh (TCP payload both ways); own MB: the tool's own "
        "count (diskdelta --json, rsync --stats)"
    )
    print(
        "  CPU s: local process tree + remote tool (not sshd); others: cores busy "
        "with anything else (noise)"
    )
    print()
    rs_wire = results.get("rsync", {}).get("wire_bytes")
    rows, footnotes = [], []
    for name, r in results.items():
        status = r["status"]
        if r.get("reason"):
            if r["reason"] not in footnotes:
                footnotes.append(r["reason"])
            status += f" [{footnotes.index(r['reason']) + 1}]"
        if r["status"] == "skipped":
            rows.append([name] + [None] * 9 + [status])
            continue
        ratio = None
        if r.get("wire_bytes") and rs_wire:
            ratio = f"{r['wire_bytes'] / rs_wire:.3f}x"
        all_s = ", ".join(f"{x:.2f}" for x in r["seconds_all"])
        rows.append(
            [
                name,
                common.fmt(r["seconds"], ".2f"),
                f"[{all_s}]",
                _mb(r["wire_bytes"]),
                ratio,
                _mb(r["self_wire_bytes"]),
                _mib(r["local_rss_kib"]),
                _mib(r["remote_rss_kib"]),
                common.fmt(r["cpu_seconds"], ".2f"),
                common.fmt(r["other_cores"], ".1f"),
                status,
            ]
        )
    common.print_table(
        [
            "tool",
            "seconds",
            "runs",
            "wire MB",
            "vs rsync",
            "own MB",
            "local RSS MiB",
            "remote RSS MiB",
            "CPU s",
            "others",
            "status",
        ],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")
    print()
    for t in s["targets"]:
        met = {True: "met", False: "MISSED", None: "unknown"}[t["met"]]
        if t["name"] == "speed vs rsync":
            value = common.fmt(t["value"], ".2f")
            print(f"  diskdelta speed vs rsync: {value}x faster (target {t['target']}): {met}")
        elif t["name"] == "wire vs rsync":
            value = common.fmt(t["value"], ".3f")
            print(f"  diskdelta wire vs rsync: {value}x (target {t['target']}): {met}")
        elif t["name"] == "wire vs bound":
            print(
                f"  diskdelta wire {_mb(t['value'])} MB vs bound {_mb(t['bound'])} MB "
                f"(1.2 x {_mb(ref.get('zstd1_bytes'))} MB + 1 MiB): {met}"
            )
        elif t["name"] == "peak RSS":
            dd = results["diskdelta"]
            print(
                f"  diskdelta peak RSS: local {_mib(dd['local_rss_kib'])} MiB, remote "
                f"{_mib(dd['remote_rss_kib'])} MiB (target {t['target']}): {met}"
            )
    if s.get("load_warning"):
        print(f"  note: {s['load_warning']}")


def _print_sweep(sweep):
    print()
    print(
        f"diskdelta sync block-size sweep, {common.human(sweep['size'])} image, best of "
        f"{sweep['repeat']} run(s); changed/payload MB from diskdelta's JSON"
    )
    print()
    rows = []
    for r in sweep["results"]:
        own = r.get("self_reported", {})
        rows.append(
            [
                r["block"],
                common.fmt(r.get("seconds"), ".2f"),
                _mb(own.get("changed_bytes")),
                _mb(own.get("payload_bytes")),
                _mb(r.get("wire_bytes")),
                _mb(r.get("self_wire_bytes")),
                _mib(r.get("local_rss_kib")),
                _mib(r.get("remote_rss_kib")),
                common.fmt(r.get("cpu_seconds"), ".2f"),
                common.fmt(r.get("other_cores"), ".1f"),
                r["status"] + (f" ({r['reason']})" if r.get("reason") else ""),
            ]
        )
    common.print_table(
        [
            "block",
            "seconds",
            "changed MB",
            "payload MB",
            "wire MB",
            "own MB",
            "local RSS MiB",
            "remote RSS MiB",
            "CPU s",
            "others",
            "status",
        ],
        rows,
    )


# ------------------------------------------------------------ sync-memory


def cmd_sync_memory(args):
    try:
        size = common.parse_size(args.size)
        data = common.parse_size(args.data)
    except ValueError as e:
        common.die(str(e), 2)
    extent = 4 << 20
    if data < extent or size < 4 * data:
        common.die("--data must be at least 4M and at most a quarter of --size", 2)
    tool = next(t for t in PEERS if t.name == "diskdelta")
    machine = common.machine_info()
    skipped = _prepare([tool], args.no_build)
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")
    work = os.path.join(common.work_dir(), "sync-memory")
    os.makedirs(work, exist_ok=True)
    source = os.path.join(work, "src.img")
    layout = common.sparse_source(source, size, data // extent, extent, seed=21)
    scratch = os.path.join(work, "run")
    logs = os.path.join(scratch, "logs")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(logs)

    def body(sshd):
        target = os.path.join(scratch, "target.img")
        common.remove(target, _resume_state(target))
        common.warm_sparse(source)
        _, load_warning = common.load_check()
        phases = []
        for phase in ("missing target", "unchanged"):
            log(f"sync-memory: {phase}")
            r = Run(sshd, source, target, os.path.join(logs, phase.replace(" ", "-")))
            x = _measure_once(tool, r, lambda: common.sparse_equal(source, target))
            x["phase"] = phase
            x["target_allocated"] = common.allocated(target) if os.path.exists(target) else None
            phases.append(x)
            log(f"sync-memory: {phase}: {x['status']} {x['seconds']:.2f} s")
            if x["status"] != "ok":
                break
        common.remove(target, _resume_state(target))
        report = {
            "command": "sync-memory",
            "date": common.now_iso(),
            "size": size,
            "source": layout,
            "machine": machine,
            "load_warning": load_warning,
            "tool": common.tool_versions([tool], {})["diskdelta"],
            "rss_target_mib": RSS_TARGET_MIB,
            "phases": phases,
            "logs": logs,
        }
        _print_memory(report)
        common.write_json(os.path.join(common.work_dir(), "results-sync-memory.json"), report)
        return 0 if all(p["status"] == "ok" for p in phases) and len(phases) == 2 else 1

    return _with_sshd(scratch, body)


def _print_memory(report):
    src = report["source"]
    print()
    print(
        f"diskdelta sync of a {common.human(report['size'])} sparse source "
        f"({len(src['offsets'])} extents of {common.human(src['extent'])} random data = "
        f"{common.human(src['data_bytes'])}) through sshd on {HOST}"
    )
    print(
        "  wire MB: counted by ssh; own MB: diskdelta --json; MB = 10^6 bytes; "
        f"target: peak RSS <= {report['rss_target_mib']} MiB on either end"
    )
    print()
    rows = []
    for p in report["phases"]:
        own = p["self_reported"]
        rows.append(
            [
                p["phase"],
                common.fmt(p["seconds"], ".2f"),
                _mb(own.get("changed_bytes")),
                _mb(p["wire_bytes"]),
                _mb(own.get("wire_bytes")),
                _mib(p["local_rss_kib"]),
                _mib(p["remote_rss_kib"]),
                common.fmt(p["local_cpu_seconds"] + (p["remote_cpu_seconds"] or 0), ".2f"),
                None if p["target_allocated"] is None else common.human(p["target_allocated"]),
                str(own.get("verified")),
                p["status"] + (f" ({p['reason']})" if p.get("reason") else ""),
            ]
        )
    common.print_table(
        [
            "phase",
            "seconds",
            "changed MB",
            "wire MB",
            "own MB",
            "local RSS MiB",
            "remote RSS MiB",
            "CPU s",
            "target alloc",
            "verified",
            "status",
        ],
        rows,
    )
    rss = [
        x
        for p in report["phases"]
        for x in (p["local_rss_kib"], p["remote_rss_kib"])
        if x is not None
    ]
    if rss:
        met = "met" if max(rss) <= RSS_TARGET_MIB * 1024 else "MISSED"
        print(f"  peak RSS, either end, either phase: {max(rss) / 1024:.0f} MiB: {met}")
    if report.get("load_warning"):
        print(f"  note: {report['load_warning']}")
    print(f"logs: {report['logs']}")
