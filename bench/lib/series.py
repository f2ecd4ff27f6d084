"""`bench/run diff --series`: a week of nightly deltas, and signatures.

Two parts, in one run:

  series     7 nightly deltas of one image: `apply D1..D7 --base` (one
             pass) against 7 sequential applies (each night's output the
             next night's base), and against `merge` + one apply.
  signature  the first night's delta made from a signature of the base:
             `diskdelta signature` + `diff --signature` against
             `rdiff signature` + `rdiff delta` (4 KiB blocks both), sizes
             and times; each delta applied and checked.

Images: synthetic (base.img and night1..7.img: each night ~1% of the 4 KiB
blocks rewritten in 64 KiB clusters) or --images real (the ext4 set of
bench/lib/real_images.py, nights 0..7).
"""

import json
import os
import shutil
import subprocess

import common
from common import log

NIGHTS = 7


def add_series_arguments(p):
    p.add_argument(
        "--series",
        action="store_true",
        help="instead of the pair scenarios: 7 nightly deltas applied as a series vs one "
        "by one vs merged, and diff --signature vs rdiff (see bench/lib/series.py)",
    )


def _images(args, size):
    """[night 0, ..., night 7] paths and their summaries."""
    if args.images == "real":
        import real_images

        _directory, paths, images = real_images.real_images(size, ["ext4"])
        return paths["ext4"][: NIGHTS + 1], images
    names = ["base.img"] + [f"night{n}.img" for n in range(1, NIGHTS + 1)]
    directory, images = common.standard_images(size, names)
    return [os.path.join(directory, n) for n in names], images


class _Timer:
    """Runs steps, keeps their measurements by name."""

    def __init__(self, logs):
        self.logs = logs
        self.phases = {}

    def run(self, name, steps):
        phase = common.Phase()
        done, why = common.run_phase(steps, os.path.join(self.logs, name))
        phase.add_run(done)
        self.phases[name] = phase.to_json()
        if why:
            common.die(f"{name}: {why}")
        return phase.seconds


def cmd_series(args):
    try:
        size = common.parse_size(args.size)
    except ValueError as e:
        common.die(str(e), 2)
    machine = common.machine_info()
    tools = [t for t in __import__("diff").PEERS if t.name in ("diskdelta", "rdiff")]
    skipped = common.prepare(
        tools, args.no_build, subcommands=("diff", "apply", "merge", "signature")
    )
    if "diskdelta" in skipped:
        common.die(f"diskdelta: {skipped['diskdelta']}")
    images, summaries = _images(args, size)
    busy_before, load_warning = common.load_check()
    work = common.work_dir()
    scratch = os.path.join(work, "series")
    logs = os.path.join(scratch, "logs")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(logs)
    t = _Timer(logs)
    dd = common.DISKDELTA
    final = images[-1]
    final_bytes = os.path.getsize(final)

    deltas = []
    for n in range(1, NIGHTS + 1):
        d = os.path.join(scratch, f"night{n}.ddelta")
        t.run(f"diff-{n}", [[dd, "diff", "-q", images[n - 1], images[n], "-o", d]])
        deltas.append(d)
    delta_bytes = [os.path.getsize(d) for d in deltas]
    log(f"series: {NIGHTS} deltas, {common.human(sum(delta_bytes))} in all")
    # Deltas with copy records (version 3) are applied one by one and
    # cannot be merged: the one-pass and merge legs also run on the same
    # nights made as version 2.
    v2_deltas = None
    if any(_copies(dd, d) for d in deltas):
        v2_deltas = []
        for n in range(1, NIGHTS + 1):
            d = os.path.join(scratch, f"night{n}-v2.ddelta")
            t.run(f"diff-v2-{n}", [[dd, "diff", "-q", "--format", "diskdelta-v2",
                                    images[n - 1], images[n], "-o", d]])
            v2_deltas.append(d)
        log(f"series: the deltas hold copy records; version 2 deltas for one-pass and merge, "
            f"{common.human(sum(os.path.getsize(d) for d in v2_deltas))} in all")

    out = os.path.join(scratch, "out.img")
    common.warm_cache([images[0], *deltas])
    # 7 sequential applies: night k's output is night k+1's base.
    steps, base = [], images[0]
    for n, d in enumerate(deltas, 1):
        step_out = os.path.join(scratch, f"seq{n % 2}.img")
        steps.append([dd, "apply", "-q", d, "--base", base, "-o", step_out])
        base = step_out
    sequential = t.run("sequential", steps)
    _check(base, final, "sequential applies")
    common.remove(os.path.join(scratch, "seq0.img"), os.path.join(scratch, "seq1.img"))
    common.warm_cache([images[0], *deltas])
    chained = t.run("chain", [[dd, "apply", "-q", *deltas, "--base", images[0], "-o", out]])
    _check(out, final, "chain apply")
    common.remove(out)
    chained_v2 = None
    if v2_deltas:
        common.warm_cache([images[0], *v2_deltas])
        chained_v2 = t.run("chain-v2", [[dd, "apply", "-q", *v2_deltas, "--base", images[0],
                                         "-o", out]])
        _check(out, final, "chain apply of version 2 deltas")
        common.remove(out)
    mergeable = v2_deltas or deltas
    merged = os.path.join(scratch, "week.ddelta")
    merge_s = t.run("merge", [[dd, "merge", "-q", *mergeable, "--base", images[0], "-o",
                               merged]])
    common.warm_cache([images[0], merged])
    merged_apply = t.run("merged-apply", [[dd, "apply", "-q", merged, "--base", images[0],
                                           "-o", out]])
    _check(out, final, "merged delta")
    common.remove(out)

    # Signatures: night 0 -> night 1 without night 0.
    old, new = images[0], images[1]
    common.warm_cache([old, new])
    sig = os.path.join(scratch, "base.sig")
    sig_delta = os.path.join(scratch, "from-sig.ddelta")
    sig_s = t.run("signature", [[dd, "signature", "-q", old, "-o", sig]])
    sig_diff_s = t.run("diff-signature", [[dd, "diff", "-q", "--signature", sig, new, "-o",
                                           sig_delta]])
    t.run("apply-signature-delta", [[dd, "apply", "-q", sig_delta, "--base", old, "-o", out]])
    _check(out, new, "delta from the signature")
    common.remove(out)
    rdiff = None
    if "rdiff" not in skipped:
        rsig = os.path.join(scratch, "base.rsig")
        rdelta = os.path.join(scratch, "d.rdiff")
        rdiff = {
            "signature_s": t.run("rdiff-signature", [["rdiff", "-b", "4096", "signature",
                                                       old, rsig]]),
            "delta_s": t.run("rdiff-delta", [["rdiff", "delta", rsig, new, rdelta]]),
            "signature_bytes": os.path.getsize(rsig),
            "delta_bytes": os.path.getsize(rdelta),
        }
        t.run("rdiff-patch", [["rdiff", "patch", old, rdelta, out]])
        _check(out, new, "rdiff patch")
        common.remove(out)

    report = {
        **common.report_header("diff-series", size, 1, machine, busy_before, load_warning),
        "images": common.image_summaries(summaries),
        "image_set": args.images,
        "nights": NIGHTS,
        "final_bytes": final_bytes,
        "delta_bytes": delta_bytes,
        "v2_delta_bytes": [os.path.getsize(d) for d in v2_deltas] if v2_deltas else None,
        "merged_bytes": os.path.getsize(merged),
        "seconds": {
            "sequential_applies": sequential,
            "chain_apply": chained,
            "chain_apply_v2": chained_v2,
            "merge": merge_s,
            "merged_apply": merged_apply,
            "signature": sig_s,
            "diff_signature": sig_diff_s,
        },
        "signature_bytes": os.path.getsize(sig),
        "signature_delta_bytes": os.path.getsize(sig_delta),
        "rdiff": rdiff,
        "phases": t.phases,
        "logs": logs,
    }
    _print(report)
    common.write_json(os.path.join(work, "results-diff-series.json"), report)
    return 0


def _copies(dd, delta):
    res = subprocess.run([dd, "info", "--json", delta], capture_output=True, text=True)
    if res.returncode != 0:
        common.die(f"info {delta}: {res.stderr.strip()}")
    return json.loads(res.stdout).get("copy_extents", 0) > 0


def _check(path, want, what):
    same = common.same_content(path, want)
    if same is not True:
        common.die(f"{what}: the output differs from the image it should make")


def _print(r):
    s = r["seconds"]
    gb = r["final_bytes"] / 1e9
    print()
    v2 = r.get("v2_delta_bytes")
    print(f"series of {r['nights']} nightly deltas ({r['image_set']} images, final image "
          f"{common.human(r['final_bytes'])}; deltas {common.human(sum(r['delta_bytes']))}"
          + (f", as version 2 {common.human(sum(v2))}" if v2 else "")
          + f", merged {common.human(r['merged_bytes'])})")
    rows = [
        ["7 sequential applies", f"{s['sequential_applies']:.2f}", "1.00x"],
        ["apply D1..D7" + (" (copies: one by one)" if v2 else " (one pass)"),
         f"{s['chain_apply']:.2f}", f"{s['sequential_applies'] / s['chain_apply']:.2f}x"],
    ]
    if v2:
        rows.append(["apply D1..D7 of version 2 (one pass)", f"{s['chain_apply_v2']:.2f}",
                     f"{s['sequential_applies'] / s['chain_apply_v2']:.2f}x"])
    rows += [
        ["merge --base + apply" + (" (version 2)" if v2 else ""),
         f"{s['merge'] + s['merged_apply']:.2f}",
         f"{s['sequential_applies'] / (s['merge'] + s['merged_apply']):.2f}x"],
        ["apply of the merged delta", f"{s['merged_apply']:.2f}",
         f"{s['sequential_applies'] / s['merged_apply']:.2f}x"],
    ]
    common.print_table(["way", "seconds", "speed vs sequential"], rows)
    one_pass = s["chain_apply_v2"] if v2 else s["chain_apply"]
    print(f"(one pass over {gb:.2f} GB: {gb / one_pass:.2f} GB/s)")
    print()
    print("delta of night 1 without night 0 (from a signature)")
    rows = [[
        "diskdelta", common.human(r["signature_bytes"]), f"{s['signature']:.2f}",
        common.human(r["signature_delta_bytes"]), f"{s['diff_signature']:.2f}",
    ]]
    rd = r["rdiff"]
    if rd:
        rows.append([
            "rdiff -b 4096", common.human(rd["signature_bytes"]), f"{rd['signature_s']:.2f}",
            common.human(rd["delta_bytes"]), f"{rd['delta_s']:.2f}",
        ])
    common.print_table(["tool", "signature", "sig s", "delta", "delta s"], rows)
    if rd:
        print(f"diff --signature vs rdiff delta: {rd['delta_s'] / s['diff_signature']:.1f}x "
              f"faster, delta {r['signature_delta_bytes'] / rd['delta_bytes']:.2f}x the size")
