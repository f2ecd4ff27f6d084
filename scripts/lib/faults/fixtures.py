"""What every fault case starts from, made once per run: the diskdelta
binary, 64 MiB images from the benchmark generator, deltas in every format
diskdelta reads, a repository with snapshots of them, and a diskdump store
made by the real diskdump tool."""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

from harness import ROOT, run, sha256_file, fresh_dir

IMAGE_SIZE = "64M"
# Small enough that a 64 MiB image is 256 chunks, many more than any
# pipeline holds in flight.
CHUNK_SIZE = "256K"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Tool:
    """The diskdelta binary with the environment every case shares."""

    def __init__(self, binary: str, timeout: float, stall_timeout: int):
        self.binary = binary
        self.timeout = timeout
        self.env = dict(os.environ)
        for var in ("DISKDELTA_REPO", "DISKDELTA_RSH"):
            self.env.pop(var, None)
        # A stalled peer is given up after this many seconds.
        self.env["DISKDELTA_TIMEOUT"] = str(stall_timeout)
        # Repositories are encrypted (the default), with the cheapest key
        # derivation: the faults are in the data, not in the password.
        self.env["DISKDELTA_PASSWORD"] = "diskdelta-faults"
        self.env["DISKDELTA_TESTONLY_WEAKEN_KDF"] = "1"

    def __call__(self, *args, timeout=None, env=None, **kw):
        full_env = dict(self.env, **(env or {}))
        return run([self.binary, *map(str, args)], timeout or self.timeout,
                   env=full_env, **kw)

    def ok(self, *args, **kw):
        result = self(*args, **kw)
        if result.rc != 0:
            raise SystemExit("fixture command failed: " + result.describe())
        return result


def build(root: str) -> dict:
    """Builds the debug binary and the image generator; returns their paths."""
    log("faults: cargo build --bin diskdelta --example gen_image")
    subprocess.run(["cargo", "build", "--quiet", "--profile", "test", "--bin", "diskdelta",
                    "--example", "gen_image"], cwd=root, check=True)
    return {"diskdelta": os.path.join(root, "target/debug/diskdelta"),
            "gen_image": os.path.join(root, "target/debug/examples/gen_image")}


class Fixtures:
    def __init__(self, work: str, tool: Tool, gen_image: str):
        self.work = work
        self.tool = tool
        self.gen = gen_image
        self.dir = os.path.join(work, "fixtures")
        self.scratch = os.path.join(work, "scratch")
        os.makedirs(self.dir, exist_ok=True)
        fresh_dir(self.scratch)
        self.hashes = {}

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def make_images(self) -> None:
        base, v1, v2 = self.path("base.img"), self.path("v1.img"), self.path("v2.img")
        if not os.path.exists(v2):
            for argv in (
                    [self.gen, "base", "--size", IMAGE_SIZE, "--seed", "1", "-o", base],
                    [self.gen, "mutate", "--input", base, "--change", "0.03",
                     "--cluster", "64K", "--seed", "2", "-o", v1],
                    [self.gen, "mutate", "--input", v1, "--change", "0.03",
                     "--cluster", "64K", "--seed", "3", "-o", v2 + ".tmp"]):
                subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
            os.rename(v2 + ".tmp", v2)
        near = self.path("near.img")
        if not os.path.exists(near):
            # base.img with every 7th 4 KiB block rotated by one byte: a
            # change only OLD makes compressible (zstd-ref records).
            with open(base, "rb") as f:
                data = bytearray(f.read())
            for at in range(0, len(data) - 4096, 7 * 4096):
                data[at:at + 4096] = data[at + 1:at + 4096] + data[at:at + 1]
            with open(near + ".tmp", "wb") as f:
                f.write(data)
            os.rename(near + ".tmp", near)
        for name in ("base.img", "v1.img", "v2.img", "near.img"):
            self.hashes[name] = sha256_file(self.path(name))

    def make_deltas(self) -> None:
        base, v1 = self.path("base.img"), self.path("v1.img")
        for name, extra in (("d.native", []), ("d.v2", ["--format", "diff-dd-v2"]),
                            ("d.native1", ["--format", "diskdelta-v1"])):
            if not os.path.exists(self.path(name)):
                self.tool.ok("diff", base, v1, "-o", self.path(name), "-q", *extra)
        if not os.path.exists(self.path("d.ref")):
            self.tool.ok("diff", base, self.path("near.img"), "-o", self.path("d.ref"), "-q")
        # A series base -> v1 -> v2 (d.native, then d.next), and a
        # signature of base.img for `diff --signature`.
        if not os.path.exists(self.path("d.next")):
            self.tool.ok("diff", v1, self.path("v2.img"), "-o", self.path("d.next"), "-q")
        if not os.path.exists(self.path("base.sig")):
            self.tool.ok("signature", base, "-o", self.path("base.sig"), "-q")
        if not os.path.exists(self.path("d.v1")):
            write_diffdd_v1(base, v1, self.path("d.v1"))
        pydiffdd = os.environ.get("DISKDELTA_TEST_PYDIFFDD")
        if pydiffdd and not os.path.exists(self.path("d.py")):
            subprocess.run([pydiffdd, "--if", base, "--df", v1, "--of",
                            self.path("d.py.tmp"), "-b", "8192"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.rename(self.path("d.py.tmp"), self.path("d.py"))

    def make_repo(self) -> None:
        repo = self.path("repo")
        if os.path.exists(repo + ".done"):
            return
        shutil.rmtree(repo, ignore_errors=True)
        self.tool.ok("init", "-r", repo, "--chunk-size", CHUNK_SIZE, "-q")
        for day, (image, name) in enumerate((("base.img", "a"), ("v1.img", "a"),
                                             ("v2.img", "b")), 1):
            self.tool.ok("backup", "-r", repo, self.path(image), "--name", name, "-q",
                         "--time", f"2026-12-0{day}")
        open(repo + ".done", "w").close()

    def snapshots(self, repo: str) -> list:
        result = self.tool("snapshots", "-r", repo, "--json", keep_stdout=True)
        if result.rc != 0:
            return []
        data = json.loads(result.stdout)
        return data["snapshots"] if isinstance(data, dict) else data

    def make_diskdump(self) -> bool:
        store = self.path("diskdump")
        if os.path.isdir(os.path.join(store, ".blockstore", "manifests")):
            return True
        try:
            out = subprocess.run(["bash", os.path.join(ROOT, "scripts/diskdump-venv"),
                                  os.path.join(ROOT, "target/diskdump-venv")],
                                 check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            log("faults: no diskdump tool: " + e.stderr.strip()[-300:])
            return False
        tool = out.stdout.strip().splitlines()[-1]
        tmp = store + ".tmp"
        fresh_dir(tmp)
        env = dict(os.environ, DISKDUMP_BASE=tmp)
        for image, date in (("base.img", "2026-12-01"), ("v1.img", "2026-12-02")):
            subprocess.run([tool, "import", self.path(image), "--as", "host:/dev/vda",
                            "--date", date], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.rename(tmp, store)
        return True


def write_diffdd_v1(old: str, new: str, out: str, sector: int = 512) -> None:
    """The C++ diff-dd v1 layout: per differing sector, LE u64 offset and
    the sector of NEW (docs/formats/diff-dd.md)."""
    step = 1 << 20
    with open(old, "rb") as a, open(new, "rb") as b, open(out + ".tmp", "wb") as o:
        pos = 0
        while True:
            x, y = a.read(step), b.read(step)
            if not y:
                break
            if x != y:
                for i in range(0, len(y), sector):
                    if x[i:i + sector] != y[i:i + sector]:
                        o.write(struct.pack("<Q", pos + i) + y[i:i + sector])
            pos += len(y)
    os.rename(out + ".tmp", out)


class Sshd:
    """A real OpenSSH daemon on 127.0.0.1 for the harness's lifetime, with
    a key of its own; the remote PATH starts with the binary's directory."""

    def __init__(self, work: str, binary_dir: str):
        self.dir = fresh_dir(os.path.join(work, "sshd"))
        self.proc = None
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.access(sshd, os.X_OK):
            self.why = "no sshd"
            return
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        key, host_key = os.path.join(self.dir, "id"), os.path.join(self.dir, "host")
        for path in (key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                           check=True)
        shutil.copy(key + ".pub", os.path.join(self.dir, "authorized_keys"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        with open(host_key + ".pub") as f:
            pub = " ".join(f.read().split()[:2])
        with open(os.path.join(self.dir, "known_hosts"), "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {pub}\n")
        path = f"{binary_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(f"""ListenAddress 127.0.0.1:{self.port}
HostKey {host_key}
AuthorizedKeysFile {self.dir}/authorized_keys
PidFile {self.dir}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 100
MaxSessions 100
LogLevel ERROR
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
SetEnv PATH={path} SHLVL=1
""")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", config],
                                     stderr=open(os.path.join(self.dir, "log"), "w"))
        self.ssh = ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", key,
                    "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=yes",
                    "-o", "UserKnownHostsFile=" + os.path.join(self.dir, "known_hosts"),
                    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]
        for _ in range(100):
            probe = run(self.ssh + ["127.0.0.1", "true"], 10)
            if probe.rc == 0:
                self.why = ""
                return
            time.sleep(0.1)
        self.why = "sshd did not accept a login: " + probe.stderr.strip()
        self.stop()

    def available(self) -> bool:
        return self.proc is not None

    def command(self) -> str:
        return " ".join(self.ssh)

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
