//! An NBD export as a backup source: the client, what it may tell about
//! allocation and dirtiness, and the private `qemu-nbd` behind it when the
//! source is an image file in a format other than raw.

use std::path::Path;

use super::client::{ConnectOptions, Extent, NbdClient, NbdError, NbdUri};
use super::proto;
use super::qemu::{QemuError, QemuNbd, QemuNbdOptions};

/// An open NBD source.
#[derive(Debug)]
pub struct NbdSource {
    // Dropped first: the client says goodbye before the server is stopped.
    client: NbdClient,
    server: Option<QemuNbd>,
    display: String,
    dirty_context: Option<String>,
}

/// What to ask of an NBD source beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct NbdSourceOptions {
    /// The qemu dirty bitmap whose `qemu:dirty-bitmap:NAME` context to ask for.
    pub dirty_bitmap: Option<String>,
}

/// Errors opening a source (the client's or the private server's).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Nbd(#[from] NbdError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

fn contexts(options: &NbdSourceOptions) -> (Vec<String>, Option<String>) {
    let mut contexts = vec![proto::CONTEXT_BASE_ALLOCATION.to_string()];
    let dirty = options
        .dirty_bitmap
        .as_ref()
        .map(|b| format!("{}{b}", proto::CONTEXT_DIRTY_BITMAP_PREFIX));
    contexts.extend(dirty.clone());
    (contexts, dirty)
}

impl NbdSource {
    /// Connects to an export given by URI.
    ///
    /// # Errors
    /// Connection and negotiation failures.
    pub fn connect(uri: &NbdUri, options: &NbdSourceOptions) -> Result<NbdSource, NbdError> {
        let (contexts, dirty_context) = contexts(options);
        let client = NbdClient::connect(
            uri,
            &ConnectOptions {
                contexts,
                ..ConnectOptions::default()
            },
        )?;
        Ok(NbdSource {
            display: uri.to_string(),
            client,
            server: None,
            dirty_context,
        })
    }

    /// Serves the image `path` in `format` with a private, read-only
    /// `qemu-nbd` and connects to it. The server is stopped when the
    /// source is dropped.
    ///
    /// # Errors
    /// qemu-nbd missing or failing, connection failures.
    pub fn serve_image(
        path: &Path,
        format: &str,
        options: &NbdSourceOptions,
    ) -> Result<NbdSource, SourceError> {
        let server = QemuNbd::start(&QemuNbdOptions {
            image: path.to_path_buf(),
            format: format.to_string(),
            bitmap: options.dirty_bitmap.clone(),
        })?;
        let (contexts, dirty_context) = contexts(options);
        let client = NbdClient::connect(
            &server.uri(),
            &ConnectOptions {
                contexts,
                ..ConnectOptions::default()
            },
        )?;
        Ok(NbdSource {
            display: path.display().to_string(),
            client,
            server: Some(server),
            dirty_context,
        })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.client.size()
    }

    /// What this source is, for messages: the URI or the image path.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The client.
    pub fn client(&self) -> &NbdClient {
        &self.client
    }

    /// True when a private qemu-nbd serves this source.
    pub fn has_private_server(&self) -> bool {
        self.server.is_some()
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// As [`NbdClient::read_at`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        self.client.read_at(buf, offset)
    }

    /// True when the server tells allocation (`base:allocation`).
    pub fn knows_allocation(&self) -> bool {
        self.client
            .context_id(proto::CONTEXT_BASE_ALLOCATION)
            .is_some()
    }

    /// Allocation extents over `offset..end`; one data extent when the
    /// server does not tell.
    ///
    /// # Errors
    /// As [`NbdClient::block_status`].
    pub fn allocation(&self, offset: u64, end: u64) -> Result<Vec<Extent>, NbdError> {
        if !self.knows_allocation() {
            return Ok(vec![Extent {
                offset,
                length: end - offset,
                flags: 0,
            }]);
        }
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let len = (end - at).min(1 << 30) as u32;
            let got = self
                .client
                .block_status(proto::CONTEXT_BASE_ALLOCATION, at, len)?;
            for e in got {
                at = e.end();
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The dirty extents of the bitmap asked for, merged; `None` when no
    /// bitmap was asked for.
    ///
    /// # Errors
    /// The server did not grant the bitmap's context, or failed.
    pub fn dirty_extents(&self) -> Result<Option<Vec<Extent>>, NbdError> {
        let Some(context) = &self.dirty_context else {
            return Ok(None);
        };
        let all = self.client.extents(context, 0, self.size())?;
        Ok(Some(
            all.into_iter()
                .filter(|e| e.flags & proto::STATE_DIRTY != 0)
                .collect(),
        ))
    }

    /// True when the dirty bitmap's context was granted.
    pub fn has_dirty_bitmap(&self) -> bool {
        self.dirty_context
            .as_ref()
            .is_some_and(|c| self.client.context_id(c).is_some())
    }
}

/// A source opened for a dirty-bitmap backup, and why its bitmap cannot
/// be used when it cannot (a full read follows, said loudly).
#[derive(Debug)]
pub struct BitmapSource {
    pub input: crate::io::Input,
    pub unusable: Option<String>,
}

/// Opens `source` (an NBD URI, or an image file served by a private
/// qemu-nbd with `--bitmap NAME`) asking for the dirty bitmap `bitmap`.
/// A bitmap the image does not have, or one marked `in-use` (the image
/// was not closed cleanly while it tracked writes, so it may have missed
/// some), leaves the source open for a full read with the reason set.
///
/// # Errors
/// A raw file or device (they have no bitmaps), qemu tools missing or
/// failing, connection failures.
pub fn open_with_dirty_bitmap(
    source: &Path,
    bitmap: &str,
) -> Result<BitmapSource, crate::io::IoError> {
    use crate::io::{Input, IoError};
    let with = NbdSourceOptions {
        dirty_bitmap: Some(bitmap.to_string()),
    };
    if let Some(text) = source
        .to_str()
        .filter(|t| super::client::uri::is_nbd_uri(t))
    {
        let input = Input::nbd_uri(text, &with)?;
        let granted = input.nbd().is_some_and(|s| s.has_dirty_bitmap());
        let unusable = (!granted).then(|| {
            format!(
                "the NBD server does not offer the dirty bitmap {bitmap:?} (context {}{bitmap})",
                proto::CONTEXT_DIRTY_BITMAP_PREFIX
            )
        });
        return Ok(BitmapSource { input, unusable });
    }
    let info = super::qemu::image_info(source).map_err(SourceError::from)?;
    if info.format == "raw" {
        return Err(IoError::Unsupported {
            path: source.to_path_buf(),
            kind: "raw image, which has no dirty bitmaps (give a qcow2 image or an NBD export)",
        });
    }
    let unusable = match info.bitmap(bitmap) {
        None => Some(format!(
            "{} has no dirty bitmap {bitmap:?} (it has: {})",
            source.display(),
            if info.bitmaps.is_empty() {
                "none".to_string()
            } else {
                info.bitmaps
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        Some(b) if b.in_use => Some(format!(
            "the dirty bitmap {bitmap:?} of {} is in-use (the image was not closed cleanly, so it may have missed writes)",
            source.display()
        )),
        Some(_) => None,
    };
    let options = if unusable.is_none() {
        with
    } else {
        NbdSourceOptions::default()
    };
    let input = Input::image(source, &info.format, &options)?;
    Ok(BitmapSource { input, unusable })
}

/// Dirty extents as the runs of a change tracker.
pub fn dirty_runs(extents: Vec<Extent>) -> crate::change::tracked::RunStream {
    use crate::change::tracked::{TrackedKind, TrackedRun};
    use crate::change::Run;
    Box::new(extents.into_iter().map(|e| {
        Ok(TrackedRun {
            run: Run {
                offset: e.offset,
                len: e.length,
            },
            kind: TrackedKind::Changed,
        })
    }))
}
