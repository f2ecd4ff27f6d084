//! Reaching another host: the ssh command line and POSIX shell quoting.

use std::process::{Child, Command, Stdio};

use std::sync::Arc;

use super::deploy::Deployment;
use super::RemoteError;

/// How to reach a remote host.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `[user@]host`.
    pub host: String,
    /// The ssh command and its flags, split into words.
    pub rsh: Vec<String>,
    /// The `diskdelta` binary on the remote host.
    pub remote_path: String,
    /// Run the remote side under `sudo -n`.
    pub sudo: bool,
    /// Copy this binary to the host when it lacks a compatible
    /// `diskdelta` (see [`super::deploy`]).
    pub deploy: Option<Arc<Deployment>>,
}

/// Quotes a word for a POSIX shell: single quotes, with `'` written `'\''`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@%,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Remote {
    /// Starts `RSH HOST [sudo -n] REMOTE_PATH serve ARGS...` with piped
    /// stdin, stdout and stderr.
    ///
    /// # Errors
    /// [`RemoteError::Ssh`] when the ssh command cannot be started.
    pub fn spawn_serve(&self, args: &[&str]) -> Result<Child, RemoteError> {
        if let Some(deploy) = &self.deploy {
            return self.spawn(&deploy.script(&self.remote_path, self.sudo, args));
        }
        let mut command = String::new();
        if self.sudo {
            command.push_str("sudo -n ");
        }
        command.push_str(&shell_quote(&self.remote_path));
        command.push_str(" serve");
        for arg in args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        self.spawn(&command)
    }

    /// Starts `RSH HOST COMMAND` with piped stdin, stdout and stderr.
    fn spawn(&self, command: &str) -> Result<Child, RemoteError> {
        let (program, flags) = self
            .rsh
            .split_first()
            .ok_or_else(|| RemoteError::Ssh("empty --rsh command".into()))?;
        Command::new(program)
            .args(flags)
            .arg(&self.host)
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RemoteError::Ssh(format!("cannot run {program}: {e}")))
    }
}
