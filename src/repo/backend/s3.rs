//! The repository on S3-compatible object storage, through the
//! `object_store` crate (signing, retries with backoff and jitter,
//! multipart uploads). Async stays inside: a small tokio runtime owned by
//! the backend runs each call to completion for the synchronous
//! [`Backend`] trait.
//!
//! # Invariants (what the repository relies on, and how S3 gives it)
//! - **Atomic puts.** A single PUT and a completed multipart upload both
//!   make the whole object appear at once; an interrupted upload leaves no
//!   object under the key. Multipart uploads leave *parts* behind when the
//!   writer is killed: each upload is announced by a marker object
//!   `multipart/<id>` (key and upload id) written before its first part and
//!   deleted after completion; `gc` aborts the uploads of markers older
//!   than its temporary-file age and deletes the markers. A writer killed
//!   between starting the upload and writing the marker leaves parts no
//!   marker names: a bucket lifecycle rule `AbortIncompleteMultipartUpload`
//!   is the backstop (documented in `docs/formats/repository.md`).
//! - **Put-if-absent** is a HEAD (the key exists: done) and then a
//!   conditional PUT (`If-None-Match: *`, answered by 412 when another
//!   writer got there between the two). Servers that answer 501 to the
//!   header are remembered and get a plain PUT after the HEAD; servers that
//!   ignore the header (s3rver, older Ceph) overwrite in that window only.
//!   That is harmless for every key the repository writes except `config`
//!   (packs, index files and snapshots are named by their content, locks by
//!   a random id): two `init`s racing on such a server can both succeed,
//!   and the later config wins.
//! - **Damaged objects are replaced.** A put that finds an object of
//!   another size under a content-named key (`data/`, `index/`,
//!   `snapshots/`: the name is the hash of the bytes, so the sizes must
//!   agree) overwrites it: a server that does not write atomically (s3rver
//!   killed mid-PUT leaves a prefix) must not make the next backup reuse a
//!   truncated pack.
//! - **Packs** go up as single PUTs, several at once; objects of [`S3Options::part_size`] and more go up
//!   as multipart uploads whose parts are sent concurrently. Packs are
//!   named by their content, so they use HEAD-then-upload, not a
//!   conditional write.
//! - **Listing.** AWS S3 (since December 2020), MinIO, Ceph RGW and Garage
//!   give read-after-write and list-after-write consistency: an object
//!   whose PUT returned is in every later listing. The lock protocol
//!   (write our lock, then list `locks/`) and gc's view of the packs rely on
//!   that. On a store without it, a lock written less than a listing delay
//!   ago may be missed; gc then has the repository's general protection
//!   only: it never deletes a pack an index file lists, and a backup whose
//!   chunks vanished fails loudly at its next run or at `verify`.
//! - **Errors.** Timeouts, connection failures, 5xx and throttling (503
//!   SlowDown, 429) are retried with exponential backoff and jitter for
//!   at most [`S3Options::retry_timeout`]; then the call fails with one
//!   line naming the key and the cause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as StorePath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};

use super::{check_key, Backend, BackendError, ObjectInfo};

/// Default size of multipart parts; objects this large and up go up in
/// parts. Packs (at most about 37 MiB) go up as single PUTs: completing a
/// multipart upload makes the server assemble the object again, which on
/// s3rver doubled its CPU per byte (first backup of 2 GiB: 9.7 s with
/// 16 MiB parts, 5.5 s with single PUTs; `bench/run s3`). Only larger
/// objects use parts.
pub const DEFAULT_PART_SIZE: usize = 64 << 20;
/// Default number of uploads in flight (packs at once, and parts per
/// object). Each pack in flight is held whole: with the one being filled
/// and a spare buffer, three uploads keep a backup near 230 MiB (four
/// reached 294 MiB, `bench/run s3`), and were as fast against the local
/// test server.
pub const DEFAULT_CONNECTIONS: usize = 3;
/// A restore from S3 handles 16 MiB of the image at a time, so that the
/// blobs of up to 16 chunks are one range read: with 1 MiB units of 4 MiB
/// a 2 GiB restore made about 900 requests, and the server's per-request
/// cost made it the slowest stage.
pub const S3_RESTORE_UNIT: usize = 16 << 20;
/// A restore from S3 reads through up to 1 MiB between two blobs it needs
/// (a chunk of an earlier backup between two of this one) instead of
/// making another request.
pub const S3_READ_GAP: u64 = 1 << 20;
/// Keys of multipart-upload markers start with this.
const MULTIPART_PREFIX: &str = "multipart/";

/// Credentials for S3.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket ("" for the bucket's root).
    pub prefix: String,
    /// The region (signing; `us-east-1` where the server does not care).
    pub region: String,
    /// Virtual-host style (`bucket.host`) instead of path style.
    pub virtual_host: bool,
    /// Credentials.
    pub credentials: S3Credentials,
    /// Objects of this size and up are uploaded in parts of this size.
    pub part_size: usize,
    /// Uploads in flight.
    pub connections: usize,
    /// How long a call is retried before it fails.
    pub retry_timeout: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
}

/// What a put finds under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Absent,
    Intact,
    Damaged,
}

/// A repository in an S3 bucket.
pub struct S3Backend {
    store: Arc<AmazonS3>,
    runtime: tokio::runtime::Runtime,
    options: S3Options,
    /// The server answered 501 to `If-None-Match`.
    no_conditional_put: AtomicBool,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

/// A failure of the client itself (bad endpoint, no runtime).
fn setup_error(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Remote {
        op: "connect to",
        key: what.to_string(),
        message: one_line(&e.to_string()),
    }
}

/// Error texts of the HTTP stack span lines (XML bodies); ours are one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error text with an S3 XML body cut down to its `<Code>`.
fn tidy(e: &object_store::Error) -> String {
    let text = e.to_string();
    match text.find("<?xml").or_else(|| text.find("<Error>")) {
        Some(at) => one_line(&format!("{}{}", &text[..at], s3_error_code(&text[at..]))),
        None => one_line(&text),
    }
}

fn is_no_such_bucket(e: &object_store::Error) -> bool {
    e.to_string().contains("<Code>NoSuchBucket</Code>")
}

fn is_not_implemented(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotImplemented { .. })
        || e.to_string().contains("501 Not Implemented")
}

impl S3Backend {
    /// Connects (no request is made yet).
    ///
    /// # Errors
    /// An endpoint the client refuses, or no runtime.
    pub fn new(options: S3Options) -> Result<S3Backend, BackendError> {
        // reqwest's rustls has no built-in provider in this build (ring
        // keeps the build free of aws-lc's C and cmake); install it once.
        // Deprecated only because ring offers no post-quantum key exchange.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("diskdelta-s3")
            .enable_all()
            .build()
            .map_err(|e| setup_error("the S3 client runtime", e))?;
        let retry = RetryConfig {
            max_retries: 12,
            retry_timeout: options.retry_timeout,
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_allow_http(options.endpoint.starts_with("http://"))
            .with_timeout(options.request_timeout)
            .with_connect_timeout(Duration::from_secs(15))
            .with_pool_max_idle_per_host(options.connections.max(1) * 2);
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&options.endpoint)
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_access_key_id(&options.credentials.access_key_id)
            .with_secret_access_key(&options.credentials.secret_access_key)
            .with_virtual_hosted_style_request(options.virtual_host)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(token) = &options.credentials.session_token {
            builder = builder.with_token(token);
        }
        let store = builder
            .build()
            .map_err(|e| setup_error(&options.endpoint, e))?;
        Ok(S3Backend {
            store: Arc::new(store),
            runtime,
            options,
            no_conditional_put: AtomicBool::new(false),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &S3Options {
        &self.options
    }

    fn path(&self, key: &str) -> Result<StorePath, BackendError> {
        check_key(key)?;
        let full = if self.options.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.options.prefix)
        };
        StorePath::parse(&full).map_err(|_| BackendError::BadKey(key.to_string()))
    }

    fn key_of(&self, path: &StorePath) -> String {
        let full = path.as_ref();
        if self.options.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.options.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_string()
        }
    }

    fn error(op: &'static str, key: &str, e: object_store::Error) -> BackendError {
        match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound {
                key: key.to_string(),
            },
            other => BackendError::Remote {
                op,
                key: key.to_string(),
                message: tidy(&other),
            },
        }
    }

    /// True when the bucket exists and the credentials may list it.
    ///
    /// # Errors
    /// Wrong credentials, an unreachable server.
    pub fn bucket_exists(&self) -> Result<bool, BackendError> {
        let prefix = self.prefix_path();
        let first = self.runtime.block_on(async {
            let mut listing = self.store.list(prefix.as_ref());
            listing.next().await.transpose()
        });
        match first {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) if is_no_such_bucket(&e) => Ok(false),
            Err(e) => Err(Self::error("list", &self.options.bucket, e)),
        }
    }

    fn prefix_path(&self) -> Option<StorePath> {
        (!self.options.prefix.is_empty()).then(|| StorePath::from(self.options.prefix.as_str()))
    }

    /// Creates the bucket (`init` on a missing bucket).
    ///
    /// # Errors
    /// The server refuses (no permission, the name is taken).
    pub fn create_bucket(&self) -> Result<(), BackendError> {
        use object_store::signer::Signer;
        let fail = |message: String| BackendError::Remote {
            op: "create bucket",
            key: self.options.bucket.clone(),
            message,
        };
        self.runtime.block_on(async {
            // A presigned PUT of the bucket's root is CreateBucket: signed
            // by the client library, sent by its HTTP stack.
            let url = self
                .store
                .signed_url(http::Method::PUT, &StorePath::from(""), Duration::from_secs(300))
                .await
                .map_err(|e| fail(one_line(&e.to_string())))?;
            let mut url = url.to_string();
            if let Some(cut) = url.find('?') {
                // The root of the bucket, not an empty key below it.
                if url[..cut].ends_with('/') && !self.options.virtual_host {
                    url.replace_range(cut - 1..cut, "");
                }
            }
            let body = if self.options.region == "us-east-1" {
                String::new()
            } else {
                format!(
                    "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                    self.options.region
                )
            };
            let client = reqwest::Client::builder()
                .timeout(self.options.request_timeout)
                .build()
                .map_err(|e| fail(one_line(&e.to_string())))?;
            let response = client
                .put(url)
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(body)
                .send()
                .await
                .map_err(|e| fail(one_line(&e.to_string())))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let text = response.text().await.unwrap_or_default();
            Err(fail(format!("{status}: {}", s3_error_code(&text))))
        })
    }

    /// What is under `key` already. An object under a content-named key
    /// (pack, index file, snapshot) whose size differs from the bytes being
    /// stored is damaged (a server that lost power mid-write, a
    /// non-atomic implementation): it is replaced, not kept.
    async fn existing(
        &self,
        path: &StorePath,
        key: &str,
        len: usize,
    ) -> Result<Existing, BackendError> {
        match self.store.head(path).await {
            Ok(meta) => {
                let content_named = ["data/", "index/", "snapshots/"]
                    .iter()
                    .any(|p| key.starts_with(p));
                if content_named && meta.size != len as u64 {
                    Ok(Existing::Damaged)
                } else {
                    Ok(Existing::Intact)
                }
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Existing::Absent),
            Err(e) => Err(Self::error("check", key, e)),
        }
    }

    async fn put_single(
        &self,
        path: &StorePath,
        key: &str,
        payload: PutPayload,
    ) -> Result<bool, BackendError> {
        // HEAD first: servers that ignore `If-None-Match` would overwrite.
        let damaged = match self.existing(path, key, payload.content_length()).await? {
            Existing::Intact => return Ok(false),
            Existing::Damaged => true,
            Existing::Absent => false,
        };
        if !damaged && !self.no_conditional_put.load(Ordering::Relaxed) {
            // The conditional write settles races with other writers.
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.store.put_opts(path, payload.clone(), options).await {
                Ok(_) => return Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
                Err(e) if is_not_implemented(&e) => {
                    self.no_conditional_put.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(Self::error("upload", key, e)),
            }
        }
        self.store
            .put(path, payload)
            .await
            .map(|_| true)
            .map_err(|e| Self::error("upload", key, e))
    }

    async fn put_multipart(
        &self,
        path: &StorePath,
        key: &str,
        data: Bytes,
    ) -> Result<(), BackendError> {
        let upload = self
            .store
            .create_multipart(path)
            .await
            .map_err(|e| Self::error("start upload of", key, e))?;
        let marker = self.marker_key(key);
        let record = serde_json::json!({
            "key": key,
            "upload_id": upload,
            "started": crate::repo::time::now(),
        });
        let marker_path = self.path(&marker)?;
        let result = async {
            self.store
                .put(&marker_path, PutPayload::from(record.to_string()))
                .await
                .map_err(|e| Self::error("upload", &marker, e))?;
            let part_size = self.options.part_size.max(5 << 20);
            let parts: Vec<Bytes> = (0..data.len().div_ceil(part_size))
                .map(|i| data.slice(i * part_size..((i + 1) * part_size).min(data.len())))
                .collect();
            let ids: Vec<PartId> = futures::stream::iter(parts.into_iter().enumerate())
                .map(|(i, part)| self.store.put_part(path, &upload, i, framed(&part)))
                .buffered(self.options.connections.max(1))
                .try_collect()
                .await
                .map_err(|e| Self::error("upload part of", key, e))?;
            self.store
                .complete_multipart(path, &upload, ids)
                .await
                .map_err(|e| Self::error("complete upload of", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self.store.abort_multipart(path, &upload).await;
        }
        let _ = self.store.delete(&marker_path).await;
        result
    }

    fn marker_key(&self, key: &str) -> String {
        let id = blake3::hash(
            format!(
                "{key}{}{}",
                std::process::id(),
                crate::repo::time::now_nanos()
            )
            .as_bytes(),
        );
        format!("{MULTIPART_PREFIX}{}", &id.to_hex()[..32])
    }

    /// Stores `data` (given by value: big objects are sent without a copy)
    /// and gives the buffer back for reuse when nothing else holds it.
    fn put_owned(&self, key: &str, data: Vec<u8>) -> Result<(bool, Option<Vec<u8>>), BackendError> {
        let path = self.path(key)?;
        let bytes = Bytes::from(data);
        let stored = self.runtime.block_on(async {
            if bytes.len() >= self.options.part_size {
                if self.existing(&path, key, bytes.len()).await? == Existing::Intact {
                    return Ok(false);
                }
                self.put_multipart(&path, key, bytes.clone()).await?;
                Ok(true)
            } else {
                self.put_single(&path, key, framed(&bytes)).await
            }
        })?;
        let back = bytes.try_into_mut().ok().map(Vec::from);
        Ok((stored, back))
    }
}

/// Bytes of one frame of a request body.
const BODY_FRAME: usize = 1 << 20;

/// `bytes` as a request body of 1 MiB frames (slices, not copies): the TLS
/// layer encrypts one frame at a time instead of the whole object at once,
/// which held a second copy of every pack in flight.
fn framed(bytes: &Bytes) -> PutPayload {
    (0..bytes.len())
        .step_by(BODY_FRAME)
        .map(|at| bytes.slice(at..(at + BODY_FRAME).min(bytes.len())))
        .collect()
}

/// The `<Code>` of an S3 XML error body, or the body's first line.
fn s3_error_code(body: &str) -> String {
    match (body.find("<Code>"), body.find("</Code>")) {
        (Some(a), Some(b)) if a + 6 <= b => body[a + 6..b].to_string(),
        _ => one_line(body.lines().next().unwrap_or("no details")),
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        let o = &self.options;
        let mut text = if o.virtual_host {
            let host = o.endpoint.strip_prefix("https://").unwrap_or(&o.endpoint);
            format!("s3:{host}/{}", o.bucket)
        } else {
            format!("s3:{}/{}", o.endpoint, o.bucket)
        };
        if !o.prefix.is_empty() {
            text.push('/');
            text.push_str(&o.prefix);
        }
        text
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BackendError> {
        let path = self.path(key)?;
        self.runtime.block_on(async {
            let result = self
                .store
                .get(&path)
                .await
                .map_err(|e| Self::error("read", key, e))?;
            result
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| Self::error("read", key, e))
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let path = self.path(key)?;
        if len == 0 {
            self.size(key)?;
            return Ok(Vec::new());
        }
        self.runtime.block_on(async {
            let options = GetOptions {
                range: Some(GetRange::Bounded(offset..offset.saturating_add(len))),
                ..GetOptions::default()
            };
            match self.store.get_opts(&path, options).await {
                Ok(result) => result
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| Self::error("read", key, e)),
                Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound {
                    key: key.to_string(),
                }),
                Err(e) => {
                    // A range that starts at or past the end is refused
                    // (416); the trait gives an empty read there.
                    match self.store.head(&path).await {
                        Ok(meta) if offset >= meta.size => Ok(Vec::new()),
                        _ => Err(Self::error("read", key, e)),
                    }
                }
            }
        })
    }

    fn size(&self, key: &str) -> Result<u64, BackendError> {
        let path = self.path(key)?;
        self.runtime
            .block_on(self.store.head(&path))
            .map(|m| m.size)
            .map_err(|e| Self::error("check", key, e))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, BackendError> {
        self.put_owned(key, data.to_vec()).map(|(stored, _)| stored)
    }

    fn put_if_absent_vec(
        &self,
        key: &str,
        data: Vec<u8>,
    ) -> Result<(bool, Option<Vec<u8>>), BackendError> {
        self.put_owned(key, data)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        // The store lists whole path segments: list the directory part of
        // the prefix and filter by the rest.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let listed = match (self.options.prefix.as_str(), dir) {
            ("", "") => None,
            ("", d) => Some(StorePath::from(d)),
            (p, "") => Some(StorePath::from(p)),
            (p, d) => Some(StorePath::from(format!("{p}/{d}"))),
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(listed.as_ref()).try_collect())
            .map_err(|e| Self::error("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.key_of(&m.location),
                size: m.size,
            })
            .filter(|o| o.key.starts_with(prefix) && check_key(&o.key).is_ok())
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::error("delete", key, e)),
        }
    }

    fn remove_stale_temporaries(&self, age: Duration) -> Result<usize, BackendError> {
        let now = crate::repo::time::now();
        let mut removed = 0;
        for marker in self.list(MULTIPART_PREFIX)? {
            let Ok(bytes) = self.get(&marker.key) else {
                continue;
            };
            let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let started = record["started"].as_i64().unwrap_or(0);
            let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
            if now.saturating_sub(started) < age {
                continue;
            }
            if let (Some(key), Some(upload)) =
                (record["key"].as_str(), record["upload_id"].as_str())
            {
                if let Ok(path) = self.path(key) {
                    let upload = upload.to_string();
                    let _ = self
                        .runtime
                        .block_on(self.store.abort_multipart(&path, &upload));
                }
            }
            self.delete(&marker.key)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn upload_concurrency(&self) -> usize {
        self.options.connections.max(1)
    }

    fn restore_unit(&self) -> usize {
        S3_RESTORE_UNIT
    }

    fn read_gap(&self) -> u64 {
        S3_READ_GAP
    }
}
