//! `diskdelta key list|add|remove|passwd`

use anyhow::bail;
use diskdelta::repo::key::{self, KdfCost, KeyInfo};
use diskdelta::repo::Repository;

use crate::cli::{KeyArgs, KeyCommand, KeyNewArgs, KeyRemoveArgs};
use crate::report;

pub fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::List(a) => list(a),
        KeyCommand::Add(a) => add(a, false),
        KeyCommand::Passwd(a) => add(a, true),
        KeyCommand::Remove(a) => remove(a),
    }
}

fn open_encrypted(arg: &crate::cli::RepoArg) -> anyhow::Result<Repository> {
    let repo = super::open_repo(arg, false)?;
    if !repo.config().is_encrypted() {
        bail!(
            "repository {} is not encrypted: it has no keys",
            repo.backend().location()
        );
    }
    Ok(repo)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

fn list(args: KeyArgs) -> anyhow::Result<()> {
    let repo = open_encrypted(&args.repo)?;
    let keys: Vec<KeyInfo> = key::list(repo.backend().as_ref(), repo.key_file())?;
    if args.common.json {
        return report::summary(&args.common, false, "", &keys);
    }
    if !args.common.quiet {
        println!(
            " {:<8}  {:<16}  {:<20}  {:<20}  kdf",
            "id", "user", "host", "created"
        );
        for k in &keys {
            let kdf = match &k.damaged {
                Some(why) => format!("damaged: {why}"),
                None => format!(
                    "argon2id {} MiB, {} passes",
                    k.memory_kib >> 10,
                    k.iterations
                ),
            };
            println!(
                "{}{:<8}  {:<16}  {:<20}  {:<20}  {kdf}",
                if k.current { "*" } else { " " },
                short(&k.id),
                k.user,
                k.host,
                k.created
            );
        }
    }
    Ok(())
}

fn add(args: KeyNewArgs, replace_current: bool) -> anyhow::Result<()> {
    let repo = open_encrypted(&args.repo)?;
    if replace_current {
        diskdelta::repo::refuse_if_append_only(repo.backend().as_ref(), "key passwd")?;
    }
    let where_ = repo.backend().location();
    let password = crate::password::new_password(args.new_password_file.as_deref(), &where_)?;
    let master = repo
        .master_key()
        .ok_or_else(|| anyhow::anyhow!("repository {where_} is not encrypted"))?;
    let (bytes, new_key) =
        key::new_key_file(master, &password, &repo.config().id, KdfCost::from_env())?;
    repo.backend().put_if_absent(&new_key, &bytes)?;
    let id = new_key.trim_start_matches(key::KEYS_PREFIX).to_string();
    let mut removed = None;
    if replace_current {
        if let Some(old) = repo.key_file() {
            repo.backend().delete(old)?;
            removed = Some(old.trim_start_matches(key::KEYS_PREFIX).to_string());
        }
    }
    let text = match &removed {
        Some(old) => format!(
            "password changed: key {} replaces {}",
            short(&id),
            short(old)
        ),
        None => format!("added key {}", short(&id)),
    };
    report::summary(
        &args.common,
        false,
        &text,
        &serde_json::json!({ "added": id, "removed": removed }),
    )
}

fn remove(args: KeyRemoveArgs) -> anyhow::Result<()> {
    let repo = open_encrypted(&args.repo)?;
    let backend = repo.backend().as_ref();
    let target = key::resolve(backend, &args.id)?;
    key::remove(backend, &target, repo.key_file().unwrap_or_default())?;
    let id = target.trim_start_matches(key::KEYS_PREFIX).to_string();
    report::summary(
        &args.common,
        false,
        &format!("removed key {}", short(&id)),
        &serde_json::json!({ "removed": id }),
    )
}
