//! Kernel modules: the board's list (/etc/palisade/modules) plus modules.dep,
//! loaded with finit_module(2) in dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

fn key(name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Module paths (relative to the modules dir) to load for `wanted`, dependencies
/// first, each once. Names missing from modules.dep are returned in `missing`
/// (they may be built into the kernel).
pub fn plan(modules_dep: &str, wanted: &[String]) -> (Vec<String>, Vec<String>) {
    let mut by_key = BTreeMap::new();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in modules_dep.lines() {
        if let Some((p, d)) = line.split_once(':') {
            by_key.insert(key(p), p.trim().to_string());
            deps.insert(
                p.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            );
        }
    }
    fn visit(
        p: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
        depth: u32,
    ) {
        if depth > 64 || seen.contains(p) {
            return;
        }
        for d in deps.get(p).into_iter().flatten().rev() {
            visit(d, deps, seen, out, depth + 1);
        }
        if seen.insert(p.to_string()) {
            out.push(p.to_string());
        }
    }
    let (mut out, mut missing, mut seen) = (Vec::new(), Vec::new(), BTreeSet::new());
    for w in wanted {
        match by_key.get(&key(w)) {
            Some(p) => visit(p, &deps, &mut seen, &mut out, 0),
            None => missing.push(w.clone()),
        }
    }
    (out, missing)
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
    let wanted: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let dir = modules_dir()?;
    let dep = std::fs::read_to_string(dir.join("modules.dep")).context("modules.dep")?;
    let (order, missing) = plan(&dep, &wanted);
    let mut failed = Vec::new();
    for m in &order {
        if let Err(e) = load_one(&dir.join(m)) {
            failed.push(format!("{}: {e}", key(m)));
        }
    }
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(key).collect();
    for m in missing {
        if !builtin.contains(&key(&m)) {
            failed.push(format!("{m}: not found"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(order.len())
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

    #[test]
    fn plan_orders_dependencies_and_reports_missing() {
        let dep = "kernel/net/wireguard/wireguard.ko: kernel/lib/crypto/libchacha20poly1305.ko kernel/lib/crypto/libchacha.ko\n\
                   kernel/lib/crypto/libchacha20poly1305.ko: kernel/lib/crypto/libchacha.ko\n\
                   kernel/lib/crypto/libchacha.ko:\n\
                   kernel/drivers/net/virtio_net.ko:\n";
        let (order, missing) = plan(
            dep,
            &[
                "virtio-net".into(),
                "wireguard".into(),
                "libchacha".into(),
                "ext4".into(),
            ],
        );
        assert_eq!(
            order,
            [
                "kernel/drivers/net/virtio_net.ko",
                "kernel/lib/crypto/libchacha.ko",
                "kernel/lib/crypto/libchacha20poly1305.ko",
                "kernel/net/wireguard/wireguard.ko"
            ]
        );
        assert_eq!(missing, ["ext4"]);
    }
}
