//! The `diskdelta` command: parses arguments, calls the library, reports.
//!
//! Exit codes:
//! - 0: success (also when stdout was closed early by the reader, e.g. `| head`)
//! - 1: an error (I/O, missing input, bad arguments to the library)
//! - 2: usage error (unknown flag, missing argument)
//! - 3: integrity failure: a corrupt delta, a base that does not match, or a
//!   result whose digest differs from the recorded one
//! - 130: interrupted (SIGINT, SIGTERM, SIGHUP); unfinished outputs removed

mod cli;
mod cmd;
mod examples;
mod password;
mod progress;
mod report;
mod version;

use std::process::ExitCode;

use clap::Parser;

/// Static x86_64 builds (see Cargo.toml): mimalloc instead of musl's
/// allocator, which maps and unmaps every large buffer.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for integrity failures.
const EXIT_INTEGRITY: u8 = 3;

/// Exit code after SIGINT, SIGTERM or SIGHUP (128 + SIGINT, as shells do).
const EXIT_INTERRUPTED: i32 = 130;

/// How long the main thread leaves the signal thread to finish an
/// interruption's releases before it exits by itself.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    handle_interrupts();
    let outcome = cmd::run(args);
    if diskdelta::io::cleanup::interrupted() {
        // The run ended because of the interruption (a stopped child, an
        // unmounted tree) or just before it: either way the signal thread
        // is still releasing what the run held, and it reports and exits
        // with EXIT_INTERRUPTED. Leaving first would cut that short and
        // make the exit status depend on timing.
        std::thread::sleep(INTERRUPT_GRACE);
        return ExitCode::from(EXIT_INTERRUPTED as u8);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "diskdelta: error: {err:#}");
            let integrity = err.chain().any(|e| {
                e.downcast_ref::<diskdelta::DeltaError>()
                    .is_some_and(|d| d.is_integrity())
                    || e.downcast_ref::<diskdelta::repo::RepoError>()
                        .is_some_and(|r| r.is_integrity())
            });
            ExitCode::from(if integrity { EXIT_INTEGRITY } else { 1 })
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in every thread (threads inherit the
/// mask, so this runs before any is started) and waits for them on a
/// thread of its own, which removes unfinished temporary outputs and exits.
/// Nothing runs inside a signal handler, so no async-signal-safety rules
/// are at stake.
fn handle_interrupts() {
    // SAFETY: sigset_t is plain data that sigemptyset initializes before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; these calls
    // only write into it and set this thread's signal mask.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0
    };
    if !blocked {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` was initialized above and lives in this closure;
            // sigwait writes the received signal number into `signal`.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                diskdelta::io::cleanup::remove_registered();
                diskdelta::io::cleanup::run_registered_commands();
                diskdelta::io::cleanup::run_registered_releases();
                // Not eprintln: it panics when stderr is closed, and this
                // thread must reach the exit.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "diskdelta: interrupted");
                std::process::exit(EXIT_INTERRUPTED);
            }
        });
}
