//! Where a repository is: the text of `-r`/`DISKDELTA_REPO`, parsed into a
//! local directory or an S3 bucket, with the credentials and settings the
//! environment gives (restic's conventions).
//!
//! - `PATH`, `local:PATH`: a directory.
//! - `s3:http://HOST[:PORT]/BUCKET[/PREFIX]`, `s3:https://…`: path-style S3
//!   at that endpoint (MinIO, Ceph RGW, Garage, …).
//! - `s3:HOST/BUCKET[/PREFIX]`: virtual-host-style S3 over https
//!   (`s3:s3.amazonaws.com/bucket/prefix`).
//! - `ssh://[USER@]HOST[:PORT]/PATH`: a directory on another host, served
//!   there by `diskdelta serve --repo PATH` started over ssh
//!   (`DISKDELTA_RSH`, default `ssh`; `DISKDELTA_REMOTE_PATH`, default
//!   `diskdelta`). `/./PATH` and `/~/PATH` are relative to the home
//!   directory, as borg writes them.
//!
//! Any other `scheme:` is refused with the list of known ones, so that a
//! mistyped location never becomes a local directory named `sftp:host`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::backend::s3::{
    S3Backend, S3Credentials, S3Options, DEFAULT_CONNECTIONS, DEFAULT_PART_SIZE,
};
use super::backend::ssh::SshBackend;
use super::backend::{Backend, BackendError, LocalBackend};
use crate::remote::deploy::Deployment;
use crate::remote::ssh::Remote;

/// The schemes a location may start with.
pub const KNOWN_SCHEMES: &str = "local:, s3:, ssh://";

/// Every form a location may take, for messages.
pub const FORMS: &str = "PATH (./PATH for one with ':'), local:PATH, \
s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX], s3:HOST/BUCKET[/PREFIX], ssh://[USER@]HOST[:PORT]/PATH";

/// Failures to understand a location or to find its credentials.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// A `scheme:` prefix we do not know.
    #[error("repository location {text:?}: unknown scheme {scheme:?} (a repository is {FORMS})")]
    UnknownScheme {
        /// The location as given.
        text: String,
        /// Its scheme.
        scheme: String,
    },
    /// `[USER@]HOST:PATH`, the form of sync and backup sources, which a
    /// repository writes as a URL.
    #[error("repository location {text:?}: a repository on another host is written ssh://{host}/{path} (a repository is {FORMS})")]
    HostPath {
        /// The location as given.
        text: String,
        /// `USER@HOST`.
        host: String,
        /// The path, without a leading `/`.
        path: String,
    },
    /// An `ssh://` location that does not parse.
    #[error("repository location {text:?}: {reason} (expected ssh://[USER@]HOST[:PORT]/PATH)")]
    BadSsh {
        /// The location as given.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The repository host could not be reached or refused.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// An `s3:` location that does not parse.
    #[error("repository location {text:?}: {reason} (expected s3:http://HOST:PORT/BUCKET/PREFIX or s3:HOST/BUCKET/PREFIX)")]
    BadS3 {
        /// The location as given.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No usable credentials.
    #[error("{0}")]
    Credentials(String),
    /// A setting in the environment that does not parse.
    #[error("{name}={value:?}: {reason}")]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// The S3 client could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// An S3 bucket and prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside it, without slashes at either end.
    pub prefix: String,
    /// Virtual-host style addressing.
    pub virtual_host: bool,
}

/// A directory on another host, reached over ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLocation {
    /// `[user@]host`.
    pub destination: String,
    /// The ssh port, when given.
    pub port: Option<u16>,
    /// The directory on that host (relative paths from the home directory).
    pub path: String,
}

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket.
    S3(S3Location),
    /// A directory on another host.
    Ssh(SshLocation),
}

fn parse_ssh(text: &str, rest: &str) -> Result<SshLocation, LocationError> {
    let bad = |reason| LocationError::BadSsh {
        text: text.to_string(),
        reason,
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
    let (destination, port) = match authority.rsplit_once(':') {
        Some((d, p)) => (d, Some(p.parse::<u16>().map_err(|_| bad("bad port"))?)),
        None => (authority, None),
    };
    let host = destination.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || destination.starts_with('-') {
        return Err(bad("no host"));
    }
    let path = if let Some(home) = path.strip_prefix("./").or_else(|| path.strip_prefix("~/")) {
        home.to_string()
    } else {
        format!("/{path}")
    };
    if path.trim_matches('/').is_empty() {
        return Err(bad("no path"));
    }
    Ok(SshLocation {
        destination: destination.to_string(),
        port,
        path,
    })
}

/// Parses a location.
///
/// # Errors
/// An unknown scheme, a malformed `s3:` location.
pub fn parse(text: &OsStr) -> Result<RepoLocation, LocationError> {
    let Some(s) = text.to_str() else {
        return Ok(RepoLocation::Local(PathBuf::from(text)));
    };
    if let Some(rest) = s.strip_prefix("local:") {
        return Ok(RepoLocation::Local(PathBuf::from(rest)));
    }
    if let Some(rest) = s.strip_prefix("s3:") {
        return parse_s3(s, rest).map(RepoLocation::S3);
    }
    if let Some(rest) = s.strip_prefix("ssh://") {
        return parse_ssh(s, rest).map(RepoLocation::Ssh);
    }
    if let Some((scheme, rest)) = s.split_once(':') {
        if scheme.contains('@') && !scheme.contains('/') {
            let path = match rest.strip_prefix('/') {
                Some(abs) => abs.to_string(),
                None => format!("./{rest}"),
            };
            return Err(LocationError::HostPath {
                text: s.to_string(),
                host: scheme.to_string(),
                path,
            });
        }
        let looks_like_scheme = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if looks_like_scheme {
            return Err(LocationError::UnknownScheme {
                text: s.to_string(),
                scheme: format!("{scheme}:"),
            });
        }
    }
    Ok(RepoLocation::Local(PathBuf::from(s)))
}

fn parse_s3(text: &str, rest: &str) -> Result<S3Location, LocationError> {
    let bad = |reason| LocationError::BadS3 {
        text: text.to_string(),
        reason,
    };
    let (scheme, after, virtual_host) = if let Some(r) = rest.strip_prefix("http://") {
        ("http", r, false)
    } else if let Some(r) = rest.strip_prefix("https://") {
        ("https", r, false)
    } else if rest.contains("://") {
        return Err(bad("only http:// and https:// endpoints are supported"));
    } else {
        ("https", rest, true)
    };
    let mut parts = after.splitn(3, '/');
    let host = parts.next().unwrap_or_default();
    let bucket = parts.next().unwrap_or_default();
    let prefix = parts.next().unwrap_or_default().trim_matches('/');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad(
            "a bucket name is 3 to 63 lowercase letters, digits, '-' and '.'",
        ));
    }
    if prefix
        .split('/')
        .any(|p| p.is_empty() && !prefix.is_empty())
    {
        return Err(bad("empty part in the prefix"));
    }
    Ok(S3Location {
        endpoint: format!("{scheme}://{host}"),
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        virtual_host,
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
/// `AWS_SESSION_TOKEN`, else from the profile `AWS_PROFILE` (default
/// `default`) of `AWS_SHARED_CREDENTIALS_FILE` (default
/// `~/.aws/credentials`).
///
/// # Errors
/// None found, a named profile missing.
pub fn credentials_from_env() -> Result<S3Credentials, LocationError> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    let profile = env("AWS_PROFILE");
    let none = || {
        LocationError::Credentials(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials".into(),
        )
    };
    let Some(file) = file else { return Err(none()) };
    let ini = match ini::Ini::load_from_file(&file) {
        Ok(ini) => ini,
        Err(_) if profile.is_none() => return Err(none()),
        Err(e) => {
            return Err(LocationError::Credentials(format!(
                "AWS_PROFILE={}: cannot read {}: {e}",
                profile.unwrap_or_default(),
                file.display()
            )))
        }
    };
    let name = profile.clone().unwrap_or_else(|| "default".into());
    let Some(section) = ini.section(Some(name.as_str())) else {
        return Err(if profile.is_some() {
            LocationError::Credentials(format!(
                "AWS_PROFILE={name}: no such profile in {}",
                file.display()
            ))
        } else {
            none()
        });
    };
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(S3Credentials {
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            session_token: section.get("aws_session_token").map(str::to_string),
        }),
        _ => Err(LocationError::Credentials(format!(
            "profile {name} in {} has no aws_access_key_id and aws_secret_access_key",
            file.display()
        ))),
    }
}

fn seconds_setting(name: &'static str, default: u64) -> Result<Duration, LocationError> {
    match env(name) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => match v.parse::<u64>() {
            // 0 means no limit: a day stands in for it.
            Ok(0) => Ok(Duration::from_secs(86_400)),
            Ok(n) => Ok(Duration::from_secs(n)),
            Err(_) => Err(LocationError::BadSetting {
                name,
                value: v,
                reason: "expected whole seconds",
            }),
        },
    }
}

/// The options of an S3 location, from the environment: credentials, the
/// region (`AWS_DEFAULT_REGION`, `AWS_REGION`, else `us-east-1`), and
/// `DISKDELTA_S3_CONNECTIONS` (uploads in flight, default 3),
/// `DISKDELTA_S3_PART_SIZE` (objects this large and up are multipart
/// uploads in parts of this size),
/// `DISKDELTA_S3_RETRY_TIMEOUT` (seconds a request is retried, default
/// 120), `DISKDELTA_TIMEOUT` (seconds one request may take, default 300).
///
/// # Errors
/// No credentials, a setting that does not parse.
pub fn s3_options_from_env(loc: &S3Location) -> Result<S3Options, LocationError> {
    let connections = match env("DISKDELTA_S3_CONNECTIONS") {
        None => DEFAULT_CONNECTIONS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(LocationError::BadSetting {
                    name: "DISKDELTA_S3_CONNECTIONS",
                    value: v,
                    reason: "expected 1 to 64",
                })
            }
        },
    };
    let part_size = match env("DISKDELTA_S3_PART_SIZE") {
        None => DEFAULT_PART_SIZE,
        Some(v) => match crate::units::parse_size(&v) {
            Ok(n) if (5 << 20..=5 << 30).contains(&n) => n as usize,
            _ => {
                return Err(LocationError::BadSetting {
                    name: "DISKDELTA_S3_PART_SIZE",
                    value: v,
                    reason: "expected a size from 5M to 5G",
                })
            }
        },
    };
    Ok(S3Options {
        endpoint: loc.endpoint.clone(),
        bucket: loc.bucket.clone(),
        prefix: loc.prefix.clone(),
        region: env("AWS_DEFAULT_REGION")
            .or_else(|| env("AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".into()),
        virtual_host: loc.virtual_host,
        credentials: credentials_from_env()?,
        part_size,
        connections,
        retry_timeout: seconds_setting("DISKDELTA_S3_RETRY_TIMEOUT", 120)?,
        request_timeout: seconds_setting("DISKDELTA_TIMEOUT", 300)?,
    })
}

/// An opened backend, with its S3 handle where it is one (for bucket
/// checks and creation).
#[derive(Debug, Clone)]
pub struct OpenedBackend {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The same backend as S3, if it is.
    pub s3: Option<Arc<S3Backend>>,
}

/// Makes the backend of a location (no request is made, except that an
/// `ssh://` location starts the server and opens the repository there).
///
/// # Errors
/// As [`s3_options_from_env`].
pub fn open_backend(location: &RepoLocation) -> Result<OpenedBackend, LocationError> {
    open_backend_with(location, None)
}

/// [`open_backend`], deploying `deploy` to the host of an `ssh://`
/// location when it lacks a compatible `diskdelta` (see
/// [`crate::remote::deploy`]).
///
/// # Errors
/// As [`open_backend`], and failures to deploy.
pub fn open_backend_with(
    location: &RepoLocation,
    deploy: Option<Arc<Deployment>>,
) -> Result<OpenedBackend, LocationError> {
    match location {
        RepoLocation::Local(path) => Ok(OpenedBackend {
            backend: Arc::new(LocalBackend::new(path)),
            s3: None,
        }),
        RepoLocation::S3(loc) => {
            let s3 = Arc::new(S3Backend::new(s3_options_from_env(loc)?)?);
            Ok(OpenedBackend {
                backend: s3.clone(),
                s3: Some(s3),
            })
        }
        RepoLocation::Ssh(loc) => {
            let mut rsh: Vec<String> = env("DISKDELTA_RSH")
                .unwrap_or_else(|| "ssh".into())
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if let Some(port) = loc.port {
                rsh.extend(["-p".to_string(), port.to_string()]);
            }
            let remote = Remote {
                host: loc.destination.clone(),
                rsh,
                remote_path: env("DISKDELTA_REMOTE_PATH").unwrap_or_else(|| "diskdelta".into()),
                sudo: false,
                deploy,
            };
            let port = loc.port.map(|p| format!(":{p}")).unwrap_or_default();
            let shown = format!(
                "ssh://{}{port}/{}",
                loc.destination,
                loc.path.trim_start_matches('/')
            );
            let backend = SshBackend::connect(&remote, &loc.path, shown)?;
            Ok(OpenedBackend {
                backend: Arc::new(backend),
                s3: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(text: &str) -> S3Location {
        match parse(OsStr::new(text)).expect("parses") {
            RepoLocation::S3(l) => l,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn path_style_endpoints() {
        let l = s3("s3:http://127.0.0.1:9000/bucket/some/prefix/");
        assert_eq!(l.endpoint, "http://127.0.0.1:9000");
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.prefix, "some/prefix");
        assert!(!l.virtual_host);
        let l = s3("s3:https://minio.example/backups");
        assert_eq!(l.endpoint, "https://minio.example");
        assert_eq!(l.prefix, "");
    }

    #[test]
    fn virtual_host_style_without_scheme() {
        let l = s3("s3:s3.amazonaws.com/my-bucket/host1");
        assert_eq!(l.endpoint, "https://s3.amazonaws.com");
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "host1");
        assert!(l.virtual_host);
    }

    #[test]
    fn local_paths() {
        for (text, path) in [
            ("/srv/repo", "/srv/repo"),
            ("repo", "repo"),
            ("./a:b", "./a:b"),
            ("local:x:y", "x:y"),
        ] {
            assert_eq!(
                parse(OsStr::new(text)).expect("parses"),
                RepoLocation::Local(PathBuf::from(path))
            );
        }
    }

    #[test]
    fn unknown_schemes_and_bad_s3_are_refused() {
        for text in [
            "sftp:host:/x",
            "rest:http://h/",
            "b2:bucket",
            "file:///srv/repo",
            "host:/srv/repo",
        ] {
            let e = parse(OsStr::new(text)).expect_err(text).to_string();
            assert!(e.contains("unknown scheme") && e.contains("s3:"), "{e}");
        }
        let e = parse(OsStr::new("backup@vault:/srv/repo"))
            .expect_err("host path")
            .to_string();
        assert!(e.contains("ssh://backup@vault/srv/repo"), "{e}");
        for text in [
            "s3:http://127.0.0.1:9000",
            "s3:http://127.0.0.1:9000/",
            "s3:http:///bucket",
            "s3:ftp://h/bucket",
            "s3:http://h/Bad_Bucket",
            "s3:http://h/bucket/a//b",
        ] {
            assert!(parse(OsStr::new(text)).is_err(), "{text}");
        }
    }
}
