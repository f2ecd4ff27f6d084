//! Deploy on demand: when a remote host lacks `diskdelta` (or has one
//! that speaks another protocol version), copy a static binary there over
//! the same ssh connection that then runs it, and keep it in a per-user
//! cache for the next run.
//!
//! One ssh session does everything. Its remote command is a small POSIX
//! `sh` script ([`Deployment::script`]) that
//!
//! 1. runs `REMOTE_PATH --version`; if it prints [`protocol_line`] the
//!    installed binary speaks our protocol and is `exec`ed as usual;
//! 2. else looks for `DIR/diskdelta`, where `DIR` is
//!    `~/.cache/diskdelta/<version>-<blake3 prefix>` (mode 0700), and
//!    `exec`s it if its SHA-256 (computed there by `sha256sum`) is the one
//!    this side computed from the binary it would upload;
//! 3. else says `upload ARCH` (`uname -m`) and waits for one line from
//!    this side: `go` when the binary is for that architecture (otherwise
//!    this side closes the connection and names both architectures); then
//!    it makes the directory and says `ready` (or `nodir`), and
//!    it reads exactly the binary's size from stdin into a temporary file
//!    in `DIR`, checks its SHA-256, renames it to `DIR/diskdelta` (a cached
//!    file with another hash is never written into: it is replaced as a
//!    whole by the rename) and `exec`s it.
//!
//! Every state is one line `diskdelta-deploy WORD...` on stdout before the
//! first frame; after `exec` the session is an ordinary `serve` session.
//!
//! Why SHA-256 on the remote side: the check must be made by a tool we do
//! not upload (a tampered binary could vouch for itself), and `sha256sum`
//! is part of coreutils and busybox while a BLAKE3 tool rarely is. The
//! expected digest travels inside the script over the authenticated ssh
//! channel. The cache directory is named by the BLAKE3 of the binary, so
//! two builds of one version never share a file. The check and the `exec`
//! happen in one script inside a 0700 directory of the remote user: only
//! that user (or root) could swap the file in between.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::message::VERSION;
use super::ssh::shell_quote;

/// Environment variable naming the binary to upload.
pub const BINARY_ENV: &str = "DISKDELTA_DEPLOY_BINARY";

/// Environment variable naming the cache directory on remote hosts.
pub const DIR_ENV: &str = "DISKDELTA_DEPLOY_DIR";

/// The default cache directory on remote hosts (`~` is the remote home).
pub const DEFAULT_DIR: &str = "~/.cache/diskdelta";

/// The name a static binary has next to the running one (the `.deb`
/// installs it as `/usr/lib/diskdelta/diskdelta-static`).
pub const STATIC_NAME: &str = "diskdelta-static";

/// Prefix of the script's status lines.
const STATUS: &str = "diskdelta-deploy";

/// Lines of other output tolerated before the status line (a noisy login
/// shell), and their total size.
const MAX_NOISE_LINES: usize = 100;
const MAX_LINE: usize = 4096;

/// The line `diskdelta --version` prints for the wire protocol it speaks;
/// the deploy script looks for it to tell a compatible installed binary.
pub fn protocol_line() -> String {
    format!("wire protocol: {VERSION}")
}

/// Failures to deploy.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No binary to upload was found.
    #[error("no static diskdelta binary to deploy: {0}")]
    NoBinary(String),
    /// The binary to upload cannot be read.
    #[error("cannot read the binary to deploy {path}: {source}")]
    Read {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The binary to upload is not a Linux executable we understand.
    #[error("{path} is not a 64-bit little-endian ELF executable and cannot be deployed")]
    NotElf {
        /// Which.
        path: PathBuf,
    },
    /// The remote host runs another architecture.
    #[error("{host} is {remote_arch}, but the binary to deploy ({path}) is for {local_arch}: build one for {remote_arch} and name it in DISKDELTA_DEPLOY_BINARY")]
    Arch {
        /// Who.
        host: String,
        /// `uname -m` there.
        remote_arch: String,
        /// What the binary is for.
        local_arch: String,
        /// The binary.
        path: PathBuf,
    },
    /// The remote host has no `sha256sum` to check the binary with.
    #[error("cannot deploy to {host}: it has no sha256sum to verify the binary with (install coreutils or busybox there)")]
    NoSha256 {
        /// Who.
        host: String,
    },
    /// The uploaded file did not hash to the binary's digest.
    #[error("deploy to {host}: the uploaded binary arrived with another SHA-256 and was removed")]
    Corrupt {
        /// Who.
        host: String,
    },
    /// The cache directory cannot be made or written there.
    #[error("cannot deploy to {host}: cannot create or write {dir}, or it is not the user's own (set DISKDELTA_DEPLOY_DIR to another directory)")]
    Dir {
        /// Who.
        host: String,
        /// The directory.
        dir: String,
    },
    /// The remote script said something unexpected.
    #[error("deploy to {host}: unexpected answer {line:?}")]
    Unexpected {
        /// Who.
        host: String,
        /// What it said.
        line: String,
    },
    /// Sending the binary failed (the connection is gone).
    #[error("deploy to {host}: upload failed: {source}")]
    Upload {
        /// Who.
        host: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A binary ready to deploy: its bytes, digests and architecture.
pub struct Deployment {
    path: PathBuf,
    bytes: Vec<u8>,
    version: String,
    blake3: String,
    sha256: String,
    arch: &'static str,
    remote_root: String,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("path", &self.path)
            .field("size", &self.bytes.len())
            .field("blake3", &self.blake3)
            .field("arch", &self.arch)
            .finish()
    }
}

/// What the remote side ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// Its own `diskdelta`, which speaks our protocol.
    Installed,
    /// The cached binary, unchanged.
    Cached,
    /// A freshly uploaded binary (`replaced`: a cached file of another
    /// hash was there and is gone).
    Uploaded {
        /// A tampered or stale cached file was replaced.
        replaced: bool,
    },
}

impl Deployment {
    /// The binary to upload: `DISKDELTA_DEPLOY_BINARY`; else the running
    /// executable when it is statically linked; else `diskdelta-static`
    /// next to it, or in `../lib/diskdelta/` from it (where the Debian
    /// package puts it).
    ///
    /// # Errors
    /// [`DeployError::NoBinary`] when none is found.
    pub fn default_binary() -> Result<PathBuf, DeployError> {
        if let Some(p) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| {
            DeployError::NoBinary(format!(
                "cannot find the running executable: {e}; set {BINARY_ENV}"
            ))
        })?;
        if is_static(&exe) {
            return Ok(exe);
        }
        let dir = exe.parent().unwrap_or(Path::new("/"));
        let candidates = [
            dir.join(STATIC_NAME),
            dir.join("../lib/diskdelta").join(STATIC_NAME),
        ];
        for c in &candidates {
            if c.is_file() {
                return Ok(c.clone());
            }
        }
        Err(DeployError::NoBinary(format!(
            "{} is dynamically linked and there is no {} (build one with scripts/build-static and set {BINARY_ENV})",
            exe.display(),
            candidates[0].display()
        )))
    }

    /// Reads `path` and hashes it. `remote_root` is the cache directory on
    /// remote hosts (default [`DEFAULT_DIR`]; a leading `~/` is the remote
    /// home).
    ///
    /// # Errors
    /// The file cannot be read or is not an ELF executable.
    pub fn load(path: &Path, remote_root: Option<&str>) -> Result<Deployment, DeployError> {
        let bytes = std::fs::read(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let arch = elf_arch(&bytes).ok_or_else(|| DeployError::NotElf {
            path: path.to_path_buf(),
        })?;
        let blake3 = blake3::hash(&bytes).to_hex().to_string();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Deployment {
            path: path.to_path_buf(),
            bytes,
            version: env!("CARGO_PKG_VERSION").to_string(),
            blake3,
            sha256,
            arch,
            remote_root: remote_root
                .filter(|r| !r.is_empty())
                .unwrap_or(DEFAULT_DIR)
                .trim_end_matches('/')
                .to_string(),
        })
    }

    /// [`Deployment::load`] of [`Deployment::default_binary`], with the
    /// remote directory from `DISKDELTA_DEPLOY_DIR`.
    ///
    /// # Errors
    /// As those.
    pub fn from_env() -> Result<Deployment, DeployError> {
        let dir = std::env::var(DIR_ENV).ok();
        Deployment::load(&Deployment::default_binary()?, dir.as_deref())
    }

    /// The binary's path here.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Its BLAKE3, hex.
    pub fn blake3(&self) -> &str {
        &self.blake3
    }

    /// The architecture it runs on, as `uname -m` says it.
    pub fn arch(&self) -> &str {
        self.arch
    }

    /// The cache directory's name: `<version>-<first 16 hex digits of
    /// the BLAKE3>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.version, &self.blake3[..16])
    }

    /// The cache directory on the remote host, as a shell word (`$HOME`
    /// expanded there).
    fn remote_dir_word(&self) -> String {
        let dir = format!("{}/{}", self.remote_root, self.dir_name());
        match dir.strip_prefix("~/") {
            Some(rest) => format!("\"$HOME\"/{}", shell_quote(rest)),
            None => shell_quote(&dir),
        }
    }

    /// Where the binary lives on the remote host, for messages.
    pub fn remote_file(&self) -> String {
        format!("{}/{}/diskdelta", self.remote_root, self.dir_name())
    }

    /// The remote command: a `sh` script that runs `remote_path serve
    /// ARGS` when it speaks our protocol, else the cached binary, else
    /// receives it first (see the module docs).
    pub fn script(&self, remote_path: &str, sudo: bool, args: &[&str]) -> String {
        let mut serve_args = String::from("serve");
        for a in args {
            serve_args.push(' ');
            serve_args.push_str(&shell_quote(a));
        }
        let s = if sudo { "sudo -n " } else { "" };
        let script = format!(
            "say() {{ printf '{STATUS} %s\\n' \"$*\"; }}; \
             rp={rp}; d={dir}; f=\"$d/diskdelta\"; h={sha}; n={size}; \
             a=$(uname -m); \
             if v=$({s}\"$rp\" --version 2>/dev/null) && printf '%s\\n' \"$v\" | grep -qxF {proto}; then \
               say installed \"$a\"; exec {s}\"$rp\" {serve_args}; fi; \
             command -v sha256sum >/dev/null 2>&1 || {{ say nosha256 \"$a\"; exit 1; }}; \
             sum() {{ sha256sum \"$1\" 2>/dev/null | cut -d' ' -f1; }}; \
             if [ -f \"$f\" ] && [ ! -L \"$f\" ] && [ \"$(sum \"$f\")\" = \"$h\" ]; then \
               say cached \"$a\"; exec {s}\"$f\" {serve_args}; fi; \
             r=new; if [ -e \"$f\" ] || [ -L \"$f\" ]; then r=replace; fi; \
             say upload \"$a\" \"$r\"; \
             IFS= read -r go && [ \"$go\" = go ] || exit 1; \
             umask 077; mkdir -p \"$d\" && chmod 700 \"$d\" && [ -O \"$d\" ] || {{ say nodir; exit 1; }}; \
             say ready; \
             t=\"$d/.upload.$$\"; \
             head -c \"$n\" > \"$t\" || {{ rm -f \"$t\"; exit 1; }}; \
             [ \"$(sum \"$t\")\" = \"$h\" ] || {{ rm -f \"$t\"; say corrupt; exit 1; }}; \
             chmod 700 \"$t\" && mv -f \"$t\" \"$f\" || {{ rm -f \"$t\"; say nodir; exit 1; }}; \
             say uploaded; exec {s}\"$f\" {serve_args}",
            rp = shell_quote(remote_path),
            dir = self.remote_dir_word(),
            sha = self.sha256,
            size = self.bytes.len(),
            proto = shell_quote(&protocol_line()),
        );
        // The login shell of the remote user (any shell) parses the
        // command once; `sh -c` runs the script itself.
        format!("exec sh -c {}", shell_quote(&script))
    }

    /// This side of the script: reads its status lines from `reader`,
    /// uploads the binary through `writer` when asked, and returns what
    /// the remote side runs now. On success the next bytes of `reader` are
    /// the `serve` session's frames.
    ///
    /// `Ok(None)` means the stream ended before the script said anything:
    /// ssh or the remote shell failed, and the caller explains that from
    /// the exit status.
    ///
    /// # Errors
    /// Another architecture, no `sha256sum`, a corrupt upload, a failed
    /// upload, an unexpected line.
    pub fn bootstrap(
        &self,
        host: &str,
        reader: &mut impl BufRead,
        writer: &mut impl Write,
    ) -> Result<Option<Deployed>, DeployError> {
        let Some(words) = status_line(reader) else {
            return Ok(None);
        };
        let unexpected = |words: &[String]| DeployError::Unexpected {
            host: host.to_string(),
            line: words.join(" "),
        };
        match words.as_slice() {
            [w, _] if w == "installed" => return Ok(Some(Deployed::Installed)),
            [w, _] if w == "cached" => return Ok(Some(Deployed::Cached)),
            [w, _] if w == "nosha256" => {
                return Err(DeployError::NoSha256 {
                    host: host.to_string(),
                })
            }
            [w, arch, _] if w == "upload" && !same_arch(self.arch, arch) => {
                return Err(DeployError::Arch {
                    host: host.to_string(),
                    remote_arch: arch.clone(),
                    local_arch: self.arch.to_string(),
                    path: self.path.clone(),
                })
            }
            [w, _, _] if w == "upload" => {}
            _ => return Err(unexpected(&words)),
        }
        let replaced = words.get(2).is_some_and(|r| r == "replace");
        let upload = |e| DeployError::Upload {
            host: host.to_string(),
            source: e,
        };
        let dir_error = || DeployError::Dir {
            host: host.to_string(),
            dir: format!("{}/{}", self.remote_root, self.dir_name()),
        };
        writer
            .write_all(b"go\n")
            .and_then(|()| writer.flush())
            .map_err(upload)?;
        match status_line(reader) {
            Some(w) if w.first().is_some_and(|w| w == "ready") => {}
            Some(w) if w.first().is_some_and(|w| w == "nodir") => return Err(dir_error()),
            Some(w) => return Err(unexpected(&w)),
            None => return Ok(None),
        }
        let sent = writer.write_all(&self.bytes).and_then(|()| writer.flush());
        let status = status_line(reader);
        if let (Err(e), None) = (sent, &status) {
            return Err(upload(e));
        }
        match status {
            Some(w) if w.first().is_some_and(|w| w == "uploaded") => {
                Ok(Some(Deployed::Uploaded { replaced }))
            }
            Some(w) if w.first().is_some_and(|w| w == "corrupt") => Err(DeployError::Corrupt {
                host: host.to_string(),
            }),
            Some(w) if w.first().is_some_and(|w| w == "nodir") => Err(dir_error()),
            Some(w) => Err(unexpected(&w)),
            None => Ok(None),
        }
    }
}

/// The next status line's words after [`STATUS`], skipping other lines;
/// `None` at the end of the stream (or after too much noise).
fn status_line(reader: &mut impl BufRead) -> Option<Vec<String>> {
    for _ in 0..MAX_NOISE_LINES {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line);
        let mut words = text.split_whitespace();
        if words.next() == Some(STATUS) {
            return Some(words.map(str::to_string).collect());
        }
    }
    None
}

/// True when `uname -m` on the remote host names the architecture the
/// binary was built for.
fn same_arch(ours: &str, uname: &str) -> bool {
    match ours {
        "x86_64" => matches!(uname, "x86_64" | "amd64"),
        "aarch64" => matches!(uname, "aarch64" | "arm64" | "armv8l"),
        "riscv64" => uname == "riscv64",
        "ppc64le" => uname == "ppc64le",
        "s390x" => uname == "s390x",
        _ => false,
    }
}

/// The architecture of a 64-bit little-endian ELF executable, by
/// `e_machine`, named as `uname -m` names it.
fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    let header = bytes.get(..64)?;
    // Magic, 64-bit class, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    match machine {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        243 => Some("riscv64"),
        21 => Some("ppc64le"),
        22 => Some("s390x"),
        _ => Some("unknown"),
    }
}

/// True when the ELF file at `path` has no program interpreter
/// (`PT_INTERP`): statically linked, runs on any Linux of its
/// architecture.
pub fn is_static(path: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err() || elf_arch(&header).is_none() {
        return false;
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([header[o], header[o + 1]]));
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&header[32..40]);
    let phoff = u64::from_le_bytes(phoff);
    let (entsize, count) = (u16_at(54), u16_at(56));
    if entsize < 4 || count == 0 {
        return false;
    }
    let mut table = vec![0u8; (entsize * count) as usize];
    use std::io::{Seek, SeekFrom};
    if file.seek(SeekFrom::Start(phoff)).is_err() || file.read_exact(&mut table).is_err() {
        return false;
    }
    const PT_INTERP: u32 = 3;
    !table
        .chunks_exact(entsize as usize)
        .any(|entry| u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) == PT_INTERP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_skip_noise() {
        let mut input: &[u8] = b"welcome\ndiskdelta-deploy upload x86_64 new\nrest";
        assert_eq!(
            status_line(&mut input),
            Some(vec!["upload".into(), "x86_64".into(), "new".into()])
        );
        assert_eq!(input, b"rest");
        let mut empty: &[u8] = b"";
        assert_eq!(status_line(&mut empty), None);
    }

    #[test]
    fn architectures() {
        assert!(same_arch("x86_64", "x86_64"));
        assert!(same_arch("aarch64", "arm64"));
        assert!(!same_arch("x86_64", "aarch64"));
        assert!(!same_arch("unknown", "unknown"));
    }

    #[test]
    fn the_running_test_binary_is_an_elf_file() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("read exe");
        assert_eq!(elf_arch(&bytes), Some(std::env::consts::ARCH));
        assert!(elf_arch(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn remote_dir_expands_home_there() {
        let exe = std::env::current_exe().expect("current exe");
        let d = Deployment::load(&exe, None).expect("load");
        assert!(d.remote_dir_word().starts_with("\"$HOME\"/"));
        let d = Deployment::load(&exe, Some("/var/tmp/x y/")).expect("load");
        assert_eq!(
            d.remote_dir_word(),
            format!("'/var/tmp/x y/{}'", d.dir_name())
        );
    }
}
