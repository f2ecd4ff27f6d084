//! `diskdelta backup SOURCE...` and `diskdelta import IMAGE --name NAME`.

use std::path::Path;

use anyhow::{bail, Context};
use diskdelta::format::diskdump::DiskdumpStore;
use diskdelta::io::{Input, InputOptions, SourceFormat};
use diskdelta::nbd::client::{uri::is_nbd_uri, Endpoint, NbdUri};
use diskdelta::remote::location::Location;
use diskdelta::repo::backup::{BackupOptions, BackupSession, BackupSummary};
use diskdelta::repo::tracked::TrackingReport;
use diskdelta::repo::{import, lock, time, Repository};
use diskdelta::units::human_bytes;

use crate::cli::{BackupArgs, ImportArgs, ImportDiskdumpArgs};
use crate::progress::Progress;
use crate::report;

/// One SOURCE with the options that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceSpec {
    text: String,
    name: Option<String>,
    parent: Option<String>,
    sudo: bool,
}

impl SourceSpec {
    /// The slot of a per-source option that takes a value.
    fn slot(&mut self, flag: &str) -> Option<&mut Option<String>> {
        match flag {
            "--name" => Some(&mut self.name),
            "--parent" => Some(&mut self.parent),
            _ => None,
        }
    }
}

/// Options of `backup` that take a value (to skip it when scanning),
/// as `--long` and `-s`, read from the command-line definition itself.
fn value_options() -> Vec<String> {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let Some(backup) = cli.find_subcommand("backup") else {
        return Vec::new();
    };
    backup
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .flat_map(|a| {
            let long = a.get_long().map(|l| format!("--{l}"));
            let short = a.get_short().map(|c| format!("-{c}"));
            long.into_iter().chain(short)
        })
        .collect()
}

/// Attaches `--name`, `--parent` and `--sudo` to the SOURCE they follow,
/// from the raw arguments after `backup` (clap has already validated them).
fn associate(raw: &[String], sources: &[String]) -> anyhow::Result<Vec<SourceSpec>> {
    let mut specs: Vec<SourceSpec> = Vec::new();
    // Per-source options given before any SOURCE.
    let mut loose = SourceSpec {
        text: String::new(),
        name: None,
        parent: None,
        sudo: false,
    };
    let mut loose_count = 0;
    let mut i = 0;
    let mut positional_only = false;
    let value_options = value_options();
    while i < raw.len() {
        let arg = &raw[i];
        i += 1;
        if positional_only || !arg.starts_with('-') || arg == "-" {
            specs.push(SourceSpec {
                text: arg.clone(),
                name: None,
                parent: None,
                sudo: false,
            });
            continue;
        }
        if arg == "--" {
            positional_only = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let value = if value_options.iter().any(|o| o == flag) && inline.is_none() {
            i += 1;
            raw.get(i - 1).cloned()
        } else {
            inline
        };
        if flag != "--sudo" && loose.slot(flag).is_none() {
            continue;
        }
        let target = match specs.last_mut() {
            Some(s) => s,
            None => {
                loose_count += 1;
                &mut loose
            }
        };
        match target.slot(flag) {
            None => target.sudo = true,
            Some(Some(_)) => bail!("{flag} given twice for one SOURCE"),
            Some(slot) => *slot = Some(value.unwrap_or_default()),
        }
    }
    if specs.iter().map(|s| &s.text).ne(sources.iter()) {
        bail!("could not match SOURCE arguments; put options before `--` and sources after it");
    }
    if specs.len() == 1 {
        let only = &mut specs[0];
        for flag in ["--name", "--parent"] {
            if let Some(v) = loose.slot(flag).and_then(Option::take) {
                match only.slot(flag) {
                    Some(slot) if slot.is_none() => *slot = Some(v),
                    _ => bail!("{flag} given twice for one SOURCE"),
                }
            }
        }
        only.sudo |= loose.sudo;
    } else if loose_count > 0 {
        bail!(
            "with several SOURCEs, --name, --parent and --sudo go right after the SOURCE they belong to"
        );
    }
    Ok(specs)
}

/// The default snapshot name, as diskdump derives it: `host-file` with the
/// path's last component (`server01:/dev/sda` -> `server01-sda`).
fn default_name(host: &str, path: &Path) -> String {
    if let Some(uri) = path.to_str().and_then(|t| NbdUri::parse(t).ok()) {
        // `host-export`, or the server's host or socket file name.
        let base = match (uri.export.rsplit('/').next(), &uri.endpoint) {
            (Some(e), _) if !e.is_empty() => e.to_string(),
            (_, Endpoint::Tcp { host, .. }) => host.clone(),
            (_, Endpoint::Unix { socket }) => socket
                .file_stem()
                .map_or_else(|| "nbd".into(), |s| s.to_string_lossy().into_owned()),
        };
        return format!("{host}-{base}");
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stdin".into());
    let base = if base == "-" {
        "stdin".to_string()
    } else {
        base
    };
    format!("{host}-{base}")
}

fn parse_time(text: Option<&str>) -> anyhow::Result<Option<i64>> {
    text.map(|t| {
        time::parse_rfc3339(t)
            .with_context(|| format!("invalid --time {t:?} (expected RFC 3339 or YYYY-MM-DD)"))
    })
    .transpose()
}

fn summary_line(source: &str, s: &BackupSummary) -> String {
    let tracking = match &s.change_tracking {
        Some(t) if t.used => format!(
            "; change-tracked: {} chunks read, {} kept unread, {} unmapped, {} re-read to verify",
            t.stats.chunks_read,
            t.stats.chunks_reused,
            t.stats.chunks_unmapped,
            t.stats.chunks_verified
        ),
        Some(_) => "; FULL SCAN (change tracking not used)".to_string(),
        None => String::new(),
    };
    format!(
        "backup {source} -> {} {}: {} read, {} sent, {} new chunks ({}), {} reused, {} added, dedup {:.1}x ({:.2} s, {})",
        &s.snapshot[..8],
        s.name,
        human_bytes(s.bytes_read),
        human_bytes(s.bytes_sent),
        s.new_chunks,
        human_bytes(s.new_bytes),
        s.reused_chunks,
        human_bytes(s.bytes_added),
        s.dedup_ratio,
        s.seconds,
        report::rate(s.size, s.seconds)
    ) + &tracking
}

fn backup_local(
    repo: &Repository,
    path: &Path,
    mut options: BackupOptions,
    quiet: bool,
    format: SourceFormat,
) -> anyhow::Result<BackupSummary> {
    let input = if path == Path::new("-") {
        Input::stdin()?
    } else {
        Input::open(
            path,
            &InputOptions {
                format,
                ..InputOptions::default()
            },
        )?
    };
    let progress = Progress::start(&format!("backup {}", path.display()), input.size(), quiet);
    options.progress = Some(progress.counter());
    let session = BackupSession::start(repo, options)?;
    super::warn_stale_locks(&session.stale_locks, quiet);
    super::warn_damaged_index(&session.damaged_index_files);
    let summary = session.run_local(input)?;
    drop(progress);
    Ok(summary)
}

/// A local backup that reads only what the change tracker reports, or
/// a full hash scan, said loudly, when the chain cannot be trusted or the
/// tracker fails.
fn backup_tracked(
    repo: &Repository,
    path: &Path,
    mut options: BackupOptions,
    args: &BackupArgs,
) -> anyhow::Result<BackupSummary> {
    let quiet = args.common.quiet;
    let mut tracker =
        super::tracking::open(&args.tracking, path)?.context("no change tracker chosen")?;
    options.thin_id = tracker.new_thin_id;
    let mut report = TrackingReport {
        tracker: tracker.what.clone(),
        ..TrackingReport::default()
    };
    let reason = {
        let input = Input::open(path, &InputOptions::default())?;
        let progress = Progress::start(&format!("backup {}", path.display()), input.size(), quiet);
        let mut session_options = options.clone();
        session_options.progress = Some(progress.counter());
        let session = BackupSession::start(repo, session_options)?;
        super::warn_stale_locks(&session.stale_locks, quiet);
        super::warn_damaged_index(&session.damaged_index_files);
        match session.tracking_obstacle(tracker.old_thin_id) {
            Some(reason) => reason,
            None => {
                let runs = std::mem::replace(&mut tracker.runs, Box::new(std::iter::empty()));
                match session.run_tracked(input, runs, args.verify_sample) {
                    Ok((mut summary, stats)) => {
                        report.used = true;
                        report.stats = stats;
                        summary.change_tracking = Some(report);
                        return Ok(summary);
                    }
                    // The tracker itself failed (thin_delta on missing or
                    // damaged metadata, a bad list): what it sent cannot
                    // be trusted, a full scan can. Packs already stored
                    // are adopted by the next session.
                    Err(diskdelta::repo::RepoError::Tracking(e)) => {
                        format!("the change tracker failed: {e}")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    drop(tracker);
    // Never skip silently: this goes to stderr even with -q.
    eprintln!(
        "diskdelta: WARNING: change tracking NOT used for {}: {reason}; reading all of {} (full hash scan)",
        options.name,
        path.display()
    );
    report.fallback_reason = Some(reason);
    let input = Input::open(path, &InputOptions::default())?;
    let progress = Progress::start(&format!("backup {}", path.display()), input.size(), quiet);
    options.progress = Some(progress.counter());
    let session = BackupSession::start(repo, options)?;
    let mut summary = session.run_local(input)?;
    summary.change_tracking = Some(report);
    Ok(summary)
}

/// A backup that reads only what a qemu dirty bitmap marks as written, or
/// all of the source, said loudly, when the bitmap or the chain cannot be
/// trusted.
fn backup_bitmap(
    repo: &Repository,
    path: &Path,
    mut options: BackupOptions,
    args: &BackupArgs,
) -> anyhow::Result<BackupSummary> {
    let bitmap = args.dirty_bitmap.as_deref().unwrap_or_default();
    let quiet = args.common.quiet;
    let opened = diskdelta::nbd::source::open_with_dirty_bitmap(path, bitmap)?;
    let input = opened.input;
    let size = input.size().unwrap_or(0);
    let mut report = TrackingReport {
        tracker: format!("qemu dirty bitmap {bitmap} of {}", path.display()),
        ..TrackingReport::default()
    };
    let progress = Progress::start(&format!("backup {}", path.display()), input.size(), quiet);
    options.progress = Some(progress.counter());
    let session = BackupSession::start(repo, options)?;
    super::warn_stale_locks(&session.stale_locks, quiet);
    super::warn_damaged_index(&session.damaged_index_files);
    let name = session.options().name.clone();
    let reason = opened
        .unusable
        .or_else(|| session.tracking_obstacle(None))
        .or_else(|| {
            let before = session.parent().map_or(size, |p| p.meta.size);
            (before != size).then(|| {
                format!(
                    "the size changed from {before} to {size} bytes since the previous snapshot"
                )
            })
        });
    let mut summary = match reason {
        None => {
            let extents = input
                .nbd()
                .map(|s| s.dirty_extents())
                .transpose()?
                .flatten()
                .context("the dirty bitmap's extents are missing")?;
            let runs = diskdelta::nbd::source::dirty_runs(extents);
            let (summary, stats) = session.run_tracked(input, runs, args.verify_sample)?;
            report.used = true;
            report.stats = stats;
            summary
        }
        Some(reason) => {
            // Never skip silently: this goes to stderr even with -q.
            eprintln!(
                "diskdelta: WARNING: change tracking NOT used for {name}: {reason}; reading all of {} (full hash scan)",
                path.display()
            );
            report.fallback_reason = Some(reason);
            session.run_local(input)?
        }
    };
    drop(progress);
    summary.change_tracking = Some(report);
    Ok(summary)
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    if let Some(overlay) = &args.from_overlay {
        return from_overlay(&args, overlay);
    }
    let raw: Vec<String> = std::env::args()
        .skip_while(|a| a != "backup")
        .skip(1)
        .collect();
    let specs = associate(&raw, &args.sources)?;
    let time = parse_time(args.time.as_deref())?;
    let local_host = lock::hostname();
    let mut jobs = Vec::new();
    for spec in &specs {
        let loc = if spec.text == "-" || is_nbd_uri(&spec.text) {
            Location {
                host: None,
                path: spec.text.clone().into(),
            }
        } else {
            Location::parse(&spec.text)?
        };
        let host = loc.host.clone().unwrap_or_else(|| local_host.clone());
        let host_only = host.rsplit('@').next().unwrap_or(&host).to_string();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| default_name(&host_only, &loc.path));
        if spec.sudo && loc.host.is_none() {
            bail!("--sudo applies to remote sources only ({})", spec.text);
        }
        jobs.push((spec.clone(), loc, host_only, name));
    }
    if args.tracking.any() || args.dirty_bitmap.is_some() {
        match jobs.as_slice() {
            [(spec, loc, _, _)] if loc.host.is_none() && spec.text != "-" => {}
            _ => bail!("change tracking (--changed-ranges, --thin-metadata, --lvm, --dirty-bitmap) needs exactly one local SOURCE file, device or NBD export"),
        }
    } else if args.verify_sample > 0 {
        bail!(
            "--verify-sample goes with change tracking (--changed-ranges, --thin-metadata, --lvm, --dirty-bitmap)"
        );
    }
    let mut names: Vec<&String> = jobs.iter().map(|j| &j.3).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!("two SOURCEs would get the same snapshot name; give --name after each");
    }
    // Opened (the default one created) only once the arguments are known
    // to be good.
    let repo = super::open_repo(&args.repo, true)?;
    // Parallel remote sources send a chunk they both hold once.
    let claims = std::sync::Arc::new(diskdelta::repo::claims::Claims::new());
    let results: Vec<anyhow::Result<BackupSummary>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(spec, loc, host, name)| {
                let repo = &repo;
                let args = &args;
                let claims = &claims;
                s.spawn(move || -> anyhow::Result<BackupSummary> {
                    let options = BackupOptions {
                        name: name.clone(),
                        source: spec.text.clone(),
                        host: host.clone(),
                        tags: args.tags.clone(),
                        time,
                        time_nanos: 0,
                        progress: None,
                        threads: args.threads.unwrap_or(0),
                        expected_size: None,
                        thin_id: None,
                        parent: spec.parent.clone(),
                    };
                    match &loc.host {
                        None if args.dirty_bitmap.is_some() => {
                            backup_bitmap(repo, &loc.path, options, args)
                        }
                        None if args.tracking.any() => {
                            backup_tracked(repo, &loc.path, options, args)
                        }
                        None => backup_local(
                            repo,
                            &loc.path,
                            options,
                            args.common.quiet,
                            args.source_format.format(),
                        ),
                        Some(_) => super::backup_remote::run(
                            repo,
                            claims,
                            loc,
                            spec.sudo,
                            &args.remote.rsh,
                            &args.remote.remote_path,
                            args.repo.deploy,
                            options,
                            args.common.quiet,
                        ),
                    }
                    .with_context(|| format!("backup of {} failed", spec.text))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("backup thread panicked")))
            })
            .collect()
    });
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for ((spec, ..), r) in jobs.iter().zip(results) {
        match r {
            Ok(s) => {
                if !args.common.json && !args.common.quiet {
                    eprintln!("{}", summary_line(&spec.text, &s));
                }
                ok.push(serde_json::json!({ "source": spec.text, "summary": s }));
            }
            Err(e) => {
                ok.push(serde_json::json!({ "source": spec.text, "error": format!("{e:#}") }));
                failures.push(e);
            }
        }
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&ok)?);
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => {
            for e in &failures[1..] {
                eprintln!("diskdelta: error: {e:#}");
            }
            Err(failures.remove(0).context(format!("{n} backups failed")))
        }
    }
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, true)?;
    let options = BackupOptions {
        name: args.name.clone(),
        source: args.image.display().to_string(),
        host: lock::hostname(),
        tags: args.tags.clone(),
        time: parse_time(args.time.as_deref())?,
        time_nanos: 0,
        ..BackupOptions::default()
    };
    let summary = backup_local(
        &repo,
        &args.image,
        options,
        args.common.quiet,
        SourceFormat::Raw,
    )
    .with_context(|| format!("import of {} failed", args.image.display()))?;
    report::summary(
        &args.common,
        false,
        &summary_line(&args.image.display().to_string(), &summary),
        &summary,
    )
}

pub fn import_diskdump(args: ImportDiskdumpArgs) -> anyhow::Result<()> {
    let store = DiskdumpStore::open(&args.dir)?;
    let manifests = store.manifests()?;
    if manifests.is_empty() {
        bail!(
            "{}: the diskdump store has no manifests",
            args.dir.display()
        );
    }
    let repo = super::open_repo(&args.repo, true)?;
    let mut results = Vec::new();
    let mut failed = 0;
    for m in &manifests {
        let options = BackupOptions {
            host: lock::hostname(),
            source: m.display().to_string(),
            tags: vec!["diskdump".into()],
            ..BackupOptions::default()
        };
        match import::import_manifest(&repo, &store, m, options) {
            Ok(s) => {
                if !args.common.json && !args.common.quiet {
                    eprintln!("{}", summary_line(&m.display().to_string(), &s));
                }
                results.push(serde_json::json!({ "manifest": m, "summary": s }));
            }
            Err(e) => {
                failed += 1;
                eprintln!("diskdelta: error: {}: {e}", m.display());
                results.push(serde_json::json!({ "manifest": m, "error": e.to_string() }));
            }
        }
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    if failed > 0 {
        bail!(
            "{failed} of {} manifests could not be imported",
            manifests.len()
        );
    }
    Ok(())
}

/// `backup --from-overlay FILE SNAPSHOT --name NAME`
fn from_overlay(args: &BackupArgs, overlay: &std::path::Path) -> anyhow::Result<()> {
    let ([snapshot], [name]) = (&args.sources[..], &args.name[..]) else {
        bail!("--from-overlay takes one SNAPSHOT and one --name");
    };
    let repo = super::open_repo(&args.repo, false)?;
    let options = BackupOptions {
        name: name.clone(),
        source: overlay.display().to_string(),
        host: lock::hostname(),
        tags: args.tags.clone(),
        time: parse_time(args.time.as_deref())?,
        threads: args.threads.unwrap_or(0),
        ..BackupOptions::default()
    };
    let (mut summary, stats) =
        diskdelta::repo::overlay_backup::backup_from_overlay(&repo, overlay, snapshot, options)
            .with_context(|| format!("backup of {snapshot} with {} failed", overlay.display()))?;
    summary.change_tracking = Some(diskdelta::repo::tracked::TrackingReport {
        tracker: format!("overlay {}", overlay.display()),
        used: true,
        fallback_reason: None,
        stats,
    });
    let source = overlay.display().to_string();
    if args.common.json {
        let v = serde_json::json!([{ "source": source, "summary": summary }]);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !args.common.quiet {
        eprintln!("{}", summary_line(&source, &summary));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_and_sudo_follow_their_source() {
        let raw = s(&[
            "a:/dev/sda",
            "--sudo",
            "--name",
            "a.sda",
            "-r",
            "/repo",
            "b:/x",
            "--name=bx",
        ]);
        let specs = associate(&raw, &s(&["a:/dev/sda", "b:/x"])).expect("ok");
        assert_eq!(specs[0].name.as_deref(), Some("a.sda"));
        assert!(specs[0].sudo);
        assert_eq!(specs[1].name.as_deref(), Some("bx"));
        assert!(!specs[1].sudo);
    }

    #[test]
    fn one_source_takes_name_anywhere() {
        let raw = s(&["--name", "n", "--tag", "t", "img"]);
        let specs = associate(&raw, &s(&["img"])).expect("ok");
        assert_eq!(specs[0].name.as_deref(), Some("n"));
    }

    #[test]
    fn parents_follow_their_source_like_names() {
        let raw = s(&["a", "--parent", "p1", "--name", "na", "b", "--parent=p2"]);
        let specs = associate(&raw, &s(&["a", "b"])).expect("ok");
        assert_eq!(specs[0].parent.as_deref(), Some("p1"));
        assert_eq!(specs[0].name.as_deref(), Some("na"));
        assert_eq!(specs[1].parent.as_deref(), Some("p2"));
        assert_eq!(specs[1].name, None);
        let raw = s(&["--parent", "p", "--tag", "t", "img", "--name", "n"]);
        let specs = associate(&raw, &s(&["img"])).expect("one source");
        assert_eq!(specs[0].parent.as_deref(), Some("p"));
        assert_eq!(specs[0].name.as_deref(), Some("n"));
        for raw in [
            s(&["--parent", "p", "a", "b"]),
            s(&["a", "--parent", "p", "--parent", "q"]),
            s(&["--parent", "p", "a", "--parent", "q"]),
        ] {
            let sources: Vec<String> = raw
                .iter()
                .filter(|a| a.len() == 1 && *a != "p" && *a != "q")
                .cloned()
                .collect();
            assert!(associate(&raw, &sources).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn loose_name_with_several_sources_is_refused() {
        let raw = s(&["--name", "n", "a", "b"]);
        assert!(associate(&raw, &s(&["a", "b"])).is_err());
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_name("server01", Path::new("/dev/sda")),
            "server01-sda"
        );
        assert_eq!(default_name("h", Path::new("-")), "h-stdin");
    }
}
