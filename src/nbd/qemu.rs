//! The qemu tools diskdelta drives: `qemu-img info` (an image's format,
//! size, backing file and dirty bitmaps) and a private, read-only
//! `qemu-nbd` serving one image on a Unix socket in a 0700 temporary
//! directory.
//!
//! The server is stopped (killed and reaped) when its [`QemuNbd`] is
//! dropped, and killed by the interruption handling
//! ([`crate::io::cleanup`]) when the process is interrupted.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{Endpoint, NbdUri};

/// Errors of the qemu tools.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The tool is not installed.
    #[error("{tool} not found: install qemu-utils (Debian/Ubuntu: apt install qemu-utils)")]
    Missing { tool: &'static str },
    /// Starting or waiting for the tool failed.
    #[error("cannot run {tool}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    /// The tool failed.
    #[error("{tool} failed on {path}: {message}")]
    Failed {
        tool: &'static str,
        path: PathBuf,
        message: String,
    },
    /// `qemu-img info` printed something unexpected.
    #[error("cannot understand qemu-img info for {path}: {detail}")]
    Info { path: PathBuf, detail: String },
    /// The temporary directory for the socket.
    #[error("cannot create a private directory for qemu-nbd's socket")]
    TempDir { source: std::io::Error },
    /// qemu-nbd did not open its socket in time.
    #[error("qemu-nbd did not start serving {path} within {seconds} s")]
    Timeout { path: PathBuf, seconds: u64 },
}

/// One persistent dirty bitmap of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    /// Bytes per bit.
    pub granularity: u64,
    /// `in-use`: the image was not closed cleanly while the bitmap was
    /// being tracked, so it cannot be trusted.
    pub in_use: bool,
    /// `auto`: tracked whenever the image is written.
    pub auto: bool,
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub bitmaps: Vec<BitmapInfo>,
}

impl ImageInfo {
    /// Parses `qemu-img info --output=json` of one image.
    ///
    /// # Errors
    /// [`QemuError::Info`] when a needed field is missing.
    pub fn parse(path: &Path, json: &[u8]) -> Result<ImageInfo, QemuError> {
        let bad = |detail: &str| QemuError::Info {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let format = v["format"]
            .as_str()
            .ok_or_else(|| bad("no format"))?
            .to_string();
        let virtual_size = v["virtual-size"]
            .as_u64()
            .ok_or_else(|| bad("no virtual-size"))?;
        let backing_file = v["full-backing-filename"]
            .as_str()
            .or_else(|| v["backing-filename"].as_str())
            .map(str::to_string);
        let mut bitmaps = Vec::new();
        if let Some(list) = v["format-specific"]["data"]["bitmaps"].as_array() {
            for b in list {
                let name = b["name"]
                    .as_str()
                    .ok_or_else(|| bad("a bitmap without a name"))?;
                let flags: Vec<&str> = b["flags"]
                    .as_array()
                    .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                bitmaps.push(BitmapInfo {
                    name: name.to_string(),
                    granularity: b["granularity"].as_u64().unwrap_or(0),
                    in_use: flags.contains(&"in-use"),
                    auto: flags.contains(&"auto"),
                });
            }
        }
        Ok(ImageInfo {
            format,
            virtual_size,
            backing_file,
            bitmaps,
        })
    }

    /// The bitmap called `name`.
    pub fn bitmap(&self, name: &str) -> Option<&BitmapInfo> {
        self.bitmaps.iter().find(|b| b.name == name)
    }
}

/// Lets the child receive SIGINT, SIGTERM and SIGHUP: the CLI blocks them
/// in all its threads and a child inherits the mask, so without this a
/// qemu tool could not be stopped (nor stop with the terminal's Ctrl-C).
pub fn unblock_signals(cmd: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls are made:
    // sigemptyset and pthread_sigmask on a local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

fn spawn_error(tool: &'static str) -> impl Fn(std::io::Error) -> QemuError {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            QemuError::Missing { tool }
        } else {
            QemuError::Spawn { tool, source }
        }
    }
}

/// Runs `qemu-img info` on `path` (sharing the image with a writer that
/// may hold it, as a running VM does).
///
/// # Errors
/// qemu-img missing or failing, output not understood.
pub fn image_info(path: &Path) -> Result<ImageInfo, QemuError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "--"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(spawn_error("qemu-img"))?;
    if !out.status.success() {
        return Err(QemuError::Failed {
            tool: "qemu-img",
            path: path.to_path_buf(),
            message: first_line(&out.stderr),
        });
    }
    ImageInfo::parse(path, &out.stdout)
}

/// The format names of image headers that qemu probes by their first
/// bytes; a file starting otherwise is raw to qemu as well, so it is read
/// as it is without running qemu-img.
pub fn looks_like_image(head: &[u8]) -> bool {
    const MAGICS: [&[u8]; 8] = [
        b"QFI\xfb",               // qcow, qcow2
        b"QED\0",                 // qed
        b"KDMV",                  // vmdk (sparse extent)
        b"# Disk DescriptorFile", // vmdk (descriptor)
        b"vhdxfile",              // vhdx
        b"conectix",              // vpc (dynamic)
        b"LUKS\xba\xbe",          // luks
        b"WithoutFreeSpace",      // parallels
    ];
    MAGICS.iter().any(|m| head.starts_with(m))
        // vdi: a text banner, then the magic at 0x40.
        || head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe][..])
}

fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message");
    line.strip_prefix("qemu-img: ")
        .or_else(|| line.strip_prefix("qemu-nbd: "))
        .unwrap_or(line)
        .to_string()
}

/// How to start a private qemu-nbd.
#[derive(Debug, Clone)]
pub struct QemuNbdOptions {
    pub image: PathBuf,
    pub format: String,
    /// Export this persistent dirty bitmap (`--bitmap`).
    pub bitmap: Option<String>,
}

/// A running private qemu-nbd.
#[derive(Debug)]
pub struct QemuNbd {
    child: Child,
    socket: PathBuf,
    release: u64,
    // Removed (with the socket) after the child is gone.
    _dir: tempfile::TempDir,
}

/// How long qemu-nbd may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl QemuNbd {
    /// Starts `qemu-nbd --read-only` on a Unix socket in a private
    /// directory and waits until it accepts connections.
    ///
    /// # Errors
    /// qemu-nbd missing, exiting early (its first error line), or not
    /// serving in time.
    pub fn start(options: &QemuNbdOptions) -> Result<QemuNbd, QemuError> {
        let dir = tempfile::Builder::new()
            .prefix("diskdelta-nbd-")
            .tempdir()
            .map_err(|source| QemuError::TempDir { source })?;
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("--read-only")
            .arg("--persistent")
            .arg("--shared=8")
            .arg(format!("--format={}", options.format))
            .arg("--socket")
            .arg(&socket)
            .arg("--export-name=");
        if let Some(b) = &options.bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        cmd.arg("--")
            .arg(&options.image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        unblock_signals(&mut cmd);
        let private = dir.path().to_path_buf();
        // Spawned and registered for interruption in one step.
        let (child, release) = crate::io::cleanup::start_with_release(
            || {
                let child = cmd.spawn().map_err(spawn_error("qemu-nbd"))?;
                let pid = child.id() as libc::pid_t;
                let release = move || {
                    // SAFETY: kill(2) with a pid we spawned and have not
                    // reaped (the release is forgotten before the child is
                    // reaped).
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    let _ = std::fs::remove_dir_all(&private);
                };
                Ok((child, release))
            },
            || QemuError::Spawn {
                tool: "qemu-nbd",
                source: std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"),
            },
        )?;
        let mut server = QemuNbd {
            child,
            socket,
            release,
            _dir: dir,
        };
        server.wait_ready(&options.image)?;
        Ok(server)
    }

    fn wait_ready(&mut self, image: &Path) -> Result<(), QemuError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut stderr = Vec::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_end(&mut stderr);
                }
                return Err(QemuError::Failed {
                    tool: "qemu-nbd",
                    path: image.to_path_buf(),
                    message: first_line(&stderr),
                });
            }
            if self.socket.exists() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(QemuError::Timeout {
                    path: image.to_path_buf(),
                    seconds: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The URI of the export.
    pub fn uri(&self) -> NbdUri {
        NbdUri {
            endpoint: Endpoint::Unix {
                socket: self.socket.clone(),
            },
            export: String::new(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        // Killed, forgotten by the interruption handling, then reaped: a
        // release never signals a pid that may have been reused.
        let _ = self.child.kill();
        crate::io::cleanup::unregister_release(self.release);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_a_qcow2_with_bitmaps_and_a_backing_file() {
        // `qemu-img info --output=json` of a qcow2 made by qemu-img 8.2.
        let json = br#"{
            "children": [],
            "backing-filename-format": "qcow2",
            "virtual-size": 67108864,
            "filename": "top.qcow2",
            "cluster-size": 65536,
            "format": "qcow2",
            "actual-size": 200704,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
                "bitmaps": [
                    {"flags": ["auto"], "name": "b0", "granularity": 65536},
                    {"flags": ["in-use", "auto"], "name": "b1", "granularity": 65536}
                ], "refcount-bits": 16, "corrupt": false, "extended-l2": false}},
            "full-backing-filename": "/images/base.qcow2",
            "backing-filename": "base.qcow2",
            "dirty-flag": false
        }"#;
        let info = ImageInfo::parse(Path::new("top.qcow2"), json).expect("parses");
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(info.backing_file.as_deref(), Some("/images/base.qcow2"));
        let b0 = info.bitmap("b0").expect("b0");
        assert!(b0.auto && !b0.in_use);
        assert!(info.bitmap("b1").expect("b1").in_use);
        assert!(info.bitmap("b2").is_none());
        assert!(ImageInfo::parse(Path::new("x"), b"{}").is_err());
        assert!(ImageInfo::parse(Path::new("x"), b"not json").is_err());
    }

    #[test]
    fn image_magics() {
        assert!(looks_like_image(b"QFI\xfb\0\0\0\x03"));
        assert!(looks_like_image(b"KDMV"));
        assert!(!looks_like_image(b"\0\0\0\0"));
        assert!(!looks_like_image(&[0u8; 512]));
        assert!(!looks_like_image(b""));
    }
}
