//! Thin-pool change tracking: runs `thin_delta` on pool metadata and, in
//! LVM mode, finds the pool, the thin ids and the metadata device with
//! `lvs`, and holds a metadata snapshot (`dmsetup message ...
//! reserve_metadata_snap`) while `thin_delta -m` reads it.
//!
//! The LVM steps cannot run without device-mapper; their argument building
//! and output parsing are plain functions, tested on captured outputs.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::tracked::{TrackError, TrackedRun, TrackedRuns};

/// Which two thin devices to compare, and where their metadata is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinSource {
    /// Metadata device or file.
    pub metadata: PathBuf,
    /// Thin id of OLD (`--snap1`).
    pub old_id: u64,
    /// Thin id of NEW (`--snap2`).
    pub new_id: u64,
    /// Read the reserved metadata snapshot (`-m`), as for a live pool.
    pub metadata_snap: bool,
}

/// Parses `--thin-ids OLD_ID,NEW_ID`.
///
/// # Errors
/// A one-line reason.
pub fn parse_thin_ids(text: &str) -> Result<(u64, u64), String> {
    let (old, new) = text
        .split_once(',')
        .ok_or_else(|| format!("--thin-ids {text:?}: expected OLD_ID,NEW_ID"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("--thin-ids {text:?}: {s:?} is not a thin device id"))
    };
    Ok((number(old)?, number(new)?))
}

/// The `thin_delta` arguments for `source` (without the program name).
pub fn thin_delta_args(source: &ThinSource) -> Vec<String> {
    let mut args = Vec::new();
    if source.metadata_snap {
        args.push("-m".to_string());
    }
    args.extend([
        "--snap1".to_string(),
        source.old_id.to_string(),
        "--snap2".to_string(),
        source.new_id.to_string(),
        source.metadata.display().to_string(),
    ]);
    args
}

/// Runs `thin_delta` and streams its runs. A non-zero exit of
/// `thin_delta` ends the stream with an error carrying its stderr.
///
/// # Errors
/// [`TrackError::Tool`] when `thin_delta` cannot be started.
pub fn thin_delta_runs(source: &ThinSource) -> Result<ThinDeltaRuns, TrackError> {
    let program = std::env::var_os("DISKDELTA_THIN_DELTA").unwrap_or_else(|| "thin_delta".into());
    let mut child = Command::new(&program)
        .args(thin_delta_args(source))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            TrackError::Tool(format!(
                "cannot run {}: {e} (install thin-provisioning-tools)",
                Path::new(&program).display()
            ))
        })?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(TrackError::Tool("thin_delta has no pipes".into()));
    };
    let stderr_text = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&text).into_owned()
    });
    let what = format!(
        "thin_delta of devices {} and {} in {}",
        source.old_id,
        source.new_id,
        source.metadata.display()
    );
    Ok(ThinDeltaRuns {
        runs: TrackedRuns::parse(what, BufReader::with_capacity(1 << 16, stdout)),
        child: Some(child),
        stderr: Some(stderr_text),
    })
}

/// Runs read from a running `thin_delta`.
#[allow(missing_debug_implementations)]
pub struct ThinDeltaRuns {
    runs: TrackedRuns,
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ThinDeltaRuns {
    /// Waits for `thin_delta`; its failure as an error.
    fn finish(&mut self) -> Option<TrackError> {
        let mut child = self.child.take()?;
        let status = child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some(TrackError::Tool(format!(
                "thin_delta failed ({s}){}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))),
            Err(e) => Some(TrackError::Tool(format!("thin_delta: {e}"))),
        }
    }
}

impl Iterator for ThinDeltaRuns {
    type Item = Result<TrackedRun, TrackError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.runs.next() {
            Some(Ok(run)) => Some(Ok(run)),
            Some(Err(e)) => {
                // thin_delta's own complaint explains a parse failure of
                // its output better than the parser does.
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    self.child = Some(child);
                }
                Some(Err(self.finish().unwrap_or(e)))
            }
            None => self.finish().map(Err),
        }
    }
}

impl Drop for ThinDeltaRuns {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A logical volume as `lvs` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    /// Volume group.
    pub vg: String,
    /// Logical volume name.
    pub lv: String,
    /// Thin pool of a thin volume (empty otherwise).
    pub pool: String,
    /// Thin device id (thin volumes only).
    pub thin_id: Option<u64>,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes (thin pools only).
    pub chunk_size: u64,
    /// Segment type (`thin`, `thin-pool`, ...).
    pub segtype: String,
}

/// The fields asked of `lvs`, in order.
const LVS_FIELDS: &str = "vg_name,lv_name,pool_lv,thin_id,lv_size,chunk_size,segtype";

/// `lvs` arguments describing `vg/lv` in machine-readable form.
pub fn lvs_args(vg_lv: &str) -> Vec<String> {
    [
        "--noheadings",
        "--nameprefixes",
        "--unquoted",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        LVS_FIELDS,
        vg_lv,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

/// Parses the output of [`lvs_args`] for one volume.
///
/// # Errors
/// A one-line reason.
pub fn parse_lvs(output: &str) -> Result<LvInfo, String> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("lvs printed nothing")?;
    let mut info = LvInfo {
        vg: String::new(),
        lv: String::new(),
        pool: String::new(),
        thin_id: None,
        size: 0,
        chunk_size: 0,
        segtype: String::new(),
    };
    for field in split_fields(line) {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("unexpected lvs output {line:?}"))?;
        let value = value.trim_matches('\'');
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("lvs field {key}={v:?} is not a number"))
        };
        match key {
            "LVM2_VG_NAME" => info.vg = value.to_string(),
            "LVM2_LV_NAME" => info.lv = value.to_string(),
            "LVM2_POOL_LV" => info.pool = value.to_string(),
            "LVM2_THIN_ID" if !value.is_empty() => info.thin_id = Some(number(value)?),
            "LVM2_LV_SIZE" => info.size = number(value)?,
            "LVM2_CHUNK_SIZE" if !value.is_empty() => info.chunk_size = number(value)?,
            "LVM2_SEGTYPE" => info.segtype = value.to_string(),
            _ => {}
        }
    }
    if info.vg.is_empty() || info.lv.is_empty() {
        return Err(format!("unexpected lvs output {line:?}"));
    }
    Ok(info)
}

/// Splits `K=V K=V` where values may be quoted with `'` and contain spaces.
fn split_fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match (c, start) {
            ('\'', Some(_)) => quoted = !quoted,
            (c, Some(s)) if c.is_ascii_whitespace() && !quoted => {
                fields.push(&line[s..i]);
                start = None;
            }
            (c, None) if !c.is_ascii_whitespace() => {
                start = Some(i);
                quoted = c == '\'';
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        fields.push(&line[s..]);
    }
    fields
}

/// The device-mapper name of `vg/lv` (`-` doubled inside each part).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// Turns `/dev/VG/LV`, `/dev/mapper/VG-LV` or `VG/LV` into `VG/LV`.
///
/// # Errors
/// A one-line reason.
pub fn vg_lv_of(spec: &str) -> Result<String, String> {
    if let Some(rest) = spec.strip_prefix("/dev/mapper/") {
        // Single dashes separate VG and LV; doubled ones are literal.
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'-' {
                if bytes.get(i + 1) == Some(&b'-') {
                    i += 2;
                    continue;
                }
                let vg = rest[..i].replace("--", "-");
                let lv = rest[i + 1..].replace("--", "-");
                if !vg.is_empty() && !lv.is_empty() {
                    return Ok(format!("{vg}/{lv}"));
                }
            }
            i += 1;
        }
        return Err(format!("{spec}: not a /dev/mapper/VG-LV name"));
    }
    let rest = spec.strip_prefix("/dev/").unwrap_or(spec);
    match rest.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
            Ok(format!("{vg}/{lv}"))
        }
        _ => Err(format!("{spec}: expected VG/LV or /dev/VG/LV")),
    }
}

/// The `dmsetup` arguments that reserve (or release) the metadata
/// snapshot of `vg`'s pool `pool`.
pub fn metadata_snap_args(vg: &str, pool: &str, reserve: bool) -> Vec<String> {
    vec![
        "message".to_string(),
        format!("{}-tpool", dm_name(vg, pool)),
        "0".to_string(),
        if reserve {
            "reserve_metadata_snap"
        } else {
            "release_metadata_snap"
        }
        .to_string(),
    ]
}

/// The pool's metadata device.
pub fn metadata_device(vg: &str, pool: &str) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/{}_tmeta", dm_name(vg, pool)))
}

/// What LVM mode found: both thin devices in one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmPair {
    /// OLD's description.
    pub old: LvInfo,
    /// NEW's description.
    pub new: LvInfo,
    /// The pool's description (its chunk size).
    pub pool: LvInfo,
}

/// Checks that OLD and NEW are thin volumes of one pool.
///
/// # Errors
/// A one-line reason.
pub fn check_pair(old: LvInfo, new: LvInfo, pool: LvInfo) -> Result<LvmPair, String> {
    for v in [&old, &new] {
        if v.segtype != "thin" || v.thin_id.is_none() || v.pool.is_empty() {
            return Err(format!(
                "{}/{} is not a thin volume (segment type {:?})",
                v.vg, v.lv, v.segtype
            ));
        }
    }
    if old.vg != new.vg || old.pool != new.pool {
        return Err(format!(
            "{}/{} (pool {}) and {}/{} (pool {}) are not in one thin pool",
            old.vg, old.lv, old.pool, new.vg, new.lv, new.pool
        ));
    }
    if pool.segtype != "thin-pool" || pool.chunk_size == 0 {
        return Err(format!("{}/{} is not a thin pool", pool.vg, pool.lv));
    }
    Ok(LvmPair { old, new, pool })
}

fn run_tool(program: &str, args: &[String]) -> Result<String, TrackError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TrackError::Tool(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(TrackError::Tool(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            last.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asks LVM about `old` (`VG/LV`) and `new` (`VG/LV` or a device path).
///
/// # Errors
/// [`TrackError::Tool`].
pub fn lvm_pair(old: &str, new: &str) -> Result<LvmPair, TrackError> {
    let lvs = |spec: &str| -> Result<LvInfo, TrackError> {
        let vg_lv = vg_lv_of(spec).map_err(TrackError::Tool)?;
        parse_lvs(&run_tool("lvs", &lvs_args(&vg_lv))?).map_err(TrackError::Tool)
    };
    let old = lvs(old)?;
    let new = lvs(new)?;
    let pool = lvs(&format!("{}/{}", old.vg, old.pool))?;
    check_pair(old, new, pool).map_err(TrackError::Tool)
}

/// A reserved metadata snapshot, released when dropped and when the
/// process is interrupted.
#[derive(Debug)]
pub struct MetadataSnapshot {
    release: Vec<String>,
}

impl MetadataSnapshot {
    /// Reserves the metadata snapshot of the pair's pool.
    ///
    /// # Errors
    /// [`TrackError::Tool`] when `dmsetup` fails.
    pub fn reserve(pair: &LvmPair) -> Result<MetadataSnapshot, TrackError> {
        let reserve = metadata_snap_args(&pair.pool.vg, &pair.pool.lv, true);
        let release = metadata_snap_args(&pair.pool.vg, &pair.pool.lv, false);
        crate::io::cleanup::register_command("dmsetup", &release);
        if let Err(e) = run_tool("dmsetup", &reserve) {
            crate::io::cleanup::unregister_command("dmsetup", &release);
            return Err(e);
        }
        Ok(MetadataSnapshot { release })
    }

    /// What `thin_delta -m` reads for the pair.
    pub fn source(&self, pair: &LvmPair) -> ThinSource {
        ThinSource {
            metadata: metadata_device(&pair.pool.vg, &pair.pool.lv),
            old_id: pair.old.thin_id.unwrap_or(0),
            new_id: pair.new.thin_id.unwrap_or(0),
            metadata_snap: true,
        }
    }
}

impl Drop for MetadataSnapshot {
    fn drop(&mut self) {
        crate::io::cleanup::unregister_command("dmsetup", &self.release);
        if let Err(e) = run_tool("dmsetup", &self.release) {
            eprintln!("diskdelta: warning: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
