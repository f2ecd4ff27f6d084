//! Tests of the sshd harness itself (`tests/common/sshd.rs`): a real
//! daemon starts, runs commands, refuses a wrong key, drops connections on
//! demand and leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::sshd::{self, shell_quote, Sshd};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `ssh_command` (split on whitespace, as `--rsh` would) against
/// `destination` with `remote_command`.
fn run_rsh(ssh_command: &str, destination: &str, remote_command: &str) -> Output {
    let mut words = ssh_command.split_whitespace();
    let program = words.next().expect("non-empty ssh command");
    Command::new(program)
        .args(words)
        .arg(destination)
        .arg(remote_command)
        .stdin(Stdio::null())
        .output()
        .expect("spawn ssh")
}

/// Waits for `child` at most `limit`; kills it and returns `None` on
/// timeout.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for ssh") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gone, or a zombie waiting for a reaper: not running either way.
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').expect("stat has a comm") + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

#[test]
fn starts_and_runs_a_command() {
    let Some(sshd) = Sshd::start("sshd_harness::starts_and_runs_a_command") else {
        return;
    };
    assert_eq!(sshd.host(), "127.0.0.1");
    assert_ne!(sshd.port(), 0);
    assert!(sshd.key_path().is_file());
    assert!(sshd.known_hosts_path().is_file());
    let out = sshd.run("echo hello");
    assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.log());
    assert_eq!(stdout(&out), "hello\n");

    let out = sshd.run("id -un");
    assert_eq!(stdout(&out).trim(), sshd.user());
}

#[test]
fn ssh_command_works_as_rsh() {
    let Some(sshd) = Sshd::start("sshd_harness::ssh_command_works_as_rsh") else {
        return;
    };
    let command = sshd.ssh_command();
    assert!(command.starts_with("ssh "), "{command}");
    assert_eq!(
        command.split_whitespace().skip(1).collect::<Vec<_>>(),
        sshd.ssh_args(),
        "ssh_command and ssh_args disagree"
    );
    for needle in [
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
    ] {
        assert!(command.contains(needle), "{needle} missing from {command}");
    }
    let out = run_rsh(&command, &sshd.destination(), "echo via-rsh");
    assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.log());
    assert_eq!(stdout(&out), "via-rsh\n");
}

#[test]
fn remote_path_finds_the_binary_under_test() {
    let Some(sshd) = Sshd::start("sshd_harness::remote_path_finds_the_binary_under_test") else {
        return;
    };
    let out = sshd.run("command -v diskdelta");
    assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.log());
    assert_eq!(
        stdout(&out).trim(),
        crate::common::bin().to_str().expect("UTF-8 binary path")
    );
}

#[test]
fn single_quoted_arguments_survive_the_remote_shell() {
    let Some(sshd) = Sshd::start("sshd_harness::single_quoted_arguments_survive_the_remote_shell")
    else {
        return;
    };
    let nasty = [
        "two  spaces and\ttab",
        "$HOME ${PATH} $(echo no) `echo no`",
        "semi; colon && and || or | pipe > redirect < in",
        "it's \"quoted\" 'twice' \\ backslash",
        "glob * ? [a-z] ~ # not a comment",
        "",
    ];
    let mut command = String::from("printf '<%s>\\n'");
    for arg in nasty {
        command.push(' ');
        command.push_str(&shell_quote(arg));
    }
    let out = sshd.run(&command);
    assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.log());
    let want: String = nasty.iter().map(|arg| format!("<{arg}>\n")).collect();
    assert_eq!(stdout(&out), want);
}

#[test]
fn two_daemons_run_in_parallel() {
    let test = "sshd_harness::two_daemons_run_in_parallel";
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Sshd::start(test));
        let b = s.spawn(|| Sshd::start(test));
        (
            a.join().expect("start thread"),
            b.join().expect("start thread"),
        )
    });
    let (Some(a), Some(b)) = (a, b) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    assert_ne!(a.listener_pid(), b.listener_pid());
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.run("echo a"));
        let tb = s.spawn(|| b.run("echo b"));
        (
            ta.join().expect("ssh thread"),
            tb.join().expect("ssh thread"),
        )
    });
    assert_eq!(stdout(&out_a), "a\n", "{}", stderr(&out_a));
    assert_eq!(stdout(&out_b), "b\n", "{}", stderr(&out_b));

    // Each client trusts only its own daemon's host key.
    let mut args = a.ssh_args();
    let port = args.iter().position(|s| s == "-p").expect("-p in ssh args") + 1;
    args[port] = b.port().to_string();
    let out = Command::new("ssh")
        .args(&args)
        .arg(b.destination())
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("spawn ssh");
    assert!(!out.status.success(), "a's known_hosts must not trust b");
}

#[test]
fn wrong_key_is_refused() {
    let Some(sshd) = Sshd::start("sshd_harness::wrong_key_is_refused") else {
        return;
    };
    let out = run_rsh(
        &sshd.ssh_command_with_wrong_key(),
        &sshd.destination(),
        "echo should-not-run",
    );
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("Permission denied"),
        "stderr: {}",
        stderr(&out)
    );
    // The right key still works afterwards.
    assert!(sshd.run("true").status.success(), "{}", sshd.log());
}

#[test]
fn unreachable_command_fails_fast() {
    let command = sshd::unreachable_ssh_command();
    let started = Instant::now();
    let out = run_rsh(&command, "root@127.0.0.1", "echo should-not-run");
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Connection refused"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // The same closed port every time.
    assert_eq!(sshd::unreachable_ssh_command(), command);
}

#[test]
fn kill_connections_drops_a_running_session() {
    let Some(sshd) = Sshd::start("sshd_harness::kill_connections_drops_a_running_session") else {
        return;
    };
    let mut client = Command::new("ssh")
        .args(sshd.ssh_args())
        .arg(sshd.destination())
        .arg("echo started; exec sleep 30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read from ssh");
    assert_eq!(line, "started\n", "{}", sshd.log());
    let sessions = sshd.connection_pids();
    assert!(!sessions.is_empty(), "no per-connection processes");

    let started = Instant::now();
    sshd.kill_connections();
    let status = wait_at_most(&mut client, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("ssh still running 5 s after kill_connections"));
    assert!(!status.success(), "ssh exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for pid in sessions {
        assert!(!is_running(pid), "process {pid} survived kill_connections");
    }

    // The listener survives: new connections work.
    assert!(is_running(sshd.listener_pid()));
    let out = sshd.run("echo again");
    assert_eq!(stdout(&out), "again\n", "{}\n{}", stderr(&out), sshd.log());
}

#[test]
fn drop_leaves_no_process_behind() {
    let Some(sshd) = Sshd::start("sshd_harness::drop_leaves_no_process_behind") else {
        return;
    };
    let mut client = Command::new("ssh")
        .args(sshd.ssh_args())
        .arg(sshd.destination())
        .arg("echo started; sleep 30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ssh");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read from ssh");
    assert_eq!(line, "started\n", "{}", sshd.log());

    let listener = sshd.listener_pid();
    let mut pids = sshd.connection_pids();
    assert!(!pids.is_empty(), "no per-connection processes");
    pids.push(listener);
    let dir = sshd.dir().to_path_buf();
    drop(sshd);

    // Connection processes are not our children: they get the signal on
    // drop and exit on their own schedule, which takes a moment on a busy
    // machine.
    for pid in pids {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_running(pid), "process {pid} survived the drop by 5 s");
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
    let status = wait_at_most(&mut client, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("ssh still running 5 s after the drop"));
    assert!(!status.success());
}
