//! A repository on another host, reached over ssh: `diskdelta serve
//! --repo PATH` runs there and this backend sends it tagged object
//! operations (spec: `docs/formats/wire.md`, "Repository service").
//!
//! Several threads may call at once (uploaders, restore readers): each
//! call takes a tag, sends its request and waits for its own replies,
//! which one thread routes by tag from the connection. A lost or stalled
//! connection fails every waiting call with the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::{Backend, BackendError, ObjectInfo};
use crate::remote::connection::{idle_timeout, Connection};
use crate::remote::message::{
    decode_listing, Message, ObjOp, ObjStatus, MAX_OBJ_PIECE, REPO_APPEND_ONLY,
};
use crate::remote::ssh::Remote;
use crate::remote::RemoteError;

type Reply = Result<(u8, bool, Vec<u8>), String>;

/// Calls waiting for replies, by tag; `None` once the connection is gone.
type Waiting = Arc<Mutex<Option<HashMap<u32, Sender<Reply>>>>>;

/// The repository served by `diskdelta serve` on another host.
pub struct SshBackend {
    location: String,
    conn: Mutex<Connection>,
    waiting: Waiting,
    /// Why the connection ended, once it did.
    lost: Arc<Mutex<Option<String>>>,
    next_tag: AtomicU32,
    append_only: bool,
}

impl std::fmt::Debug for SshBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshBackend")
            .field("location", &self.location)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SshBackend {
    /// Starts `diskdelta serve --repo PATH` on the host and opens the
    /// repository there (the directory need not exist yet: `init` makes
    /// it with its first put).
    ///
    /// # Errors
    /// ssh failures, a refused path, a version mismatch.
    pub fn connect(
        remote: &Remote,
        path: &str,
        location: String,
    ) -> Result<SshBackend, RemoteError> {
        let mut conn = Connection::remote_serve(remote, &["--repo", path])?;
        conn.send_hello()?;
        conn.send(Message::OpenRepo {
            flags: 0,
            path: path.as_bytes().to_vec(),
        })?;
        conn.expect_hello()?;
        let flags = match conn.recv()? {
            Message::RepoOpened { flags } => flags,
            other => return Err(RemoteError::unexpected(other.name(), "RepoOpened")),
        };
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let lost = Arc::new(Mutex::new(None));
        spawn_router(
            conn.replies().clone(),
            waiting.clone(),
            lost.clone(),
            remote.host.clone(),
        );
        Ok(SshBackend {
            location,
            conn: Mutex::new(conn),
            waiting,
            lost,
            next_tag: AtomicU32::new(1),
            append_only: flags & REPO_APPEND_ONLY != 0,
        })
    }

    fn gone(&self, op: &'static str, key: &str) -> BackendError {
        let why = lock(&self.lost).clone().unwrap_or_else(|| {
            let mut conn = lock(&self.conn);
            crate::remote::error_chain(&conn.failure())
        });
        BackendError::Remote {
            op,
            key: key.to_string(),
            message: why,
        }
    }

    /// Sends `pieces` (one request, or a put's pieces) under one tag and
    /// returns the reply's status and data.
    fn call(
        &self,
        op_name: &'static str,
        key: &str,
        pieces: Vec<ObjOp>,
    ) -> Result<(ObjStatus, Vec<u8>), BackendError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded::<Reply>();
        match lock(&self.waiting).as_mut() {
            Some(w) => {
                w.insert(tag, tx);
            }
            None => return Err(self.gone(op_name, key)),
        }
        let sent = {
            let mut conn = lock(&self.conn);
            pieces
                .into_iter()
                .try_for_each(|op| conn.send(Message::Obj { tag, op }))
        };
        if sent.is_err() {
            self.forget(tag);
            return Err(self.gone(op_name, key));
        }
        let mut data = Vec::new();
        loop {
            let reply = match idle_timeout() {
                Some(t) => rx.recv_timeout(t).map_err(|e| e.is_timeout()),
                None => rx.recv().map_err(|_| false),
            };
            match reply {
                Ok(Ok((status, more, piece))) => {
                    data.extend_from_slice(&piece);
                    if !more {
                        self.forget(tag);
                        let status = match status {
                            0 => ObjStatus::Ok,
                            1 => ObjStatus::NotFound,
                            2 => ObjStatus::Failed,
                            _ => ObjStatus::Refused,
                        };
                        return Ok((status, data));
                    }
                }
                Ok(Err(why)) => {
                    return Err(BackendError::Remote {
                        op: op_name,
                        key: key.to_string(),
                        message: why,
                    })
                }
                Err(true) => {
                    self.forget(tag);
                    let stalled = lock(&self.conn).stalled();
                    return Err(BackendError::Remote {
                        op: op_name,
                        key: key.to_string(),
                        message: stalled.to_string(),
                    });
                }
                Err(false) => return Err(self.gone(op_name, key)),
            }
        }
    }

    fn forget(&self, tag: u32) {
        if let Some(w) = lock(&self.waiting).as_mut() {
            w.remove(&tag);
        }
    }

    /// A call whose reply must be `Ok`.
    fn call_ok(
        &self,
        op_name: &'static str,
        key: &str,
        pieces: Vec<ObjOp>,
    ) -> Result<Vec<u8>, BackendError> {
        let (status, data) = self.call(op_name, key, pieces)?;
        let message = || String::from_utf8_lossy(&data).into_owned();
        match status {
            ObjStatus::Ok => Ok(data),
            ObjStatus::NotFound => Err(BackendError::NotFound {
                key: key.to_string(),
            }),
            ObjStatus::Failed | ObjStatus::Refused => Err(BackendError::Remote {
                op: op_name,
                key: key.to_string(),
                message: message(),
            }),
        }
    }
}

/// Routes replies to the calls waiting for them; when the connection
/// ends, fails every waiting call and refuses new ones.
fn spawn_router(
    replies: Receiver<Message>,
    waiting: Waiting,
    lost: Arc<Mutex<Option<String>>>,
    host: String,
) {
    let _ = std::thread::Builder::new()
        .name("repository replies".into())
        .spawn(move || {
            let why = loop {
                match replies.recv() {
                    Ok(Message::ObjReply {
                        tag,
                        status,
                        more,
                        data,
                    }) => {
                        let tx = lock(&waiting).as_ref().and_then(|w| w.get(&tag).cloned());
                        if let Some(tx) = tx {
                            let _ = tx.send(Ok((status, more, data)));
                        }
                    }
                    Ok(Message::Error { message, .. }) => break Some(format!("{host}: {message}")),
                    Ok(other) => {
                        break Some(format!("{host}: unexpected {} message", other.name()))
                    }
                    Err(_) => break None,
                }
            };
            if let Some(why) = &why {
                *lock(&lost) = Some(why.clone());
            }
            let calls = lock(&waiting).take().unwrap_or_default();
            let message = why.unwrap_or_else(|| format!("connection to {host} lost"));
            for tx in calls.into_values() {
                let _ = tx.send(Err(message.clone()));
            }
        });
}

fn u64_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl Backend for SshBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError> {
        self.get_range(key, 0, u64::MAX)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.call_ok(
            "get",
            key,
            vec![ObjOp::Get {
                key: key.to_string(),
                offset,
                len,
            }],
        )
    }

    fn size(&self, key: &str) -> Result<u64, BackendError> {
        self.call_ok(
            "size",
            key,
            vec![ObjOp::Size {
                key: key.to_string(),
            }],
        )
        .map(|d| u64_of(&d))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, BackendError> {
        let mut pieces: Vec<ObjOp> = data
            .chunks(MAX_OBJ_PIECE)
            .map(|piece| ObjOp::Put {
                key: key.to_string(),
                last: false,
                data: piece.to_vec(),
            })
            .collect();
        match pieces.last_mut() {
            Some(ObjOp::Put { last, .. }) => *last = true,
            _ => pieces.push(ObjOp::Put {
                key: key.to_string(),
                last: true,
                data: Vec::new(),
            }),
        }
        self.call_ok("put", key, pieces)
            .map(|d| d.first() == Some(&1))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let data = self.call_ok(
            "list",
            prefix,
            vec![ObjOp::List {
                prefix: prefix.to_string(),
            }],
        )?;
        let listing = decode_listing(&data).ok_or_else(|| BackendError::Remote {
            op: "list",
            key: prefix.to_string(),
            message: "malformed listing".into(),
        })?;
        Ok(listing
            .into_iter()
            .map(|(key, size)| ObjectInfo { key, size })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.call_ok(
            "delete",
            key,
            vec![ObjOp::Delete {
                key: key.to_string(),
            }],
        )
        .map(|_| ())
    }

    fn upload_concurrency(&self) -> usize {
        2
    }

    fn append_only(&self) -> bool {
        self.append_only
    }

    fn remove_stale_temporaries(&self, age: std::time::Duration) -> Result<usize, BackendError> {
        self.call_ok(
            "sweep",
            "temporaries",
            vec![ObjOp::Sweep {
                age_secs: age.as_secs(),
            }],
        )
        .map(|d| u64_of(&d) as usize)
    }
}
