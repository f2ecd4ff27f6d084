//! What a new user reads: `--version`, every subcommand's `--help` (each
//! with examples), the completion scripts and the man pages, all made by
//! the real binary from its clap definitions.

use std::path::Path;
use std::process::Command;

use crate::common;

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run_ok(cmd).stdout).into_owned()
}

/// The subcommands `diskdelta [SUB...] --help` lists under "Commands:".
fn subcommands(path: &[&str]) -> Vec<String> {
    let help = stdout(common::diskdelta().args(path).arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn version_names_the_formats_and_the_protocol() {
    let v = stdout(common::diskdelta().arg("--version"));
    let first = v.lines().next().unwrap_or_default();
    assert_eq!(first, format!("diskdelta {}", env!("CARGO_PKG_VERSION")));
    assert!(v.contains("writes diskdelta v3"), "{v}");
    assert!(v.contains("reads diskdelta v1, v2, v3"), "{v}");
    assert!(
        v.contains("repository: writes format v1 (plain) and v2 (encrypted)"),
        "{v}"
    );
    assert!(v.lines().any(|l| l == "wire protocol: 2"), "{v}");
}

#[test]
fn every_subcommand_help_has_an_example() {
    let top = subcommands(&[]);
    for expected in [
        "diff",
        "sync",
        "backup",
        "restore",
        "key",
        "completions",
        "serve",
    ] {
        assert!(top.iter().any(|c| c == expected), "{expected} in {top:?}");
    }
    assert!(!top.iter().any(|c| c == "man"), "man is hidden");
    let mut checked = 0;
    for sub in &top {
        let mut paths = vec![vec![sub.as_str()]];
        let nested = subcommands(&[sub]);
        paths.extend(nested.iter().map(|n| vec![sub.as_str(), n.as_str()]));
        for path in paths {
            let help = stdout(common::diskdelta().args(&path).arg("--help"));
            let examples: Vec<&str> = help
                .lines()
                .skip_while(|l| *l != "Examples:")
                .skip(1)
                .filter(|l| l.trim_start().starts_with("diskdelta ") || l.contains(" diskdelta "))
                .collect();
            assert!(
                !examples.is_empty(),
                "`diskdelta {} --help` has no example:\n{help}",
                path.join(" ")
            );
            checked += 1;
        }
    }
    assert!(checked >= 24, "{checked} help texts");
}

#[test]
fn completion_scripts_for_every_shell() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef diskdelta"),
        ("fish", "complete -c diskdelta"),
        ("elvish", "edit:completion:arg-completer[diskdelta]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = stdout(common::diskdelta().args(["completions", shell]));
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(script.contains("backup"), "{shell} completes subcommands");
    }
    // The bash script loads, and completes a subcommand's flags.
    let script = stdout(common::diskdelta().args(["completions", "bash"]));
    let dir = common::tempdir();
    let file = common::write_file(dir.path(), "diskdelta.bash", script.as_bytes());
    let out = stdout(Command::new("bash").arg("-c").arg(format!(
        ". {} && COMP_WORDS=(diskdelta sync --de) COMP_CWORD=2 && _diskdelta diskdelta --de sync && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    )));
    assert!(out.lines().any(|l| l == "--deploy"), "{out}");
    let out = common::run_fail(common::diskdelta().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_for_the_command_and_every_subcommand() {
    let dir = common::tempdir();
    let pages = dir.path().join("man");
    common::run_ok(common::diskdelta().arg("man").arg("--dir").arg(&pages));
    let mut names = common::entries(&pages);
    names.sort();
    for sub in subcommands(&[]) {
        let page = format!("diskdelta-{sub}.1");
        assert!(names.contains(&page), "{page} in {names:?}");
    }
    for page in ["diskdelta.1", "diskdelta-key-add.1", "diskdelta-key-list.1"] {
        assert!(names.contains(&page.to_string()), "{page} in {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.contains("help") || n == "diskdelta-man.1"),
        "{names:?}"
    );
    let backup = read(&pages.join("diskdelta-backup.1"));
    assert!(backup.starts_with(".ie") || backup.contains(".TH"), "roff");
    assert!(
        backup.contains("Examples:") && backup.contains("\\-\\-deploy"),
        "{backup}"
    );
    // man(1) renders it, where man is installed.
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(pages.join("diskdelta-sync.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("diskdelta-sync"), "{text}");
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
