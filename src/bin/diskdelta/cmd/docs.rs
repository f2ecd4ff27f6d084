//! `diskdelta completions SHELL` and the hidden `diskdelta man --dir DIR`:
//! shell completions and man pages generated from the clap definitions.

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// Prints the completion script for a shell on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "diskdelta", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .context("cannot write the completion script")
}

/// Writes `diskdelta.1` and one page per visible subcommand
/// (`diskdelta-backup.1`, `diskdelta-key-add.1`, ...) into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("cannot write man pages into {}", args.dir.display()))
}
