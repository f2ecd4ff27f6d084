//! `diskdelta mount`: snapshots as a read-only FUSE tree,
//! `DIR/<name>/<time>.img`, each file a snapshot's image served by a
//! [`SnapshotImage`] (opened on first use), so that `losetup -r -P` or
//! `mount -o ro,loop` of one image gives the file system inside.
//!
//! FUSE is spoken by the `fuser` crate without libfuse: the mount itself
//! goes through `fusermount3`. A chunk that cannot be read or verified is
//! `EIO` for the read that covers it, never wrong bytes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

use crate::format::snapshot::Snapshot;
use crate::repo::image::{ImageError, ImageOptions, SnapshotImage};
use crate::repo::index::Index;
use crate::repo::Repository;

/// Errors of mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no snapshot to mount")]
    Empty,
}

/// How long the kernel may cache names and attributes (they never change).
const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = 1;

struct File {
    name: String,
    snapshot: Snapshot,
    image: OnceLock<Result<Arc<SnapshotImage>, String>>,
}

struct Dir {
    name: String,
    files: Vec<u64>,
}

/// The tree of one mount.
pub struct SnapshotTree {
    repo: Repository,
    index: Arc<Index>,
    options: ImageOptions,
    dirs: Vec<Dir>,
    files: Vec<File>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    time: SystemTime,
}

impl std::fmt::Debug for SnapshotTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTree")
            .field("dirs", &self.dirs.len())
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

/// Inode numbers: 1 the root, then the directories, then the files.
impl SnapshotTree {
    /// A tree of `snapshots`, grouped by name, each file named after its
    /// time (and its short id when two share a time).
    ///
    /// # Errors
    /// [`MountError::Empty`].
    pub fn new(
        repo: &Repository,
        index: Arc<Index>,
        mut snapshots: Vec<Snapshot>,
        options: ImageOptions,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<SnapshotTree, MountError> {
        if snapshots.is_empty() {
            return Err(MountError::Empty);
        }
        snapshots.sort_by(|a, b| {
            (&a.meta.name, a.meta.unix_time, a.meta.nanos).cmp(&(
                &b.meta.name,
                b.meta.unix_time,
                b.meta.nanos,
            ))
        });
        snapshots.dedup_by(|a, b| a.id == b.id);
        let mut tree = SnapshotTree {
            repo: repo.clone(),
            index,
            options,
            dirs: Vec::new(),
            files: Vec::new(),
            log,
            time: SystemTime::now(),
        };
        for snap in snapshots {
            let dir_name = safe_name(&snap.meta.name);
            if tree.dirs.last().is_none_or(|d| d.name != dir_name) {
                tree.dirs.push(Dir {
                    name: dir_name,
                    files: Vec::new(),
                });
            }
            let mut name = format!("{}.img", safe_name(&snap.meta.time));
            let dir = tree.dirs.len() - 1;
            if tree.dirs[dir]
                .files
                .iter()
                .any(|&f| tree.files[f as usize].name == name)
            {
                name = format!("{}-{}.img", safe_name(&snap.meta.time), snap.id.short());
            }
            tree.files.push(File {
                name,
                snapshot: snap,
                image: OnceLock::new(),
            });
            let n = tree.files.len() as u64 - 1;
            tree.dirs[dir].files.push(n);
        }
        Ok(tree)
    }

    fn dir_ino(&self, d: usize) -> u64 {
        2 + d as u64
    }

    fn file_ino(&self, f: usize) -> u64 {
        2 + self.dirs.len() as u64 + f as u64
    }

    fn file_of(&self, ino: u64) -> Option<usize> {
        let first = 2 + self.dirs.len() as u64;
        (ino >= first && ino < first + self.files.len() as u64).then(|| (ino - first) as usize)
    }

    fn dir_of(&self, ino: u64) -> Option<usize> {
        (ino >= 2 && ino < 2 + self.dirs.len() as u64).then(|| (ino - 2) as usize)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink, time) = if ino == ROOT {
            (
                FileType::Directory,
                0,
                0o555,
                2 + self.dirs.len() as u32,
                self.time,
            )
        } else if self.dir_of(ino).is_some() {
            (FileType::Directory, 0, 0o555, 2, self.time)
        } else {
            let f = &self.files[self.file_of(ino)?];
            let t = UNIX_EPOCH
                + Duration::from_secs(f.snapshot.meta.unix_time.max(0) as u64)
                + Duration::from_nanos(u64::from(f.snapshot.meta.nanos));
            (FileType::RegularFile, f.snapshot.meta.size, 0o444, 1, t)
        };
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 64 * 1024,
            flags: 0,
        })
    }

    fn image(&self, f: usize) -> Result<Arc<SnapshotImage>, String> {
        let file = &self.files[f];
        file.image
            .get_or_init(|| {
                SnapshotImage::with_index(
                    &self.repo,
                    file.snapshot.clone(),
                    self.index.clone(),
                    &self.options,
                )
                .map(Arc::new)
                .map_err(|e| crate::nbd::server::export::error_chain(&e))
            })
            .clone()
    }
}

/// A file name from snapshot text: `/` and NUL replaced.
fn safe_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match n.as_str() {
        "" | "." | ".." => format!("_{n}"),
        _ => n,
    }
}

impl Filesystem for SnapshotTree {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_string_lossy();
        let found = if parent == ROOT {
            self.dirs
                .iter()
                .position(|d| d.name == name)
                .map(|d| self.dir_ino(d))
        } else if let Some(d) = self.dir_of(parent) {
            self.dirs[d]
                .files
                .iter()
                .find(|&&f| self.files[f as usize].name == name)
                .map(|&f| self.file_ino(f as usize))
        } else {
            None
        };
        match found.and_then(|ino| self.attr(ino)) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let Some(f) = self.file_of(ino) else {
            return reply.error(libc::EISDIR);
        };
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.image(f) {
            Ok(_) => reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE),
            Err(e) => {
                (self.log)(&format!("{}: {e}", self.files[f].name));
                reply.error(libc::EIO)
            }
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(f) = self.file_of(ino) else {
            return reply.error(libc::EISDIR);
        };
        let image = match self.image(f) {
            Ok(i) => i,
            Err(_) => return reply.error(libc::EIO),
        };
        let offset = offset.max(0) as u64;
        if offset >= image.size() {
            return reply.data(&[]);
        }
        let n = (image.size() - offset).min(u64::from(size)) as usize;
        match image.read_segments(offset, n) {
            Ok(segments) if segments.len() == 1 && segments[0].data().is_some() => {
                reply.data(segments[0].data().unwrap_or(&[]))
            }
            Ok(segments) => {
                let mut buf = vec![0u8; n];
                let mut at = 0;
                for s in &segments {
                    s.copy_to(&mut buf[at..]);
                    at += s.len();
                }
                reply.data(&buf)
            }
            Err(e) => {
                if !matches!(e, ImageError::PastEnd { .. }) {
                    (self.log)(&format!(
                        "{}/{}: read of {offset}+{n} failed: {}",
                        self.files[f].snapshot.meta.name,
                        self.files[f].name,
                        crate::nbd::server::export::error_chain(&e)
                    ));
                }
                reply.error(libc::EIO)
            }
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        if ino == ROOT {
            for (d, dir) in self.dirs.iter().enumerate() {
                entries.push((self.dir_ino(d), FileType::Directory, dir.name.clone()));
            }
        } else if let Some(d) = self.dir_of(ino) {
            for &f in &self.dirs[d].files {
                entries.push((
                    self.file_ino(f as usize),
                    FileType::RegularFile,
                    self.files[f as usize].name.clone(),
                ));
            }
        } else {
            return reply.error(libc::ENOTDIR);
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted tree; unmounted when dropped or by `fusermount3 -u`.
pub struct Mount {
    session: fuser::Session<SnapshotTree>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").finish_non_exhaustive()
    }
}

impl Mount {
    /// Mounts `tree` read-only on `dir`; [`Mount::serve`] answers requests.
    ///
    /// # Errors
    /// [`MountError::Mount`]: no `/dev/fuse`, no `fusermount3`, a bad
    /// mount point.
    pub fn start(tree: SnapshotTree, dir: &Path) -> Result<Mount, MountError> {
        let options = [
            MountOption::RO,
            MountOption::FSName("diskdelta".into()),
            MountOption::Subtype("diskdelta".into()),
            MountOption::NoExec,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        let session =
            fuser::Session::new(tree, dir, &options).map_err(|source| MountError::Mount {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Mount { session })
    }

    /// Serves requests in this thread until the tree is unmounted.
    ///
    /// # Errors
    /// Reading from `/dev/fuse` fails.
    pub fn serve(mut self) -> std::io::Result<()> {
        self.session.run()
    }
}
