"""`bench/run python`: the Python package against the command and diff-dd.

On one image pair (synthetic base.img -> new.img, or --images real: ext4
nights 0 -> 1), each timed, best of --repeat:

  cli          diskdelta diff OLD NEW -o DELTA
  python       diskdelta.diff(OLD, NEW, DELTA)              (release build)
  compat       diskdelta.compat.CreateDiff on open files
  diff-dd      diff_dd.CreateDiff 1.0.4 on open files       (pure Python)

and the binding's cost: python seconds / cli seconds - 1 (target <= 5%).
"""

import os
import shutil
import subprocess
import time

import common
from common import log


def add_arguments(sub):
    p = sub.add_parser(
        "python",
        help="diskdelta.diff from Python vs the command vs diff-dd 1.0.4",
        description="Times the Python package against the command and diff-dd 1.0.4.",
    )
    p.add_argument("--size", default="2G", help="image size (default 2G)")
    p.add_argument("--images", choices=("synthetic", "real"), default="synthetic")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-diff-dd", action="store_true", help="skip diff-dd (slow: pure Python)")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.set_defaults(func=cmd_python)


def _best(repeat, argv, cleanup):
    best = None
    for _ in range(repeat):
        cleanup()
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    return best


def cmd_python(args):
    size = common.parse_size(args.size)
    machine = common.machine_info()
    if not args.no_build:
        why = common.cargo_build([], "diskdelta")
        if why:
            common.die(why)
    work = common.work_dir()
    venv = os.path.join(work, "python-venv")
    python = subprocess.run(
        [os.path.join(common.REPO, "scripts", "python-bindings"), venv, "--release"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    if args.images == "real":
        import real_images

        _d, paths, _images = real_images.real_images(size, ["ext4"])
        old, new = paths["ext4"][0], paths["ext4"][1]
    else:
        directory, _images = common.standard_images(size, ["base.img", "new.img"])
        old, new = os.path.join(directory, "base.img"), os.path.join(directory, "new.img")
    scratch = os.path.join(work, "python")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    delta = os.path.join(scratch, "delta")

    def clean():
        common.remove(delta)

    common.warm_cache([old, new])
    busy_before, load_warning = common.load_check()
    rows = {}
    rows["cli"] = _best(args.repeat, [common.DISKDELTA, "diff", "-q", old, new, "-o", delta], clean)
    rows["python"] = _best(args.repeat, [python, "-c",
                                         "import sys, diskdelta; diskdelta.diff(*sys.argv[1:])",
                                         old, new, delta], clean)
    compat = ("import sys\nfrom diskdelta.compat import CreateDiff\n"
              "with open(sys.argv[1], 'rb') as i, open(sys.argv[2], 'rb') as d, "
              "open(sys.argv[3], 'wb') as o:\n    CreateDiff(i, d, o).start()\n")
    rows["compat"] = _best(args.repeat, [python, "-c", compat, old, new, delta], clean)
    if not args.no_diff_dd:
        pydiffdd = subprocess.run(
            [os.path.join(common.REPO, "scripts", "pydiffdd-venv"),
             os.path.join(work, "pydiffdd-venv")],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        dd_python = os.path.join(os.path.dirname(pydiffdd), "python")
        legacy = compat.replace("from diskdelta.compat import CreateDiff",
                                "from diff_dd import CreateDiff")
        rows["diff-dd 1.0.4"] = _best(1, [dd_python, "-c", legacy, old, new, delta], clean)
    new_bytes = os.path.getsize(new)
    print()
    print(f"diff of {os.path.basename(old)} -> {os.path.basename(new)} "
          f"({common.human(new_bytes)}), best of {args.repeat}")
    table = [[name, f"{s:.2f}", f"{new_bytes / s / 1e6:.0f}", f"{s / rows['cli']:.3f}x"]
             for name, s in rows.items()]
    common.print_table(["way", "seconds", "MB/s", "vs cli"], table)
    print(f"binding cost: {(rows['python'] / rows['cli'] - 1) * 100:+.1f}% (target <= 5%)")
    report = {
        **common.report_header("python", size, args.repeat, machine, busy_before, load_warning),
        "images": [old, new],
        "seconds": rows,
    }
    common.write_json(os.path.join(work, "results-python.json"), report)
    return 0
