//! `diskdelta nbd SNAPSHOT... [--listen ADDR:PORT | --socket PATH]`

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use diskdelta::nbd::server::export::{Export, OverlayExport, SnapshotExport};
use diskdelta::nbd::server::{self, Exports, Listen, Server, ServerOptions};
use diskdelta::repo::image::{ImageOptions, SnapshotImage};
use diskdelta::repo::overlay::OverlayImage;
use diskdelta::units::parse_size;

use crate::cli::NbdArgs;

/// A log line on stderr; never panics (stderr may be closed).
fn log_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "diskdelta: nbd: {line}");
}

/// Caps glibc's malloc arenas: each thread that allocates chunk buffers
/// would otherwise get an arena of its own that keeps freed megabytes,
/// pushing the peak RSS well past the cache size.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it takes the
    // allocator's own lock and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

pub fn run(args: NbdArgs) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let cache_size = parse_size(&args.cache_size).context("--cache-size")?;
    if args.writable && args.snapshots.len() != 1 {
        bail!("--writable serves one snapshot (its overlay belongs to it)");
    }
    let listen = match (&args.listen, &args.socket) {
        (Some(addr), _) => Listen::Tcp(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--listen {addr}: expected ADDR:PORT"))?,
        ),
        (None, Some(path)) => Listen::Unix(path.clone()),
        (None, None) => Listen::Unix(server::default_socket(std::process::id())),
    };
    let repo = super::open_repo(&args.repo, false)?;
    let (mut index, damaged) = repo.load_index_lenient()?;
    if !damaged.is_empty() {
        repo.index_unlisted_packs(&mut index)?;
        super::warn_damaged_index(&damaged);
    }
    let index = Arc::new(index);
    let image_options = ImageOptions {
        cache_size: cache_size / args.snapshots.len() as u64,
        ..ImageOptions::default()
    };
    let mut exports: Vec<Arc<dyn Export>> = Vec::new();
    let mut described = Vec::new();
    for spec in &args.snapshots {
        let snap = repo.resolve(spec)?;
        let id = snap.id.to_hex();
        let image = Arc::new(
            SnapshotImage::with_index(&repo, snap, index.clone(), &image_options)
                .with_context(|| format!("cannot serve snapshot {spec}"))?,
        );
        let export: Arc<dyn Export> = match &args.overlay {
            Some(path) if args.writable => {
                let overlay = Arc::new(
                    OverlayImage::open(image.clone(), path)
                        .with_context(|| format!("cannot serve snapshot {spec} writable"))?,
                );
                // Writes not yet flushed by a client are kept on Ctrl-C too.
                let keep = overlay.clone();
                diskdelta::io::cleanup::register_release(move || {
                    let _ = keep.flush();
                });
                Arc::new(OverlayExport::new(spec.clone(), overlay))
            }
            _ => Arc::new(SnapshotExport::new(spec.clone(), image.clone())),
        };
        described.push((spec.clone(), id, image.size()));
        exports.push(export);
    }
    let exports = Exports::new(exports)?;
    let options = ServerOptions {
        max_clients: args.max_clients.max(1),
        workers_per_client: 2,
        log: if args.quiet {
            Arc::new(|_: &str| {})
        } else {
            Arc::new(log_line)
        },
    };
    let server = Server::bind(&listen, exports, options)?;
    if let Listen::Unix(path) = &listen {
        // Removed when interrupted too.
        diskdelta::io::cleanup::register(path);
    }
    let listen = server.listen();
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::json!({
            "listen": match &listen {
                Listen::Unix(p) => p.display().to_string(),
                Listen::Tcp(a) => a.to_string(),
            },
            "writable": args.writable,
            "exports": described.iter().map(|(name, id, size)| serde_json::json!({
                "name": name,
                "snapshot": id,
                "size": size,
                "uri": server.uri(name),
            })).collect::<Vec<_>>(),
        });
        let _ = writeln!(out, "{line}");
    } else {
        for (name, id, size) in &described {
            let _ = writeln!(
                out,
                "{}  ({} bytes, snapshot {}{})",
                server.uri(name),
                size,
                &id[..8],
                if args.writable { ", writable" } else { "" }
            );
        }
    }
    let _ = out.flush();
    drop(out);
    let result = server.run();
    if let Listen::Unix(path) = &listen {
        diskdelta::io::cleanup::unregister(path);
    }
    Ok(result?)
}
