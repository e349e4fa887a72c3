//! Stages `rootfs` and `overlay`: the root tree in `work/root/`.
//!
//! `rootfs`: the usr-merged skeleton, palisaded (also `/sbin/init`) and palisade,
//! busybox with its applet links (rescue shell, udhcpc, `/sbin/modprobe` for the
//! kernel's module autoloader), nft plus exactly the shared objects its
//! DT_NEEDED chain names. No iproute2: palisaded sets links, addresses and
//! routes over netlink.
//!
//! `overlay`: `rootfs/`, the seed config, the DNS lists, the board file (with
//! `--cmdline` appended to its cmdline), os-release and, with `--fleet-root`, the
//! fleet's TUF root.json.
//!
//! `bootfiles`: the kernel and the initramfs in the root tree
//! (`usr/lib/palisade/boot/`), so a slot image carries what a node needs to boot
//! it after writing it as an update.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::binaries::NODE_BINARIES;
use super::{Build, FLEET_ROOT, ROOT_BOARD, ROOT_INITRD, ROOT_VMLINUZ};
use crate::util::{file_record, run_tool, sorted_dir};
use crate::{elf, overlay};

/// Directories every root has (mount points included).
const DIRS: [&str; 14] = [
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib64",
    "usr/share/palisade",
    "etc/palisade/seed",
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var",
    "efi",
    "mnt",
];

/// usr-merge links.
const USR_MERGE: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// busybox applets not linked: palisaded is init, and busybox links to itself.
const SKIPPED_APPLETS: [&str; 3] = ["init", "linuxrc", "busybox"];

/// `rootfs`: skeleton and executables.
pub fn assemble(b: &mut Build) -> Result<()> {
    let root = b.inp.root();
    let bins = b.node_bins()?.to_path_buf();
    fs::create_dir_all(&root)?;
    for d in DIRS {
        overlay::mkdirs(&root, Path::new(d))?;
    }
    for (l, t) in USR_MERGE {
        overlay::install_symlink(&root, Path::new(l), t)?;
    }
    let mut binaries = Vec::new();
    for (name, dst) in NODE_BINARIES
        .iter()
        .zip(["usr/sbin/palisaded", "usr/bin/palisade"])
    {
        let src = bins.join(name);
        overlay::install_file(&root, Path::new(dst), &src, 0o755)?;
        binaries.push(file_record(&format!("/{dst}"), &src)?);
    }
    overlay::install_symlink(&root, Path::new("usr/sbin/init"), "palisaded")?;

    let bb = b.inp.busybox();
    overlay::install_file(&root, Path::new("usr/bin/busybox"), &bb, 0o755)?;
    binaries.push(file_record("/usr/bin/busybox", &bb)?);
    let list = String::from_utf8(run_tool(Command::new(&bb).arg("--list"))?)?;
    for ap in applets(&list) {
        overlay::install_symlink(&root, &Path::new("usr/bin").join(ap), "busybox")?;
    }
    overlay::install_symlink(&root, Path::new("usr/sbin/modprobe"), "../bin/busybox")?;

    // nft and exactly the shared objects it needs.
    let nft = b.inp.pkg("nftables").join("usr/sbin/nft");
    overlay::install_file(&root, Path::new("usr/sbin/nft"), &nft, 0o755)?;
    binaries.push(file_record("/usr/sbin/nft", &nft)?);
    let pkgs = b.inp.work.join("pkgs");
    let mut libs = install_libs(&pkgs, &root, &nft)?;
    // `wg` only when the board pins wireguard-tools: the bench variant
    // (bench/reconcile/run.sh) compares palisaded with `wg syncconf`; no
    // production board pins it.
    if b.inp.board.packages.iter().any(|p| p.name == "wireguard-tools") {
        let wg = b.inp.pkg("wireguard-tools").join("usr/bin/wg");
        overlay::install_file(&root, Path::new("usr/bin/wg"), &wg, 0o755)?;
        binaries.push(file_record("/usr/bin/wg", &wg)?);
        libs.extend(install_libs(&pkgs, &root, &wg)?);
    }
    libs.sort();
    libs.dedup();

    b.binaries = binaries;
    b.libs = libs;
    Ok(())
}

/// The applets of `busybox --list` that get a link in /usr/bin, sorted.
pub fn applets(list: &str) -> Vec<&str> {
    let mut v: Vec<&str> = list
        .lines()
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .filter(|l| !SKIPPED_APPLETS.contains(l))
        .collect();
    v.sort();
    v
}

/// `overlay`: rootfs/, seed config, lists, board definition, os-release, fleet root.
pub fn overlay(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let root = inp.root();
    fs::create_dir_all(&root)?;
    if inp.ws.join("rootfs").is_dir() {
        overlay::copy_overlay(&inp.ws.join("rootfs"), &root)?;
    }
    overlay::install_file(
        &root,
        Path::new("etc/palisade/seed/node.toml"),
        &inp.seed,
        0o644,
    )
    .with_context(|| format!("seed config {}", inp.seed.display()))?;
    if let Some(l) = &inp.lists {
        overlay::mkdirs(&root, Path::new("etc/palisade/lists"))?;
        overlay::copy_overlay(l, &root.join("etc/palisade/lists"))?;
    }
    overlay::install_bytes(&root, Path::new(ROOT_BOARD), &inp.installed_board()?, 0o644)?;
    if let Some(fr) = &inp.fleet_root {
        check_fleet_root(fr).context("--fleet-root")?;
        overlay::install_bytes(&root, Path::new(FLEET_ROOT), fr, 0o644)?;
    }
    overlay::install_bytes(
        &root,
        Path::new("usr/lib/os-release"),
        os_release(&inp.board.name, &inp.version).as_bytes(),
        0o644,
    )?;
    overlay::install_symlink(&root, Path::new("etc/os-release"), "../usr/lib/os-release")?;
    Ok(())
}

/// Accepts TUF root metadata only if it is a JSON object with `signed` and
/// `signatures` (signatures are checked by the node's update client, not here).
pub fn check_fleet_root(bytes: &[u8]) -> Result<()> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("the fleet root is not JSON")?;
    for key in ["signed", "signatures"] {
        if v.get(key).is_none() {
            bail!("the fleet root has no `{key}` key: expected a TUF root.json");
        }
    }
    Ok(())
}

/// `bootfiles`: the kernel and the initramfs (the same bytes as on the ESP) in
/// the root tree.
pub fn boot_files(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let initrd = inp.initrd();
    if !initrd.is_file() {
        bail!("no {}: the `initramfs` stage has not run", initrd.display());
    }
    let root = inp.root();
    overlay::install_file(&root, Path::new(ROOT_VMLINUZ), &inp.vmlinuz(), 0o644)
        .with_context(|| format!("kernel {}", inp.vmlinuz().display()))?;
    overlay::install_file(&root, Path::new(ROOT_INITRD), &initrd, 0o644)?;
    Ok(())
}

/// /usr/lib/os-release.
pub fn os_release(board: &str, version: &str) -> String {
    format!(
        "NAME=Palisade\nID=palisade\nID_LIKE=debian\nPRETTY_NAME=\"Palisade {version}\"\nVERSION_ID={version}\nIMAGE_ID={board}\nHOME_URL=\"https://palisade.invalid/\"\n"
    )
}

/// Copies the DT_NEEDED closure of `bin` (and its interpreter) from the extracted
/// packages into root's usr/lib/x86_64-linux-gnu and usr/lib64. Returns the names.
fn install_libs(pkgs: &Path, root: &Path, bin: &Path) -> Result<Vec<String>> {
    // Index every shared object in the extracted packages by file name.
    let mut index = BTreeMap::new();
    for pkg in sorted_dir(pkgs)? {
        for sub in [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib64",
            "usr/lib64",
        ] {
            let d = pkg.join(sub);
            if d.is_dir() {
                for f in sorted_dir(&d)? {
                    let n = f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    index.entry(n).or_insert(f);
                }
            }
        }
    }
    let mut todo = vec![bin.to_path_buf()];
    let mut done = BTreeSet::new();
    while let Some(f) = todo.pop() {
        let real = f
            .canonicalize()
            .with_context(|| format!("resolve {}", f.display()))?;
        let d =
            elf::parse(&fs::read(&real)?).with_context(|| format!("parse {}", real.display()))?;
        let mut names = d.needed.clone();
        if let Some(i) = &d.interp {
            names.push(
                Path::new(i)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        for n in names {
            if done.contains(&n) {
                continue;
            }
            let src = index.get(&n).with_context(|| {
                format!(
                    "{n} (needed by {}) is in none of the board's packages",
                    f.display()
                )
            })?;
            let real = src.canonicalize()?;
            let dir = if n.starts_with("ld-linux") {
                "usr/lib64"
            } else {
                "usr/lib/x86_64-linux-gnu"
            };
            overlay::install_file(root, &Path::new(dir).join(&n), &real, 0o755)?;
            done.insert(n);
            todo.push(real);
        }
    }
    Ok(done.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applets_sorted_without_init_and_paths() {
        let list = "sh\nudhcpc\ninit\n\nbusybox\nls\nsbin/odd\nlinuxrc\n";
        assert_eq!(applets(list), ["ls", "sh", "udhcpc"]);
    }

    #[test]
    fn os_release_text() {
        insta::assert_snapshot!(os_release("qemu-x86_64", "0.1.0"), @r#"
        NAME=Palisade
        ID=palisade
        ID_LIKE=debian
        PRETTY_NAME="Palisade 0.1.0"
        VERSION_ID=0.1.0
        IMAGE_ID=qemu-x86_64
        HOME_URL="https://palisade.invalid/"
        "#);
    }

    #[test]
    fn overlay_stage_alone() {
        // Runs just `overlay` on an empty root: seed, board file, os-release land
        // where palisaded looks for them; rootfs/ from the workspace is applied.
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        overlay(&mut b).unwrap();
        let root = b.inp.root();
        assert_eq!(
            fs::read(root.join("etc/palisade/seed/node.toml")).unwrap(),
            fs::read(&b.inp.seed).unwrap()
        );
        assert_eq!(
            fs::read(root.join("usr/share/palisade/board.toml")).unwrap(),
            b.inp.board_text
        );
        assert_eq!(
            fs::read_link(root.join("etc/os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
        let osr = fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
        assert!(osr.contains("IMAGE_ID=qemu-x86_64\n"), "{osr}");
        assert!(osr.contains("VERSION_ID=0.0.0-test\n"), "{osr}");
        assert!(
            !root.join(FLEET_ROOT).exists(),
            "no --fleet-root, no root.json"
        );
    }

    #[test]
    fn overlay_with_version_cmdline_and_fleet_root() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        b.inp.version = "1.2.3".into();
        b.inp.cmdline_extra = "palisade.health_timeout=10".into();
        let fr = br#"{"signed": {"_type": "root"}, "signatures": []}"#.to_vec();
        b.inp.fleet_root = Some(fr.clone());
        overlay(&mut b).unwrap();
        let root = b.inp.root();
        let osr = fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
        assert!(osr.contains("VERSION_ID=1.2.3\n"), "{osr}");
        let board = fs::read_to_string(root.join(ROOT_BOARD)).unwrap();
        let def = palisade_board::BoardDef::from_str(&board, Path::new("board.toml")).unwrap();
        assert!(
            def.cmdline.ends_with(" palisade.health_timeout=10"),
            "{}",
            def.cmdline
        );
        assert_eq!(def.cmdline, b.inp.cmdline());
        assert_eq!(fs::read(root.join(FLEET_ROOT)).unwrap(), fr);
    }

    #[test]
    fn fleet_root_must_be_tuf_json() {
        assert!(check_fleet_root(br#"{"signed": {}, "signatures": []}"#).is_ok());
        for (bad, why) in [
            (&b"not json"[..], "not JSON"),
            (&b"signed = 1"[..], "not JSON"),
            (&br#"{"signed": {}}"#[..], "`signatures`"),
            (&br#"[1, 2]"#[..], "`signed`"),
        ] {
            let e = check_fleet_root(bad).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{e:#}");
        }
        // The overlay stage refuses it too, before installing anything of it.
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        b.inp.fleet_root = Some(b"garbage".to_vec());
        let e = overlay(&mut b).unwrap_err();
        assert!(format!("{e:#}").contains("--fleet-root"), "{e:#}");
        assert!(!b.inp.root().join(FLEET_ROOT).exists());
    }

    #[test]
    fn boot_files_stage_alone() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        let vmlinuz = b.inp.vmlinuz();
        fs::create_dir_all(vmlinuz.parent().unwrap()).unwrap();
        fs::write(&vmlinuz, b"kernel").unwrap();
        fs::write(b.inp.initrd(), b"initrd").unwrap();
        boot_files(&mut b).unwrap();
        let root = b.inp.root();
        assert_eq!(fs::read(root.join(ROOT_VMLINUZ)).unwrap(), b"kernel");
        assert_eq!(fs::read(root.join(ROOT_INITRD)).unwrap(), b"initrd");
    }
}
