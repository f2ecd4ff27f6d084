"""The realistic image set: ext4 and xfs file systems of system files,
changed night after night the way a server's disk changes.

  <fs>-0.img   mkfs, loop mount, copy most of this machine's /usr into it,
               plus /var/log files and an SQLite database
  <fs>-N.img   <fs>-(N-1).img after one "night":
                 * package upgrades: newer .deb files of installed packages
                   (`apt-get download`, Debian's archive) unpacked over the
                   tree, as dpkg does (new file, then rename over the old)
                 * log files appended to (a few hundred lines each)
                 * the SQLite database: rows updated in place, rows added
                 * a directory tree deleted, another one added (space reused)
                 * fstrim

Nothing here is random bytes: every byte written is a byte of a real file,
a log line, or a database page. The generator is deterministic for a given
machine (sorted file lists, seeded choices); the file systems get fixed
UUIDs. Images are kept in work/real/ and remade only when this file or the
parameters change (a stamp beside each image, as for the synthetic set).

Needs root (loop mounts), mkfs.ext4, mkfs.xfs (xfsprogs, installed when
missing), apt-get download, dpkg-deb, fstrim.
"""

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile

import common
from common import die, log

FILESYSTEMS = ("ext4", "xfs")
NIGHTS = 7
# Trees copied into night 0, in this order, until the base budget is spent.
BASE_TREES = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib/python3.11",
    "/usr/lib/python3",
    "/usr/share/locale",
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/include",
    "/usr/share/perl",
    "/usr/share/i18n",
]
# Trees added one per night (the space freed by deletions gets reused).
ADDED_TREES = [
    "/usr/lib/gcc",
    "/usr/libexec",
    "/usr/share/vim",
    "/usr/share/icons",
    "/usr/share/java",
    "/usr/share/fonts",
    "/usr/share/terminfo",
    "/usr/share/mime",
]
# Trees deleted one per night (paths inside the image).
DELETED_TREES = [
    "usr/share/doc",
    "usr/share/locale/de",
    "usr/include/linux",
    "usr/share/man/fr",
    "usr/share/i18n/charmaps",
    "usr/share/locale/fr",
    "usr/lib/python3.11/test",
]
UPGRADES_PER_NIGHT = 20
LOG_FILES = 60
DEB_LIMIT = 40 << 20  # skip huge packages (kernels, firmware)


def _source_sha():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _run(argv, **kw):
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        die(f"{' '.join(argv)} failed: {(res.stderr or res.stdout).strip()[-400:]}")
    return res.stdout


def real_dir():
    path = os.path.join(common.work_dir(), "real")
    os.makedirs(path, exist_ok=True)
    return path


def _debs():
    """Newer versions of installed packages, downloaded once into
    work/tools/debs (sorted by name)."""
    directory = os.path.join(common.work_dir(), "tools", "debs")
    os.makedirs(directory, exist_ok=True)
    have = _usable_debs(directory)
    if len(have) >= UPGRADES_PER_NIGHT * NIGHTS // 2:
        return have
    listing = subprocess.run(
        ["apt", "list", "--upgradable"], capture_output=True, text=True
    ).stdout
    names = sorted(
        line.split("/", 1)[0] for line in listing.splitlines() if "upgradable from" in line
    )
    if len(names) < UPGRADES_PER_NIGHT:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        listing = subprocess.run(
            ["apt", "list", "--upgradable"], capture_output=True, text=True
        ).stdout
        names = sorted(
            line.split("/", 1)[0] for line in listing.splitlines() if "upgradable from" in line
        )
    log(f"real images: downloading {len(names)} upgradable packages into {directory}")
    for name in names:
        subprocess.run(["apt-get", "download", "-q", name], cwd=directory, capture_output=True)
    have = _usable_debs(directory)
    if not have:
        die("real images: apt-get download found no package to upgrade with")
    return have


def _usable_debs(directory):
    have = []
    for f in sorted(os.listdir(directory)):
        path = os.path.join(directory, f)
        if f.endswith(".deb") and os.path.getsize(path) <= DEB_LIMIT:
            have.append(path)
    return have


def _mkfs(fs, path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    if fs == "ext4":
        _run(["mkfs.ext4", "-q", "-F", "-U", "8b5f8a6e-3c1d-4e1a-9d2b-0d1e2f3a4b5c",
              "-E", "hash_seed=1f0e2d3c-4b5a-6978-8a9b-acbdcedf0f1e", path])
    else:
        missing = common.ensure_programs(["mkfs.xfs"])
        if missing:
            die(f"real images: mkfs.xfs: {missing['mkfs.xfs']}")
        _run(["mkfs.xfs", "-q", "-f", "-m", "uuid=2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809", path])


class Mounted:
    def __init__(self, path):
        self.path = path
        self.dir = tempfile.mkdtemp(prefix="real-mnt-")

    def __enter__(self):
        _run(["mount", "-o", "loop", self.path, self.dir])
        return self.dir

    def __exit__(self, *exc):
        subprocess.run(["fstrim", self.dir], capture_output=True)
        _run(["umount", self.dir])
        os.rmdir(self.dir)
        return False


def _copy_tree(src, root):
    dest = os.path.join(root, src.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _run(["cp", "-a", src, dest])


def _log_line(rng, n, i):
    hosts = ["web01", "db02", "cache03"]
    what = ["GET /api/v1/items", "POST /login", "session opened for user backup",
            "CRON[4121]: (root) CMD (run-parts /etc/cron.hourly)",
            "kernel: EXT4-fs (vda1): re-mounted", "systemd[1]: Started Daily apt activities."]
    return (f"Dec {1 + n:2d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:"
            f"{rng.randrange(60):02d} {rng.choice(hosts)} {rng.choice(what)} "
            f"id={rng.randrange(1 << 32):08x} seq={i}\n")


def _write_logs(root, rng, night):
    logs = os.path.join(root, "var", "log")
    os.makedirs(logs, exist_ok=True)
    for k in range(LOG_FILES):
        lines = rng.randrange(100, 600) if night else rng.randrange(2000, 20000)
        with open(os.path.join(logs, f"service{k:02d}.log"), "a") as f:
            f.writelines(_log_line(rng, night, i) for i in range(lines))


def _database(root, rng, night):
    directory = os.path.join(root, "var", "lib", "app")
    os.makedirs(directory, exist_ok=True)
    db = sqlite3.connect(os.path.join(directory, "inventory.sqlite3"))
    db.execute("create table if not exists item (id integer primary key, host text, "
               "path text, size integer, seen text, note text)")
    count = db.execute("select count(*) from item").fetchone()[0]
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]

    def row(i):
        return (i, f"host{rng.randrange(500)}", f"/srv/data/{rng.choice(words)}/{i}.dat",
                rng.randrange(1 << 30), f"2026-12-{1 + night:02d}",
                " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))))

    if count == 0:
        db.executemany("insert into item values (?,?,?,?,?,?)", (row(i) for i in range(300_000)))
    else:
        for _ in range(count // 50):
            i = rng.randrange(count)
            db.execute("update item set seen = ?, size = ?, note = ? where id = ?",
                       (f"2026-12-{1 + night:02d}", rng.randrange(1 << 30),
                        " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))), i))
        db.executemany("insert into item values (?,?,?,?,?,?)",
                       (row(i) for i in range(count, count + count // 100)))
    db.commit()
    db.close()


def _upgrade(root, debs, rng):
    for deb in rng.sample(debs, min(UPGRADES_PER_NIGHT, len(debs))):
        staging = tempfile.mkdtemp(prefix=".dpkg-", dir=root)
        res = subprocess.run(["dpkg-deb", "-x", deb, staging], capture_output=True, text=True)
        if res.returncode != 0:
            log(f"real images: skipping {os.path.basename(deb)}: {res.stderr.strip()[-200:]}")
            shutil.rmtree(staging)
            continue
        # dpkg's way: every file is written beside its target and renamed
        # over it, so an upgraded file gets new blocks.
        for dirpath, _dirs, files in os.walk(staging):
            rel = os.path.relpath(dirpath, staging)
            os.makedirs(os.path.join(root, rel), exist_ok=True)
            for name in files:
                src = os.path.join(dirpath, name)
                if os.path.islink(src) or not os.path.isfile(src):
                    continue
                dest = os.path.join(root, rel, name)
                if os.path.isdir(dest):
                    continue
                os.replace(src, dest)
        shutil.rmtree(staging)


def _night(root, n, debs, rng):
    _upgrade(root, debs, rng)
    _write_logs(root, rng, n)
    _database(root, rng, n)
    victim = os.path.join(root, DELETED_TREES[(n - 1) % len(DELETED_TREES)])
    shutil.rmtree(victim, ignore_errors=True)
    added = ADDED_TREES[(n - 1) % len(ADDED_TREES)]
    if os.path.isdir(added):
        _copy_tree(added, root)


def _base(root, budget, rng):
    used = 0
    for tree in BASE_TREES:
        if not os.path.isdir(tree):
            continue
        size = common.dir_bytes(tree) or 0
        if used + size > budget:
            continue
        _copy_tree(tree, root)
        used += size
    _write_logs(root, rng, 0)
    _database(root, rng, 0)


def real_images(size=2 << 30, filesystems=FILESYSTEMS, nights=NIGHTS):
    """Makes (or reuses) work/real/<fs>-<n>.img for n in 0..nights.
    Returns (directory, {fs: [paths night 0..nights]}, stamps)."""
    if os.geteuid() != 0:
        die("the real image set needs root (loop mounts)")
    directory = real_dir()
    params = {"size": size, "generator_sha256": _source_sha(), "nights": nights}
    out, stamps = {}, {}
    debs = None
    for fs in filesystems:
        paths = []
        for n in range(nights + 1):
            name = f"{fs}-{n}.img"
            path = os.path.join(directory, name)
            want = dict(params, fs=fs, night=n)
            want["digest"] = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()
            stamp_path = path + ".params"
            try:
                with open(stamp_path) as f:
                    have = json.load(f)
                if have.get("digest") == want["digest"] and common.file_size(path) == size:
                    paths.append(path)
                    stamps[name] = have
                    continue
            except (OSError, ValueError):
                pass
            # Everything after a remade image is remade too.
            for later in range(n, nights + 1):
                common.remove(os.path.join(directory, f"{fs}-{later}.img.params"))
            rng = random.Random(f"{fs}-{n}")
            tmp = path + ".tmp"
            common.remove(tmp)
            if n == 0:
                log(f"real images: making {name} (mkfs.{fs}, system files)")
                _mkfs(fs, tmp, size)
                with Mounted(tmp) as root:
                    _base(root, size * 6 // 10, rng)
            else:
                if debs is None:
                    debs = _debs()
                log(f"real images: making {name} (night {n})")
                _run(["cp", "--sparse=always", paths[-1], tmp])
                with Mounted(tmp) as root:
                    _night(root, n, debs, rng)
            os.replace(tmp, path)
            want["allocated"] = common.allocated(path)
            want["summary"] = (
                f"{fs}, night {n}: {common.human(want['allocated'])} allocated of "
                f"{common.human(size)}"
            )
            with open(stamp_path, "w") as f:
                json.dump(want, f, indent=1)
            stamps[name] = want
            paths.append(path)
        out[fs] = paths
    return directory, out, stamps
