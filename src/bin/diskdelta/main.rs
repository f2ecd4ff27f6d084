//! The `diskdelta` command: parses arguments, calls the library, reports.
//!
//! Exit codes:
//! - 0: success (also when stdout was closed early by the reader, e.g. `| head`)
//! - 1: an error (I/O, missing input, bad arguments to the library)
//! - 2: usage error (unknown flag, missing argument)
//! - 3: integrity failure: a corrupt delta, a base that does not match, or a
//!   result whose digest differs from the recorded one

mod cli;
mod cmd;
mod progress;
mod report;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for integrity failures.
const EXIT_INTEGRITY: u8 = 3;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cmd::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("diskdelta: error: {err:#}");
            let integrity = err.chain().any(|e| {
                e.downcast_ref::<diskdelta::DeltaError>()
                    .is_some_and(|d| d.is_integrity())
            });
            ExitCode::from(if integrity { EXIT_INTEGRITY } else { 1 })
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
