"""The concurrency soak: each round, 4 backups of different images into one
repository, with `gc` and `forget --keep-last 2 --prune` racing them.

Every snapshot a backup reported as written must then be listed and
restore byte-identical (the newest of each name is never forgotten), and
at the end the repository must pass `verify --read-data`."""
import json
import os
import subprocess
import time

from harness import fresh_dir, sha256_file

NAMES = 4


def run(ctx, rounds: int, seed: int) -> bool:
    fx, tool = ctx.fx, ctx.tool
    work = fresh_dir(os.path.join(fx.work, "soak"))
    images = [fx.path(n) for n in ("base.img", "v1.img", "v2.img")]
    extra = os.path.join(fx.dir, "v3.img")
    if not os.path.exists(extra):
        subprocess.run([fx.gen, "mutate", "--input", images[2], "--change", "0.05",
                        "--cluster", "64K", "--seed", str(4), "-o", extra], check=True,
                       stderr=subprocess.DEVNULL)
    images.append(extra)
    digests = {p: sha256_file(p) for p in images}
    repo = os.path.join(work, "repo")
    tool.ok("init", "-r", repo, "--chunk-size", "256K", "-q")
    failures = []
    written = 0
    start = time.monotonic()
    for r in range(rounds):
        procs = []
        for i in range(NAMES):
            image = images[(i + r + seed) % len(images)]
            argv = [tool.binary, "backup", "-r", repo, image, "--name", f"vm{i}", "--json", "-q"]
            procs.append(("backup", image, subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tool.env)))
        for argv in (["gc", "-r", repo, "-q"],
                     ["forget", "-r", repo, "--keep-last", "2", "--prune", "-q"]):
            procs.append((argv[0], None, subprocess.Popen(
                [tool.binary, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=tool.env)))
        reported = []
        for what, image, proc in procs:
            try:
                out, err = proc.communicate(timeout=tool.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                failures.append(f"round {r}: {what} hung")
                continue
            err = err.decode(errors="replace").strip()
            if proc.returncode != 0:
                # A lock conflict is the expected way to lose a race.
                if "locked" not in err:
                    failures.append(f"round {r}: {what} failed: {err}")
                continue
            if what == "backup":
                snap = json.loads(out)[0]["summary"]["snapshot"]
                reported.append((snap, image))
        listed = {s["id"] for s in fx.snapshots(repo)}
        for snap, image in reported:
            written += 1
            if snap not in listed:
                failures.append(f"round {r}: snapshot {snap[:8]} was reported but is gone")
                continue
            out = os.path.join(work, "check.img")
            res = tool("restore", "-r", repo, snap, "-o", out, "-q")
            if res.rc != 0 or sha256_file(out) != digests[image]:
                failures.append(f"round {r}: snapshot {snap[:8]} does not restore: "
                                + res.describe())
            if os.path.exists(out):
                os.remove(out)
        print(f"soak round {r + 1}/{rounds}: {len(reported)} backups written", flush=True)
    check = tool("verify", "-r", repo, "--read-data", "-q")
    if check.rc != 0:
        failures.append("final verify --read-data failed: " + check.describe())
    for f in failures:
        print("FAIL " + f)
    print(f"soak: {rounds} rounds, {written} snapshots written and restored, "
          f"{len(failures)} failures, {time.monotonic() - start:.0f} s")
    return not failures
