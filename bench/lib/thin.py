"""`bench/run thin`: an incremental backup (and a diff) of a thin volume,
thin-aware against a full hash scan of the same volume.

The volume is modelled without device-mapper, the way the tests do it: OLD
is the standard base.img, every thin chunk holding data is mapped; NEW is
OLD with --change of the thin chunks rewritten (new data blocks in the
pool); the pool metadata is built from that mapping by the real
`thin_restore`, and diskdelta runs the real `thin_delta` on it. NEW's pages
are dropped from the page cache before every measured run (a nightly backup
finds a volume cold); `--warm` measures with NEW cached instead.
"""

import json
import os
import random
import shutil
import subprocess

import common


class _Tool:
    name = "diskdelta"
    program = common.DISKDELTA


def add_arguments(sub):
    p = sub.add_parser(
        "thin",
        help="thin-aware vs full-scan incremental backup and diff of a thin volume",
        description="Incremental backup and diff of a modelled thin volume: thin_delta "
        "(--thin-metadata) against a full hash scan, bytes read and seconds.",
    )
    p.add_argument("--size", default="2G", help="volume size (default 2G)")
    p.add_argument("--change", type=float, default=0.01, help="fraction of thin chunks rewritten (default 0.01)")
    p.add_argument("--chunk", default="64K", help="thin chunk size (default 64K)")
    p.add_argument(
        "--scenarios",
        default="64K:1M,1M:1M,64K:64K",
        help="CLUSTER:REPO_CHUNK pairs: changes come in aligned runs of CLUSTER bytes, "
        "the repository has REPO_CHUNK chunks (default 64K:1M,1M:1M,64K:64K: scattered "
        "thin chunks, 1 MiB clusters, scattered into a 64K-chunk repository)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest counts")
    p.add_argument("--warm", action="store_true", help="keep NEW in the page cache")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.set_defaults(func=cmd_thin)


def _evict(path):
    """Drops path's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _mappings(old, size, chunk, change, cluster, seed=5):
    """(old_map, new_map, changed): origin chunk -> data block per device,
    and the sorted changed chunks, picked in aligned runs of `cluster`
    bytes."""
    blocks = size // chunk
    mapped = set()
    for start, stop in common.data_ranges(old):
        mapped.update(range(start // chunk, (stop + chunk - 1) // chunk))
    old_map = {b: b for b in sorted(mapped)}
    rng = random.Random(seed)
    per = max(1, cluster // chunk)
    runs = rng.sample(range(blocks // per), max(1, int(blocks * change) // per))
    changed = sorted(r * per + i for r in runs for i in range(per))
    new_map = dict(old_map)
    for k, b in enumerate(changed):
        new_map[b] = blocks + k
    return old_map, new_map, changed


def _device_xml(dev, mapping):
    lines = [f'  <device dev_id="{dev}" mapped_blocks="{len(mapping)}" transaction="0" creation_time="0" snap_time="0">']
    run = None  # (origin, data, length)
    for origin in sorted(mapping):
        data = mapping[origin]
        if run and run[0] + run[2] == origin and run[1] + run[2] == data:
            run = (run[0], run[1], run[2] + 1)
            continue
        if run:
            lines.append(f'    <range_mapping origin_begin="{run[0]}" data_begin="{run[1]}" length="{run[2]}" time="0"/>')
        run = (origin, data, 1)
    if run:
        lines.append(f'    <range_mapping origin_begin="{run[0]}" data_begin="{run[1]}" length="{run[2]}" time="0"/>')
    lines.append("  </device>")
    return lines


def _metadata(work, chunk, blocks, old_map, new_map, changed):
    xml = [
        f'<superblock uuid="" time="1" transaction="1" flags="0" version="2" '
        f'data_block_size="{chunk // 512}" nr_data_blocks="{blocks + len(changed) + 16}">'
    ]
    xml += _device_xml(1, old_map) + _device_xml(2, new_map)
    xml.append("</superblock>")
    xml_path = os.path.join(work, "metadata.xml")
    with open(xml_path, "w") as f:
        f.write("\n".join(xml) + "\n")
    meta = os.path.join(work, "metadata.bin")
    with open(meta, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["thin_restore", "-i", xml_path, "-o", meta], check=True, capture_output=True)
    return meta


def _make_new(old, new, changed, chunk, seed=6):
    common.log(f"making {os.path.basename(new)}: {len(changed)} thin chunks rewritten")
    subprocess.run(["cp", "--sparse=always", old, new], check=True)
    rng = random.Random(seed)
    with open(new, "r+b") as f:
        for b in changed:
            f.seek(b * chunk)
            f.write(rng.randbytes(chunk))


def _measure(argv, logs, name, repeat, new, warm, before=None):
    best = None
    for i in range(repeat):
        if before:
            before()
        if warm:
            common.warm_cache([new])
        else:
            _evict(new)
        m = common.run_timed(argv, os.path.join(logs, f"{name}-{i}.log"))
        if m.returncode != 0:
            common.die(f"{name} failed: {m.stderr_tail} (log {m.log_path})")
        with open(m.log_path, errors="replace") as f:
            report = common.json_in(f.read())
        if best is None or m.seconds < best[0].seconds:
            best = (m, report)
    return best


def cmd_thin(args):
    size = common.parse_size(args.size)
    chunk = common.parse_size(args.chunk)
    if chunk % 512 or chunk < 64 << 10 or size % chunk:
        common.die("--chunk must be a multiple of 512 of at least 64K dividing --size", 2)
    skipped = common.prepare([_Tool()], args.no_build, ["backup", "diff"])
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")
    for program in ("thin_restore", "thin_delta"):
        if not common.which(program):
            common.die(f"{program} is missing: apt-get install thin-provisioning-tools")
    machine = common.machine_info()
    directory, stamps = common.standard_images(size, names=("base.img",))
    old = os.path.join(directory, "base.img")
    work = os.path.join(common.work_dir(), "thin")
    shutil.rmtree(work, ignore_errors=True)
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    try:
        pairs = [
            tuple(common.parse_size(x) for x in item.split(":"))
            for item in args.scenarios.split(",")
        ]
    except ValueError as e:
        common.die(f"--scenarios: {e}", 2)
    if any(len(p) != 2 for p in pairs):
        common.die("--scenarios: expected CLUSTER:REPO_CHUNK pairs", 2)
    scenarios = {}
    for cluster, repo_chunk in pairs:
        new = os.path.join(work, "new.img")
        blocks = size // chunk
        old_map, new_map, changed = _mappings(old, size, chunk, args.change, cluster)
        _make_new(old, new, changed, chunk)
        meta = _metadata(work, chunk, blocks, old_map, new_map, changed)
        d = common.DISKDELTA
        thin = ["--thin-metadata", meta, "--thin-ids"]

        base_repo = os.path.join(work, "repo-base")
        shutil.rmtree(base_repo, ignore_errors=True)
        subprocess.run(
            [d, "init", "-q", "-r", base_repo, "--chunk-size", str(repo_chunk)], check=True
        )
        common.log("first backup (starts the thin-id chain; not measured)")
        subprocess.run(
            [d, "backup", "-q", "-r", base_repo, old, "--name", "vol", *thin, "1,1"],
            check=True,
            capture_output=True,
        )
        repo = os.path.join(work, "repo")

        def fresh_repo():
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(base_repo, repo)

        _, load_warning = common.load_check()
        runs = {}
        runs["backup, thin-aware"] = _measure(
            [d, "backup", "-r", repo, new, "--name", "vol", *thin, "1,2", "--json"],
            logs, f"{cluster >> 10}K-{repo_chunk >> 10}K-backup-thin", args.repeat, new, args.warm, fresh_repo,
        )
        runs["backup, full hash scan"] = _measure(
            [d, "backup", "-r", repo, new, "--name", "vol", "--json"],
            logs, f"{cluster >> 10}K-{repo_chunk >> 10}K-backup-full", args.repeat, new, args.warm, fresh_repo,
        )
        delta = os.path.join(work, "d.delta")
        runs["diff, thin-aware"] = _measure(
            [d, "diff", *thin, "1,2", new, "-o", delta, "--json"],
            logs, f"{cluster >> 10}K-{repo_chunk >> 10}K-diff-thin", args.repeat, new, args.warm,
        )
        common.warm_cache([old])
        runs["diff, OLD and NEW compared"] = _measure(
            [d, "diff", old, new, "-o", delta, "--json"],
            logs, f"{cluster >> 10}K-{repo_chunk >> 10}K-diff-full", args.repeat, new, args.warm,
        )

        changed_bytes = len(changed) * chunk
        repo_chunks = len(
            {b * chunk // repo_chunk for b in changed}
            | {((b + 1) * chunk - 1) // repo_chunk for b in changed}
        )
        rows, results = [], {}
        for name, (m, report) in runs.items():
            summary = report[0]["summary"] if isinstance(report, list) else report
            read = summary.get("bytes_read")
            results[name] = {
                "seconds": m.seconds,
                "cpu_seconds": m.cpu_seconds,
                "max_rss_kib": m.max_rss_kib,
                "bytes_read": read,
                "change_tracking": summary.get("change_tracking"),
                "log": m.log_path,
            }
            rows.append([name, f"{m.seconds:.3f}", f"{m.cpu_seconds:.2f}", common.human(read or 0), f"{m.max_rss_kib // 1024}"])
        print(f"\nthin volume {common.human(size)}, {chunk >> 10} KiB thin chunks, changes in {cluster >> 10} KiB clusters, "
              f"repository chunks {repo_chunk >> 10} KiB: "
              f"{len(changed)} chunks ({common.human(changed_bytes)}) rewritten, NEW {'warm' if args.warm else 'cold'}\n")
        common.print_table(["mode", "seconds", "cpu s", "bytes read", "peak RSS MiB"], rows)
        speed = results["backup, full hash scan"]["seconds"] / results["backup, thin-aware"]["seconds"]
        diff_speed = results["diff, OLD and NEW compared"]["seconds"] / results["diff, thin-aware"]["seconds"]
        backup_read = results["backup, thin-aware"]["bytes_read"] or 0
        diff_read = results["diff, thin-aware"]["bytes_read"] or 0
        backup_bound = repo_chunks * repo_chunk + size // 100
        targets = {
            "thin-aware backup vs full scan": {"ratio": speed, "target": ">= 20x", "met": speed >= 20},
            "thin-aware diff vs full diff": {"ratio": diff_speed, "target": "(no target)", "met": None},
            "bytes read, backup": {"bytes": backup_read, "bound": backup_bound, "met": backup_read <= backup_bound},
            "bytes read, diff": {"bytes": diff_read, "bound": changed_bytes + size // 100, "met": diff_read <= changed_bytes + size // 100},
        }
        print("\ntargets:")
        print(f"  thin-aware incremental backup {speed:.1f}x faster than a full-scan one (target >= 20x): "
              f"{'met' if speed >= 20 else 'MISSED'}")
        print(f"  thin-aware diff {diff_speed:.1f}x faster than comparing OLD and NEW")
        print(f"  bytes read by the thin-aware backup: {common.human(backup_read)}; the {repo_chunks} "
              f"repository chunks the changes touch plus 1% hold {common.human(backup_bound)}: "
              f"{'met' if targets['bytes read, backup']['met'] else 'MISSED'}")
        print(f"  bytes read by the thin-aware diff: {common.human(diff_read)}; changed thin chunks "
              f"{common.human(changed_bytes)} plus 1%: {'met' if targets['bytes read, diff']['met'] else 'MISSED'}")
        if load_warning:
            print(f"  note: {load_warning}")
        scenarios[f"{cluster >> 10}K clusters, {repo_chunk >> 10}K repository chunks"] = {
            "changed_chunks": len(changed),
            "results": results,
            "targets": targets,
        }
    out = {
        "command": "thin",
        "date": common.now_iso(),
        "size": size,
        "thin_chunk": chunk,
        "warm": args.warm,
        "repeat": args.repeat,
        "machine": machine,
        "images": common.image_summaries(stamps),
        "scenarios": scenarios,
    }
    path = os.path.join(common.work_dir(), "results-thin.json")
    common.write_json(path, out)
    return 0
