"""`bench/run repo`, `bench/run repo-sweep` and `bench/run repo-memory`.

repo: diskdelta's repository (`init`, `backup`, `restore`) next to restic,
borg and diskdump 0.1.5, on the images every subcommand shares:

  backup 1  base.img   first backup into an empty repository
  backup 2  new.img    ~2% of the 4 KiB blocks rewritten in 64 KiB clusters
  backup 3  step3.img  new.img with another ~1% rewritten, plus 64 MiB appended
  restore   the last snapshot to a file, compared with step3.img by cmp

Every tool backs up the same path, `<run>/src/disk.img`, a hard link to the
step's image, as one would back up a VM disk file that changes between
backups (restic and borg then find their parent snapshot / files cache
entry by path, as in real use). Per step: wall seconds, CPU seconds, peak
RSS (GNU time), and the repository's size after the step (`du -sb`).

repo-sweep: diskdelta alone, the same sequence at each chunk size.

repo-memory: diskdelta alone on a 1 TiB sparse image holding a few MiB:
backup, a second backup after a few MiB changed, restore to a sparse file.

PEERS below is the one place where the command lines are.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import common
from common import log

RSS_TARGET_MIB = 256
FIRST_TARGET = 3.0  # first backup at least 3x as fast as restic's
INCREMENTAL_TARGET = 5.0  # each incremental backup at least 5x as fast as restic's
SIZE_TARGET = 1.05  # repository after the 3 backups at most 1.05x restic's
RESTORE_TARGET = 1.5e9  # bytes per second, restore to a file

SWEEP_CHUNKS = "64K,128K,256K,512K,1M,2M,4M"
DEFAULT_CHUNK = "1M"  # diskdelta init's default (see cli.rs)

RESTIC_PASSWORD = "diskdelta-bench"  # fixed: the repositories are scratch
DISKDUMP_VERSION = "0.1.5"
DISKDUMP_AS = "bench:/dev/disk"  # its manifests go to manifests/bench.disk/N.manifest
SNAPSHOT = "disk"  # diskdelta's snapshot name

common.APT_PACKAGES.update({"restic": "restic", "borg": "borgbackup"})

# (key, image, what changed)
STEPS = [
    ("backup1", "base.img", "first backup"),
    ("backup2", "new.img", "~2% of 4 KiB blocks rewritten (64 KiB clusters)"),
    ("backup3", "step3.img", "another ~1% rewritten, 64 MiB appended"),
]
PHASES = [s[0] for s in STEPS] + ["restore"]
# --images real: a week of nightly backups of an ext4 or xfs image of system
# files (bench/lib/real_images.py), with the real-data issue's targets.
REAL_FIRST_TARGET = 5.0
REAL_SIZE_TARGET = 0.9


def _use_real_steps(fs, paths):
    """Replaces STEPS/PHASES with one backup per night of the real set."""
    global STEPS, PHASES, FIRST_TARGET, SIZE_TARGET
    STEPS = [(f"backup{n + 1}", os.path.basename(p),
              "first backup (night 0)" if n == 0 else f"night {n}")
             for n, p in enumerate(paths)]
    PHASES = [s[0] for s in STEPS] + ["restore"]
    FIRST_TARGET, SIZE_TARGET = REAL_FIRST_TARGET, REAL_SIZE_TARGET


def _last():
    return STEPS[-1][0]


# ------------------------------------------------------------------ tools


@dataclass
class Ctx:
    """One tool's run: its scratch directory and what lives in it."""

    scratch: str
    chunk_size: str = None  # diskdelta init --chunk-size, None for its default
    features: dict = field(default_factory=dict)  # probed options (restic --no-scan)

    @property
    def repo(self):
        return os.path.join(self.scratch, "repo")

    @property
    def cache(self):
        """The tool's own cache (restic --cache-dir, BORG_BASE_DIR): fresh
        per run, not counted in the repository size."""
        return os.path.join(self.scratch, "cache")

    @property
    def src_dir(self):
        return os.path.join(self.scratch, "src")

    @property
    def source(self):
        return os.path.join(self.src_dir, "disk.img")

    @property
    def out_dir(self):
        return os.path.join(self.scratch, "out")

    @property
    def state_dirs(self):
        """What is read into the page cache before every step: the
        repository and the tool's cache."""
        return [self.repo, self.cache]


@dataclass
class Tool:
    name: str
    program: str  # what must be installed
    version_argv: list
    config: str  # one line for the report: the command lines
    # (Ctx) -> argv lists, run before backup 1, not timed
    init: object
    # (Ctx, step number 1..3) -> (argv lists, cwd)
    backup: object
    # (Ctx, number of the snapshot to restore) -> (argv lists, cwd)
    restore: object
    # (Ctx) -> path of the restored image
    restored: object
    # (Ctx) -> environment variables for every command
    env: object = lambda c: {}
    # (log text of a backup) -> dict of the tool's own figures
    self_report: object = None
    # (Ctx) -> argv lists restoring the last snapshot to /dev/null: the
    # restore's own work without writing a file (None: not measured)
    restore_null: object = None


def _diskdelta_report(text):
    j = common.json_in(text)
    if isinstance(j, list) and j and isinstance(j[0], dict):
        j = j[0].get("summary", j[0])
    if not isinstance(j, dict):
        return {}
    keys = ("new_chunks", "reused_chunks", "zero_chunks", "new_bytes", "bytes_added",
            "bytes_written", "chunks_fetched", "seconds")
    return {k: j[k] for k in keys if k in j}


def _diskdelta_init(c, encrypted=False):
    argv = [common.DISKDELTA, "init", "-q", "-r", c.repo]
    if not encrypted:
        argv.append("--no-encryption")
    if c.chunk_size:
        argv += ["--chunk-size", c.chunk_size]
    return [argv]


DISKDELTA_PASSWORD = "diskdelta-bench"  # the encrypted repository's; default key derivation


def _diskdelta_tool(name, encrypted):
    """diskdelta on a plain repository, or on an encrypted one (the default
    of `init`, with its default Argon2id cost: every command pays one key
    unlock, as restic pays its scrypt)."""
    return Tool(
        name=name,
        program=common.DISKDELTA,
        version_argv=[common.DISKDELTA, "--version"],
        config=("env DISKDELTA_PASSWORD=...; init -q -r REPO" if encrypted
                else "init -q -r REPO --no-encryption")
        + " [--chunk-size S]; backup SRC -r REPO --name disk --json; "
        "restore disk -r REPO -o OUT --json (defaults: 1 MiB chunks, one thread per core)",
        init=lambda c: _diskdelta_init(c, encrypted),
        backup=lambda c, n: (
            [[common.DISKDELTA, "backup", c.source, "-r", c.repo, "--name", SNAPSHOT, "--json"]],
            None,
        ),
        restore=lambda c, n: (
            [[common.DISKDELTA, "restore", SNAPSHOT, "-r", c.repo, "-o",
              os.path.join(c.out_dir, "disk.img"), "--json"]],
            None,
        ),
        restored=lambda c: os.path.join(c.out_dir, "disk.img"),
        env=(lambda c: {"DISKDELTA_PASSWORD": DISKDELTA_PASSWORD}) if encrypted else (lambda c: {}),
        self_report=_diskdelta_report,
        restore_null=lambda c: [
            [common.DISKDELTA, "restore", SNAPSHOT, "-r", c.repo, "-o", "/dev/null", "--json"]
        ],
    )


def _restic_env(c):
    return {"RESTIC_REPOSITORY": c.repo, "RESTIC_PASSWORD": RESTIC_PASSWORD}


def _restic_backup(c, n):
    argv = ["restic", "backup", "-q", "--cache-dir", c.cache, "--host", "bench"]
    if c.features.get("restic_no_scan"):
        argv.append("--no-scan")
    return [argv + [c.source]], None


def _borg_env(c):
    return {
        "BORG_BASE_DIR": c.cache,
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }


def _diskdump_dir():
    return os.path.join(common.work_dir(), "tools", f"diskdump-{DISKDUMP_VERSION}-venv")


DISKDUMP = os.path.join(_diskdump_dir(), "bin", "diskdump")


def _diskdump_manifest(c, n):
    """diskdump numbers a source's manifests 0, 1, 2, ... in backup order."""
    name = DISKDUMP_AS.split(":", 1)[0] + "." + DISKDUMP_AS.split(":", 1)[1].replace("/dev/", "")
    return os.path.join(c.repo, ".blockstore", "manifests", name, f"{n - 1}.manifest")


PEERS = [
    _diskdelta_tool("diskdelta", encrypted=False),
    Tool(
        name="restic",
        program="restic",
        version_argv=["restic", "version"],
        config="env RESTIC_REPOSITORY=REPO RESTIC_PASSWORD=...; init --cache-dir CACHE; "
        "backup -q --cache-dir CACHE --host bench [--no-scan] SRC (default compression "
        "auto, repository v2); restore latest -q --cache-dir CACHE --host bench --target OUT "
        "(faster than `dump latest SRC > OUT`, see bench/README.md)",
        init=lambda c: [["restic", "init", "-q", "--cache-dir", c.cache]],
        backup=_restic_backup,
        restore=lambda c, n: (
            [["restic", "restore", "latest", "-q", "--cache-dir", c.cache, "--host", "bench",
              "--target", c.out_dir]],
            None,
        ),
        # restic restore recreates the absolute path below --target.
        restored=lambda c: os.path.join(c.out_dir, c.source.lstrip("/")),
        env=_restic_env,
    ),
    Tool(
        name="borg",
        program="borg",
        version_argv=["borg", "--version"],
        config="env BORG_BASE_DIR=CACHE; init -e none REPO; create REPO::backupN disk.img "
        "(in SRC's directory; default lz4 compression, default buzhash chunker "
        "19,23,21,4095); extract --sparse REPO::backupN of the last (in OUT)",
        init=lambda c: [["borg", "init", "-e", "none", c.repo]],
        backup=lambda c, n: ([["borg", "create", f"{c.repo}::backup{n}", "disk.img"]], c.src_dir),
        restore=lambda c, n: ([["borg", "extract", "--sparse", f"{c.repo}::backup{n}"]], c.out_dir),
        restored=lambda c: os.path.join(c.out_dir, "disk.img"),
        env=_borg_env,
    ),
    Tool(
        name="diskdump",
        program=DISKDUMP,
        version_argv=[
            os.path.join(_diskdump_dir(), "bin", "python"),
            "-c",
            "import importlib.metadata as m; print('diskdump', m.version('diskdump'))",
        ],
        config=f"pip diskdump=={DISKDUMP_VERSION} in a venv; env DISKDUMP_BASE=REPO; import "
        f"SRC --as {DISKDUMP_AS}; restore REPO/.blockstore/manifests/bench.disk/2.manifest "
        "-o OUT (its defaults: 128 KiB blocks, lz4, one file per block, sqlite index)",
        init=lambda c: [["mkdir", "-p", c.repo]],
        backup=lambda c, n: ([[DISKDUMP, "import", c.source, "--as", DISKDUMP_AS]], None),
        restore=lambda c, n: (
            [[DISKDUMP, "restore", _diskdump_manifest(c, n), "-o",
              os.path.join(c.out_dir, "disk.img")]],
            None,
        ),
        restored=lambda c: os.path.join(c.out_dir, "disk.img"),
        env=lambda c: {"DISKDUMP_BASE": c.repo},
    ),
]
TOOL_NAMES = [t.name for t in PEERS]
# `repo --remote` (repo_remote.py): the tools that back up over ssh.
REMOTE_TOOLS = ["diskdelta", "diskdump", "restic"]
# `repo --encrypted` adds it after the plain diskdelta.
ENCRYPTED = _diskdelta_tool("diskdelta-encrypted", encrypted=True)
DISKDELTA_TOOL = PEERS[0]


# ------------------------------------------------------------------ setup


def _ensure_diskdump():
    """diskdump 0.1.5 from PyPI in a venv under the work directory; returns
    None or the reason it cannot be had."""
    venv = _diskdump_dir()
    python = os.path.join(venv, "bin", "python")

    def installed():
        if not os.access(DISKDUMP, os.X_OK):
            return False
        res = subprocess.run(
            [python, "-c", "import importlib.metadata as m, diskdump.blockstore; "
             "print(m.version('diskdump'))"],
            capture_output=True,
            text=True,
        )
        return res.returncode == 0 and res.stdout.strip() == DISKDUMP_VERSION

    if installed():
        return None
    if sys.version_info < (3, 11):
        return f"diskdump {DISKDUMP_VERSION} needs Python >= 3.11, this is {sys.version.split()[0]}"
    shutil.rmtree(venv, ignore_errors=True)
    log(f"installing diskdump=={DISKDUMP_VERSION} (and its dependency lz4) with pip into {venv}")
    res = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
    if res.returncode != 0 and os.geteuid() == 0:
        # Debian's python3 has no ensurepip without python3-venv.
        log("python3 -m venv failed; installing python3-venv with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "python3-venv"],
            env=env,
            capture_output=True,
        )
        shutil.rmtree(venv, ignore_errors=True)
        res = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
    if res.returncode != 0:
        return f"python3 -m venv failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    res = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"diskdump=={DISKDUMP_VERSION}"],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0 or not installed():
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["?"]
        return f"pip install diskdump=={DISKDUMP_VERSION} failed: {tail[0]}"
    return None


def _prepare(tools, no_build):
    """Installs restic, borg (apt) and diskdump (pip), builds diskdelta;
    returns ({tool name: skip reason}, features)."""
    skipped = common.prepare(
        [t for t in tools if t.name not in ("diskdump", ENCRYPTED.name)],
        no_build,
        subcommands=("init", "backup", "restore", "status"),
    )
    if "diskdelta" in skipped and any(t.name == ENCRYPTED.name for t in tools):
        skipped[ENCRYPTED.name] = skipped["diskdelta"]
    if any(t.name == "diskdump" for t in tools):
        why = _ensure_diskdump()
        if why:
            skipped["diskdump"] = why
            log(f"skipping diskdump: {why}")
    features = {}
    if any(t.name == "restic" for t in tools) and "restic" not in skipped:
        res = subprocess.run(["restic", "backup", "--help"], capture_output=True, text=True)
        features["restic_no_scan"] = "--no-scan" in res.stdout
        if not features["restic_no_scan"]:
            log("restic backup has no --no-scan (added in restic 0.15); running without it")
    return skipped, features


# ---------------------------------------------------------------- running


def _stage(image, c):
    """c.source := a hard link to image (a copy where links cannot be made)."""
    common.remove(c.source)
    try:
        os.link(image, c.source)
    except OSError:
        subprocess.run(["cp", "--sparse=always", image, c.source], check=True)


def _before(c, image=None, sparse=False):
    """Outside the timed region, the same for every tool: the image and the
    tool's repository and cache read into the page cache, then settle."""
    if image:
        if sparse:
            common.warm_sparse(image)
        else:
            common.warm_cache([image])
    for d in c.state_dirs:
        common.warm_tree(d)
    common.settle()


def _step_result(tool, steps, why, c, image_bytes):
    own = {}
    if tool.self_report:
        for m in steps:
            with open(m.log_path, errors="replace") as f:
                own.update(tool.self_report(f.read()))
    return {
        "seconds": round(sum(m.seconds for m in steps), 4),
        "cpu_seconds": round(sum(m.cpu_seconds for m in steps), 2),
        "max_rss_kib": max((m.max_rss_kib for m in steps), default=None),
        "other_cores": max((m.other_cores for m in steps if m.other_cores is not None),
                           default=None),
        "image_bytes": image_bytes,
        "self_reported": own,
        "status": "FAILED" if why else "ok",
        "reason": why,
        "_measurements": steps,
    }


def _sync_after(prefix):
    """Seconds of a `sync` right after a step: the writeback of what the
    tool left unflushed (diskdelta, restic and borg fsync what they write
    to their repository, diskdelta its restored image too; the others
    leave that to the kernel). Nothing was dirty before the step."""
    m = common.run_timed(["sync"], f"{prefix}-sync.log")
    return round(m.seconds, 4)


def run_sequence(tool, c, images, logs, prefix, sparse=False, inspect=None, observer=None):
    """init, the three backups and the restore of one tool in a fresh
    scratch directory; returns {phase: result}, stopping at the first
    failure. images: the three image paths in backup order. inspect(c)
    runs after the backups (untimed) and its dict is returned as "inspect".
    observer: None, or an object whose begin(key) runs right before each
    timed step (key: init, backup1, ..., restore) and whose end(key, steps)
    right after it (steps: its common.Measurement list) returns a dict added
    to the step's result (to out["init"] for init).
    The scratch directory is removed at the end."""
    shutil.rmtree(c.scratch, ignore_errors=True)
    for d in (c.scratch, c.src_dir, c.out_dir):
        os.makedirs(d)
    env = tool.env(c)
    out = {}

    def phase(key, argvs, cwd=None):
        if observer:
            observer.begin(key)
        steps, why = common.run_phase(argvs, f"{prefix}-{key}", cwd=cwd, env=env)
        return steps, why, observer.end(key, steps) if observer else {}

    try:
        steps, why, seen = phase("init", tool.init(c))
        if observer:
            out["init"] = {**_step_result(tool, steps, why and f"init: {why}", c, None), **seen}
        elif why:
            out["init"] = {"status": "FAILED", "reason": f"init: {why}"}
        if why:
            return out
        previous = common.dir_bytes(c.repo) or 0
        for n, (key, image) in enumerate(zip([s[0] for s in STEPS], images), 1):
            _stage(image, c)
            _before(c, c.source, sparse)
            argvs, cwd = tool.backup(c, n)
            log(f"{prefix.rsplit('/', 1)[-1]}: {key}")
            steps, why, seen = phase(key, argvs, cwd)
            r = _step_result(tool, steps, why and f"{key}: {why}", c, os.stat(image).st_size)
            r.update(seen)
            r["sync_seconds"] = _sync_after(f"{prefix}-{key}")
            r["repo_bytes"] = common.dir_bytes(c.repo)
            r["repo_allocated"] = common.dir_allocated(c.repo)
            r["added_bytes"] = None if r["repo_bytes"] is None else r["repo_bytes"] - previous
            previous = r["repo_bytes"] or previous
            out[key] = r
            if why:
                return out
        if inspect:
            out["inspect"] = inspect(c)
        final = images[-1]
        _before(c)
        argvs, cwd = tool.restore(c, len(images))
        log(f"{prefix.rsplit('/', 1)[-1]}: restore")
        steps, why, seen = phase("restore", argvs, cwd)
        r = _step_result(tool, steps, why and f"restore: {why}", c, os.stat(final).st_size)
        r.update(seen)
        r["sync_seconds"] = _sync_after(f"{prefix}-restore")
        out["restore"] = r
        if why:
            return out
        restored = tool.restored(c)
        if not os.path.exists(restored):
            r.update(status="FAILED", reason=f"restore: {restored} was not written")
            return out
        log(f"comparing the restored image with {os.path.basename(final)}")
        same = common.sparse_equal(restored, final) if sparse else common.same_content(
            restored, final
        )
        if same is not True:
            r.update(
                status="FAILED",
                reason="restore: output differs from the image" if same is False else same,
            )
        r["output_allocated"] = common.allocated(restored)
        r["image_allocated"] = common.allocated(final)
        if tool.restore_null and r["status"] == "ok" and not sparse:
            common.remove(restored)
            _before(c)
            log(f"{prefix.rsplit('/', 1)[-1]}: restore to /dev/null")
            steps, why = common.run_phase(tool.restore_null(c), f"{prefix}-restore-null", env=env)
            out["restore_null"] = _step_result(
                tool, steps, why and f"restore to /dev/null: {why}", c, os.stat(final).st_size
            )
        return out
    finally:
        shutil.rmtree(c.scratch, ignore_errors=True)


def _summarize(runs, phases=None):
    phases = phases or PHASES
    """Per phase over the repeats: the fastest run's seconds (with its CPU
    and others), the largest peak RSS, sizes of the first run."""
    summary = {}
    for key in phases:
        got = [r[key] for r in runs if key in r]
        if not got:
            continue
        phase = common.Phase()
        for r in got:
            phase.add_run(r["_measurements"])
        j = phase.to_json()
        first = got[0]
        bad = [r for r in got if r["status"] != "ok"]
        j.update(
            {k: v for k, v in first.items() if k not in j and k != "_measurements"},
            status="FAILED" if bad else "ok",
            reason=bad[0]["reason"] if bad else None,
            seconds_all=[r["seconds"] for r in got],
        )
        for size_key in ("repo_bytes", "added_bytes"):
            if size_key in first:
                j[size_key + "_all"] = [r.get(size_key) for r in got]
        j["mb_per_s"] = _round(common.mb_per_s(j["image_bytes"], j["seconds"]))
        # The sync that followed the fastest run.
        fastest = min(got, key=lambda r: r["seconds"])
        j["sync_seconds"] = fastest.get("sync_seconds")
        j["sync_seconds_all"] = [r.get("sync_seconds") for r in got]
        if j["sync_seconds"] is not None:
            j["durable_seconds"] = round(j["seconds"] + j["sync_seconds"], 4)
        summary[key] = j
    extra = [r["restore_null"] for r in runs if "restore_null" in r]
    if extra:
        phase = common.Phase()
        for x in extra:
            phase.add_run(x["_measurements"])
        j = phase.to_json()
        j.update(status=extra[0]["status"], reason=extra[0]["reason"],
                 image_bytes=extra[0]["image_bytes"])
        j["mb_per_s"] = _round(common.mb_per_s(j["image_bytes"], j["seconds"]))
        summary["restore_null"] = j
    failures = [r[k] for r in runs for k in ["init"] + list(phases) if k in r
                and r[k]["status"] != "ok"]
    incomplete = any(k not in r for r in runs for k in phases)
    status = "FAILED" if failures or incomplete else "ok"
    reason = failures[0]["reason"] if failures else None
    return {"status": status, "reason": reason, "phases": summary,
            "inspect": next((r["inspect"] for r in runs if "inspect" in r), None)}


def _round(x, digits=1):
    return None if x is None else round(x, digits)


def _scratch_root(name):
    root = os.path.join(common.work_dir(), name, "run")
    shutil.rmtree(root, ignore_errors=True)
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    return root, logs


def _parse_size_arg(text, what, minimum=1 << 20):
    try:
        size = common.parse_size(text)
    except ValueError as e:
        common.die(f"{what}: {e}", 2)
    if size < minimum:
        common.die(f"{what} must be at least {common.human(minimum)}", 2)
    return size


# ------------------------------------------------------------------- repo


def add_arguments(sub):
    p = sub.add_parser(
        "repo",
        help="diskdelta backup/restore vs restic, borg, diskdump 0.1.5",
        description="Three backups (first, two incrementals) and a restore, per tool.",
    )
    p.add_argument("--size", default="2G", help="base image size, K/M/G suffixes (default 2G)")
    p.add_argument(
        "--tools",
        help=f"subset of {','.join(TOOL_NAMES)} (with --remote: of {','.join(REMOTE_TOOLS)})",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per tool; the fastest counts per step"
    )
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument(
        "--encrypted",
        action="store_true",
        help="also diskdelta on an encrypted repository (init's default), with its own targets",
    )
    p.add_argument(
        "--remote",
        action="store_true",
        help="backups over ssh through a local sshd instead: diskdelta pull and push, "
        "diskdump's remote dump, restic over sftp, against `ssh cat` (see bench/README.md)",
    )
    _image_arguments(p)
    p.set_defaults(func=cmd_repo)

    s = sub.add_parser(
        "repo-sweep",
        help="diskdelta backup/restore at each chunk size",
        description="diskdelta alone: the repo sequence at each --chunk-size.",
    )
    s.add_argument("--size", default="1G", help="base image size (default 1G)")
    s.add_argument(
        "--chunk-sizes", default=SWEEP_CHUNKS, help=f"chunk sizes to try ({SWEEP_CHUNKS})"
    )
    s.add_argument("--repeat", type=int, default=1, help="runs per chunk size; fastest counts")
    s.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    _image_arguments(s)
    s.set_defaults(func=cmd_repo_sweep)

    m = sub.add_parser(
        "repo-memory",
        help="diskdelta backup/restore peak RSS on a 1 TiB sparse image",
        description="Backup, incremental backup and sparse restore of a 1 TiB sparse image.",
    )
    m.add_argument("--size", default="1T", help="image size (default 1T)")
    m.add_argument("--data", default="8M", help="data in the image, 1 MiB extents (default 8M)")
    m.add_argument(
        "--change", default="4M", help="changed before the 2nd backup, 1 MiB extents (default 4M)"
    )
    m.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    m.set_defaults(func=cmd_repo_memory)


def _image_arguments(p):
    p.add_argument(
        "--images",
        choices=("synthetic", "real"),
        default="synthetic",
        help="generated images (default), or the real set: a week of nightly backups of a "
        "file system of system files (bench/lib/real_images.py; needs root)",
    )
    p.add_argument("--fs", choices=("ext4", "xfs"), default="ext4",
                   help="with --images real: which file system (default ext4)")


def _repo_images(size, args=None):
    if args is not None and args.images == "real":
        import real_images

        _directory, paths, stamps = real_images.real_images(size, (args.fs,))
        _use_real_steps(args.fs, paths[args.fs])
        return paths[args.fs], stamps
    names = [s[1] for s in STEPS]
    directory, stamps = common.standard_images(size, names)
    return [os.path.join(directory, n) for n in names], stamps


def cmd_repo(args):
    size = _parse_size_arg(args.size, "--size")
    if args.repeat < 1:
        common.die("--repeat must be at least 1", 2)
    if args.remote:
        import repo_remote  # imports this module

        if args.encrypted:
            common.die("--encrypted and --remote cannot be combined", 2)
        names = common.parse_list(args.tools or ",".join(REMOTE_TOOLS), REMOTE_TOOLS, "tools")
        return repo_remote.cmd_repo_remote(args, size, names)
    names = common.parse_list(args.tools or ",".join(TOOL_NAMES), TOOL_NAMES, "tools")
    tools = [t for t in PEERS if t.name in names]
    if args.encrypted:
        if "diskdelta" not in names:
            common.die("--encrypted compares with the plain diskdelta: keep it in --tools", 2)
        tools.insert([t.name for t in tools].index("diskdelta") + 1, ENCRYPTED)
    machine = common.machine_info()
    skipped, features = _prepare(tools, args.no_build)
    images, stamps = _repo_images(size, args)
    root, logs = _scratch_root("repo")
    common.warm_cache(images)
    busy, load_warning = common.load_check()

    runs = {t.name: [] for t in tools if t.name not in skipped}
    for i in range(args.repeat):
        # Repeats outside, tools inside: drift over time hits every tool.
        for t in tools:
            if t.name in skipped:
                continue
            log(f"{t.name} run {i + 1}/{args.repeat}")
            c = Ctx(os.path.join(root, t.name), features=features)
            r = run_sequence(t, c, images, logs, os.path.join(logs, f"{t.name}-{i}"))
            runs[t.name].append(r)
            _log_run(t.name, r)
    results = {}
    for t in tools:
        if t.name in skipped:
            results[t.name] = {"status": "skipped", "reason": skipped[t.name]}
        else:
            results[t.name] = _summarize(runs[t.name])
    reference = _write_reference(images[-1], root, logs, args.repeat)
    unlock = None
    if args.encrypted and results.get(ENCRYPTED.name, {}).get("status") == "ok":
        unlock = _unlock_cost(os.path.join(root, ENCRYPTED.name), logs, max(3, args.repeat))
    report = {
        **common.report_header("repo", size, args.repeat, machine, busy, load_warning),
        "images": common.image_summaries(stamps),
        "steps": [{"phase": k, "image": img, "what": what} for k, img, what in STEPS],
        "tools": common.tool_versions(tools, skipped),
        "features": features,
        "results": results,
        "ratios": _ratios(results),
        "targets": _targets(results) + _encrypted_targets(results, unlock),
        "unlock": unlock,
        "write_reference": reference,
        "logs": logs,
    }
    _print_repo(report)
    common.write_json(os.path.join(common.work_dir(), "results-repo.json"), report)
    return 0 if results.get("diskdelta", {}).get("status") in ("ok", None) else 1


def _write_reference(image, root, logs, repeat):
    """What writing the restored image costs here without any tool: `dd
    bs=1M` (every byte through user space, like a restore that writes
    zeros too) and `cp --sparse=always --reflink=never` (the kernel copies
    the data extents only), both left in the page cache; then the same
    made durable as a restore makes its output before it appears: `cp`
    followed by `sync FILE`, and `dd oflag=direct conv=sparse,fsync` (the
    data blocks straight to the disk, one stream). Same conditions as a
    restore; best of repeat."""
    out = os.path.join(root, "reference.img")
    commands = {
        "dd bs=1M": ["dd", f"if={image}", f"of={out}", "bs=1M", "status=none"],
        "cp --sparse=always": ["cp", "--sparse=always", "--reflink=never", image, out],
        "cp --sparse=always + sync": [
            "sh", "-c", 'cp --sparse=always --reflink=never "$1" "$2" && sync "$2"', "cp",
            image, out,
        ],
        "dd direct+fsync": [
            "dd", f"if={image}", f"of={out}", "bs=4M", "oflag=direct", "conv=sparse,fsync",
            "status=none",
        ],
    }
    result = []
    for name, argv in commands.items():
        phase = common.Phase()
        for i in range(repeat):
            common.remove(out)
            common.warm_cache([image])
            common.settle()
            steps, why = common.run_phase(
                [argv], os.path.join(logs, f"reference-{'-'.join(name.replace('+', ' ').split())}-{i}")
            )
            phase.add_run(steps)
            if why:
                break
        common.remove(out)
        j = phase.to_json()
        j.update(name=name, argv=argv, status="FAILED" if why else "ok", reason=why)
        j["mb_per_s"] = _round(common.mb_per_s(os.stat(image).st_size, j["seconds"]))
        result.append(j)
    return result


def _log_run(name, r):
    parts = []
    for k in PHASES:
        if k in r:
            parts.append(f"{k} {r[k]['seconds']:.2f} s {r[k]['status']}")
    bad = [r[k]["reason"] for k in ("init",) + tuple(PHASES) if k in r and r[k].get("reason")]
    log(f"{name}: " + ", ".join(parts) + (f" ({bad[0]})" if bad else ""))


def _div(a, b):
    return a / b if a is not None and b else None


def _peak_rss(result):
    values = [p["max_rss_kib"] for p in result.get("phases", {}).values()
              if p.get("max_rss_kib") is not None]
    return max(values) if values else None


def _ratios(results):
    """diskdelta against each peer that finished: speed = peer s / diskdelta
    s (> 1: diskdelta faster); size and RSS = diskdelta / peer (< 1:
    diskdelta smaller)."""
    dd = results.get("diskdelta", {})
    if dd.get("status") != "ok":
        return []
    out = []
    for name, r in results.items():
        if name == "diskdelta" or r.get("status") != "ok":
            continue
        q = {"peer": name}
        for k in PHASES:
            q[k + "_speed"] = _round(_div(r["phases"][k]["seconds"], dd["phases"][k]["seconds"]), 3)
        q["restore_sync_speed"] = _round(
            _div(r["phases"]["restore"].get("durable_seconds"),
                 dd["phases"]["restore"].get("durable_seconds")),
            3,
        )
        q["repo_size"] = _round(
            _div(dd["phases"][_last()]["repo_bytes"], r["phases"][_last()]["repo_bytes"]), 3
        )
        q["peak_rss"] = _round(_div(_peak_rss(dd), _peak_rss(r)), 3)
        out.append(q)
    return out


def _unlock_cost(root, logs, repeat):
    """Seconds and peak RSS of opening the encrypted repository alone
    (`snapshots -q`: the Argon2id unlock and a listing), best of repeat:
    the fixed cost every command on it pays, whatever the image size."""
    c = Ctx(root)
    # The runs' repositories are gone by now: a fresh, empty one costs the
    # same to open (one key file, default Argon2id parameters).
    shutil.rmtree(c.repo, ignore_errors=True)
    env = {"DISKDELTA_PASSWORD": DISKDELTA_PASSWORD}
    steps, why = common.run_phase([[common.DISKDELTA, "init", "-q", "-r", c.repo]],
                                  os.path.join(logs, "unlock-init"), env=env)
    if why:
        return {"status": "FAILED", "reason": why}
    phase = common.Phase()
    for i in range(repeat):
        steps, why = common.run_phase(
            [[common.DISKDELTA, "snapshots", "-q", "-r", c.repo]],
            os.path.join(logs, f"unlock-{i}"),
            env=env,
        )
        if why:
            return {"status": "FAILED", "reason": why}
        phase.add_run(steps)
    j = phase.to_json()
    j["status"] = "ok"
    return j


def _encrypted_targets(results, unlock):
    """The encryption issue's targets: encrypted against plain (speed, size)
    and against restic, each also without the fixed unlock cost."""
    dd, en, rs = (results.get(n, {}) for n in ("diskdelta", ENCRYPTED.name, "restic"))
    if dd.get("status") != "ok" or en.get("status") != "ok":
        return []
    p, e = dd["phases"], en["phases"]
    fixed = (unlock or {}).get("seconds") or 0.0
    out = []

    def target(name, value, text, met, without_unlock=None):
        out.append({"name": name, "value": value, "target": text,
                    "met": None if value is None else met(value),
                    "without_unlock": without_unlock})

    for k, what in (("backup1", "first backup"), ("restore", "restore")):
        plain_s, enc_s = p[k]["seconds"], e[k]["seconds"]
        target(f"encrypted {what} vs plain", _div(plain_s, enc_s), ">= 0.85x the speed",
               lambda v: v >= 0.85, _div(plain_s, enc_s - fixed) if enc_s > fixed else None)
    if rs.get("status") == "ok":
        rs_s, enc_s = rs["phases"]["backup1"]["seconds"], e["backup1"]["seconds"]
        target("encrypted first backup vs restic", _div(rs_s, enc_s), ">= 3x faster",
               lambda v: v >= 3, _div(rs_s, enc_s - fixed) if enc_s > fixed else None)
    target("encrypted repository vs plain", _div(e[_last()]["repo_bytes"], p[_last()]["repo_bytes"]),
           "<= 1.01x", lambda v: v <= 1.01)
    return out


def _targets(results):
    """The issue's targets for diskdelta, each with its value and whether it
    is met (None when a value is missing)."""
    dd, rs = results.get("diskdelta", {}), results.get("restic", {})
    if dd.get("status") != "ok":
        return []
    p = dd["phases"]
    out = []

    def target(name, value, text, met):
        out.append({"name": name, "value": value, "target": text,
                    "met": None if value is None else met(value)})

    have_restic = rs.get("status") == "ok"
    rp = rs.get("phases", {}) if have_restic else {}

    def speed(k):
        return _div(rp[k]["seconds"], p[k]["seconds"]) if have_restic else None

    target("first backup vs restic", speed("backup1"), f">= {FIRST_TARGET:g}x faster",
           lambda v: v >= FIRST_TARGET)
    size = _div(p[_last()]["repo_bytes"], rp[_last()]["repo_bytes"]) if have_restic else None
    target(f"repository after {len(STEPS)} backups vs restic", size, f"<= {SIZE_TARGET:g}x",
           lambda v: v <= SIZE_TARGET)
    for k in [s[0] for s in STEPS[1:]]:
        target(f"incremental {k} vs restic", speed(k), f">= {INCREMENTAL_TARGET:g}x faster",
               lambda v: v >= INCREMENTAL_TARGET)
    rate = _div(p["restore"]["image_bytes"], p["restore"]["seconds"])
    target("restore to a file", rate, f">= {RESTORE_TARGET / 1e9:g} GB/s",
           lambda v: v >= RESTORE_TARGET)
    out[-1]["with_sync"] = _div(p["restore"]["image_bytes"], p["restore"].get("durable_seconds"))
    target("peak RSS", _peak_rss(dd), f"<= {RSS_TARGET_MIB} MiB",
           lambda v: v <= RSS_TARGET_MIB * 1024)
    return out


# ----------------------------------------------------------------- output


def _mb(n):
    return None if n is None else f"{n / 1e6:,.1f}"


def _mib(kib):
    return None if kib is None else f"{kib / 1024:.0f}"


def _x(v, spec):
    return None if v is None else format(v, spec) + "x"


def _print_repo(report):
    m = report["machine"]
    print()
    print(f"diskdelta repository vs peers, base image {common.human(report['size'])}")
    for name, s in report["images"].items():
        print(f"  {name}: {s.get('summary', '')}")
    for s in report["steps"]:
        print(f"  {s['phase']}: {s['image']} ({s['what']})")
    print(f"  restore: the last snapshot to a file, then cmp with {STEPS[-1][1]}")
    print(
        f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; best of {report['repeat']} "
        "run(s) per step; MB = 10^6 bytes; MB/s = image bytes / wall s; CPU s = user + system"
    )
    print(
        "  +sync s: a `sync` right after the step (writeback the tool left to the kernel; "
        "not in seconds); repo MB:"
    )
    print(
        "  du -sb of the repository after the step (caches outside it); added MB: growth in "
        "that step; others: cores busy"
    )
    print("  with anything else (noise)")
    print()
    rows, footnotes = [], []
    for name, r in report["results"].items():
        if r["status"] == "skipped":
            if r["reason"] not in footnotes:
                footnotes.append(r["reason"])
            rows.append([name, "-"] + [None] * 9 + [f"skipped [{footnotes.index(r['reason']) + 1}]"])
            continue
        for k in PHASES:
            ph = r["phases"].get(k)
            if ph is None:
                continue
            status = ph["status"]
            if ph.get("reason"):
                if ph["reason"] not in footnotes:
                    footnotes.append(ph["reason"])
                status += f" [{footnotes.index(ph['reason']) + 1}]"
            ok = ph["status"] == "ok"
            rows.append(
                [
                    name,
                    k,
                    common.fmt(ph["seconds"], ".2f"),
                    common.fmt(ph.get("sync_seconds"), ".2f"),
                    common.fmt(ph["mb_per_s"], ".0f") if ok else None,
                    common.fmt(ph["cpu_seconds"], ".2f"),
                    _mib(ph["max_rss_kib"]),
                    _mb(ph.get("repo_bytes")),
                    _mb(ph.get("added_bytes")),
                    _mb(ph.get("output_allocated")),
                    common.fmt(ph["other_cores"], ".1f"),
                    status,
                ]
            )
        if not r["phases"] and r.get("reason"):  # init failed
            if r["reason"] not in footnotes:
                footnotes.append(r["reason"])
            rows.append(
                [name, "init"] + [None] * 9 + [f"FAILED [{footnotes.index(r['reason']) + 1}]"]
            )
    common.print_table(
        ["tool", "step", "seconds", "+sync s", "MB/s", "CPU s", "RSS MiB", "repo MB",
         "added MB", "out alloc MB", "others", "status"],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")
    if report["repeat"] > 1:
        print("  every run's seconds and sizes are in the JSON")

    if report["ratios"]:
        print()
        print("diskdelta relative to each peer (speed: peer s / diskdelta s, >1 = diskdelta "
              "faster; repo size")
        print(f"after {_last()} and peak RSS over all steps: diskdelta / peer, <1 = diskdelta "
              "smaller)")
        print()
        keys = [s[0] for s in STEPS]
        common.print_table(
            ["peer"] + [f"{k} speed" for k in keys] + ["restore speed",
             "restore+sync speed", "repo size", "peak RSS"],
            [
                [q["peer"]]
                + [_x(q[f"{k}_speed"], ".2f") for k in keys]
                + [
                    _x(q["restore_speed"], ".2f"),
                    _x(q["restore_sync_speed"], ".2f"),
                    _x(q["repo_size"], ".3f"),
                    _x(q["peak_rss"], ".3f"),
                ]
                for q in report["ratios"]
            ],
        )
    _print_targets(report["targets"])
    null = report["results"].get("diskdelta", {}).get("phases", {}).get("restore_null")
    if null and null["status"] == "ok":
        print(
            f"  diskdelta restore to /dev/null (the same restore without writing a file): "
            f"{null['seconds']:.2f} s ({null['mb_per_s'] / 1000:.2f} GB/s), "
            f"{null['cpu_seconds']:.2f} CPU s, {_mib(null['max_rss_kib'])} MiB"
        )
    ref = report.get("write_reference") or []
    if ref:
        image = report["steps"][-1]["image"]
        print(
            f"  for scale, writing {image} to a file here without any tool: "
            + "; ".join(
                f"{r['name']} {r['seconds']:.2f} s ({r['mb_per_s'] / 1000:.2f} GB/s)"
                if r["status"] == "ok" else f"{r['name']} failed ({r['reason']})"
                for r in ref
            )
        )
    print()
    print("tools:")
    if report["features"].get("restic_no_scan") is False:
        print("  (restic: no --no-scan before restic 0.15, so it ran without it; for one file "
              "the scan is a stat)")
    for name, t in report["tools"].items():
        print(f"  {name}: {t['version'] or '-'}; {t['config']}")
    if report.get("load_warning"):
        print(f"note: {report['load_warning']}")
    u = report.get("unlock")
    if u and u.get("status") == "ok":
        print(f"encrypted repository: opening it (Argon2id unlock + listing) takes "
              f"{u['seconds']:.2f} s and {(u.get('max_rss_kib') or 0) / 1024:.0f} MiB, once per command")
    print(f"logs: {report['logs']}")


def _print_targets(targets):
    if not targets:
        return
    print()
    print("targets (diskdelta):")
    for t in targets:
        met = {True: "met", False: "MISSED", None: "unknown"}[t["met"]]
        v = t["value"]
        if t["name"] == "restore to a file":
            value = None if v is None else f"{v / 1e9:.2f} GB/s"
            if t.get("with_sync"):
                value += f", {t['with_sync'] / 1e9:.2f} GB/s with the sync after it"
        elif t["name"].endswith("peak RSS"):
            value = None if v is None else f"{v / 1024:.0f} MiB"
        else:
            value = _x(v, ".2f" if "speed" in t["name"] or "backup" in t["name"] else ".3f")
        extra = ""
        if t.get("without_unlock") is not None:
            extra = f" ({t['without_unlock']:.2f}x without the fixed key unlock)"
        print(f"  {t['name']}: {value or '-'} (target {t['target']}): {met}{extra}")


# ------------------------------------------------------------- repo-sweep


def _status_json(c):
    res = subprocess.run(
        [common.DISKDELTA, "status", "-r", c.repo, "--json"], capture_output=True, text=True
    )
    try:
        st = json.loads(res.stdout)
    except ValueError:
        st = {"error": (res.stderr.strip() or "no output")}
    st["index_bytes"] = common.dir_bytes(os.path.join(c.repo, "index"))
    st["snapshot_bytes"] = common.dir_bytes(os.path.join(c.repo, "snapshots"))
    return st


def cmd_repo_sweep(args):
    size = _parse_size_arg(args.size, "--size")
    if args.repeat < 1:
        common.die("--repeat must be at least 1", 2)
    chunks = []
    for text in args.chunk_sizes.split(","):
        text = text.strip()
        if text and text not in chunks:
            _parse_size_arg(text, "--chunk-sizes", minimum=1)
            chunks.append(text)
    if not chunks:
        common.die("--chunk-sizes: empty", 2)
    tool = DISKDELTA_TOOL
    machine = common.machine_info()
    skipped, _ = _prepare([tool], args.no_build)
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")
    images, stamps = _repo_images(size, args)
    root, logs = _scratch_root("repo-sweep")
    common.warm_cache(images)
    busy, load_warning = common.load_check()
    runs = {ch: [] for ch in chunks}
    for i in range(args.repeat):
        for ch in chunks:
            log(f"sweep: chunk size {ch} run {i + 1}/{args.repeat}")
            c = Ctx(os.path.join(root, "diskdelta"), chunk_size=ch)
            r = run_sequence(
                tool, c, images, logs, os.path.join(logs, f"chunk-{ch}-{i}"), inspect=_status_json
            )
            runs[ch].append(r)
            _log_run(f"chunk {ch}", r)
    results = [dict(chunk_size=ch, **_summarize(runs[ch])) for ch in chunks]
    report = {
        **common.report_header("repo-sweep", size, args.repeat, machine, busy, load_warning),
        "images": common.image_summaries(stamps),
        "tool": common.tool_versions([tool], {})["diskdelta"],
        "default_chunk_size": DEFAULT_CHUNK,
        "results": results,
        "logs": logs,
    }
    _print_sweep(report)
    common.write_json(os.path.join(common.work_dir(), "results-repo-sweep.json"), report)
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _print_sweep(report):
    m = report["machine"]
    print()
    print(
        f"diskdelta repository chunk-size sweep, base image {common.human(report['size'])}, "
        f"best of {report['repeat']} run(s)"
    )
    for name, s in report["images"].items():
        print(f"  {name}: {s.get('summary', '')}")
    print(
        f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; MB = 10^6 bytes; MB/s = "
        f"image bytes / wall s; repo MB: du -sb after the {len(STEPS)} backups; added: growth "
        "in"
    )
    print(
        "  the incremental backups; incr MB/s: their image bytes / their seconds; to null: "
        "restore to /dev/null; chunks: status --json; index, snapshots: du -sb of index/ and"
    )
    print(f"  snapshots/; * = the default ({report['default_chunk_size']})")
    print()
    rows, footnotes = [], []
    for r in report["results"]:
        p, st = r["phases"], r.get("inspect") or {}

        def get(k, key):
            return p.get(k, {}).get(key)

        incremental = [p.get(k[0], {}) for k in STEPS[1:]]
        added = sum(x.get("added_bytes") or 0 for x in incremental)
        incr_seconds = sum(x.get("seconds") or 0 for x in incremental)
        incr_bytes = sum(x.get("image_bytes") or 0 for x in incremental)

        status = r["status"]
        if r.get("reason"):
            if r["reason"] not in footnotes:
                footnotes.append(r["reason"])
            status += f" [{footnotes.index(r['reason']) + 1}]"
        rows.append(
            [
                r["chunk_size"] + (" *" if r["chunk_size"] == report["default_chunk_size"] else ""),
                _mb(get(_last(), "repo_bytes")),
                _mb(added),
                common.fmt(get("backup1", "mb_per_s"), ".0f"),
                common.fmt(common.mb_per_s(incr_bytes, incr_seconds), ".0f"),
                common.fmt(get("restore", "mb_per_s"), ".0f"),
                common.fmt(get("restore_null", "mb_per_s"), ".0f"),
                common.fmt(st.get("chunks"), ","),
                common.fmt(st.get("index_bytes"), ","),
                common.fmt(st.get("snapshot_bytes"), ","),
                _mib(_peak_rss(r)),
                common.fmt(max((x["other_cores"] for x in p.values()
                                if x.get("other_cores") is not None), default=None), ".1f"),
                status,
            ]
        )
    common.print_table(
        ["chunk", "repo MB", "added MB", "backup1 MB/s", "incr MB/s", "restore MB/s", "to null MB/s", "chunks", "index bytes", "snapshot bytes",
         "peak RSS MiB", "others", "status"],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")
    if report.get("load_warning"):
        print(f"note: {report['load_warning']}")
    print(f"logs: {report['logs']}")


# ------------------------------------------------------------ repo-memory


def _changed_copy(source, layout, path, change, extent):
    """path := source with CHANGE bytes rewritten, in EXTENT pieces: half
    over data extents the source has, half at new offsets (so both
    changed and new chunks occur). Reused while its stamp matches."""
    rng = random.Random(32)
    count = change // extent
    existing = sorted(rng.sample(layout["offsets"], min(len(layout["offsets"]), count // 2)))
    taken = set(layout["offsets"])
    fresh = []
    while len(existing) + len(fresh) < count:
        off = rng.randrange(layout["size"] // extent) * extent
        if off not in taken:
            taken.add(off)
            fresh.append(off)
    want = {"source": layout, "overwritten": existing, "added": sorted(fresh), "extent": extent}
    stamp = path + ".params"
    try:
        with open(stamp) as f:
            if json.load(f) == want and common.file_size(path) == layout["size"]:
                log(f"reusing {os.path.basename(path)}")
                return want
    except (OSError, ValueError):
        pass
    common.remove(stamp, path)
    log(
        f"making {os.path.basename(path)}: cp --sparse=always, then {count} x dd of "
        f"{extent} bytes ({len(existing)} over data, {len(fresh)} into holes)"
    )
    subprocess.run(["cp", "--sparse=always", source, path], check=True)
    for off in existing + fresh:
        common.write_random(path, off, extent)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return want


def cmd_repo_memory(args):
    size = _parse_size_arg(args.size, "--size", minimum=1 << 30)
    extent = 1 << 20
    data = _parse_size_arg(args.data, "--data")
    change = _parse_size_arg(args.change, "--change", minimum=2 * extent)
    if data % extent or change % extent or data > size // 4:
        common.die("--data and --change must be whole MiB, --data at most a quarter of --size", 2)
    tool = DISKDELTA_TOOL
    machine = common.machine_info()
    skipped, _ = _prepare([tool], args.no_build)
    if "diskdelta" in skipped:
        common.die(f"cannot run: {skipped['diskdelta']}")
    work = os.path.join(common.work_dir(), "repo-memory")
    os.makedirs(work, exist_ok=True)
    first = os.path.join(work, "src.img")
    second = os.path.join(work, "src2.img")
    layout = common.sparse_source(first, size, data // extent, extent, seed=31)
    changes = _changed_copy(first, layout, second, change, extent)
    root, logs = _scratch_root("repo-memory")
    common.warm_sparse(first)
    common.warm_sparse(second)
    _, load_warning = common.load_check()
    c = Ctx(os.path.join(root, "diskdelta"))
    # Two backups only: the third image of the sequence is the second one.
    r = _run_two(tool, c, [first, second], logs)
    result = _summarize([r], phases=("backup1", "backup2", "restore"))
    phases = result["phases"]
    report = {
        "command": "repo-memory",
        "date": common.now_iso(),
        "size": size,
        "source": layout,
        "changes": {k: v for k, v in changes.items() if k != "source"},
        "machine": machine,
        "load_warning": load_warning,
        "tool": common.tool_versions([tool], {})["diskdelta"],
        "rss_target_mib": RSS_TARGET_MIB,
        "result": result,
        "logs": logs,
    }
    print()
    print(
        f"diskdelta repository on a {common.human(size)} sparse image: "
        f"{len(layout['offsets'])} extents of {common.human(extent)} random data; before the "
        f"2nd backup {len(changes['overwritten'])} of them rewritten and "
        f"{len(changes['added'])} written into holes"
    )
    print(
        "  MB/s = image size / wall s; repo MB: du -sb after the step; out alloc: blocks "
        f"allocated by the restored file; target: peak RSS <= {RSS_TARGET_MIB} MiB"
    )
    print()
    rows = []
    for k, label in (("backup1", "backup 1"), ("backup2", "backup 2 (changed)"),
                     ("restore", "restore")):
        ph = phases.get(k)
        if not ph:
            continue
        rows.append(
            [
                label,
                common.fmt(ph["seconds"], ".2f"),
                common.fmt(ph["mb_per_s"], ",.0f"),
                common.fmt(ph["cpu_seconds"], ".2f"),
                _mib(ph["max_rss_kib"]),
                _mb(ph.get("repo_bytes")),
                _mb(ph.get("added_bytes")),
                None if ph.get("output_allocated") is None
                else common.human(ph["output_allocated"]),
                common.fmt(ph["other_cores"], ".1f"),
                ph["status"] + (f" ({ph['reason']})" if ph.get("reason") else ""),
            ]
        )
    common.print_table(
        ["phase", "seconds", "MB/s", "CPU s", "RSS MiB", "repo MB", "added MB", "out alloc",
         "others", "status"],
        rows,
    )
    if result.get("reason") and not rows:
        print(f"  FAILED: {result['reason']}")
    rss = _peak_rss(result)
    if rss is not None:
        met = "met" if rss <= RSS_TARGET_MIB * 1024 else "MISSED"
        print(f"  peak RSS over all phases: {rss / 1024:.0f} MiB: {met}")
    st = result.get("inspect") or {}
    if st.get("chunks") is not None:
        print(
            f"  repository after the 2 backups: {st['chunks']:,} chunks of "
            f"{common.human(st.get('chunk_size'))}, {st.get('snapshots')} snapshots, index/ "
            f"{st['index_bytes']:,} bytes, snapshots/ {st['snapshot_bytes']:,} bytes"
        )
    out = phases.get("restore", {})
    if out.get("output_allocated") is not None:
        sparse = out["output_allocated"] <= 2 * out["image_allocated"] + (64 << 20)
        print(
            f"  restored file: {common.human(out['output_allocated'])} allocated for a "
            f"{common.human(size)} image whose source has {common.human(out['image_allocated'])} "
            f"allocated: {'sparse' if sparse else 'NOT sparse'}"
        )
        result["restore_sparse"] = sparse
    if load_warning:
        print(f"  note: {load_warning}")
    print(f"logs: {logs}")
    common.write_json(os.path.join(common.work_dir(), "results-repo-memory.json"), report)
    ok = result["status"] == "ok" and result.get("restore_sparse", False)
    return 0 if ok else 1


def _run_two(tool, c, images, logs):
    """run_sequence with two backups (STEPS' first two keys)."""
    return run_sequence(
        tool, c, images, logs, os.path.join(logs, "memory"), sparse=True, inspect=_status_json
    )
