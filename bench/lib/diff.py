"""`bench/run diff` and `bench/run diff-memory`.

diff: diskdelta diff/apply side by side with xdelta3, rdiff (librsync) and
zstd --patch-from on generated images, two scenarios:

  changed  base.img -> new.img:   ~2% of the 4 KiB blocks rewritten in 64 KiB clusters
  grown    base.img -> grown.img: new.img plus 64 MiB of new data appended

diff-memory: diskdelta alone on a 16 GiB sparse pair, peak RSS only matters.

How each peer is configured, and why, is in bench/README.md; PEERS below is
the one place where the command lines are.
"""

import os
import shutil
from dataclasses import dataclass, field

import common
from common import log


@dataclass
class Tool:
    name: str
    program: str  # what must be installed
    version_argv: list
    delta_name: str
    # (base, new, delta, scratch) -> argv lists, timed together as "diff"
    diff: object
    # (base, delta, out, scratch) -> argv lists, timed together as "apply"
    apply: object
    config: str  # one line for the report
    notes: object = None  # (diff log text) -> list of notes
    # (log text of a failed command) -> reason if the failure is a documented
    # limit of the tool rather than a bug; reported as "unsupported"
    unsupported: object = None
    side_files: list = field(default_factory=list)  # scratch files to report


def _zstd_unsupported(text):
    if "larger than 2 GB" in text:
        return (
            "zstd --patch-from refuses inputs over 2 GiB (\"Can't handle files larger "
            "than 2 GB\")"
        )
    return None


def _zstd_notes(text):
    notes = []
    if "Max window log exceeded" in text or "exceeds window" in text:
        notes.append(
            "zstd: base + new exceed its largest window (--long=31, 2 GiB); a block's old "
            "copy lies one base-size back, out of reach, so few matches are found"
        )
    return notes


PEERS = [
    Tool(
        name="diskdelta",
        program=common.DISKDELTA,
        version_argv=[common.DISKDELTA, "--version"],
        delta_name="d.ddelta",
        diff=lambda base, new, delta, s: [
            [common.DISKDELTA, "diff", "-q", base, new, "-o", delta]
        ],
        apply=lambda base, delta, out, s: [
            [common.DISKDELTA, "apply", "-q", delta, "--base", base, "-o", out]
        ],
        config="defaults: 4 KiB blocks, zstd level 3, one compression thread per core",
    ),
    Tool(
        name="xdelta3",
        program="xdelta3",
        version_argv=["xdelta3", "-V"],
        delta_name="d.xd3",
        diff=lambda base, new, delta, s: [
            ["xdelta3", "-e", "-f", "-S", "djw", "-s", base, new, delta]
        ],
        apply=lambda base, delta, out, s: [["xdelta3", "-d", "-f", "-s", base, delta, out]],
        config="-S djw (the default lzma secondary compression: same delta, 2-3x slower "
        "on new data); default -B 64 MiB source window and level 3",
    ),
    Tool(
        name="rdiff",
        program="rdiff",
        version_argv=["rdiff", "--version"],
        delta_name="d.rdiff",
        diff=lambda base, new, delta, s: [
            ["rdiff", "-b", "4096", "signature", base, os.path.join(s, "sig")],
            ["rdiff", "delta", os.path.join(s, "sig"), new, delta],
        ],
        apply=lambda base, delta, out, s: [["rdiff", "patch", base, delta, out]],
        config="-b 4096 (the default block is sqrt(size), ~45 KiB at 2 GiB: same speed, "
        "~1.7x larger delta); signature + delta timed as diff",
        side_files=["sig"],
    ),
    Tool(
        name="zstd",
        program="zstd",
        version_argv=["zstd", "--version"],
        delta_name="d.zst",
        diff=lambda base, new, delta, s: [
            ["zstd", "-f", "--long=31", f"--patch-from={base}", new, "-o", delta]
        ],
        apply=lambda base, delta, out, s: [
            ["zstd", "-d", "-f", "--long=31", f"--patch-from={base}", delta, "-o", out]
        ],
        config="--patch-from, level 3, --long=31 (the largest window; decompression "
        "needs it too)",
        notes=_zstd_notes,
        unsupported=_zstd_unsupported,
    ),
]
TOOL_NAMES = [t.name for t in PEERS]

SCENARIOS = {
    "changed": ("new.img", "~2% of 4 KiB blocks rewritten in 64 KiB clusters"),
    "grown": ("grown.img", "new.img plus 64 MiB of new data appended"),
}
# --images real: file systems of system files, night N-1 -> night N
# (bench/lib/real_images.py). name -> (fs, night)
REAL_SCENARIOS = {
    "ext4-1": ("ext4", 1),
    "ext4-7": ("ext4", 7),
    "xfs-1": ("xfs", 1),
    "xfs-7": ("xfs", 7),
}
REAL_WHAT = (
    "night {n}: {fs} of system files after package upgrades, appended logs, an SQLite "
    "database updated in place, a tree deleted and another added, fstrim"
)


def add_arguments(sub):
    p = sub.add_parser(
        "diff",
        help="diskdelta diff/apply vs xdelta3, rdiff, zstd --patch-from",
        description="Times diff and apply of diskdelta and its peers on generated images.",
    )
    p.add_argument("--size", default="2G", help="base image size, K/M/G suffixes (default 2G)")
    p.add_argument(
        "--tools", default=",".join(TOOL_NAMES), help=f"subset of {','.join(TOOL_NAMES)}"
    )
    p.add_argument(
        "--scenarios",
        help=f"subset of {','.join(SCENARIOS)} (synthetic) or {','.join(REAL_SCENARIOS)} (real)",
    )
    p.add_argument(
        "--images",
        choices=("synthetic", "real"),
        default="synthetic",
        help="generated images (default) or the real set: ext4/xfs of system files, "
        "changed night by night (bench/lib/real_images.py; needs root)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per tool and scenario; the fastest counts"
    )
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    import series

    series.add_series_arguments(p)
    p.set_defaults(func=cmd_diff)

    m = sub.add_parser(
        "diff-memory",
        help="diskdelta diff/apply peak RSS on a 16 GiB sparse image pair",
        description="Peak RSS of diskdelta diff and apply on a large, mostly sparse pair.",
    )
    m.add_argument("--size", default="16G", help="image size (default 16G)")
    m.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    m.set_defaults(func=cmd_diff_memory)


# ------------------------------------------------------------------ setup


def _prepare(tools, no_build):
    """Installs peers and builds; returns {tool name: skip reason}."""
    return common.prepare(tools, no_build, subcommands=("diff", "apply"))


# ------------------------------------------------------------------- diff


def cmd_diff(args):
    if args.series:
        import series

        return series.cmd_series(args)
    try:
        size = common.parse_size(args.size)
    except ValueError as e:
        common.die(str(e), 2)
    if size < 1 << 20:
        common.die("--size must be at least 1M", 2)
    if args.repeat < 1:
        common.die("--repeat must be at least 1", 2)
    names = common.parse_list(args.tools, TOOL_NAMES, "tools")
    known = REAL_SCENARIOS if args.images == "real" else SCENARIOS
    scenarios = common.parse_list(args.scenarios or ",".join(known), list(known), "scenarios")
    tools = [t for t in PEERS if t.name in names]

    work = common.work_dir()
    machine = common.machine_info()
    skipped = _prepare(tools, args.no_build)

    pairs = {}  # scenario -> (base, new, description)
    if args.images == "real":
        import real_images

        filesystems = sorted({REAL_SCENARIOS[x][0] for x in scenarios})
        _directory, paths, images = real_images.real_images(size, filesystems)
        for x in scenarios:
            fs, n = REAL_SCENARIOS[x]
            pairs[x] = (paths[fs][n - 1], paths[fs][n], REAL_WHAT.format(n=n, fs=fs))
    else:
        names = ["base.img"] + [SCENARIOS[x][0] for x in scenarios]
        directory, images = common.standard_images(size, names)
        for x in scenarios:
            new_name, what = SCENARIOS[x]
            pairs[x] = (
                os.path.join(directory, "base.img"),
                os.path.join(directory, new_name),
                f"base.img -> {new_name} ({what})",
            )
    busy_before, load_warning = common.load_check()

    scratch_root = os.path.join(work, "diff")
    logs = os.path.join(scratch_root, "logs")
    shutil.rmtree(scratch_root, ignore_errors=True)
    os.makedirs(logs)

    results = []
    for scenario in scenarios:
        base, new, _what = pairs[scenario]
        common.warm_cache([base, new])
        new_size = os.stat(new).st_size
        for tool in tools:
            r = {"scenario": scenario, "tool": tool.name, "new_bytes": new_size, "notes": []}
            results.append(r)
            if tool.name in skipped:
                r.update(status="skipped", reason=skipped[tool.name])
                continue
            log(f"{scenario}: {tool.name} ({args.repeat} run{'s' * (args.repeat > 1)})")
            _measure(tool, scenario, base, new, scratch_root, logs, args.repeat, r)
            log(
                f"{scenario}: {tool.name}: {r['status']}"
                + (f" ({r['reason']})" if r.get("reason") else "")
            )

    report = {
        **common.report_header("diff", size, args.repeat, machine, busy_before, load_warning),
        "images": common.image_summaries(images),
        "image_set": args.images,
        "scenarios": {x: pairs[x][2] for x in scenarios},
        "tools": common.tool_versions(tools, skipped),
        "results": results,
        "ratios": _ratios(results),
        "logs": logs,
    }
    _print_report(report, scenarios, tools)
    common.write_json(os.path.join(work, "results-diff.json"), report)
    # A peer's failure is one of the results; diskdelta's fails the command.
    failed = [r for r in results if r["status"] == "FAILED" and r["tool"] == "diskdelta"]
    return 1 if failed else 0


def _measure(tool, scenario, base, new, scratch_root, logs, repeat, r):
    scratch = os.path.join(scratch_root, f"{scenario}-{tool.name}")
    os.makedirs(scratch, exist_ok=True)
    delta = os.path.join(scratch, tool.delta_name)
    out = os.path.join(scratch, "out.img")
    diff_phase, apply_phase = common.Phase(), common.Phase()
    r.update(status="ok", reason=None)
    for i in range(repeat):
        # Leftovers could make a failing tool look like it worked.
        for name in os.listdir(scratch):
            common.remove(os.path.join(scratch, name))
        prefix = os.path.join(logs, f"{scenario}-{tool.name}-{i}")
        steps, why = common.run_phase(tool.diff(base, new, delta, scratch), prefix + "-diff")
        diff_phase.add_run(steps)
        if tool.notes:
            for m in steps:
                with open(m.log_path, errors="replace") as f:
                    for n in tool.notes(f.read()):
                        if n not in r["notes"]:
                            r["notes"].append(n)
        if why:
            _failed(tool, r, steps, f"diff: {why}")
            break
        r["delta_bytes"] = common.file_size(delta)
        for side in tool.side_files:
            r[f"{side}_bytes"] = common.file_size(os.path.join(scratch, side))
        steps, why = common.run_phase(tool.apply(base, delta, out, scratch), prefix + "-apply")
        apply_phase.add_run(steps)
        if why:
            _failed(tool, r, steps, f"apply: {why}")
            break
        same = common.same_content(out, new)
        if same is not True:
            r.update(
                status="FAILED",
                reason="apply: output differs from the new image" if same is False else same,
            )
            break
        r["output_allocated"] = common.allocated(out)
        common.remove(out)
    shutil.rmtree(scratch, ignore_errors=True)
    r["diff"] = diff_phase.to_json()
    r["apply"] = apply_phase.to_json()
    r["diff"]["mb_per_s"] = _round(common.mb_per_s(r["new_bytes"], diff_phase.seconds))
    r["apply"]["mb_per_s"] = _round(common.mb_per_s(r["new_bytes"], apply_phase.seconds))


def _failed(tool, r, steps, reason):
    """Marks r FAILED, or unsupported when the tool says it cannot do this."""
    if tool.unsupported:
        with open(steps[-1].log_path, errors="replace") as f:
            limit = tool.unsupported(f.read())
        if limit:
            r.update(status="unsupported", reason=limit)
            return
    r.update(status="FAILED", reason=reason)


def _round(x, digits=1):
    return None if x is None else round(x, digits)


def _ratios(results):
    """diskdelta against each peer that finished: speed ratios > 1 mean
    diskdelta is faster, a size ratio < 1 means its delta is smaller."""
    ratios = []
    by_key = {(r["scenario"], r["tool"]): r for r in results}
    for r in results:
        if r["tool"] == "diskdelta":
            continue
        dd = by_key.get((r["scenario"], "diskdelta"))
        if not dd or dd["status"] != "ok" or r["status"] != "ok":
            continue

        def div(a, b):
            return round(a / b, 3) if a and b else None

        ratios.append(
            {
                "scenario": r["scenario"],
                "peer": r["tool"],
                "diff_speed": div(r["diff"]["seconds"], dd["diff"]["seconds"]),
                "delta_size": div(dd.get("delta_bytes"), r.get("delta_bytes")),
                "apply_speed": div(r["apply"]["seconds"], dd["apply"]["seconds"]),
                "diff_rss": div(dd["diff"]["max_rss_kib"], r["diff"]["max_rss_kib"]),
                "apply_rss": div(dd["apply"]["max_rss_kib"], r["apply"]["max_rss_kib"]),
            }
        )
    return ratios


def _mib(kib):
    return None if kib is None else kib / 1024


def _print_report(report, scenarios, tools):
    images = report["images"]
    print()
    print(f"diskdelta diff/apply vs peers, base image {common.human(report['size'])}")
    for name, s in images.items():
        print(f"  {name}: {s.get('summary', '')}")
    for scenario in scenarios:
        print(f"  scenario {scenario}: {report['scenarios'][scenario]}")
    m = report["machine"]
    print(
        f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; best of {report['repeat']} "
        "run(s); MB = 10^6 bytes; MB/s = new image bytes / wall s; CPU s = user + system;"
    )
    print("  others = cores kept busy by other processes during the run (noise)")
    print()
    footnotes = []

    def note(text):
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    rows = []
    for r in report["results"]:
        status = r["status"]
        marks = []
        if r.get("reason"):
            marks.append(note(r["reason"]))
        for n in r["notes"]:
            marks.append(note(n))
        if marks:
            status += " " + "".join(marks)
        d, a = r.get("diff", {}), r.get("apply", {})
        others = [x for x in (d.get("other_cores"), a.get("other_cores")) if x is not None]
        if r["status"] != "ok":
            # Times of a failed run are in the JSON; speeds would mislead.
            d = {k: v for k, v in d.items() if k != "mb_per_s"}
            a = {k: v for k, v in a.items() if k != "mb_per_s"}
        rows.append(
            [
                r["scenario"],
                r["tool"],
                common.fmt(d.get("seconds"), ".2f"),
                common.fmt(d.get("mb_per_s"), ".0f"),
                common.fmt(d.get("cpu_seconds"), ".2f"),
                common.fmt(r.get("delta_bytes"), ","),
                common.fmt(_mib(d.get("max_rss_kib")), ".0f"),
                common.fmt(a.get("seconds"), ".2f"),
                common.fmt(a.get("mb_per_s"), ".0f"),
                common.fmt(a.get("cpu_seconds"), ".2f"),
                common.fmt(_mib(a.get("max_rss_kib")), ".0f"),
                common.fmt(max(others), ".1f") if others else None,
                status,
            ]
        )
    common.print_table(
        [
            "scenario",
            "tool",
            "diff s",
            "diff MB/s",
            "diff CPU s",
            "delta bytes",
            "diff RSS MiB",
            "apply s",
            "apply MB/s",
            "apply CPU s",
            "apply RSS MiB",
            "others",
            "status",
        ],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")

    if report["ratios"]:
        print()
        print("diskdelta relative to each peer (speed: peer time / diskdelta time, >1 = diskdelta")
        print("faster; delta size and RSS: diskdelta / peer, <1 = diskdelta smaller)")
        print()

        def x(v, spec):
            return None if v is None else format(v, spec) + "x"

        common.print_table(
            ["scenario", "peer", "diff speed", "delta size", "apply speed", "diff RSS", "apply RSS"],
            [
                [
                    q["scenario"],
                    q["peer"],
                    x(q["diff_speed"], ".2f"),
                    x(q["delta_size"], ".3f"),
                    x(q["apply_speed"], ".2f"),
                    x(q["diff_rss"], ".3f"),
                    x(q["apply_rss"], ".3f"),
                ]
                for q in report["ratios"]
            ],
        )
    print()
    print("tools:")
    for name, t in report["tools"].items():
        print(f"  {name}: {t['version'] or '-'}; {t['config']}")
    if report.get("load_warning"):
        print(f"note: {report['load_warning']}")
    print(f"logs: {report['logs']}")


# ------------------------------------------------------------ diff-memory


def cmd_diff_memory(args):
    try:
        size = common.parse_size(args.size)
    except ValueError as e:
        common.die(str(e), 2)
    tool = next(t for t in PEERS if t.name == "diskdelta")
    machine = common.machine_info()
    skipped = _prepare([tool], args.no_build)
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")

    work = os.path.join(common.work_dir(), "memory")
    os.makedirs(work, exist_ok=True)
    # ~2% data (a few hundred MiB at 16 GiB), 0.2% of blocks rewritten.
    images = {}
    images["base.img"] = common.ensure_image(
        work, "base.img", ["base", "--size", str(size), "--fill", "0.02", "--seed", "11"]
    )
    images["new.img"] = common.ensure_image(
        work,
        "new.img",
        ["mutate", "--input", "base.img", "--change", "0.002", "--cluster", "64K", "--seed", "12"],
        parent=images["base.img"],
    )
    base, new = os.path.join(work, "base.img"), os.path.join(work, "new.img")
    common.warm_cache([base, new])
    _, load_warning = common.load_check()
    scratch_root = os.path.join(work, "run")
    logs = os.path.join(scratch_root, "logs")
    shutil.rmtree(scratch_root, ignore_errors=True)
    os.makedirs(logs)
    r = {"scenario": "sparse", "tool": "diskdelta", "new_bytes": os.stat(new).st_size, "notes": []}
    _measure(tool, "sparse", base, new, scratch_root, logs, 1, r)

    report = {
        "command": "diff-memory",
        "date": common.now_iso(),
        "size": size,
        "machine": machine,
        "load_warning": load_warning,
        "images": common.image_summaries(images),
        "image_set": args.images,
        "scenarios": {x: pairs[x][2] for x in scenarios},
        "tool": common.tool_versions([tool], {})["diskdelta"],
        "result": r,
        "logs": logs,
    }
    print()
    print(f"diskdelta peak RSS on a {common.human(size)} sparse image pair")
    for name, s in images.items():
        print(f"  {name}: {s.get('summary', '')} ({common.human(s.get('allocated'))} allocated)")
    print()
    d, a = r["diff"], r["apply"]
    delta = r.get("delta_bytes")
    out = r.get("output_allocated")
    common.print_table(
        ["phase", "seconds", "MB/s", "CPU s", "peak RSS MiB", "others", "output"],
        [
            [
                "diff",
                common.fmt(d["seconds"], ".2f"),
                common.fmt(d["mb_per_s"], ".0f"),
                common.fmt(d["cpu_seconds"], ".2f"),
                common.fmt(_mib(d["max_rss_kib"]), ".1f"),
                common.fmt(d["other_cores"], ".1f"),
                None if delta is None else f"delta {delta:,} bytes",
            ],
            [
                "apply",
                common.fmt(a["seconds"], ".2f"),
                common.fmt(a["mb_per_s"], ".0f"),
                common.fmt(a["cpu_seconds"], ".2f"),
                common.fmt(_mib(a["max_rss_kib"]), ".1f"),
                common.fmt(a["other_cores"], ".1f"),
                None if out is None else f"out.img {common.human(out)} allocated",
            ],
        ],
    )
    print(f"status: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""))
    if load_warning:
        print(f"note: {load_warning}")
    common.write_json(os.path.join(common.work_dir(), "results-diff-memory.json"), report)
    return 0 if r["status"] == "ok" else 1
