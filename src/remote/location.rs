//! `[[user@]host:]path` as rsync writes it. A local path that contains `:`
//! before any `/` must be written `./a:b`.
//!
//! Only those forms are accepted: a location that starts like a URL
//! (`scheme://`) or whose "host" is a well-known scheme name (`sftp:`,
//! `s3:`, `file:`, ...) is refused with the list of forms, instead of
//! becoming a host nobody meant. A host really named like one of those is
//! written with its user: `root@s3:/dev/sda`.

use std::path::PathBuf;

/// The forms a sync or backup location may take, for messages.
pub const FORMS: &str = "PATH, ./PATH for a local path with ':', or [USER@]HOST:PATH";

/// Scheme names that are never taken for a host name without `user@`.
const SCHEMES: &[&str] = &[
    "azure", "b2", "file", "ftp", "ftps", "gs", "http", "https", "local", "nfs", "rclone", "rest",
    "rsync", "s3", "scp", "sftp", "smb", "ssh", "swift", "webdav",
];

/// A location that is none of the accepted forms.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// A `scheme:` or `scheme://` prefix.
    #[error("location {text:?}: unknown scheme {scheme:?} (a location is {FORMS})")]
    UnknownScheme {
        /// The location as given.
        text: String,
        /// Its scheme, with `:` or `://`.
        scheme: String,
    },
}

/// Where one end of a sync is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `[user@]host` for a remote path.
    pub host: Option<String>,
    /// The path on that host.
    pub path: PathBuf,
}

/// `scheme` as URLs spell it: a letter, then letters, digits, `+-.`.
fn is_scheme(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl Location {
    /// Parses `[[user@]host:]path`: a colon before the first slash makes
    /// the part before it a host.
    ///
    /// # Errors
    /// [`LocationError::UnknownScheme`] for `scheme://...` and for a host
    /// part that is a scheme name (see the module docs).
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        let refuse = |scheme: String| LocationError::UnknownScheme {
            text: text.to_string(),
            scheme,
        };
        if let Some((scheme, _)) = text.split_once("://") {
            if is_scheme(scheme) {
                return Err(refuse(format!("{scheme}://")));
            }
        }
        if let Some(colon) = text.find(':') {
            let slash = text.find('/').unwrap_or(usize::MAX);
            if colon > 0 && colon < slash {
                let host = &text[..colon];
                if SCHEMES.contains(&host.to_ascii_lowercase().as_str()) {
                    return Err(refuse(format!("{host}:")));
                }
                let path = &text[colon + 1..];
                return Ok(Location {
                    host: Some(host.to_string()),
                    path: PathBuf::from(if path.is_empty() { "." } else { path }),
                });
            }
        }
        Ok(Location {
            host: None,
            path: PathBuf::from(text),
        })
    }

    /// `host:path` or `path`, for messages.
    pub fn display(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}:{}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Location {
        Location::parse(text).expect(text)
    }

    #[test]
    fn schemes_are_refused() {
        for text in [
            "sftp:host:/x",
            "s3:http://127.0.0.1:9000/bucket",
            "ssh://host/dev/sda",
            "file:///dev/sda",
            "HTTPS://h/x",
            "local:disk.img",
        ] {
            let e = Location::parse(text).expect_err(text).to_string();
            assert!(
                e.contains("unknown scheme") && e.contains("[USER@]HOST:PATH"),
                "{e}"
            );
        }
        assert_eq!(parse("root@s3:/dev/sda").host.as_deref(), Some("root@s3"));
        assert_eq!(parse("./sftp:x").host, None);
        assert_eq!(parse("/srv/a://b").host, None);
    }

    #[test]
    fn parses_like_rsync() {
        assert_eq!(
            parse("user@host:/dev/sda"),
            Location {
                host: Some("user@host".into()),
                path: "/dev/sda".into()
            }
        );
        assert_eq!(parse("host:disk.img").host.as_deref(), Some("host"));
        assert_eq!(parse("./a:b").host, None);
        assert_eq!(parse("/x/a:b").host, None);
        assert_eq!(parse("disk.img").host, None);
        assert_eq!(parse(":x").host, None);
        assert_eq!(parse("host:").path, PathBuf::from("."));
    }
}
