"""scripts/fault-campaign: inject faults into every diskdelta command.

  --suite              the deterministic set run by scripts/test: every kind,
                       a fixed number of faults each, fixed seed
  --faults N --seed S  N random faults of random kinds (the campaign)
  --replay I           with --seed: only fault number I of that campaign
  --only KIND          only faults of this kind (repeatable)
  --soak ROUNDS        concurrent backups racing gc and forget --prune

Prints one table (faults per kind and what each did) and exits non-zero if
any fault hung, gave a wrong or partial output, lost data or failed without
a clear error.
"""
import argparse
import concurrent.futures
import os
import random
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases  # noqa: E402
import fixtures  # noqa: E402
from harness import GOOD, OUTCOMES, ROOT, UNCLEAR, Verdict, fresh_dir  # noqa: E402
from mounts import Mounts  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true")
    parser.add_argument("--faults", type=int, default=1000)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--replay", type=int)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--soak", type=int, metavar="ROUNDS")
    parser.add_argument("--jobs", type=int, default=2, help="faults run side by side")
    parser.add_argument("--timeout", type=float, default=60,
                        help="seconds before a command counts as hung")
    parser.add_argument("--work", default=os.path.join(ROOT, "target", "faults"))
    parser.add_argument("--bin", help="diskdelta binary (default: cargo build)")
    args = parser.parse_args()
    unknown = [k for k in args.only if k not in cases.KINDS]
    if unknown:
        sys.exit(f"unknown kinds {unknown}; known: {' '.join(cases.KINDS)}")

    os.makedirs(args.work, exist_ok=True)
    built = fixtures.build(ROOT)
    binary = args.bin or built["diskdelta"]
    tool = fixtures.Tool(binary, args.timeout, stall_timeout=3)
    fx = fixtures.Fixtures(args.work, tool, built["gen_image"])
    start = time.monotonic()
    fx.make_images()
    fx.make_deltas()
    fx.make_repo()
    have_diskdump = fx.make_diskdump()
    sshd = fixtures.Sshd(args.work, os.path.dirname(os.path.abspath(binary)))
    mounts = Mounts(args.work, fx.dir)
    fixtures.log(f"faults: fixtures ready in {time.monotonic() - start:.1f} s")
    skips = {}
    if not sshd.available():
        skips["wire-*, remote-killed-*"] = "sshd: " + sshd.why
    if not mounts.tmpfs_ok():
        skips["enospc"] = mounts.tmpfs_why
    if not mounts.eio_ok():
        skips["eio"] = mounts.eio_why
    import s3
    if not s3.available():
        skips["s3"] = "no s3rver (scripts/s3-servers installs it)"
    if not have_diskdump:
        skips["diskdump-*"] = "the real diskdump tool could not be installed"
    import nbdfaults
    if not nbdfaults.available():
        skips["nbd-*"] = "no nbdcopy, nbdinfo or qemu-nbd (libnbd-bin, qemu-utils)"
    if "DISKDELTA_TEST_PYDIFFDD" not in os.environ:
        skips["delta-py-*"] = "no DISKDELTA_TEST_PYDIFFDD (scripts/test sets it)"
    try:
        ctx = cases.Context(fx, tool, sshd, mounts)
        if args.soak:
            import soak
            ok = soak.run(ctx, args.soak, args.seed if args.seed is not None else 1)
        else:
            ok = campaign(ctx, args, skips)
    finally:
        sshd.stop()
        mounts.stop()
    sys.exit(0 if ok else 1)


def campaign(ctx, args, skips) -> bool:
    suite = args.suite
    seed = 1 if suite else (args.seed if args.seed is not None else random.randrange(1 << 31))
    kinds = args.only or list(cases.KINDS)
    faults = []
    if suite:
        for kind in kinds:
            make, count = cases.KINDS[kind]
            for f in make(ctx, random.Random(f"{seed}:{kind}"), count):
                faults.append((len(faults), f))
    else:
        for i in range(args.faults):
            rng = random.Random(f"{seed}:{i}")
            kind = rng.choice(kinds)
            made = cases.KINDS[kind][0](ctx, rng, 1)
            if made and (args.replay is None or args.replay == i):
                faults.append((i, made[0]))
    fixtures.log(f"faults: {len(faults)} faults, seed {seed}, {args.jobs} at a time")
    scratch_root = fresh_dir(os.path.join(args.work, "scratch"))
    results = []
    start = time.monotonic()

    def one(item):
        i, fault = item
        scratch = fresh_dir(os.path.join(scratch_root, str(i)))
        t = time.monotonic()
        try:
            verdict = fault.action(scratch)
        except Exception:
            verdict = Verdict(UNCLEAR, "harness error: " + traceback.format_exc(limit=3))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return i, fault, verdict, time.monotonic() - t

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(one, faults):
            results.append(done)
            i, fault, verdict, _ = done
            if verdict.outcome not in GOOD:
                print(f"FAIL [{i}] {fault.kind}: {fault.label}: {verdict.outcome}: {verdict.detail}",
                      flush=True)
    elapsed = time.monotonic() - start
    print_table(results, skips, seed, suite, elapsed)
    return all(v.outcome in GOOD for _, _, v, _ in results)


def print_table(results, skips, seed, suite, elapsed):
    rows = {}
    for _, fault, verdict, _ in results:
        row = rows.setdefault(fault.kind, {o: 0 for o in OUTCOMES})
        row[verdict.outcome] += 1
    width = max([len(k) for k in rows] + [8])
    head = f"{'kind':<{width}} {'injected':>8} " + " ".join(f"{o:>11}" for o in OUTCOMES)
    print(head)
    total = {o: 0 for o in OUTCOMES}
    for kind, row in rows.items():
        n = sum(row.values())
        good = all(row[o] == 0 for o in OUTCOMES if o not in GOOD)
        mark = "ok  " if good else "FAIL"
        print(f"{kind:<{width}} {n:>8} " + " ".join(f"{row[o]:>11}" for o in OUTCOMES)
              + f"  {mark}")
        for o in OUTCOMES:
            total[o] += row[o]
    print(f"{'total':<{width}} {sum(total.values()):>8} "
          + " ".join(f"{total[o]:>11}" for o in OUTCOMES))
    for what, why in skips.items():
        print(f"SKIP {what}: {why}")
    bad = [(i, f, v) for i, f, v, _ in results if v.outcome not in GOOD]
    for i, fault, verdict in bad:
        replay = ("scripts/fault-campaign --suite --only " + fault.kind if suite
                  else f"scripts/fault-campaign --seed {seed} --replay {i}")
        print(f"failed [{i}] {fault.kind}: {fault.label}: {verdict.outcome}; replay: {replay}")
    passed = sum(1 for _, _, v, _ in results if v.outcome in GOOD)
    print(f"seed {seed}, {len(results)} faults in {elapsed:.0f} s")
    print(f"faults: {passed} passed, {len(bad)} failed, {len(skips)} skipped")


if __name__ == "__main__":
    main()
