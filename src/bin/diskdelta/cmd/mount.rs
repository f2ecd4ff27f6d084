//! `diskdelta mount DIR [SNAPSHOT|NAME...]`

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use diskdelta::mount::{Mount, SnapshotTree};
use diskdelta::repo::image::ImageOptions;
use diskdelta::units::parse_size;

use crate::cli::MountArgs;

fn log_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "diskdelta: mount: {line}");
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    super::nbd::limit_malloc_arenas();
    let cache_size = parse_size(&args.cache_size).context("--cache-size")?;
    let repo = super::open_repo(&args.repo, false)?;
    let all = repo.snapshots()?;
    let snapshots = if args.snapshots.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for spec in &args.snapshots {
            let named: Vec<_> = all
                .iter()
                .filter(|s| &s.meta.name == spec)
                .cloned()
                .collect();
            if named.is_empty() {
                chosen.push(repo.resolve(spec)?);
            } else {
                chosen.extend(named);
            }
        }
        chosen
    };
    let (mut index, damaged) = repo.load_index_lenient()?;
    if !damaged.is_empty() {
        repo.index_unlisted_packs(&mut index)?;
        super::warn_damaged_index(&damaged);
    }
    let count = snapshots.len();
    let options = ImageOptions {
        cache_size,
        ..ImageOptions::default()
    };
    let log: Arc<dyn Fn(&str) + Send + Sync> = if args.quiet {
        Arc::new(|_: &str| {})
    } else {
        Arc::new(log_line)
    };
    let tree = SnapshotTree::new(&repo, Arc::new(index), snapshots, options, log)?;
    let mount = Mount::start(tree, &args.dir)?;
    // Ctrl-C unmounts before the process exits.
    let unmount = ["-u".to_string(), args.dir.display().to_string()];
    diskdelta::io::cleanup::register_command("fusermount3", &unmount);
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::json!({
            "mountpoint": args.dir.display().to_string(),
            "snapshots": count,
        });
        let _ = writeln!(out, "{line}");
    } else {
        let _ = writeln!(
            out,
            "{count} snapshots mounted on {} (Ctrl-C or `fusermount3 -u {}` unmounts)",
            args.dir.display(),
            args.dir.display()
        );
    }
    let _ = out.flush();
    drop(out);
    let served = mount.serve();
    diskdelta::io::cleanup::unregister_command("fusermount3", &unmount);
    served.context("serving the mount failed")
}
