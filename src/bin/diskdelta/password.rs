//! Where repository passwords come from, as restic users know it:
//! `--password-command`, else `--password-file`, else the variable
//! (`DISKDELTA_PASSWORD`), else a prompt on the terminal (twice for a new
//! password). Without a terminal and without any of them, the command
//! fails with one line saying how to give one.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};

use diskdelta::repo::{Password, RepoError};
use zeroize::Zeroizing;

use crate::cli::RepoArg;

/// The variable holding the password, unless a command says otherwise.
pub const PASSWORD_ENV: &str = "DISKDELTA_PASSWORD";

fn invalid(text: String) -> RepoError {
    RepoError::Invalid(text)
}

/// The first line of `text`, without its line ending.
fn first_line(text: &str) -> Password {
    Zeroizing::new(text.lines().next().unwrap_or("").to_string())
}

fn from_file(path: &Path) -> Result<Password, RepoError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read password file {}: {e}", path.display())))?,
    );
    Ok(first_line(&text))
}

fn from_command(cmd: &str) -> Result<Password, RepoError> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| invalid(format!("cannot run password command {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(invalid(format!(
            "password command {cmd:?} failed ({})",
            out.status
        )));
    }
    let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    Ok(first_line(&text))
}

fn prompt(what: &str, twice: bool, location: &str) -> Result<Password, RepoError> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(RepoError::PasswordNeeded(location.to_string()));
    }
    let read = |text: &str| {
        rpassword::prompt_password(text)
            .map(Zeroizing::new)
            .map_err(|_| RepoError::PasswordNeeded(location.to_string()))
    };
    let first = read(&format!("enter {what} for {location}: "))?;
    if twice {
        let again = read(&format!("enter {what} again: "))?;
        if *again != *first {
            return Err(invalid("the passwords do not match".into()));
        }
    }
    Ok(first)
}

fn checked(password: Password) -> Result<Password, RepoError> {
    if password.is_empty() {
        return Err(invalid("an empty password is refused".into()));
    }
    Ok(password)
}

/// The password of the repository `arg` names, from wherever it was given;
/// `new`: the password of a repository being created (asked twice).
///
/// # Errors
/// No source and no terminal, an unreadable file, a failing command,
/// prompts that differ, an empty password.
pub fn repository_password(
    arg: &RepoArg,
    location: &str,
    new: bool,
) -> Result<Password, RepoError> {
    if let Some(cmd) = &arg.password_command {
        return checked(from_command(cmd)?);
    }
    if let Some(path) = &arg.password_file {
        return checked(from_file(path)?);
    }
    let var = arg.password_env.unwrap_or(PASSWORD_ENV);
    if let Ok(p) = std::env::var(var) {
        return checked(Zeroizing::new(p));
    }
    match prompt("password", new, location) {
        Err(RepoError::PasswordNeeded(_)) if var != PASSWORD_ENV => Err(invalid(format!(
            "repository {location} is encrypted: give its password with {var}, --from-password-file or --from-password-command"
        ))),
        other => checked(other?),
    }
}

/// A new password for `key add` / `key passwd`: `--new-password-file`,
/// else `DISKDELTA_NEW_PASSWORD`, else asked twice on the terminal.
///
/// # Errors
/// As [`repository_password`].
pub fn new_password(file: Option<&Path>, location: &str) -> Result<Password, RepoError> {
    if let Some(path) = file {
        return checked(from_file(path)?);
    }
    if let Ok(p) = std::env::var("DISKDELTA_NEW_PASSWORD") {
        return checked(Zeroizing::new(p));
    }
    checked(
        prompt("the new password", true, location).map_err(|e| match e {
            RepoError::PasswordNeeded(_) => invalid(
                "give the new password with --new-password-file or DISKDELTA_NEW_PASSWORD".into(),
            ),
            other => other,
        })?,
    )
}
