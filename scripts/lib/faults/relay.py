#!/usr/bin/env python3
"""A faulty ssh: `relay.py --mode M --direction D --after N -- ssh ARGS...`
runs the real ssh and relays its stdin and stdout, and after N bytes in
direction D (up: to the remote side, down: from it) does M:

  flip   XOR that byte with a random non-zero mask, then go on relaying;
  drop   cut the connection (ssh is killed, the relay exits 255);
  stall  stop relaying in that direction, keeping the connection open.

Used as `diskdelta sync|backup -e "relay.py ... -- ssh ..."`."""
import argparse
import ctypes
import os
import random
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent():
    # The ssh child must not outlive the relay when diskdelta kills it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pump(src, dst, faulty, args, rng, child):
    seen = 0
    while True:
        try:
            data = os.read(src, 65536)
        except OSError:
            data = b""
        if not data:
            break
        if faulty and seen <= args.after < seen + len(data):
            at = args.after - seen
            if args.mode == "flip":
                data = data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1:]
            elif args.mode == "drop":
                write_all(dst, data[:at])
                child.kill()
                os._exit(255)
            else:
                write_all(dst, data[:at])
                while True:
                    time.sleep(3600)
        seen += len(data)
        if not write_all(dst, data):
            break
    try:
        os.close(dst)
    except OSError:
        pass


def write_all(fd, data) -> bool:
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
        return True
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["flip", "drop", "stall"], required=True)
    parser.add_argument("--direction", choices=["up", "down"], required=True)
    parser.add_argument("--after", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("ssh", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.ssh[1:] if args.ssh and args.ssh[0] == "--" else args.ssh
    rng = random.Random(args.seed)
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             preexec_fn=die_with_parent)
    to_child, from_child = os.dup(child.stdin.fileno()), os.dup(child.stdout.fileno())
    child.stdin.close()
    child.stdout.close()
    up = threading.Thread(target=pump, daemon=True,
                          args=(0, to_child, args.direction == "up", args, rng, child))
    down = threading.Thread(target=pump, daemon=True,
                            args=(from_child, 1, args.direction == "down", args, rng, child))
    up.start()
    down.start()
    down.join()
    code = child.wait()
    sys.exit(code)


if __name__ == "__main__":
    main()
