//! Kernel modules: the board's list (/etc/palisade/modules) plus modules.dep,
//! loaded with finit_module(2) in dependency order.
//!
//! The plan comes from `palisade_board::kmod`, the planner the image builder uses
//! for the same files. Policy at boot: load everything that can be loaded; a name
//! that is neither in modules.dep nor built in, or a module that fails to load, is
//! reported (the caller prints it on the console) without stopping the others. A
//! malformed modules.dep stops module loading with an error naming the line (the
//! image is broken; the firewall still fails closed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use palisade_board::kmod::{self, module_key, ModDep, Plan};

/// The load plan for the list file's text, modules.dep and modules.builtin.
pub fn plan(list: &str, modules_dep: &str, modules_builtin: &str) -> anyhow::Result<Plan> {
    let dep = ModDep::parse(modules_dep).context("modules.dep")?;
    let builtin = kmod::parse_builtin(modules_builtin);
    Ok(dep.plan(&kmod::parse_load_list(list), &builtin)?)
}

fn modules_dir() -> anyhow::Result<PathBuf> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").context("kernel release")?;
    Ok(Path::new("/lib/modules").join(rel.trim()))
}

/// Loads the modules named in `list` (one per line, `#` comments). Returns how many
/// were loaded; already-loaded modules count as success.
pub fn load_listed(list: &Path) -> anyhow::Result<usize> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context(list.display().to_string()),
    };
    let dir = modules_dir()?;
    let dep = std::fs::read_to_string(dir.join("modules.dep")).context("modules.dep")?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let plan = plan(&text, &dep, &builtin)?;
    let mut failed = Vec::new();
    for m in &plan.load {
        if let Err(e) = load_one(&dir.join(m)) {
            failed.push(format!("{}: {e}", module_key(m)));
        }
    }
    for m in &plan.missing {
        failed.push(format!("{m}: not found"));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(plan.load.len())
}

fn load_one(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/wireguard/wireguard.ko: kernel/lib/crypto/libchacha20poly1305.ko kernel/lib/crypto/libchacha.ko\n\
                       kernel/lib/crypto/libchacha20poly1305.ko: kernel/lib/crypto/libchacha.ko\n\
                       kernel/lib/crypto/libchacha.ko:\n\
                       kernel/drivers/net/virtio_net.ko:\n";

    #[test]
    fn plan_orders_dependencies_and_reports_builtin_and_missing() {
        let p = plan(
            "virtio-net\nwireguard  # tunnel\nlibchacha\next4\n# comment\nnope\n",
            DEP,
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        assert_eq!(
            p.load,
            [
                "kernel/drivers/net/virtio_net.ko",
                "kernel/lib/crypto/libchacha.ko",
                "kernel/lib/crypto/libchacha20poly1305.ko",
                "kernel/net/wireguard/wireguard.ko"
            ]
        );
        assert_eq!(p.builtin, ["ext4"]);
        assert_eq!(p.missing, ["nope"]);
    }

    #[test]
    fn malformed_modules_dep_is_an_error() {
        let e = plan("wireguard\n", "garbage\n", "").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
    }
}
