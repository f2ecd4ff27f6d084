//! `diskdelta init`

use anyhow::Context;
use diskdelta::repo::location::{self, RepoLocation};
use diskdelta::repo::{self, Repository};
use diskdelta::units::parse_size;
use serde::Serialize;

use crate::cli::InitArgs;
use crate::report;

#[derive(Serialize)]
struct InitReport {
    repository: String,
    id: String,
    chunk_size: u32,
    encrypted: bool,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let location = super::repo_location(&args.repo)?;
    let chunk_size = match &args.chunk_size {
        Some(t) => repo::check_chunk_size(parse_size(t).context("invalid --chunk-size")?)?,
        None => repo::DEFAULT_CHUNK_SIZE,
    };
    if let RepoLocation::Local(path) = &location {
        if let Ok(mut entries) = std::fs::read_dir(path) {
            if entries.next().is_some() && !path.join("config").exists() {
                anyhow::bail!(
                    "{} exists and is not empty; init needs a new or empty directory",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let opened = location::open_backend_with(
        &location,
        super::deployment_for(&location, args.repo.deploy)?,
    )?;
    if let Some(s3) = &opened.s3 {
        if !s3.bucket_exists()? {
            s3.create_bucket()?;
        }
    }
    let where_ = opened.backend.location();
    let options = repo::InitOptions {
        chunk_size,
        encrypt: !args.no_encryption,
        kdf: repo::key::KdfCost::from_env(),
    };
    let password = |new: bool| crate::password::repository_password(&args.repo, &where_, new);
    let repo = Repository::init_with(opened.backend.clone(), &options, &password)?;
    report::summary(
        &args.common,
        false,
        &format!(
            "created {} repository {} (chunk size {})",
            if repo.config().is_encrypted() {
                "encrypted"
            } else {
                "unencrypted"
            },
            where_,
            diskdelta::units::human_bytes(u64::from(chunk_size))
        ),
        &InitReport {
            repository: where_.clone(),
            id: repo.config().id.clone(),
            chunk_size,
            encrypted: repo.config().is_encrypted(),
        },
    )
}
