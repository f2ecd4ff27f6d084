//! `diskdelta init`

use anyhow::Context;
use diskdelta::repo::{self, backend::LocalBackend, Repository};
use diskdelta::units::parse_size;
use serde::Serialize;

use crate::cli::InitArgs;
use crate::report;

#[derive(Serialize)]
struct InitReport {
    repository: String,
    id: String,
    chunk_size: u32,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let path = super::repo_path(&args.repo)?;
    let chunk_size = match &args.chunk_size {
        Some(t) => repo::check_chunk_size(parse_size(t).context("invalid --chunk-size")?)?,
        None => repo::DEFAULT_CHUNK_SIZE,
    };
    if let Ok(mut entries) = std::fs::read_dir(&path) {
        if entries.next().is_some() && !path.join("config").exists() {
            anyhow::bail!(
                "{} exists and is not empty; init needs a new or empty directory",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let repo = Repository::init(std::sync::Arc::new(LocalBackend::new(&path)), chunk_size)?;
    report::summary(
        &args.common,
        false,
        &format!(
            "created repository {} (chunk size {})",
            path.display(),
            diskdelta::units::human_bytes(u64::from(chunk_size))
        ),
        &InitReport {
            repository: path.display().to_string(),
            id: repo.config().id.clone(),
            chunk_size,
        },
    )
}
