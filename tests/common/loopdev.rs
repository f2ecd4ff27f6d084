//! Real loop devices for the block-device tests.
//!
//! [`LoopDevice::attach`] writes a backing file in a fresh temporary
//! directory, attaches it with `losetup --find --show`, and detaches it on
//! drop. Tests only ever write to devices made here.
//!
//! When loop devices are impossible (not root, no `/dev/loop-control`, no
//! `losetup`, or attaching fails), `attach` prints why and returns `None`,
//! so the test returns early as skipped. Under CI (`CI=true`) that is a
//! failure instead: a CI machine must be able to run these tests.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::in_ci;

/// Serializes `losetup` calls within this test process: parallel
/// `--find --show` calls may race for the same free device.
static LOSETUP: Mutex<()> = Mutex::new(());

/// An attached loop device backed by a temporary file.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
    backing: PathBuf,
    size: u64,
    // Declared last: removed after the device was detached.
    _dir: tempfile::TempDir,
}

/// Reports that loop devices are unavailable: a skip, or a failure in CI.
fn unavailable(test: &str, reason: &str) -> Option<LoopDevice> {
    if in_ci() {
        panic!("{test}: loop device required under CI but unavailable: {reason}");
    }
    eprintln!("SKIPPED {test}: loop devices unavailable: {reason}");
    None
}

/// Why loop devices cannot work here, if that is clear before trying.
fn precondition_failure() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not root (euid {euid})"));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control does not exist".into());
    }
    match Command::new("losetup").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`losetup --version` failed with {}", out.status)),
        Err(e) => Some(format!("cannot run losetup: {e}")),
    }
}

impl LoopDevice {
    /// Attaches a loop device of `size` bytes (a multiple of 512) whose
    /// first bytes are `content` and whose rest is zeros. `test` names the
    /// caller in skip messages. `None` means "skip this test" (never under
    /// CI, where it panics instead).
    ///
    /// # Panics
    /// When `size` is not a multiple of 512 or smaller than `content`, when
    /// the temporary files cannot be written, and under CI when no device
    /// can be attached.
    pub fn attach(test: &str, content: &[u8], size: u64) -> Option<LoopDevice> {
        assert!(
            size.is_multiple_of(512),
            "loop device size must be a multiple of 512"
        );
        assert!(
            content.len() as u64 <= size,
            "content larger than the device"
        );
        if let Some(reason) = precondition_failure() {
            return unavailable(test, &reason);
        }
        let dir = super::tempdir();
        let backing = dir.path().join("backing.img");
        std::fs::write(&backing, content).expect("write loop backing file");
        File::options()
            .write(true)
            .open(&backing)
            .and_then(|f| f.set_len(size))
            .expect("size loop backing file");

        let mut last_error = String::new();
        for _attempt in 0..5 {
            let out = {
                let _serial = LOSETUP.lock().unwrap_or_else(|p| p.into_inner());
                Command::new("losetup")
                    .args(["--find", "--show"])
                    .arg(&backing)
                    .output()
            };
            match out {
                Ok(out) if out.status.success() => {
                    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    let device = PathBuf::from(name);
                    let dev = LoopDevice {
                        device,
                        backing,
                        size,
                        _dir: dir,
                    };
                    assert_eq!(
                        dev.device_size(),
                        size,
                        "{} does not have the size of its backing file",
                        dev.device.display()
                    );
                    return Some(dev);
                }
                Ok(out) => {
                    last_error = format!(
                        "`losetup --find --show` failed with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Err(e) => last_error = format!("cannot run losetup: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        unavailable(test, &last_error)
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The backing file.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The size requested at attach time.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size the kernel reports for the device.
    pub fn device_size(&self) -> u64 {
        let out = Command::new("blockdev")
            .arg("--getsize64")
            .arg(&self.device)
            .output()
            .expect("run blockdev --getsize64");
        assert!(
            out.status.success(),
            "blockdev --getsize64 {} failed: {}",
            self.device.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("blockdev prints a number")
    }

    /// Reads the whole device back through the device node.
    pub fn read_all(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(self.size as usize);
        File::open(&self.device)
            .and_then(|mut f| f.read_to_end(&mut data))
            .unwrap_or_else(|e| panic!("read {}: {e}", self.device.display()));
        assert_eq!(data.len() as u64, self.size, "short read of the device");
        data
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _serial = LOSETUP.lock().unwrap_or_else(|p| p.into_inner());
        for _attempt in 0..10 {
            match Command::new("losetup").arg("-d").arg(&self.device).output() {
                Ok(out) if out.status.success() => return,
                // Busy for a moment after the last close (udev probing).
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        eprintln!(
            "warning: could not detach {} (backing {})",
            self.device.display(),
            self.backing.display()
        );
    }
}
