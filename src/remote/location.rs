//! `[[user@]host:]path` as rsync writes it. A local path that contains `:`
//! before any `/` must be written `./a:b`.

use std::path::PathBuf;

/// Where one end of a sync is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `[user@]host` for a remote path.
    pub host: Option<String>,
    /// The path on that host.
    pub path: PathBuf,
}

impl Location {
    /// Parses `[[user@]host:]path`: a colon before the first slash makes
    /// the part before it a host.
    pub fn parse(text: &str) -> Location {
        if let Some(colon) = text.find(':') {
            let slash = text.find('/').unwrap_or(usize::MAX);
            if colon > 0 && colon < slash {
                let path = &text[colon + 1..];
                return Location {
                    host: Some(text[..colon].to_string()),
                    path: PathBuf::from(if path.is_empty() { "." } else { path }),
                };
            }
        }
        Location {
            host: None,
            path: PathBuf::from(text),
        }
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

    #[test]
    fn parses_like_rsync() {
        assert_eq!(
            Location::parse("user@host:/dev/sda"),
            Location {
                host: Some("user@host".into()),
                path: "/dev/sda".into()
            }
        );
        assert_eq!(
            Location::parse("host:disk.img").host.as_deref(),
            Some("host")
        );
        assert_eq!(Location::parse("./a:b").host, None);
        assert_eq!(Location::parse("/x/a:b").host, None);
        assert_eq!(Location::parse("disk.img").host, None);
        assert_eq!(Location::parse(":x").host, None);
        assert_eq!(Location::parse("host:").path, PathBuf::from("."));
    }
}
