"""Entry point of bench/run: parses the subcommand and dispatches.

Each subcommand lives in its own module with `add_arguments(subparsers)`;
shared helpers (tools, builds, images, timing, tables) are in common.py.
"""

import argparse
import sys

import access
import diff
import python_bench
import repo
import s3
import sync
import thin
import vm

SUBCOMMANDS = [diff, sync, repo, s3, thin, python_bench, access, vm]


def main(argv):
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Side-by-side benchmarks of diskdelta and the tools users would "
        "otherwise pick. See bench/README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
