//! A repository served to a client over the wire (`diskdelta serve
//! --repo PATH`, reached as `-r ssh://host/PATH`): after `OpenRepo` the
//! client sends tagged object operations (`Obj`) and gets `ObjReply`s, so
//! every command works on it as on a local directory.
//!
//! What arrives is checked before it is stored: content-named objects
//! (packs, index files, snapshots, key files) must hash to their name, so
//! a client can neither corrupt a stored object nor plant a wrong one
//! under a name another writer will use.
//!
//! **Append-only** (`--append-only`, for an `authorized_keys`
//! `command="..."` line): the client may read, add objects and remove the
//! locks it created in this session; every other delete, the sweep of
//! stale temporaries, and (always) any overwrite are refused. Stored
//! objects are never changed, so no sequence of allowed requests can make
//! an existing snapshot unrestorable. `--restrict-to-path` limits which
//! repositories a client may open.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::backend::{Backend, BackendError, LocalBackend};
use super::RepoError;
use crate::remote::message::{
    encode_listing, Message, ObjOp, ObjStatus, MAX_OBJ_PIECE, REPO_APPEND_ONLY,
};
use crate::remote::RemoteError;

/// Operations carried out at once (the rest wait in the queue).
const WORKERS: usize = 4;
/// Largest object a client may put (a full pack is ~37 MiB).
pub const MAX_PUT: usize = 256 << 20;

/// How `diskdelta serve` serves repositories.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The only repository this server opens (`--repo`).
    pub repo: Option<PathBuf>,
    /// Repositories must lie under one of these (`--restrict-to-path`).
    pub restrict_to: Vec<PathBuf>,
    /// Refuse deletes (`--append-only`).
    pub append_only: bool,
}

/// An absolute, normalized form of `path` (symlinks resolved as far as
/// the path exists, `..` removed lexically beyond that).
fn normalize(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut existing = absolute.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            existing = c;
            break;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing;
    for part in rest.iter().rev() {
        for c in Path::new(part).components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
    }
    out
}

/// The repository directory a client's `OpenRepo` path stands for, or why
/// it is refused.
///
/// # Errors
/// [`RemoteError::Refused`].
pub fn resolve_repository(options: &ServeOptions, asked: &Path) -> Result<PathBuf, RemoteError> {
    let asked = normalize(asked);
    if let Some(only) = &options.repo {
        let only = normalize(only);
        if asked != only {
            return Err(RemoteError::Refused(format!(
                "this server serves only the repository {} (asked for {})",
                only.display(),
                asked.display()
            )));
        }
    }
    if !options.restrict_to.is_empty()
        && !options
            .restrict_to
            .iter()
            .any(|allowed| asked.starts_with(normalize(allowed)))
    {
        return Err(RemoteError::Refused(format!(
            "repository {} is outside the paths this server allows",
            asked.display()
        )));
    }
    Ok(asked)
}

/// True when `key` names its content: the last part is the BLAKE3 of
/// the bytes (packs, index files, snapshots, key files).
fn content_named(key: &str) -> bool {
    ["data/", "index/", "snapshots/", "keys/"]
        .iter()
        .any(|p| key.starts_with(p))
}

fn check_content(key: &str, data: &[u8]) -> Result<(), String> {
    if !content_named(key) {
        return Ok(());
    }
    let name = key.rsplit('/').next().unwrap_or_default();
    if blake3::hash(data).to_hex().as_str() == name {
        Ok(())
    } else {
        Err("refused: the bytes sent do not hash to the object's name".into())
    }
}

/// The session's state shared by the workers.
struct Session<'a> {
    backend: LocalBackend,
    options: &'a ServeOptions,
    /// Locks this client created (the only objects an append-only client
    /// may delete).
    own_locks: Mutex<HashSet<String>>,
    replies: &'a Sender<Message>,
}

enum Outcome {
    Data(Vec<u8>),
    NotFound,
    Failed(String),
    Refused(String),
}

impl Session<'_> {
    fn own_locks(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.own_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run(&self, op: ObjOp) -> Outcome {
        let result = match op {
            ObjOp::Get { key, offset, len } => {
                let got = if offset == 0 && len == u64::MAX {
                    self.backend.get(&key)
                } else {
                    self.backend.get_range(&key, offset, len)
                };
                got.map(Outcome::Data)
            }
            ObjOp::Size { key } => self
                .backend
                .size(&key)
                .map(|n| Outcome::Data(n.to_le_bytes().to_vec())),
            ObjOp::Put { key, data, .. } => {
                if let Err(why) = check_content(&key, &data) {
                    return Outcome::Refused(why);
                }
                let stored = self.backend.put_if_absent(&key, &data);
                if let Ok(true) = stored {
                    if key.starts_with("locks/") {
                        self.own_locks().insert(key);
                    }
                }
                stored.map(|s| Outcome::Data(vec![u8::from(s)]))
            }
            ObjOp::List { prefix } => self.backend.list(&prefix).map(|objects| {
                Outcome::Data(encode_listing(
                    objects.iter().map(|o| (o.key.as_str(), o.size)),
                ))
            }),
            ObjOp::Delete { key } => {
                if self.options.append_only && !self.own_locks().remove(&key) {
                    return Outcome::Refused("refused: the repository is append-only".into());
                }
                self.backend
                    .delete(&key)
                    .map(|()| Outcome::Data(Vec::new()))
            }
            ObjOp::Sweep { age_secs } => {
                if self.options.append_only {
                    return Outcome::Refused("refused: the repository is append-only".into());
                }
                self.backend
                    .remove_stale_temporaries(std::time::Duration::from_secs(age_secs))
                    .map(|n| Outcome::Data((n as u64).to_le_bytes().to_vec()))
            }
        };
        match result {
            Ok(o) => o,
            Err(e) if e.is_not_found() => Outcome::NotFound,
            Err(BackendError::BadKey(k)) => Outcome::Refused(format!("invalid key {k:?}")),
            Err(e) => Outcome::Failed(crate::remote::error_chain(&e)),
        }
    }

    fn reply(&self, tag: u32, outcome: Outcome) -> Result<(), RemoteError> {
        let (status, data) = match outcome {
            Outcome::Data(d) => (ObjStatus::Ok, d),
            Outcome::NotFound => (ObjStatus::NotFound, Vec::new()),
            Outcome::Failed(m) => (ObjStatus::Failed, m.into_bytes()),
            Outcome::Refused(m) => (ObjStatus::Refused, m.into_bytes()),
        };
        let mut pieces = data.chunks(MAX_OBJ_PIECE).peekable();
        if pieces.peek().is_none() {
            return crate::remote::serve::send(
                self.replies,
                Message::ObjReply {
                    tag,
                    status: status as u8,
                    more: false,
                    data: Vec::new(),
                },
            );
        }
        while let Some(piece) = pieces.next() {
            crate::remote::serve::send(
                self.replies,
                Message::ObjReply {
                    tag,
                    status: status as u8,
                    more: pieces.peek().is_some(),
                    data: piece.to_vec(),
                },
            )?;
        }
        Ok(())
    }
}

/// Serves the repository a client opened with `OpenRepo` until it closes
/// the request stream.
///
/// # Errors
/// A refused path, protocol errors, a lost client.
pub fn serve_repository(
    options: &ServeOptions,
    path: &Path,
    requests: &Receiver<Message>,
    replies: &Sender<Message>,
) -> Result<(), RepoError> {
    let root = resolve_repository(options, path)?;
    crate::remote::serve::send(
        replies,
        Message::RepoOpened {
            flags: if options.append_only {
                REPO_APPEND_ONLY
            } else {
                0
            },
        },
    )?;
    let session = Session {
        backend: LocalBackend::new(&root),
        options,
        own_locks: Mutex::new(HashSet::new()),
        replies,
    };
    let (job_tx, job_rx) = bounded::<(u32, ObjOp)>(WORKERS);
    std::thread::scope(|s| -> Result<(), RepoError> {
        for _ in 0..WORKERS {
            let job_rx = job_rx.clone();
            let session = &session;
            s.spawn(move || {
                for (tag, op) in job_rx {
                    let outcome = session.run(op);
                    if session.reply(tag, outcome).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        // Puts arrive in pieces; each is assembled here before it is run.
        let mut puts: HashMap<u32, (String, Vec<u8>)> = HashMap::new();
        let result = (|| {
            for m in requests {
                let (tag, op) = match m {
                    Message::Obj { tag, op } => (tag, op),
                    other => return Err(RemoteError::unexpected(other.name(), "Obj").into()),
                };
                let op = match op {
                    ObjOp::Put { key, last, data } => {
                        let (put_key, buf) =
                            puts.entry(tag).or_insert_with(|| (key.clone(), Vec::new()));
                        if *put_key != key || buf.len() + data.len() > MAX_PUT {
                            return Err(RemoteError::Protocol(format!(
                                "put of {key}: pieces disagree or exceed {MAX_PUT} bytes"
                            ))
                            .into());
                        }
                        buf.extend_from_slice(&data);
                        if !last {
                            continue;
                        }
                        let (key, data) = puts.remove(&tag).unwrap_or_default();
                        ObjOp::Put {
                            key,
                            last: true,
                            data,
                        }
                    }
                    other => other,
                };
                if job_tx.send((tag, op)).is_err() {
                    return Err(RemoteError::Disconnected {
                        peer: "client".into(),
                    }
                    .into());
                }
            }
            Ok(())
        })();
        drop(job_tx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_after_normalization() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repos/a");
        std::fs::create_dir_all(&repo).expect("mkdir");
        let only = ServeOptions {
            repo: Some(repo.clone()),
            ..ServeOptions::default()
        };
        assert!(resolve_repository(&only, &repo).is_ok());
        assert!(resolve_repository(&only, &dir.path().join("repos/a/../a")).is_ok());
        assert!(resolve_repository(&only, &dir.path().join("repos/b")).is_err());
        let restricted = ServeOptions {
            restrict_to: vec![dir.path().join("repos")],
            ..ServeOptions::default()
        };
        assert!(resolve_repository(&restricted, &dir.path().join("repos/new")).is_ok());
        assert!(resolve_repository(&restricted, &dir.path().join("repos/../etc")).is_err());
        assert!(resolve_repository(&restricted, Path::new("/etc")).is_err());
    }

    #[test]
    fn content_named_objects_must_match_their_name() {
        let data = b"pack bytes";
        let name = blake3::hash(data).to_hex().to_string();
        assert!(check_content(&format!("data/{}/{name}", &name[..2]), data).is_ok());
        assert!(check_content(&format!("index/{name}"), b"other").is_err());
        assert!(check_content("locks/abc", b"anything").is_ok());
        assert!(check_content("config", b"anything").is_ok());
    }
}
