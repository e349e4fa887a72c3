//! modules.dep: pick the modules a board needs and their dependencies, in load order.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use palisade_board::module_key;

/// A parsed modules.dep: module key -> (relative path, dependency paths).
#[derive(Debug, Default)]
pub struct ModDep {
    by_key: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// The module key of a path like `kernel/net/wireguard/wireguard.ko` (`.ko.xz` too).
pub fn key_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    module_key(stem)
}

impl ModDep {
    pub fn parse(text: &str) -> Result<ModDep> {
        let mut m = ModDep::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep line {}: missing ':'", n + 1);
            };
            let path = path.trim().to_string();
            m.by_key.insert(key_of_path(&path), path.clone());
            m.deps
                .insert(path, deps.split_whitespace().map(str::to_string).collect());
        }
        Ok(m)
    }

    /// Relative path of a module by name.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_key.get(&module_key(name)).map(String::as_str)
    }

    /// All module paths needed for `names`, dependencies before dependants, each once,
    /// in the order the names are listed. Names that are built into the kernel
    /// (`builtin`) are skipped; unknown names are an error.
    pub fn closure(&self, names: &[String], builtin: &BTreeSet<String>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            let key = module_key(n);
            let Some(path) = self.by_key.get(&key) else {
                if builtin.contains(&key) {
                    continue;
                }
                bail!("kernel module `{n}` is neither in modules.dep nor built in");
            };
            self.visit(path, &mut seen, &mut out, 0)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        path: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 64 {
            bail!("modules.dep dependency loop at {path}");
        }
        if seen.contains(path) {
            return Ok(());
        }
        // modules.dep lists deps so that loading them in reverse order works.
        if let Some(deps) = self.deps.get(path) {
            for d in deps.iter().rev() {
                self.visit(d, seen, out, depth + 1)?;
            }
        }
        if seen.insert(path.to_string()) {
            out.push(path.to_string());
        }
        Ok(())
    }
}

/// Module keys from modules.builtin (`kernel/fs/ext4/ext4.ko` lines).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(key_of_path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/wireguard/wireguard.ko: kernel/lib/crypto/libchacha20poly1305.ko kernel/arch/x86/crypto/chacha-x86_64.ko kernel/lib/crypto/libchacha.ko kernel/net/ipv4/udp_tunnel.ko
kernel/lib/crypto/libchacha20poly1305.ko: kernel/arch/x86/crypto/chacha-x86_64.ko kernel/lib/crypto/libchacha.ko
kernel/arch/x86/crypto/chacha-x86_64.ko: kernel/lib/crypto/libchacha.ko
kernel/lib/crypto/libchacha.ko:
kernel/net/ipv4/udp_tunnel.ko:
kernel/fs/erofs/erofs.ko:
";

    #[test]
    fn closure_orders_dependencies_first() {
        let d = ModDep::parse(DEP).unwrap();
        let c = d.closure(&["wireguard".into()], &BTreeSet::new()).unwrap();
        let pos = |k: &str| c.iter().position(|p| key_of_path(p) == k).unwrap();
        assert_eq!(c.len(), 5);
        assert!(pos("libchacha") < pos("chacha_x86_64"));
        assert!(pos("chacha_x86_64") < pos("libchacha20poly1305"));
        assert_eq!(pos("wireguard"), 4);
    }

    #[test]
    fn dashes_underscores_builtin_unknown() {
        let d = ModDep::parse(DEP).unwrap();
        assert!(d.path_of("chacha-x86_64").is_some());
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\n");
        assert!(d.closure(&["ext4".into()], &builtin).unwrap().is_empty());
        assert!(d.closure(&["nope".into()], &builtin).is_err());
    }
}
