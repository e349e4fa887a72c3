//! tests/deps.sh and tests/packages.txt, no root needed:
//! - the check deps.sh runs after installing names every listed command or file
//!   that is missing, with its package, and fails;
//! - every command the Rust code runs is listed in packages.txt (or is part of
//!   the base system), so the check covers what the suite really needs.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ws() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/deps.sh --check` against `list`, with only `path` to search.
fn check(list: &Path, path: &Path) -> Output {
    Command::new("/bin/bash")
        .arg(ws().join("tests/deps.sh"))
        .arg("--check")
        .env_clear()
        .env("PATH", path)
        .env("PALISADE_DEPS_LIST", list)
        .output()
        .expect("run tests/deps.sh --check")
}

fn stub(dir: &Path, name: &str) {
    let p = dir.join(name);
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn deps_check_names_each_missing_command_and_file() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let file = d.path().join("firmware.fd");
    let list = d.path().join("packages.txt");
    std::fs::write(
        &list,
        format!(
            "# a comment\n\npal-pkg-a   pal-cmd-a {}   # trailing comment\npal-pkg-b   pal-cmd-b pal-cmd-c\npal-pkg-c\n",
            file.display()
        ),
    )
    .unwrap();
    stub(&bin, "pal-cmd-a");
    // Present but not executable: not a command.
    std::fs::write(bin.join("pal-cmd-c"), "").unwrap();

    let o = check(&list, &bin);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert!(!o.status.success(), "missing commands passed the check");
    for want in [
        format!("{} (package pal-pkg-a)", file.display()),
        "pal-cmd-b (package pal-pkg-b)".to_string(),
        "pal-cmd-c (package pal-pkg-b)".to_string(),
    ] {
        assert!(err.contains(&want), "not named: {want}\n{err}");
    }
    assert!(!err.contains("pal-cmd-a "), "a present command named:\n{err}");

    // Positive control: the same check passes once everything is there.
    stub(&bin, "pal-cmd-b");
    stub(&bin, "pal-cmd-c");
    std::fs::write(&file, "").unwrap();
    let o = check(&list, &bin);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 packages"));
}

/// Commands every Debian system has (coreutils, dpkg, apt, git for versions),
/// and cargo: not in packages.txt.
const BASE: &[&str] = &[
    "apt-get", "bash", "cargo", "cp", "dd", "dpkg-deb", "git", "mkfifo", "sh",
];

/// The string literal at the start of `s` (after whitespace), if any.
fn literal(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    s.find('"').map(|e| &s[..e])
}

/// Program names the Rust code runs: `Command::new("x")`, `.command("x")`,
/// `run(&["x", ...])`, `output(&["x", ...])`, `mtools(&["x", ...])`, and the
/// first argv element given to `spawn`, `spawn_env` and `spawn_ready`.
fn programs(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pat in ["Command::new(", ".command(", "run(&[", "output(&[", "mtools(&["] {
        for (i, _) in src.match_indices(pat) {
            if let Some(l) = literal(&src[i + pat.len()..]) {
                out.push(l.to_string());
            }
        }
    }
    for (i, _) in src.match_indices(".spawn") {
        let rest = &src[i..src.len().min(i + 400)];
        // A thread's closure (`s.spawn(|| ..)`, `spawn(move || ..)`) runs no program.
        let arg = rest.split_once('(').map(|(_, a)| a.trim_start()).unwrap_or_default();
        if arg.starts_with('|') || arg.starts_with("move") {
            continue;
        }
        if let Some(j) = rest.find("&[") {
            if let Some(l) = literal(&rest[j + 2..]) {
                out.push(l.to_string());
            }
        }
    }
    out.into_iter()
        .filter(|p| !p.is_empty() && !p.starts_with('-') && !p.contains(' '))
        .map(|p| p.rsplit('/').next().unwrap_or_default().to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_command_the_rust_code_runs_is_in_packages_txt() {
    let list = std::fs::read_to_string(ws().join("tests/packages.txt")).unwrap();
    let listed: BTreeSet<String> = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split_whitespace().skip(1).map(str::to_string))
        .collect();
    let mut files = Vec::new();
    for d in ["tests", "image", "firmware", "board"] {
        rust_files(&ws().join(d), &mut files);
    }
    let mut found = BTreeSet::new();
    let mut unlisted = Vec::new();
    // (This file's own examples are not commands the suite runs.)
    files.retain(|f| !f.ends_with("tests/tests/deps.rs"));
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for p in programs(&src) {
            if !listed.contains(&p) && !BASE.contains(&p.as_str()) {
                unlisted.push(format!("{p} (run in {})", f.display()));
            }
            found.insert(p);
        }
    }
    println!("programs the Rust code runs: {found:?}");
    // The scan finds what it is meant to (it would pass vacuously otherwise).
    for p in ["nft", "wg", "qemu-img", "qemu-system-x86_64", "debugfs", "busybox"] {
        assert!(found.contains(p), "scan did not find {p}: {found:?}");
    }
    assert!(
        unlisted.is_empty(),
        "commands run by the code but not in tests/packages.txt (add `package command`):\n{}",
        unlisted.join("\n")
    );
}

#[test]
fn the_scan_sees_each_way_of_running_a_program() {
    let src = r#"
        Command::new("alpha").arg("x");
        ns.command("beta");
        ns.run(&["gamma", "-x"]);
        ns.output(&["delta"]);
        mtools(&["mmd".as_ref()]);
        ns.spawn("label", dir, &[
            "epsilon",
            "--flag",
        ]);
        Command::new("/usr/bin/zeta");
        ns.run(&["-j", "list"]);
    "#;
    let mut got = programs(src);
    got.sort();
    assert_eq!(
        got,
        ["alpha", "beta", "delta", "epsilon", "gamma", "mmd", "zeta"]
    );
}
