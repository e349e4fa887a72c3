//! Stage `modules`: the board's root modules and their modules.dep closure in the
//! root image, `depmod` run over them, and `/etc/palisade/modules`, the list
//! palisaded loads at boot (it resolves dependencies itself, from the same
//! modules.dep, with the same planner).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::{Build, Inputs};
use crate::kmod;
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
    let dep = kmod::ModDep::parse(&fs::read_to_string(kmods.join("modules.dep"))?)?;
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
    let root_mods = dep.closure(&inp.board.modules.root, &builtin)?;
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
        load_list(&inp.board.modules.root).as_bytes(),
        0o644,
    )?;
    b.modules = root_mods;
    Ok(())
}

/// `/etc/palisade/modules`: one name per line, the board's order.
pub fn load_list(names: &[String]) -> String {
    names.iter().map(|m| format!("{m}\n")).collect()
}
