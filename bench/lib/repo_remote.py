"""`bench/run repo --remote`: backups over ssh, through a real OpenSSH sshd
on 127.0.0.1 (common.Sshd, the daemon `bench/run sync` uses).

  ssh cat         `ssh HOST cat base.img > /dev/null`: what the link moves
                  with no tool at all (the baseline of the pull throughput)
  diskdelta pull  a local repository; `backup -e SSH --remote-path DISKDELTA
                  HOST:/…/base.img --name base`, then `HOST:/…/clone.img
                  --name clone` (a new name, no --parent); restore clone, cmp
  diskdelta push  the repository on the "remote" host: `init -r
                  ssh://USER@HOST/…/repo`, `backup base.img`, `backup
                  clone.img`, restore clone from it, cmp (DISKDELTA_RSH,
                  DISKDELTA_REMOTE_PATH)
  diskdelta pull, proxy +0 ms / +50 ms
                  the pull clone backup again, each into a fresh copy of the
                  repository as it was after the base backup, under another
                  new name, through ssh's ProxyCommand scripts/delay-proxy
                  with 0 ms and with 50 ms in each direction
  diskdump dump   diskdump 0.1.5's remote dump of base.img, then clone.img
                  (its ssh and scp are PATH shims that add the port, key and
                  byte counting); restore clone's manifest, cmp
  restic sftp     `restic -r sftp:USER@HOST:/…/repo -o sftp.command=...`:
                  init, backup base.img, backup clone.img, restore, cmp

clone.img is base.img with 2% of its 1 MiB chunks (diskdelta's default
chunk size) rewritten at random places (common.standard_images).

Per step: wall seconds, local CPU and peak RSS (GNU time; the ssh client is
a child of the tool, so it is included), the CPU of everything on the sshd
side (the daemon's children's times: sshd's encryption, the remote tool),
bytes through the loopback interface (/proc/net/dev `lo`, the same count
for every tool), bytes the ssh clients report ("Transferred: sent N,
received M bytes", as in `sync`), the tool's own figure (diskdelta's JSON
bytes_sent) and the repository's growth (du -sb).
"""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

import common
import repo
from common import log

IMAGES = ("base.img", "clone.img")
CHUNK = 1 << 20  # diskdelta init's default chunk size: the clone's unit of change
THROUGHPUT_TARGET = 0.85  # pull first backup >= 0.85x the throughput of ssh cat
FIRST_TARGET = 3.0  # push first backup >= 3x as fast as restic over sftp
DELAY_MS = 50  # scripts/delay-proxy, each direction
DELAY_TARGET = 1.5  # delayed clone backup <= 1.5x the undelayed one
# Wire bound of a clone backup: 1.2 x zstd -3 of the differing 1 MiB chunks
# + 40 bytes per chunk of the image + 1 MiB.
BOUND_FACTOR, BOUND_PER_CHUNK, BOUND_SLACK = 1.2, 40, 1 << 20

CAT = "ssh cat"
PULL = "diskdelta pull"
PUSH = "diskdelta push"
PROXY0 = "diskdelta pull, proxy +0 ms"
PROXY = f"diskdelta pull, proxy +{DELAY_MS} ms"
# `ssh cat` of as many bytes as the clone backup moved, on each link: what
# the transport alone needs (ssh's 2 MiB channel window caps a stream at
# window / round trip on a slow link, whatever runs inside).
CAT_WIRE0 = "ssh cat wire bytes, proxy +0 ms"
CAT_WIRE = f"ssh cat wire bytes, proxy +{DELAY_MS} ms"
DUMP = "diskdump dump"
RESTIC = "restic sftp"
ROWS = [CAT, PULL, PUSH, PROXY0, PROXY, CAT_WIRE0, CAT_WIRE, DUMP, RESTIC]
ROW_TOOL = {CAT: None, PULL: "diskdelta", PUSH: "diskdelta", PROXY0: "diskdelta",
            PROXY: "diskdelta", CAT_WIRE0: "diskdelta", CAT_WIRE: "diskdelta",
            DUMP: "diskdump", RESTIC: "restic"}
STEPS = ["connect", "init", "base", "clone", "restore"]

CONFIGS = {
    "diskdelta": "init -q --no-encryption -r REPO; pull: backup -q --json -r REPO -e SSH "
    "--remote-path DISKDELTA USER@HOST:IMAGE --name base|clone; push: env DISKDELTA_RSH=SSH "
    "DISKDELTA_REMOTE_PATH=DISKDELTA, -r ssh://USER@HOST/REPO; restore clone -r REPO -o OUT "
    "--json (defaults: 1 MiB chunks, one thread per core)",
    "diskdump": f"pip diskdump=={repo.DISKDUMP_VERSION} in a venv; env DISKDUMP_BASE=STORE "
    "PATH=SHIMS:$PATH (ssh, scp adding port, key, count log); dump --user USER HOST:IMAGE "
    "--as base|clone; restore STORE/.blockstore/manifests/clone/0.manifest -o OUT (its "
    "defaults: 128 KiB blocks, 80-block batches, zlib -1 on the wire, lz4 stored)",
    "restic": "env RESTIC_PASSWORD=...; restic -r sftp:USER@HOST:REPO -o "
    "sftp.command='SSH USER@HOST -s sftp' --cache-dir CACHE init|backup -q --host bench "
    "[--no-scan] IMAGE|restore latest --host bench --path CLONE --target OUT",
}


# ------------------------------------------------------------------ setup


def _prepare(names, no_build):
    """repo's installs and build, plus ssh, sshd and zstd; returns
    (skipped, features)."""
    skipped, features = repo._prepare([t for t in repo.PEERS if t.name in names], no_build)
    missing = common.ensure_programs(["ssh", "ssh-keygen", "scp", common.SSHD, "zstd"])
    for p in ("ssh", "ssh-keygen", common.SSHD, "zstd"):
        if p in missing:
            common.die(f"{p}: {missing[p]}")
    if "scp" in missing and "diskdump" in names and "diskdump" not in skipped:
        skipped["diskdump"] = f"scp: {missing['scp']}"
    if not os.access(common.DELAY_PROXY, os.X_OK):
        skipped["delay"] = f"{common.DELAY_PROXY} is missing or not executable"
    return skipped, features


def _reference(base, clone):
    """The 1 MiB chunks of clone that differ from base, and their size
    compressed by `zstd -3`, one frame per chunk (as a chunk store keeps
    them); the wire bound of a clone backup."""
    size = os.stat(clone).st_size
    chunks = -(-size // CHUNK)
    changed, zero, zstd_bytes = 0, 0, 0
    with open(base, "rb") as a, open(clone, "rb") as b:
        for _ in range(chunks):
            x, y = a.read(CHUNK), b.read(CHUNK)
            if x == y:
                continue
            changed += 1
            if y.count(0) == len(y):
                zero += 1
            res = subprocess.run(["zstd", "-3", "-c"], input=y, capture_output=True)
            if res.returncode != 0:
                common.die(f"zstd -3 failed: {res.stderr.decode(errors='replace').strip()}")
            zstd_bytes += len(res.stdout)
    return {
        "chunk": CHUNK,
        "image_chunks": chunks,
        "changed_chunks": changed,
        "changed_zero_chunks": zero,
        "changed_bytes": changed * CHUNK,
        "zstd3_bytes": zstd_bytes,
        "wire_bound_bytes": int(BOUND_FACTOR * zstd_bytes + BOUND_PER_CHUNK * chunks + BOUND_SLACK),
    }


# ---------------------------------------------------------------- running


@dataclass
class Ctx:
    sshd: common.Sshd
    images: dict  # base.img, clone.img -> path
    root: str
    logs: str
    run: int  # repeat index
    features: dict
    results: dict  # row -> step -> [result per run]

    def prefix(self, row, key):
        slug = row.replace("diskdelta ", "").replace(",", "").replace("+", "").replace(" ", "-")
        return os.path.join(self.logs, f"{slug}-{key}-{self.run}")

    def step(self, row, key, argv, image=None, env=None, count_log=None, repo_dir=None,
             warm=(), restored=None, cwd=None, self_report=None):
        """Warms the image and the state directories, settles, then runs
        argv measured (see _measure); repo_dir: the repository measured
        with du -sb after the step; restored: the file a restore wrote,
        compared with image and removed. Returns the result dict."""
        if image and not restored:
            common.warm_cache([image])
        for d in warm:
            common.warm_tree(d)
        common.settle()
        before = common.dir_bytes(repo_dir) if repo_dir else None
        prefix = self.prefix(row, key)
        log(f"{row}: {key}")
        r = _measure(self.sshd, argv, prefix, env=env, count_log=count_log, cwd=cwd)
        if self_report:
            with open(r["log"], errors="replace") as f:
                r["self_reported"] = self_report(f.read())
        if image:
            r["image_bytes"] = os.stat(image).st_size
            r["mb_per_s"] = _round(common.mb_per_s(r["image_bytes"], r["seconds"]))
        if repo_dir:
            r["repo_bytes"] = common.dir_bytes(repo_dir)
            r["added_bytes"] = None if r["repo_bytes"] is None else r["repo_bytes"] - (before or 0)
        if restored and r["status"] == "ok":
            if not os.path.exists(restored):
                r.update(status="FAILED", reason=f"{restored} was not written")
            else:
                log(f"{row}: comparing the restored image with {os.path.basename(image)}")
                same = common.same_content(restored, image)
                if same is not True:
                    r.update(status="FAILED", reason="restored image differs from "
                             f"{os.path.basename(image)}" if same is False else same)
                r["output_allocated"] = common.allocated(restored)
        if restored:
            common.remove(restored)
        log(f"{row}: {key}: {r['status']} {r['seconds']:.2f} s, lo {r['lo_bytes']} bytes"
            + (f" ({r['reason']})" if r["reason"] else ""))
        self.results.setdefault(row, {}).setdefault(key, []).append(r)
        return r


def _measure(sshd, argv, prefix, env=None, count_log=None, cwd=None):
    """Runs argv under GNU time with the loopback and sshd-side counters
    read around it: before, once no session of the previous command is
    left; after, once this command's sessions have ended."""
    if count_log:
        common.remove(count_log)
    sshd.wait_idle()
    lo0, srv0 = common.loopback_bytes(), sshd.server_cpu_seconds()
    m = common.run_timed(argv, prefix + ".log", cwd=cwd, env=env)
    idle = sshd.wait_idle()
    lo1, srv1 = common.loopback_bytes(), sshd.server_cpu_seconds()
    server_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
    counted = common.ssh_counted(count_log) if count_log else None
    others = m.other_cores
    if others is not None and server_cpu is not None and m.seconds > 0:
        others = max(0.0, others - server_cpu / m.seconds)
    why = None
    if m.returncode != 0:
        why = f"{os.path.basename(argv[0])} exited {m.returncode}: {m.stderr_tail or 'no output'}"
    return {
        "argv": m.argv,
        "env": env,
        "log": m.log_path,
        "seconds": round(m.seconds, 4),
        "cpu_seconds": round(m.cpu_seconds, 2),
        "server_cpu_seconds": None if server_cpu is None else round(server_cpu, 2),
        "max_rss_kib": m.max_rss_kib,
        "other_cores": None if others is None else round(others, 2),
        "lo_bytes": None if lo0 is None or lo1 is None else lo1 - lo0,
        "ssh_bytes": counted[0] + counted[1] if counted else None,
        "ssh_sessions": counted[2] if counted else None,
        "sessions_left": not idle,
        "self_reported": {},
        "status": "FAILED" if why else "ok",
        "reason": why,
    }


def _diskdelta_report(text):
    j = common.json_in(text)
    if isinstance(j, list) and j and isinstance(j[0], dict):
        if "error" in j[0]:
            return {"error": j[0]["error"]}
        j = j[0].get("summary", j[0])
    if not isinstance(j, dict):
        return {}
    keys = ("size", "bytes_read", "bytes_sent", "new_chunks", "reused_chunks", "zero_chunks",
            "new_bytes", "bytes_added", "bytes_written", "seconds")
    return {k: j[k] for k in keys if k in j}


def _ok(r):
    return r["status"] == "ok"


def _connect(c, row, config="/dev/null"):
    """`ssh HOST true`: what opening a session costs on this link (key
    exchange, authentication, a channel), every tool's fixed cost."""
    count = c.prefix(row, "connect") + ".ssh.log"
    argv = c.sshd.ssh_argv(count, config) + [c.sshd.destination, "true"]
    return c.step(row, "connect", argv, count_log=count)


def _run_cat(c):
    _connect(c, CAT)
    count = c.prefix(CAT, "base") + ".ssh.log"
    base = c.images["base.img"]
    argv = ["sh", "-c", 'exec "$@" > /dev/null', "sh",
            *c.sshd.ssh_argv(count), c.sshd.destination, "cat", base]
    c.step(CAT, "base", argv, image=base, count_log=count)


def _run_diskdelta_pull(c, delays):
    dd, sshd = common.DISKDELTA, c.sshd
    scratch = os.path.join(c.root, "diskdelta-pull")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    repo_dir = os.path.join(scratch, "repo")
    saved = os.path.join(scratch, "repo-after-base")
    out = os.path.join(scratch, "restored.img")
    try:
        if not _ok(c.step(PULL, "init", [dd, "init", "-q", "--no-encryption", "-r", repo_dir],
                          repo_dir=repo_dir)):
            return

        def backup(row, key, name, repo_path, config="/dev/null"):
            count = c.prefix(row, key) + ".ssh.log"
            image = c.images[f"{key}.img"]
            argv = [dd, "backup", "-q", "--json", "-r", repo_path,
                    "-e", sshd.ssh_command(count, config), "--remote-path", dd,
                    f"{sshd.destination}:{image}", "--name", name]
            return c.step(row, key, argv, image=image, count_log=count, repo_dir=repo_path,
                          warm=[repo_path], self_report=_diskdelta_report)

        if not _ok(backup(PULL, "base", "base", repo_dir)):
            return
        # The repository as the base backup left it, for the delayed runs.
        subprocess.run(["cp", "-a", repo_dir, saved], check=True)
        if not _ok(backup(PULL, "clone", "clone", repo_dir)):
            return
        c.step(PULL, "restore", [dd, "restore", "clone", "-r", repo_dir, "-o", out, "--json"],
               image=c.images["clone.img"], warm=[repo_dir], restored=out)
        shutil.rmtree(repo_dir, ignore_errors=True)
        if not delays:
            return
        for row, ms in ((PROXY0, 0), (PROXY, DELAY_MS)):
            copy = os.path.join(scratch, f"repo-delay-{ms}")
            subprocess.run(["cp", "-a", saved, copy], check=True)
            config = sshd.proxy_config(ms)
            _connect(c, row, config)
            r = backup(row, "clone", f"clone-delay-{ms}", copy, config)
            shutil.rmtree(copy, ignore_errors=True)
            wire = r.get("ssh_bytes") or r.get("lo_bytes")
            if _ok(r) and wire:
                payload = os.path.join(scratch, "wire-bytes")
                with open(payload, "wb") as f:
                    f.write(os.urandom(wire))
                cat_row = CAT_WIRE0 if ms == 0 else CAT_WIRE
                count = c.prefix(cat_row, "clone") + ".ssh.log"
                argv = ["sh", "-c", 'exec "$@" > /dev/null', "sh",
                        *sshd.ssh_argv(count, config), sshd.destination, "cat", payload]
                c.step(cat_row, "clone", argv, count_log=count)
                os.remove(payload)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_diskdelta_push(c):
    dd, sshd = common.DISKDELTA, c.sshd
    scratch = os.path.join(c.root, "diskdelta-push")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    repo_dir = os.path.join(scratch, "repo")
    # The port is in DISKDELTA_RSH (-p), so not in the URL as well.
    url = f"ssh://{sshd.destination}{repo_dir}"
    out = os.path.join(scratch, "restored.img")

    def env(row, key):
        count = c.prefix(row, key) + ".ssh.log"
        return count, {"DISKDELTA_RSH": sshd.ssh_command(count), "DISKDELTA_REMOTE_PATH": dd}

    try:
        count, e = env(PUSH, "init")
        if not _ok(c.step(PUSH, "init", [dd, "init", "-q", "--no-encryption", "-r", url],
                          env=e, count_log=count, repo_dir=repo_dir)):
            return
        for key in ("base", "clone"):
            image = c.images[f"{key}.img"]
            count, e = env(PUSH, key)
            r = c.step(PUSH, key, [dd, "backup", "-q", "--json", "-r", url, image, "--name", key],
                       image=image, env=e, count_log=count, repo_dir=repo_dir, warm=[repo_dir],
                       self_report=_diskdelta_report)
            if not _ok(r):
                return
        count, e = env(PUSH, "restore")
        c.step(PUSH, "restore", [dd, "restore", "clone", "-r", url, "-o", out, "--json"],
               image=c.images["clone.img"], env=e, count_log=count, warm=[repo_dir],
               restored=out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _diskdump_shims(sshd, directory):
    """diskdump runs `ssh HOST CMD` and `scp FILE HOST:PATH` from PATH with
    no way to pass options: shims that add the test sshd's port and key,
    and the byte-counting log of $BENCH_SSH_LOG."""
    os.makedirs(directory, exist_ok=True)
    marker = "@LOG@"
    argv = sshd.ssh_argv(marker)
    argv[0] = common.which("ssh")
    words = " ".join('"$BENCH_SSH_LOG"' if a == marker else shlex.quote(a) for a in argv)
    ssh = os.path.join(directory, "ssh")
    with open(ssh, "w") as f:
        f.write("#!/bin/sh\n# Written by bench/lib/repo_remote.py for diskdump.\n"
                f'exec {words} "$@"\n')
    with open(os.path.join(directory, "scp"), "w") as f:
        f.write("#!/bin/sh\n# Written by bench/lib/repo_remote.py for diskdump.\n"
                f'exec {shlex.quote(common.which("scp") or "scp")} -S {shlex.quote(ssh)} "$@"\n')
    for name in ("ssh", "scp"):
        os.chmod(os.path.join(directory, name), 0o755)


def _run_diskdump(c):
    scratch = os.path.join(c.root, "diskdump")
    shutil.rmtree(scratch, ignore_errors=True)
    store = os.path.join(scratch, "store")
    shims = os.path.join(scratch, "bin")
    os.makedirs(store)
    _diskdump_shims(c.sshd, shims)
    out = os.path.join(scratch, "restored.img")

    def env(key):
        count = c.prefix(DUMP, key) + ".ssh.log"
        return count, {"DISKDUMP_BASE": store, "BENCH_SSH_LOG": count,
                       "PATH": shims + ":" + os.environ.get("PATH", common.SYSTEM_PATH)}

    try:
        for key in ("base", "clone"):
            image = c.images[f"{key}.img"]
            count, e = env(key)
            argv = [repo.DISKDUMP, "dump", "--user", c.sshd.user,
                    f"{common.SSH_HOST}:{image}", "--as", key]
            if not _ok(c.step(DUMP, key, argv, image=image, env=e, count_log=count,
                              repo_dir=store, warm=[store])):
                return
        manifest = os.path.join(store, ".blockstore", "manifests", "clone", "0.manifest")
        count, e = env("restore")
        c.step(DUMP, "restore", [repo.DISKDUMP, "restore", manifest, "-o", out],
               image=c.images["clone.img"], env=e, warm=[store], restored=out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_restic(c):
    sshd = c.sshd
    scratch = os.path.join(c.root, "restic")
    shutil.rmtree(scratch, ignore_errors=True)
    repo_dir = os.path.join(scratch, "repo")
    cache = os.path.join(scratch, "cache")
    out = os.path.join(scratch, "out")
    os.makedirs(out)
    env = {"RESTIC_PASSWORD": repo.RESTIC_PASSWORD}

    def restic(key, *args):
        count = c.prefix(RESTIC, key) + ".ssh.log"
        command = " ".join(sshd.ssh_argv(count) + [sshd.destination, "-s", "sftp"])
        return count, ["restic", "-r", f"sftp:{sshd.destination}:{repo_dir}",
                       "-o", f"sftp.command={command}", "--cache-dir", cache, *args]

    try:
        count, argv = restic("init", "init", "-q")
        if not _ok(c.step(RESTIC, "init", argv, env=env, count_log=count, repo_dir=repo_dir)):
            return
        for key in ("base", "clone"):
            image = c.images[f"{key}.img"]
            args = ["backup", "-q", "--host", "bench"]
            if c.features.get("restic_no_scan"):
                args.append("--no-scan")
            count, argv = restic(key, *args, image)
            if not _ok(c.step(RESTIC, key, argv, image=image, env=env, count_log=count,
                              repo_dir=repo_dir, warm=[repo_dir, cache])):
                return
        clone = c.images["clone.img"]
        count, argv = restic("restore", "restore", "latest", "-q", "--host", "bench",
                             "--path", clone, "--target", out)
        # restic restore recreates the absolute path below --target.
        c.step(RESTIC, "restore", argv, image=clone, env=env, count_log=count,
               warm=[repo_dir, cache], restored=os.path.join(out, clone.lstrip("/")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- summary


def _round(x, digits=1):
    return None if x is None else round(x, digits)


def _summarize(runs):
    """One step over the repeats: the fastest run's figures, the largest
    peak RSS, every run's seconds; FAILED if any run failed."""
    bad = [r for r in runs if r["status"] != "ok"]
    best = dict(min([r for r in runs if r["status"] == "ok"] or runs, key=lambda r: r["seconds"]))
    best["max_rss_kib"] = max((r["max_rss_kib"] for r in runs if r["max_rss_kib"]), default=None)
    best["seconds_all"] = [r["seconds"] for r in runs]
    best["lo_bytes_all"] = [r["lo_bytes"] for r in runs]
    best["status"] = "FAILED" if bad else "ok"
    best["reason"] = bad[0]["reason"] if bad else None
    best["runs"] = len(runs)
    return best


def _get(results, row, key, field):
    r = results.get(row, {}).get(key)
    if not r or r.get("status") != "ok":
        return None
    if field == "bytes_sent":
        return r.get("self_reported", {}).get("bytes_sent")
    return r.get(field)


def _div(a, b):
    return a / b if a is not None and b else None


def _ratios(results):
    """(label, other row, diskdelta row): speed = other s / diskdelta s (>1:
    diskdelta faster), bytes = diskdelta / other (<1: diskdelta fewer)."""
    out = []
    for label, other, dd in (
        ("diskdelta pull vs ssh cat", CAT, PULL),
        ("diskdelta pull vs diskdump dump", DUMP, PULL),
        ("diskdelta push vs restic sftp", RESTIC, PUSH),
    ):
        q = {"comparison": label, "other": other, "diskdelta": dd}
        for key in ("base", "clone", "restore"):
            q[f"{key}_speed"] = _round(_div(_get(results, other, key, "seconds"),
                                            _get(results, dd, key, "seconds")), 3)
            q[f"{key}_lo"] = _round(_div(_get(results, dd, key, "lo_bytes"),
                                         _get(results, other, key, "lo_bytes")), 3)
        if any(v is not None for k, v in q.items() if k.endswith(("_speed", "_lo"))):
            out.append(q)
    return out


def _verdict(value, ok):
    return {"value": value, "pass": None if value is None else ok(value)}


def _targets(results, reference):
    out = []
    cat_s, pull_s = _get(results, CAT, "base", "seconds"), _get(results, PULL, "base", "seconds")
    t = _verdict(_div(cat_s, pull_s), lambda v: v >= THROUGHPUT_TARGET)
    t.update(name="pull first backup throughput vs ssh cat", target=f">= {THROUGHPUT_TARGET:g}x",
             pull_mb_per_s=_get(results, PULL, "base", "mb_per_s"),
             cat_mb_per_s=_get(results, CAT, "base", "mb_per_s"))
    out.append(t)
    bound = reference["wire_bound_bytes"]
    for row in (PULL, PUSH):
        lo = _get(results, row, "clone", "lo_bytes")
        t = _verdict(lo, lambda v: v <= bound)
        t.update(name=f"{row} clone backup: bytes on the wire", bound=bound,
                 target="lo bytes <= 1.2 x zstd -3 of the changed chunks + 40 B/chunk + 1 MiB",
                 ssh_bytes=_get(results, row, "clone", "ssh_bytes"),
                 bytes_sent=_get(results, row, "clone", "bytes_sent"))
        out.append(t)
    t = _verdict(_div(_get(results, RESTIC, "base", "seconds"),
                      _get(results, PUSH, "base", "seconds")), lambda v: v >= FIRST_TARGET)
    t.update(name="push first backup vs restic sftp", target=f">= {FIRST_TARGET:g}x faster")
    out.append(t)
    t = _verdict(_div(_get(results, PROXY, "clone", "seconds"),
                      _get(results, PROXY0, "clone", "seconds")), lambda v: v <= DELAY_TARGET)
    t.update(name=f"pull clone backup, +{DELAY_MS} ms each way vs +0 ms",
             target=f"<= {DELAY_TARGET:g}x the time")
    # How much of the difference opening the ssh session explains.
    c0, c1 = (_get(results, row, "connect", "seconds") for row in (PROXY0, PROXY))
    d0, d1 = (_get(results, row, "clone", "seconds") for row in (PROXY0, PROXY))
    if None not in (c0, c1, d0, d1):
        t.update(added_seconds=round(d1 - d0, 4), connect_added_seconds=round(c1 - c0, 4),
                 without_connect=_round(_div(d1 - c1, d0 - c0), 3))
    w1 = _get(results, CAT_WIRE, "clone", "seconds")
    if None not in (w1, d1):
        t.update(transport_seconds=w1, vs_transport=_round(_div(d1, w1), 3))
    out.append(t)
    for row in (PULL, PUSH):
        r = results.get(row, {}).get("restore")
        ok = None if not r else r["status"] == "ok"
        out.append({"name": f"{row}: restore of clone, cmp with clone.img", "value": ok,
                    "pass": ok, "target": "identical",
                    "reason": None if not r else r.get("reason")})
    return out


# ----------------------------------------------------------------- output


def _mb(n):
    return None if n is None else f"{n / 1e6:,.2f}"


def _mib(kib):
    return None if kib is None else f"{kib / 1024:.0f}"


def _x(v, spec=".2f"):
    return None if v is None else f"{v:{spec}}x"


def _pf(ok):
    return {True: "PASS", False: "FAIL", None: "n/a"}[ok]


def _print(report):
    ref, m = report["reference"], report["machine"]
    print()
    print(f"backups over ssh through sshd on {common.SSH_HOST}, base image "
          f"{common.human(report['size'])} ({common.size_label(report['size'])}), best of "
          f"{report['repeat']} run(s)")
    for name, st in report["images"].items():
        print(f"  {name}: {st.get('summary', '')}")
    print(f"  clone.img vs base.img: {ref['changed_chunks']:,} of {ref['image_chunks']:,} "
          f"1 MiB chunks differ ({ref['changed_zero_chunks']} of them now zero); zstd -3 of "
          f"them, one frame each: {_mb(ref['zstd3_bytes'])} MB")
    print(f"  wire bound of a clone backup: 1.2 x {_mb(ref['zstd3_bytes'])} MB + 40 B x "
          f"{ref['image_chunks']:,} chunks + 1 MiB = {_mb(ref['wire_bound_bytes'])} MB")
    print(f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; MB = 10^6 bytes; "
          "MB/s = image bytes / wall s")
    print("  lo MB: bytes through the loopback interface during the step (/proc/net/dev, "
          "headers included; anything else")
    bg = report.get("loopback_background_bytes_per_s")
    print("  on lo counts too: background before measuring "
          + ("-" if bg is None else f"{bg / 1e3:,.1f} KB/s") + "); ssh MB: the ssh clients' "
          "own count; own MB: diskdelta's bytes_sent")
    print("  CPU s: the local command and its ssh client; srv CPU s: sshd and everything "
          "below it (the remote side); others: cores busy with anything else")
    print()
    rows, footnotes = [], []
    for row, steps in report["results"].items():
        if steps.get("skipped"):
            why = steps["skipped"]
            if why not in footnotes:
                footnotes.append(why)
            rows.append([row, None] + [None] * 11 + [f"skipped [{footnotes.index(why) + 1}]"])
            continue
        for key in STEPS:
            r = steps.get(key)
            if not r:
                continue
            status = r["status"]
            if r.get("reason"):
                if r["reason"] not in footnotes:
                    footnotes.append(r["reason"])
                status += f" [{footnotes.index(r['reason']) + 1}]"
            own = r.get("self_reported", {})
            rows.append([
                row, key,
                common.fmt(r["seconds"], ".2f"),
                common.fmt(r.get("mb_per_s"), ",.0f"),
                _mb(r.get("lo_bytes")),
                _mb(r.get("ssh_bytes")),
                _mb(own.get("bytes_sent")),
                _mb(r.get("added_bytes")),
                common.fmt(r.get("cpu_seconds"), ".2f"),
                common.fmt(r.get("server_cpu_seconds"), ".2f"),
                _mib(r.get("max_rss_kib")),
                common.fmt(r.get("other_cores"), ".1f"),
                "[" + ", ".join(f"{x:.2f}" for x in r["seconds_all"]) + "]",
                status,
            ])
    common.print_table(
        ["run", "step", "seconds", "MB/s", "lo MB", "ssh MB", "own MB", "added MB", "CPU s",
         "srv CPU s", "RSS MiB", "others", "all runs s", "status"],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")
    if report["ratios"]:
        print()
        print("ratios: speed = the other's seconds / diskdelta's (>1: diskdelta faster); "
              "lo = diskdelta's lo bytes / the other's (<1: fewer)")
        print()
        common.print_table(
            ["comparison", "base speed", "clone speed", "restore speed", "base lo", "clone lo",
             "restore lo"],
            [[q["comparison"], _x(q["base_speed"]), _x(q["clone_speed"]),
              _x(q["restore_speed"]), _x(q["base_lo"], ".3f"), _x(q["clone_lo"], ".3f"),
              _x(q["restore_lo"], ".3f")] for q in report["ratios"]],
        )
    print()
    print("targets (diskdelta):")
    for t in report["targets"]:
        v, name = t["value"], t["name"]
        if "throughput" in name:
            text = (f"{_x(v) or '-'} ({common.fmt(t['pull_mb_per_s'], ',.0f') or '-'} MB/s vs "
                    f"{common.fmt(t['cat_mb_per_s'], ',.0f') or '-'} MB/s)")
        elif "wire" in name:
            b = t["bound"]
            parts = [f"lo {_mb(v) or '-'} MB"]
            for label, x in (("ssh", t["ssh_bytes"]), ("own bytes_sent", t["bytes_sent"])):
                if x == 0 and label.startswith("own"):
                    # BackupSummary.bytes_sent: "0 for local sources".
                    parts.append(f"{label} 0 (counted for remote sources only)")
                    continue
                parts.append(f"{label} {_mb(x) or '-'} MB"
                             + ("" if x is None else f" ({_pf(x <= b)})"))
            text = ", ".join(parts) + f"; bound {_mb(b)} MB"
        elif "each way" in name:
            text = _x(v) or "-"
            if t.get("added_seconds") is not None:
                without = _x(t["without_connect"]) if t["without_connect"] else "-"
                text += (f"; the delay added {t['added_seconds']:.2f} s, of which "
                         f"{t['connect_added_seconds']:.2f} s opening the ssh session "
                         f"(`ssh HOST true`); without that: {without}")
            if t.get("vs_transport") is not None:
                text += (f"; `ssh cat` of the same bytes on the delayed link takes "
                         f"{t['transport_seconds']:.2f} s: diskdelta {_x(t['vs_transport'])} of it")
        elif "restore" in name:
            text = {True: "identical", False: f"DIFFERS or failed ({t.get('reason')})",
                    None: "not run"}[v]
        else:
            text = _x(v) or "-"
        print(f"  {name}: {text} (target {t['target']}): {_pf(t['pass'])}")
    if report.get("load_warning"):
        print(f"note: {report['load_warning']}")
    print()
    print("tools:")
    for name, t in report["tools"].items():
        print(f"  {name}: {t.get('version') or '-'}; {t.get('config', '')}")
    print(f"logs: {report['logs']}")


# ------------------------------------------------------------------- main


def cmd_repo_remote(args, size, names):
    machine = common.machine_info()
    skipped, features = _prepare(names, args.no_build)
    directory, stamps = common.standard_images(size, IMAGES)
    images = {n: os.path.join(directory, n) for n in IMAGES}
    root, logs = repo._scratch_root("repo-remote")
    log("finding the changed 1 MiB chunks of clone.img and their zstd -3 size")
    common.warm_cache(list(images.values()))
    reference = _reference(images["base.img"], images["clone.img"])
    # diskdump's remote dump leaves its client in /tmp (scp'd there each time).
    client_existed = os.path.exists("/tmp/diskdump_client.py")

    def body(sshd):
        lo0 = common.loopback_bytes()
        busy, load_warning = common.load_check()
        lo1 = common.loopback_bytes()
        results = {}
        for i in range(args.repeat):
            # Repeats outside, tools inside: drift over time hits every tool.
            c = Ctx(sshd, images, root, logs, i, features, results)
            log(f"run {i + 1}/{args.repeat}")
            _run_cat(c)
            if "diskdelta" in names and "diskdelta" not in skipped:
                _run_diskdelta_pull(c, delays="delay" not in skipped)
                _run_diskdelta_push(c)
            if "diskdump" in names and "diskdump" not in skipped:
                _run_diskdump(c)
            if "restic" in names and "restic" not in skipped:
                _run_restic(c)
        summary = {}
        for row in ROWS:
            tool = ROW_TOOL[row]
            if tool and tool not in names:
                continue
            if tool in skipped:
                summary[row] = {"skipped": skipped[tool]}
            elif row in (PROXY0, PROXY, CAT_WIRE0, CAT_WIRE) and "delay" in skipped:
                summary[row] = {"skipped": skipped["delay"]}
            elif row in results:
                summary[row] = {k: _summarize(v) for k, v in results[row].items()}
        tools = {}
        versions = common.tool_versions([t for t in repo.PEERS if t.name in names], skipped)
        for name, v in versions.items():
            tools[name] = dict(v, config=CONFIGS[name])
        ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        tools["ssh"] = {"version": (ssh.stderr or ssh.stdout).strip(),
                        "config": "sshd_config: see common.Sshd; client: " + " ".join(
                            sshd.ssh_argv()[1:])}
        report = {
            **common.report_header("repo --remote", size, args.repeat, machine, busy,
                                   load_warning),
            "images": common.image_summaries(stamps),
            "reference": reference,
            "loopback_background_bytes_per_s": (
                None if lo0 is None or lo1 is None else round((lo1 - lo0) / 2.0)),
            "tools": tools,
            "features": features,
            "results": summary,
            "runs": results,
            "ratios": _ratios(summary),
            "targets": _targets(summary, reference),
            "logs": logs,
        }
        _print(report)
        common.write_json(os.path.join(common.work_dir(), "results-repo-remote.json"), report)
        failed = [row for row in (PULL, PUSH, PROXY0, PROXY)
                  for r in summary.get(row, {}).values()
                  if isinstance(r, dict) and r.get("status") == "FAILED"]
        # diskdelta skipped (not built) or stopped before its rows: a failure.
        dd_missing = "diskdelta" in names and any(
            "skipped" in summary.get(row, {"skipped": True}) for row in (PULL, PUSH))
        return 1 if failed or dd_missing else 0

    try:
        return common.with_server(lambda: common.Sshd(root), body, "sshd")
    finally:
        if not client_existed:
            common.remove("/tmp/diskdump_client.py")


if __name__ == "__main__":
    sys.exit("run through bench/run repo --remote")
