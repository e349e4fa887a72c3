//! Set and verify the kernel settings the firewall depends on
//! ([`crate::firewall::sysctls`]). The root is passed in so tests can point
//! it at a temporary directory.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctl {key}: cannot write {value}: {source}")]
    Write { key: String, value: String, source: std::io::Error },
    #[error("sysctl {key}: wrote {want}, reads back {got}")]
    Verify { key: String, want: String, got: String },
}

/// Apply `(key, value, required)` settings under `root` (normally /proc/sys).
/// Optional keys that do not exist (module not loaded) or that this network
/// namespace may not write (the kernel's global settings, read-only outside
/// the init namespace) are skipped. Returns how many values had to be changed.
pub fn apply(root: &Path, settings: &[(String, String, bool)]) -> Result<usize, SysctlError> {
    let mut changed = 0;
    for (key, want, required) in settings {
        let path = root.join(key);
        if !required && !path.exists() {
            continue;
        }
        let cur = std::fs::read_to_string(&path).unwrap_or_default();
        if cur.trim() == want {
            continue;
        }
        match std::fs::write(&path, want) {
            Ok(()) => {}
            Err(e) if !required && e.kind() == std::io::ErrorKind::PermissionDenied => continue,
            Err(source) => return Err(SysctlError::Write { key: key.clone(), value: want.to_string(), source }),
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        if got.trim() != want {
            return Err(SysctlError::Verify { key: key.clone(), want: want.clone(), got: got.trim().into() });
        }
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_verifies_and_skips_absent_optional() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net/ipv4")).unwrap();
        std::fs::write(d.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        let s = vec![
            ("net/ipv4/ip_forward".to_string(), "1".to_string(), true),
            ("net/netfilter/nf_conntrack_udp_timeout".to_string(), "30".to_string(), false),
        ];
        assert_eq!(apply(d.path(), &s).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(d.path().join("net/ipv4/ip_forward")).unwrap(), "1");
        assert_eq!(apply(d.path(), &s).unwrap(), 0, "idempotent");
        let missing = vec![("net/ipv6/conf/all/forwarding".to_string(), "1".to_string(), true)];
        assert!(apply(d.path(), &missing).is_err(), "a required key that cannot be set is an error");
    }
}
