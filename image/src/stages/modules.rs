//! Stage `modules`: the board's root modules and their modules.dep closure in the
//! root image, `depmod` run over them, and `/etc/palisade/modules`, the list
//! palisaded loads at boot (it resolves dependencies itself, from the same
//! modules.dep, with the same planner: `palisade_board::kmod`). A board module
//! that is neither in modules.dep nor built in fails the build.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
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
