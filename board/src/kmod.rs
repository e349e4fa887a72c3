//! Kernel modules: names, `modules.dep`, load plans and the load list.
//!
//! One implementation for both ends: the image builder plans which modules go into
//! the image (and refuses a name it cannot place), palisaded plans the load order
//! at boot from the same files (and loads what it can, reporting the rest).
//!
//! Semantics, the same on both ends:
//! - a module name and a module path have one [`module_key`]: the file name
//!   without `.ko` (and a compression suffix), `-` and `_` equal, as the kernel
//!   treats them;
//! - [`ModDep::plan`] puts dependencies before dependants, each module once, in
//!   the order the names are given; dependencies are visited in reverse
//!   `modules.dep` order, as modprobe does;
//! - a name that is not in `modules.dep` but in `modules.builtin` needs nothing;
//!   one that is in neither is reported in [`Plan::missing`]. Whether that is
//!   fatal is the caller's choice ([`Plan::require_all`] makes it so);
//! - a malformed `modules.dep` line or a dependency loop is an error, never
//!   silently skipped.

use std::collections::{BTreeMap, BTreeSet};

/// Compressed module suffixes the kernel's module loader accepts.
const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Longest dependency chain followed (real ones are under ten).
const MAX_DEPTH: usize = 64;

/// Errors of `modules.dep` parsing and planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmodError {
    /// A non-empty line without `path:`.
    #[error("modules.dep line {line}: expected `path: dependency paths`, found `{text}`")]
    Syntax { line: usize, text: String },
    /// A module depends on itself through its dependencies (depmod refuses these,
    /// so the file was edited or corrupted).
    #[error("modules.dep: dependency loop {0}")]
    Loop(String),
    /// A dependency chain longer than any real kernel has.
    #[error("modules.dep: dependency chain deeper than {MAX_DEPTH} at {0}")]
    TooDeep(String),
    /// Names that are neither in modules.dep nor built into the kernel.
    #[error("kernel module(s) {} neither in modules.dep nor built in (check the name and the kernel's config)", .0.join(", "))]
    Missing(Vec<String>),
}

/// The kernel's name for a module given by name (`crc32c-intel`) or path
/// (`kernel/arch/x86/crypto/crc32c-intel.ko.xz`): `crc32c_intel`.
pub fn module_key(name: &str) -> String {
    let file = name.trim().rsplit('/').next().unwrap_or(name);
    let stem = SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// A parsed `modules.dep`.
#[derive(Debug, Default, Clone)]
pub struct ModDep {
    /// module key -> path (relative to `lib/modules/<release>`).
    by_key: BTreeMap<String, String>,
    /// path -> dependency paths, as listed.
    deps: BTreeMap<String, Vec<String>>,
}

/// What loading a list of names takes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Module paths, relative to `lib/modules/<release>`: dependencies first, each once.
    pub load: Vec<String>,
    /// Names built into the kernel: nothing to load.
    pub builtin: Vec<String>,
    /// Names neither in modules.dep nor built in, as given.
    pub missing: Vec<String>,
}

impl Plan {
    /// The load order, or [`KmodError::Missing`] naming every missing module.
    pub fn require_all(self) -> Result<Vec<String>, KmodError> {
        if self.missing.is_empty() {
            Ok(self.load)
        } else {
            Err(KmodError::Missing(self.missing))
        }
    }
}

impl ModDep {
    /// Parses `modules.dep` (`path: dep dep ...` per line; blank lines ignored). A
    /// later line for the same module key replaces an earlier one.
    pub fn parse(text: &str) -> Result<ModDep, KmodError> {
        let mut m = ModDep::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(KmodError::Syntax {
                    line: n + 1,
                    text: line.chars().take(80).collect(),
                });
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(KmodError::Syntax {
                    line: n + 1,
                    text: line.chars().take(80).collect(),
                });
            }
            m.by_key.insert(module_key(path), path.to_string());
            m.deps.insert(
                path.to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            );
        }
        Ok(m)
    }

    /// The path of a module by name or path.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_key.get(&module_key(name)).map(String::as_str)
    }

    /// Plans loading `names` (see the module docs for the rules). `builtin` holds
    /// module keys, as [`parse_builtin`] returns them.
    pub fn plan<S: AsRef<str>>(
        &self,
        names: &[S],
        builtin: &BTreeSet<String>,
    ) -> Result<Plan, KmodError> {
        let mut plan = Plan::default();
        let mut seen = BTreeSet::new();
        for n in names {
            let n = n.as_ref();
            let key = module_key(n);
            match self.by_key.get(&key) {
                Some(path) => {
                    let mut chain = Vec::new();
                    self.visit(path, &mut chain, &mut seen, &mut plan.load)?;
                }
                None if builtin.contains(&key) => plan.builtin.push(n.to_string()),
                None => plan.missing.push(n.to_string()),
            }
        }
        Ok(plan)
    }

    fn visit<'a>(
        &'a self,
        path: &'a str,
        chain: &mut Vec<&'a str>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), KmodError> {
        if seen.contains(path) {
            return Ok(());
        }
        if chain.contains(&path) {
            chain.push(path);
            let names: Vec<String> = chain.iter().map(|p| module_key(p)).collect();
            return Err(KmodError::Loop(names.join(" -> ")));
        }
        if chain.len() >= MAX_DEPTH {
            return Err(KmodError::TooDeep(module_key(path)));
        }
        chain.push(path);
        // modules.dep lists dependencies so that loading them in reverse works.
        for d in self.deps.get(path).into_iter().flatten().rev() {
            self.visit(d, chain, seen, out)?;
        }
        chain.pop();
        if seen.insert(path.to_string()) {
            out.push(path.to_string());
        }
        Ok(())
    }
}

/// Module keys from `modules.builtin` (one path per line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_key)
        .collect()
}

/// The load list (`/etc/palisade/modules`): one name per line, in order.
pub fn render_load_list<S: AsRef<str>>(names: &[S]) -> String {
    names.iter().map(|m| format!("{}\n", m.as_ref())).collect()
}

/// Parses a load list: one name per line; `#` starts a comment; blank lines ignored.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
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

kernel/fs/erofs/erofs.ko.xz:
kernel/drivers/net/virtio_net.ko:
";

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn keys_normalise_dashes_paths_and_suffixes() {
        assert_eq!(module_key("crc32c-intel"), "crc32c_intel");
        assert_eq!(module_key("crc32c_intel"), "crc32c_intel");
        assert_eq!(
            module_key("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_key("kernel/fs/erofs/erofs.ko.xz"), "erofs");
        assert_eq!(module_key("erofs.ko.zst"), "erofs");
        assert_eq!(module_key(" wireguard "), "wireguard");
        // `.ko` inside a name is not a suffix.
        assert_eq!(module_key("kernel/fs/nls/nls_koi8-r.ko"), "nls_koi8_r");
    }

    #[test]
    fn plan_orders_dependencies_first_each_once() {
        let d = ModDep::parse(DEP).unwrap();
        let p = d
            .plan(&["virtio-net", "wireguard", "libchacha"], &none())
            .unwrap();
        assert_eq!(
            p.load,
            [
                "kernel/drivers/net/virtio_net.ko",
                // wireguard's dependencies, last listed first
                "kernel/net/ipv4/udp_tunnel.ko",
                "kernel/lib/crypto/libchacha.ko",
                "kernel/arch/x86/crypto/chacha-x86_64.ko",
                "kernel/lib/crypto/libchacha20poly1305.ko",
                "kernel/net/wireguard/wireguard.ko",
            ]
        );
        assert!(p.builtin.is_empty() && p.missing.is_empty());
    }

    #[test]
    fn dashes_and_underscores_are_one_module() {
        let d = ModDep::parse(DEP).unwrap();
        assert_eq!(
            d.path_of("chacha_x86_64"),
            Some("kernel/arch/x86/crypto/chacha-x86_64.ko")
        );
        assert_eq!(d.path_of("chacha-x86_64"), d.path_of("chacha_x86_64"));
        let p = d
            .plan(&["chacha-x86_64", "chacha_x86_64"], &none())
            .unwrap();
        assert_eq!(p.load.len(), 2, "{p:?}");
        assert_eq!(d.path_of("erofs"), Some("kernel/fs/erofs/erofs.ko.xz"));
    }

    #[test]
    fn builtin_and_missing_are_reported_not_loaded() {
        let d = ModDep::parse(DEP).unwrap();
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n\n");
        assert!(builtin.contains("ext4") && builtin.contains("crc32c_generic"));
        let p = d
            .plan(
                &["ext4", "nope", "erofs", "crc32c-generic", "nada"],
                &builtin,
            )
            .unwrap();
        assert_eq!(p.load, ["kernel/fs/erofs/erofs.ko.xz"]);
        assert_eq!(p.builtin, ["ext4", "crc32c-generic"]);
        assert_eq!(p.missing, ["nope", "nada"]);
        let e = p.require_all().unwrap_err();
        assert_eq!(e, KmodError::Missing(vec!["nope".into(), "nada".into()]));
        assert!(e.to_string().contains("nope, nada"), "{e}");
        assert_eq!(
            d.plan(&["erofs", "ext4"], &builtin)
                .unwrap()
                .require_all()
                .unwrap(),
            ["kernel/fs/erofs/erofs.ko.xz"]
        );
    }

    #[test]
    fn dependency_without_its_own_line_is_still_loaded() {
        let d = ModDep::parse("a.ko: b.ko\n").unwrap();
        assert_eq!(d.plan(&["a"], &none()).unwrap().load, ["b.ko", "a.ko"]);
    }

    #[test]
    fn malformed_line_is_an_error_naming_it() {
        let e = ModDep::parse("a.ko:\n\nthis is not modules.dep\n").unwrap_err();
        assert_eq!(
            e,
            KmodError::Syntax {
                line: 3,
                text: "this is not modules.dep".into()
            }
        );
        assert!(ModDep::parse(": b.ko\n").is_err());
    }

    #[test]
    fn loops_are_errors_not_hangs() {
        let d = ModDep::parse("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n").unwrap();
        let e = d.plan(&["a"], &none()).unwrap_err();
        assert_eq!(e, KmodError::Loop("a -> b -> c -> a".into()));
        let d = ModDep::parse("a.ko: a.ko\n").unwrap();
        assert!(matches!(d.plan(&["a"], &none()), Err(KmodError::Loop(_))));
    }

    #[test]
    fn deep_chains_are_capped() {
        let text: String = (0..100)
            .map(|i| format!("m{i}.ko: m{}.ko\n", i + 1))
            .collect();
        let d = ModDep::parse(&text).unwrap();
        assert!(matches!(
            d.plan(&["m0"], &none()),
            Err(KmodError::TooDeep(_))
        ));
        // A chain well within the cap works.
        assert_eq!(d.plan(&["m90"], &none()).unwrap().load.len(), 11);
    }

    #[test]
    fn load_list_round_trip_and_comments() {
        let names = ["virtio_net", "wireguard"];
        let text = render_load_list(&names);
        assert_eq!(text, "virtio_net\nwireguard\n");
        assert_eq!(parse_load_list(&text), names);
        assert_eq!(
            parse_load_list("# boot modules\nvirtio_net  # uplink\n\n  wireguard\n#x\n"),
            names
        );
    }

    #[test]
    fn board_module_names_are_keys() {
        // Every module name in the shipped boards is spelt as the kernel spells it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
        for board in ["qemu-x86_64", "x86-appliance"] {
            let b = crate::BoardDef::load(&dir, board).unwrap();
            for m in b.modules.root.iter().chain(&b.modules.initramfs) {
                assert_eq!(&module_key(m), m, "{board}: board names use the kernel's spelling");
            }
        }
    }
}
