"""`bench/run s3`: diskdelta's repository on S3 next to restic's.

One S3 server on 127.0.0.1 (s3rver by default, moto with `--server moto`),
installed by scripts/s3-servers, started on a free port with its own data
directory and stopped at the end. For each tool a fresh bucket, then the
first two steps of `bench/run repo` and a restore, with the same images,
command lines, warming and timing (repo.run_sequence):

  init      diskdelta init / restic init (creates the bucket)
  backup1   base.img  first backup into the empty repository
  backup2   new.img   ~2% of the 4 KiB blocks rewritten in 64 KiB clusters
  restore   the last snapshot to a file, compared with new.img by cmp

Per step, beside seconds, CPU and peak RSS (GNU time): the HTTP requests
the server answered during the step (its own request log, one line per
response), the server's CPU seconds, and the bytes uploaded (growth of
`du -sb` of the bucket's directory in s3rver's data directory; with moto,
which keeps objects in memory, the growth of the listed object sizes).

Over https by default with s3rver (`--scheme auto`): restic cannot store
on s3rver over plain http (see S3RVER_HTTP_RESTIC), so both tools talk TLS
to it, trusting a CA made here through SSL_CERT_FILE (rustls' platform
verifier and Go's crypto/x509 both read it). moto runs on http.
"""

import dataclasses
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import common
import repo
from common import log

HOST = "127.0.0.1"
SERVERS_SCRIPT = os.path.join(common.REPO, "scripts", "s3-servers")
TOOLS_DIR = os.path.join(common.REPO, "target", "tools")
SERVERS = ["s3rver", "moto"]
TOOL_NAMES = ["diskdelta", "diskdelta-encrypted", "restic"]
SCHEMES = ["auto", "http", "https"]

common.APT_PACKAGES.update({"openssl": "openssl"})

# Why restic cannot use s3rver over plain http.
S3RVER_HTTP_RESTIC = (
    "s3rver 3.7.1 over http stores restic's uploads with their aws-chunked framing "
    "(restic's minio-go signs PUTs over plain http as STREAMING-AWS4-HMAC-SHA256-PAYLOAD; "
    "s3rver accepts that and keeps the body verbatim), so restic's repository is corrupt "
    "(`Fatal: Unmarshal: invalid character 'b' after top-level value`); use --scheme https"
)

FIRST_TARGET = 3.0  # first backup at least 3x as fast as restic's
INCREMENTAL_TARGET = 5.0  # incremental backup at least 5x as fast as restic's
RESTORE_TARGET = 2.0  # restore at least 2x as fast as restic's
RSS_TARGET_MIB = 256  # diskdelta's peak RSS over the backups and the restore

# (bucket, prefix) per tool: `s3:ENDPOINT/BUCKET/PREFIX`.
BUCKETS = {"diskdelta": ("dd-bench", "repo"), "diskdelta-encrypted": ("dd-bench", "encrypted"),
           "restic": ("restic-bench", "")}
STEPS = [
    ("backup1", "base.img", "first backup into an empty bucket"),
    ("backup2", "new.img", "~2% of 4 KiB blocks rewritten (64 KiB clusters)"),
]
PHASES = ["init"] + [s[0] for s in STEPS] + ["restore"]
TIMED = PHASES[1:]  # the phases with targets and ratios


# ----------------------------------------------------------------- server


def _installed_versions(paths):
    """{server: version installed at paths[server] or None}, asked the way
    scripts/s3-servers asks (without its pipe)."""
    out = {}
    res = _run_quiet([os.path.join(os.path.dirname(paths["moto"]), "python"), "-m", "pip",
                      "show", "moto"])
    m = re.search(r"^Version: (\S+)$", res, re.M)
    out["moto"] = m.group(1) if m else None
    out["s3rver"] = _run_quiet([paths["s3rver"], "--version"]).strip() or None
    return out


def _run_quiet(argv):
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout if res.returncode == 0 else ""


def _pinned_versions():
    with open(SERVERS_SCRIPT) as f:
        text = f.read()
    return {
        name: (re.search(rf'^readonly {var}="([^"]+)"', text, re.M) or [None, None])[1]
        for name, var in (("moto", "MOTO_VERSION"), ("s3rver", "S3RVER_VERSION"))
    }


def install_servers():
    """`scripts/s3-servers target/tools`, unless both servers are already
    there at the versions it pins (its own check reinstalls moto every
    time, see bench/README.md). Returns ({server: program}, {server:
    version})."""
    paths = {
        "moto": os.path.join(TOOLS_DIR, "moto", "bin", "moto_server"),
        "s3rver": os.path.join(TOOLS_DIR, "s3rver", "node_modules", ".bin", "s3rver"),
    }
    pinned = _pinned_versions()
    have = _installed_versions(paths)
    if have == pinned and all(os.access(p, os.X_OK) for p in paths.values()):
        log(f"S3 servers already installed in {TOOLS_DIR}: moto {have['moto']}, "
            f"s3rver {have['s3rver']}")
        return paths, have
    log(f"installing the S3 servers: scripts/s3-servers {TOOLS_DIR}")
    res = subprocess.run([SERVERS_SCRIPT, TOOLS_DIR], capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        common.die(f"scripts/s3-servers failed ({res.returncode}): {tail[0]}")
    found = dict(l.split("=", 1) for l in res.stdout.splitlines() if "=" in l)
    paths = {
        "moto": found.get("DISKDELTA_TEST_MOTO_SERVER", paths["moto"]),
        "s3rver": found.get("DISKDELTA_TEST_S3RVER", paths["s3rver"]),
    }
    return paths, _installed_versions(paths)


# s3rver's request log. It logs through koa-logger, then cuts the first 16
# characters of each line: the length of the "  --> " prefix *with* colour
# codes. Without a terminal there are none, so method, path and status are
# cut away too; FORCE_COLOR=1 keeps them (the colour codes are removed here):
#   info: PUT /dd-bench/repo/data/3f/3f0c... 200 12ms 0b
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3RVER_REQUEST = re.compile(r"^info: ([A-Z]+) (\S+) (\d{3}) ")
# moto (werkzeug): 127.0.0.1 - - [04/Dec/2026 22:37:42] "PUT /foo/a/b HTTP/1.1" 200 -
_MOTO_REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')


class S3Server:
    """s3rver (`-d DATA -a 127.0.0.1 -p PORT`, not --silent: it logs one
    line per response) or moto's server mode (`-H 127.0.0.1 -p PORT`, in
    memory) on a free port, its output in DIR/server.log."""

    def __init__(self, kind, program, parent, scheme="http"):
        self.kind = kind
        self.program = program
        self.scheme = scheme
        self.dir = os.path.join(parent, f"{kind}-server")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "server.log")
        self.ca = os.path.join(self.dir, "ca.pem") if scheme == "https" else None
        self.cert = os.path.join(self.dir, "server.pem")
        self.key = os.path.join(self.dir, "server.key")
        self.proc = None
        self.port = None
        self.credentials = ("S3RVER", "S3RVER") if kind == "s3rver" else ("bench", "bench")
        self.pattern = _S3RVER_REQUEST if kind == "s3rver" else _MOTO_REQUEST

    @property
    def endpoint(self):
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def client_env(self):
        """What every client needs in its environment: the credentials and,
        over https, the CA to trust."""
        env = {"AWS_ACCESS_KEY_ID": self.credentials[0],
               "AWS_SECRET_ACCESS_KEY": self.credentials[1]}
        if self.ca:
            env["SSL_CERT_FILE"] = self.ca
        return env

    def location(self, bucket, prefix):
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")

    def argv(self):
        tls = []
        if self.kind == "s3rver":
            if self.ca:
                tls = ["--key", self.key, "--cert", self.cert]
            return [self.program, "-d", self.data, "-a", HOST, "-p", str(self.port), *tls]
        if self.ca:
            tls = ["-c", self.cert, "-k", self.key]
        return [self.program, "-H", HOST, "-p", str(self.port), *tls]

    def _make_certificates(self):
        """A CA (ca.pem) and a certificate for IP 127.0.0.1 signed by it
        (server.pem, server.key), with openssl."""
        def openssl(*args):
            res = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True,
                                 text=True)
            if res.returncode != 0:
                raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.strip()}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "7",
                "-subj", "/CN=diskdelta bench CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj",
                f"/CN={HOST}")
        with open(os.path.join(self.dir, "server.ext"), "w") as f:
            f.write(f"subjectAltName=IP:{HOST}\nextendedKeyUsage=serverAuth\n"
                    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.pem", "-days", "7", "-extfile", "server.ext")

    def start(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.data)
        if self.ca:
            self._make_certificates()
        env = dict(os.environ, FORCE_COLOR="1") if self.kind == "s3rver" else None
        last = "?"
        for _attempt in range(5):
            self.port = common.free_port(HOST)
            with open(self.log_path, "w") as logf:
                logf.write("$ " + " ".join(self.argv()) + "\n")
                logf.flush()
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                    start_new_session=True,
                )
            ready, last = self._wait_ready()
            if ready:
                log(f"{self.kind} listening on {self.endpoint} (pid {self.proc.pid}, "
                    f"log {self.log_path})")
                return
            self.stop()
            if "EADDRINUSE" not in last and "Address already in use" not in last:
                break
        raise RuntimeError(f"cannot start {self.kind}: {last}")

    def _wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}: {self.log_text()[-2000:]}"
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return True, None
            except OSError:
                time.sleep(0.05)
        return False, f"port {self.port} accepted no connection within 60 s"

    def stop(self):
        proc, self.proc = self.proc, None
        common.kill_tree(proc, self.kind)

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def settled_log_size(self, quiet=0.25, limit=10.0):
        """The log's size once it stopped growing for `quiet` seconds: the
        server writes a response's line when the response is finished,
        about when the client sees it."""
        size, since = os.path.getsize(self.log_path), time.monotonic()
        deadline = since + limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = os.path.getsize(self.log_path)
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return size

    def requests_between(self, start, end):
        """{total, by_method, errors (status >= 400)} of the request lines
        in the log's bytes [start, end)."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = f.read(end - start).decode(errors="replace")
        by_method, errors, total = {}, 0, 0
        for line in text.splitlines():
            m = self.pattern.search(_ANSI.sub("", line))
            if not m:
                continue
            total += 1
            by_method[m.group(1)] = by_method.get(m.group(1), 0) + 1
            errors += int(m.group(3)) >= 400
        return {"total": total, "by_method": dict(sorted(by_method.items())), "errors": errors}

    def cpu_seconds(self):
        """User + system CPU seconds of the server process so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                stat = f.read()
        except (OSError, AttributeError):
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, AttributeError):
            pass
        return None

    def bucket_dir(self, bucket):
        """Where s3rver keeps a bucket's objects (moto: None, in memory)."""
        return os.path.join(self.data, bucket) if self.kind == "s3rver" else None

    def objects(self, bucket, prefix):
        """(count, bytes) of the objects under prefix, by ListObjectsV2
        (unsigned: both servers answer anonymous requests); None if the
        bucket is missing or the listing fails."""
        count = size = 0
        token = None
        context = ssl.create_default_context(cafile=self.ca) if self.ca else None

        def local(tag):  # s3rver's namespace is not S3's (doc.s3.amazonaws.com)
            return tag.rsplit("}", 1)[-1]

        def text(elem, name):
            return next((c.text for c in elem if local(c.tag) == name), None)

        while True:
            query = {"list-type": "2", "prefix": f"{prefix}/" if prefix else ""}
            if token:
                query["continuation-token"] = token
            url = f"{self.endpoint}/{bucket}?{urllib.parse.urlencode(query)}"
            try:
                with urllib.request.urlopen(url, timeout=60, context=context) as res:
                    root = ET.fromstring(res.read())
            except (OSError, ET.ParseError):
                return None
            for c in root:
                if local(c.tag) == "Contents":
                    count += 1
                    size += int(text(c, "Size") or 0)
            token = text(root, "NextContinuationToken")
            if text(root, "IsTruncated") != "true" or not token:
                return count, size


class Observer:
    """repo.run_sequence's observer: what the server did during each timed
    step of one tool (see the module docstring)."""

    def __init__(self, server, bucket, prefix):
        self.server, self.bucket, self.prefix = server, bucket, prefix

    def _sizes(self):
        d = self.server.bucket_dir(self.bucket)
        listed = self.server.objects(self.bucket, self.prefix)
        return (common.dir_bytes(d) if d else None), listed

    def begin(self, _key):
        self.du, self.listed = self._sizes()
        self.offset = self.server.settled_log_size()
        self.cpu = self.server.cpu_seconds()

    def end(self, _key, steps):
        end = self.server.settled_log_size()
        cpu = self.server.cpu_seconds()
        du, listed = self._sizes()
        seen = self.server.requests_between(self.offset, end)
        server_cpu = None if cpu is None or self.cpu is None else round(cpu - self.cpu, 2)
        # "others" is the rest of the machine's load: without the server's.
        seconds = sum(m.seconds for m in steps)
        for m in steps:
            if m.other_cores is not None and server_cpu is not None and seconds > 0:
                m.other_cores = max(0.0, m.other_cores - server_cpu / seconds)
        if du is not None:
            uploaded = du - (self.du or 0)
        elif listed is not None:
            uploaded = listed[1] - (self.listed[1] if self.listed else 0)
        else:
            uploaded = None
        return {
            "requests": seen["total"],
            "requests_by_method": seen["by_method"],
            "request_errors": seen["errors"],
            "server_cpu_seconds": server_cpu,
            "uploaded_bytes": uploaded,
            "bucket_bytes": du,
            "objects": None if listed is None else listed[0],
            "object_bytes": None if listed is None else listed[1],
        }


# ------------------------------------------------------------------ tools


@dataclasses.dataclass
class S3Ctx(repo.Ctx):
    """repo.Ctx whose repository is an S3 location; what is read into the
    page cache before each step is the bucket's directory on the server
    (s3rver) and the tool's cache."""

    location: str = None
    bucket_path: str = None

    @property
    def repo(self):
        return self.location

    @property
    def state_dirs(self):
        return [d for d in (self.bucket_path, self.cache) if d]


def _tools(server):
    """repo.py's diskdelta and restic, with the server's credentials (and
    CA) in their environment (and diskdelta without its extra restore to
    /dev/null)."""
    creds = server.client_env
    peers = {t.name: t for t in repo.PEERS}

    def with_creds(env):
        return lambda c: {**env(c), **creds}

    dd, rs, en = peers["diskdelta"], peers["restic"], repo.ENCRYPTED
    return [
        dataclasses.replace(
            dd, env=with_creds(dd.env), restore_null=None,
            config="env AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [SSL_CERT_FILE=CA]; "
            "init -q --no-encryption -r "
            "s3:ENDPOINT/dd-bench/repo; backup SRC -r LOC --name disk --json; restore disk "
            "-r LOC -o OUT --json (defaults: 1 MiB chunks, 4 uploads in flight, region "
            "us-east-1, path-style for an IP endpoint)",
        ),
        dataclasses.replace(
            en, env=with_creds(en.env), restore_null=None,
            config="as diskdelta, into s3:ENDPOINT/dd-bench/encrypted, encrypted (init's "
            "default; DISKDELTA_PASSWORD, default Argon2id cost: one unlock per command)",
        ),
        dataclasses.replace(
            rs, env=with_creds(rs.env),
            config="env RESTIC_REPOSITORY=s3:ENDPOINT/restic-bench RESTIC_PASSWORD=... "
            "AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [SSL_CERT_FILE=CA]; init -q "
            "--cache-dir CACHE "
            "(creates the bucket); backup -q --cache-dir CACHE --host bench [--no-scan] SRC; "
            "restore latest -q --cache-dir CACHE --host bench --target OUT (defaults: 5 "
            "connections, path-style for an IP endpoint)",
        ),
    ]


# ---------------------------------------------------------------- command


def add_arguments(sub):
    p = sub.add_parser(
        "s3",
        help="diskdelta backup/restore to an S3 server (s3rver, moto) vs restic",
        description="First backup, incremental backup and restore through a local S3 "
        "server, per tool: seconds, peak RSS, HTTP requests, bytes uploaded.",
    )
    p.add_argument("--size", default="2G", help="base image size, K/M/G suffixes (default 2G)")
    p.add_argument(
        "--tools", default=",".join(TOOL_NAMES), help=f"subset of {','.join(TOOL_NAMES)}"
    )
    p.add_argument("--server", default="s3rver", choices=SERVERS,
                   help="S3 implementation (default s3rver: disk-backed, checks signatures)")
    p.add_argument("--scheme", default="auto", choices=SCHEMES,
                   help="the endpoint's scheme (default auto: https for s3rver, which restic "
                   "cannot use over http, http for moto)")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per tool; the fastest counts per step"
    )
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.set_defaults(func=cmd_s3)


def cmd_s3(args):
    size = repo._parse_size_arg(args.size, "--size")
    if args.repeat < 1:
        common.die("--repeat must be at least 1", 2)
    names = common.parse_list(args.tools, TOOL_NAMES, "tools")
    scheme = args.scheme
    if scheme == "auto":
        scheme = "https" if args.server == "s3rver" else "http"
    machine = common.machine_info()
    programs, versions = install_servers()
    if scheme == "https":
        missing = common.ensure_programs(["openssl"])
        if missing:
            common.die(f"openssl (for the server's certificate): {missing['openssl']}")
    skipped, features = repo._prepare([t for t in repo.PEERS if t.name in names], args.no_build)
    if scheme == "http" and args.server == "s3rver" and "restic" in names:
        skipped.setdefault("restic", S3RVER_HTTP_RESTIC)
        log(f"skipping restic: {S3RVER_HTTP_RESTIC}")
    directory, stamps = common.standard_images(size, [s[1] for s in STEPS])
    images = [os.path.join(directory, s[1]) for s in STEPS]
    root, logs = repo._scratch_root("s3")

    def body(server):
        return _run(args, size, names, machine, skipped, features, images, stamps, root, logs,
                    server, versions)

    return common.with_server(
        lambda: S3Server(args.server, programs[args.server], root, scheme), body, args.server
    )


def _run(args, size, names, machine, skipped, features, images, stamps, root, logs, server,
         versions):
    tools = [t for t in _tools(server) if t.name in names]
    common.warm_cache(images)
    busy, load_warning = common.load_check()
    runs = {t.name: [] for t in tools if t.name not in skipped}
    for i in range(args.repeat):
        for t in tools:
            if t.name in skipped:
                continue
            bucket, prefix = BUCKETS[t.name]
            if i:
                bucket += f"-{i + 1}"  # a fresh bucket for every run
            log(f"{t.name} run {i + 1}/{args.repeat}: {server.location(bucket, prefix)}")
            c = S3Ctx(os.path.join(root, t.name), features=features,
                      location=server.location(bucket, prefix),
                      bucket_path=server.bucket_dir(bucket))
            r = repo.run_sequence(t, c, images, logs, os.path.join(logs, f"{t.name}-{i}"),
                                  observer=Observer(server, bucket, prefix))
            runs[t.name].append(r)
            _log_run(t.name, r)
            if server.bucket_dir(bucket):
                # Never used again: give the disk back (s3rver reads buckets from disk).
                shutil.rmtree(server.bucket_dir(bucket), ignore_errors=True)
    results = {}
    for t in tools:
        if t.name in skipped:
            results[t.name] = {"status": "skipped", "reason": skipped[t.name]}
        else:
            results[t.name] = repo._summarize(runs[t.name], phases=PHASES)
    report = {
        **common.report_header("s3", size, args.repeat, machine, busy, load_warning),
        "images": common.image_summaries(stamps),
        "steps": [{"phase": k, "image": img, "what": what} for k, img, what in STEPS],
        "server": {
            "kind": server.kind,
            "version": versions.get(server.kind),
            "argv": server.argv(),
            "endpoint": server.endpoint,
            "tls": None if not server.ca else (
                "a CA and a certificate for 127.0.0.1 made with openssl (EC P-256); the "
                "clients trust the CA through SSL_CERT_FILE"),
            "peak_rss_kib": server.peak_rss_kib(),
            "request_counting": (
                "lines of s3rver's request log (koa-logger, one per response, run with "
                "FORCE_COLOR=1 so that method, path and status stay in the line)"
                if server.kind == "s3rver"
                else "lines of moto's (werkzeug's) request log, one per request"
            ),
            "uploaded_bytes": (
                "growth of du -sb DATA/BUCKET (objects and s3rver's metadata files)"
                if server.kind == "s3rver"
                else "growth of the sizes of the objects listed under the prefix"
            ),
        },
        "tools": common.tool_versions(tools, skipped),
        "features": features,
        "results": results,
        "ratios": _ratios(results),
        "targets": _targets(results),
        "logs": logs,
    }
    _print(report)
    common.write_json(os.path.join(common.work_dir(), "results-s3.json"), report)
    return 0 if results.get("diskdelta", {}).get("status") in ("ok", None) else 1


def _log_run(name, r):
    parts = [f"{k} {r[k]['seconds']:.2f} s {r[k].get('requests')} req {r[k]['status']}"
             for k in PHASES if k in r and "seconds" in r[k]]
    bad = [r[k]["reason"] for k in PHASES if k in r and r[k].get("reason")]
    log(f"{name}: " + ", ".join(parts) + (f" ({bad[0]})" if bad else ""))


def _phase(results, name, key):
    r = results.get(name, {})
    return r.get("phases", {}).get(key) if r.get("status") == "ok" else None


def _ratios(results, name="diskdelta"):
    """restic / diskdelta (or its encrypted variant) per timed step: seconds
    (> 1: diskdelta faster), requests and uploaded bytes (> 1: diskdelta
    needed fewer)."""
    out = {}
    for key in TIMED:
        dd, rs = _phase(results, name, key), _phase(results, "restic", key)
        if not dd or not rs:
            continue
        out[key] = {
            what: repo._round(repo._div(rs.get(what), dd.get(what)), 3)
            for what in ("seconds", "requests", "uploaded_bytes")
        }
    return out


def _targets(results):
    return _targets_of(results, "diskdelta", "") + _targets_of(
        results, "diskdelta-encrypted", "encrypted: "
    )


def _targets_of(results, name, label):
    if results.get(name, {}).get("status") != "ok":
        return []
    ratios = _ratios(results, name)
    out = []

    def target(name, value, text, met):
        out.append({"name": label + name, "value": value, "target": text,
                    "met": None if value is None else met(value)})

    for key, what, goal in (("backup1", "first backup vs restic", FIRST_TARGET),
                            ("backup2", "incremental backup vs restic", INCREMENTAL_TARGET),
                            ("restore", "restore speed vs restic", RESTORE_TARGET)):
        target(what, ratios.get(key, {}).get("seconds"), f">= {goal:g}x faster",
               lambda v, goal=goal: v >= goal)
    phases = results[name]["phases"]
    rss = [phases[k]["max_rss_kib"] for k in TIMED if phases.get(k, {}).get("max_rss_kib")]
    target("peak RSS", max(rss) if rss else None, f"<= {RSS_TARGET_MIB} MiB (backups and restore)",
           lambda v: v <= RSS_TARGET_MIB * 1024)
    return out


# ----------------------------------------------------------------- output


def _print(report):
    m, srv = report["machine"], report["server"]
    print()
    print(f"diskdelta repository on S3 ({srv['kind']} {srv['version'] or '?'} at "
          f"{srv['endpoint']}) vs restic, base image {common.human(report['size'])}")
    for name, s in report["images"].items():
        print(f"  {name}: {s.get('summary', '')}")
    for s in report["steps"]:
        print(f"  {s['phase']}: {s['image']} ({s['what']})")
    print(f"  restore: the last snapshot to a file, then cmp with {report['steps'][-1]['image']}")
    print(
        f"  machine: {m.get('cpus')} cores, {m.get('cpu', '?')}; best of {report['repeat']} "
        "run(s) per step; MB = 10^6 bytes; MB/s = image bytes / wall s"
    )
    print(f"  requests: {srv['request_counting']}, during the step; other: neither PUT nor GET;")
    print(f"  up MB: {srv['uploaded_bytes']} in the step; stored MB, objects: listing after "
          "the step;")
    print("  srv CPU s: the server's user + system seconds in the step; others: cores busy "
          "with anything but")
    print("  the tool and the server (noise)")
    print()
    rows, footnotes = [], []

    def note(reason):
        if reason not in footnotes:
            footnotes.append(reason)
        return f" [{footnotes.index(reason) + 1}]"

    for name, r in report["results"].items():
        if r["status"] == "skipped" or not r.get("phases"):
            status = "skipped" if r["status"] == "skipped" else "FAILED"
            rows.append([name, "-"] + [None] * 13 + [status + note(r.get("reason") or "?")])
            continue
        for k in PHASES:
            ph = r["phases"].get(k)
            if ph is None:
                continue
            by = ph.get("requests_by_method") or {}
            total = ph.get("requests")
            ok = ph["status"] == "ok"
            rows.append(
                [
                    name,
                    k,
                    common.fmt(ph["seconds"], ".2f"),
                    common.fmt(ph.get("mb_per_s"), ".0f") if ok and k != "init" else None,
                    common.fmt(ph["cpu_seconds"], ".2f"),
                    repo._mib(ph["max_rss_kib"]),
                    common.fmt(total, ","),
                    common.fmt(by.get("PUT", 0), ","),
                    common.fmt(by.get("GET", 0), ","),
                    None if total is None
                    else format(total - by.get("PUT", 0) - by.get("GET", 0), ","),
                    repo._mb(ph.get("uploaded_bytes")),
                    repo._mb(ph.get("object_bytes")),
                    common.fmt(ph.get("objects"), ","),
                    common.fmt(ph.get("server_cpu_seconds"), ".2f"),
                    common.fmt(ph["other_cores"], ".1f"),
                    ph["status"] + (note(ph["reason"]) if ph.get("reason") else ""),
                ]
            )
    common.print_table(
        ["tool", "step", "seconds", "MB/s", "CPU s", "RSS MiB", "requests", "PUT", "GET",
         "other", "up MB", "stored MB", "objects", "srv CPU s", "others", "status"],
        rows,
    )
    for i, text in enumerate(footnotes, 1):
        print(f"  [{i}] {text}")
    if report["ratios"]:
        print()
        print("restic / diskdelta per step (seconds: > 1 = diskdelta faster; requests, "
              "uploaded: > 1 = diskdelta fewer)")
        print()
        common.print_table(
            ["step", "seconds", "requests", "uploaded"],
            [
                [k, repo._x(q["seconds"], ".2f"), repo._x(q["requests"], ".2f"),
                 repo._x(q["uploaded_bytes"], ".2f")]
                for k, q in report["ratios"].items()
            ],
        )
    repo._print_targets(report["targets"])
    print()
    if srv.get("peak_rss_kib"):
        print(f"server: {' '.join(srv['argv'])}; peak RSS {srv['peak_rss_kib'] / 1024:.0f} MiB")
    print("tools:")
    if report["features"].get("restic_no_scan") is False:
        print("  (restic: no --no-scan before restic 0.15, so it ran without it)")
    for name, t in report["tools"].items():
        print(f"  {name}: {t['version'] or '-'}; {t['config']}")
    if report.get("load_warning"):
        print(f"note: {report['load_warning']}")
    print(f"logs: {report['logs']}")
