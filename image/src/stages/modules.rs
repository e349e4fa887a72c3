//! Stage `modules`: the board's root modules and their modules.dep closure in the
//! root image, `depmod` run over them, and `/etc/palisade/modules`, the list
//! palisaded loads at boot (it resolves dependencies itself, from the same
//! modules.dep, with the same planner: `palisade_board::kmod`). A board module
//! that is neither in modules.dep nor built in fails the build: stage `modcheck`
//! ([`check`]) checks both lists right after the packages are extracted.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use palisade_board::kmod;

use super::{Build, Inputs};
use crate::overlay;
use crate::util::run_tool;

/// modules.* files copied from the kernel package (depmod writes the rest).
const KEPT_INDEXES: [&str; 3] = [
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// The extracted kernel package's modules.dep and modules.builtin; runs depmod
/// over the package first if it has no modules.dep yet (Debian's kernel packages
/// leave that to their postinst). The initramfs stage reads the same.
pub fn kernel_moddep(inp: &Inputs) -> Result<(kmod::ModDep, BTreeSet<String>)> {
    let kmods = inp.kernel_modules();
    if !kmods.join("modules.dep").exists() {
        run_tool(
            Command::new("depmod")
                .arg("-b")
                .arg(inp.kernel_pkg())
                .arg(&inp.board.kernel.release),
        )?;
    }
    let dep = kmod::ModDep::parse(&fs::read_to_string(kmods.join("modules.dep"))?)
        .with_context(|| format!("{}", kmods.join("modules.dep").display()))?;
    let builtin =
        kmod::parse_builtin(&fs::read_to_string(kmods.join("modules.builtin")).unwrap_or_default());
    Ok((dep, builtin))
}

/// Stage `modcheck`: every module the board names (`modules.initramfs` and
/// `modules.root`) must be in the kernel package, as a module (modules.dep) or
/// built in (modules.builtin). Runs right after the packages are extracted, so a
/// misspelt or missing module fails the build in seconds, with one error naming
/// the board, the kernel package and each missing module with its list.
pub fn check(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let (dep, builtin) = kernel_moddep(inp)?;
    let k = &inp.board.kernel;
    let mut missing = Vec::new();
    let mut built_in = Vec::new();
    for (list, names) in [
        ("modules.initramfs", &inp.board.modules.initramfs),
        ("modules.root", &inp.board.modules.root),
    ] {
        let plan = dep
            .plan(names, &builtin)
            .with_context(|| format!("board {}: {list}", inp.board.name))?;
        missing.extend(plan.missing.iter().map(|m| format!("`{m}` ({list})")));
        built_in.extend(plan.builtin);
    }
    if !missing.is_empty() {
        bail!(
            "board {}: kernel package {}={} has no module {}: neither in lib/modules/{}/modules.dep \
             nor built in (modules.builtin). Check the spelling (`dpkg -c` lists the package's modules) \
             and the kernel's config (boot/config-{}), or take the name out of the board file",
            inp.board.name,
            k.package,
            k.version,
            missing.join(", "),
            k.release,
            k.release,
        );
    }
    built_in.sort();
    built_in.dedup();
    if !built_in.is_empty() {
        eprintln!(
            "palisade-image: board {}: built into {} (nothing to ship): {}",
            inp.board.name,
            k.package,
            built_in.join(", ")
        );
    }
    Ok(())
}

pub fn run(b: &mut Build) -> Result<()> {
    let inp = &b.inp;
    let kver = &inp.board.kernel.release;
    let kmods = inp.kernel_modules();
    let root = inp.root();
    let (dep, builtin) = kernel_moddep(inp)?;
    let root_mods = dep
        .plan(&inp.board.modules.root, &builtin)?
        .require_all()
        .context("board modules.root")?;
    let rmods = Path::new("usr/lib/modules").join(kver);
    for m in &root_mods {
        overlay::install_file(&root, &rmods.join(m), &kmods.join(m), 0o644)?;
    }
    for f in KEPT_INDEXES {
        if kmods.join(f).exists() {
            overlay::install_file(&root, &rmods.join(f), &kmods.join(f), 0o644)?;
        }
    }
    run_tool(Command::new("depmod").arg("-b").arg(&root).arg(kver))?;
    // The load order palisaded follows (it adds dependencies itself).
    overlay::install_bytes(
        &root,
        Path::new("etc/palisade/modules"),
        kmod::render_load_list(&inp.board.modules.root).as_bytes(),
        0o644,
    )?;
    b.modules = root_mods;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel package: erofs and ahci (with libahci) as modules, ext4 built in.
    fn fake_kernel(b: &Build) {
        let kmods = b.inp.kernel_modules();
        fs::create_dir_all(&kmods).unwrap();
        fs::write(
            kmods.join("modules.dep"),
            "kernel/fs/erofs/erofs.ko:\nkernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko\nkernel/drivers/ata/libahci.ko:\n",
        )
        .unwrap();
        fs::write(kmods.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
    }

    #[test]
    fn check_names_board_package_list_and_every_missing_module() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        fake_kernel(&b);
        b.inp.board.modules.initramfs = vec!["ahci".into(), "nvme".into(), "erofs".into()];
        b.inp.board.modules.root = vec!["ext4".into(), "bogus-mod".into(), "libahci".into()];
        let e = format!("{:#}", check(&mut b).unwrap_err());
        let k = &b.inp.board.kernel;
        assert!(e.contains(&format!("board {}:", b.inp.board.name)), "{e}");
        assert!(e.contains(&format!("{}={}", k.package, k.version)), "{e}");
        assert!(e.contains("`nvme` (modules.initramfs)"), "{e}");
        assert!(e.contains("`bogus-mod` (modules.root)"), "{e}");
        assert!(e.contains("modules.builtin"), "{e}");
        // Present as a module or built in: not reported.
        for ok in ["ahci", "erofs", "ext4", "libahci"] {
            assert!(!e.contains(&format!("`{ok}`")), "{ok} reported: {e}");
        }
        // The same lists without the two missing names pass.
        b.inp.board.modules.initramfs.retain(|m| m != "nvme");
        b.inp.board.modules.root.retain(|m| m != "bogus-mod");
        check(&mut b).unwrap();
    }

    #[test]
    fn a_board_module_the_kernel_lacks_fails_the_build() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        b.inp.board.modules.root = vec!["erofs".into(), "ext4".into(), "nope".into()];
        let kmods = b.inp.kernel_modules();
        fs::create_dir_all(&kmods).unwrap();
        fs::write(kmods.join("modules.dep"), "kernel/fs/erofs/erofs.ko:\n").unwrap();
        fs::write(kmods.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let e = format!("{:#}", run(&mut b).unwrap_err());
        assert!(e.contains("modules.root") && e.contains("nope"), "{e}");
        assert!(!e.contains("ext4"), "built-in modules are not missing: {e}");
    }
}
