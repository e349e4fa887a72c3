//! Per-tier filtering policy: which lists apply to which client, keyed by the
//! client's tunnel address (its WireGuard identity).

use crate::filter::{compile_file, CompiledList, ListError, ListStats};
use palisade_core::config::DnsSection;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One tier: the lists it applies. Allow entries of any of its lists win over
/// block entries of any of its lists.
#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub lists: Vec<Arc<CompiledList>>,
}

impl Tier {
    /// Is `wire` (lowercase wire form, no root label) blocked in this tier?
    #[inline]
    pub fn blocks(&self, wire: &[u8]) -> bool {
        if !self.lists.iter().any(|l| l.block.matches(wire)) {
            return false;
        }
        !self.lists.iter().any(|l| l.allow.matches(wire))
    }
}

/// The compiled policy: tiers and the address -> tier map.
#[derive(Debug, Default)]
pub struct Policy {
    pub tiers: Vec<Tier>,
    by_addr: HashMap<IpAddr, u16>,
    default_tier: Option<u16>,
}

impl Policy {
    /// The tier of a client. Unknown addresses and peers without a tier get
    /// the tier named `default` if there is one, else no filtering.
    #[inline]
    pub fn tier_for(&self, addr: IpAddr) -> Option<&Tier> {
        let i = self.by_addr.get(&addr).copied().or(self.default_tier)?;
        self.tiers.get(i as usize)
    }

    pub fn tier_index(&self, addr: IpAddr) -> Option<u16> {
        self.by_addr.get(&addr).copied().or(self.default_tier)
    }
}

/// A client address and the tier its peer names (`None`: the default tier).
pub struct ClientTier<'a> {
    pub addr: IpAddr,
    pub tier: Option<&'a str>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ListKey {
    path: PathBuf,
    allow: bool,
    min_depth: usize,
}

#[derive(Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

/// Compiled lists kept between reloads: a list whose file did not change is
/// reused, not compiled again, so a reload only holds old and new copies of
/// the lists that actually changed (never the whole set twice).
#[derive(Default)]
pub struct ListStore {
    lists: Mutex<HashMap<ListKey, (Fingerprint, Arc<CompiledList>)>>,
}

/// Errors building a policy. The previous policy stays live when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error("[dns.tier.{tier}] names list '{list}', which is not defined under [dns.list]")]
    UnknownList { tier: String, list: String },
}

impl ListStore {
    /// Build the policy for `dns` and the given clients. Lists are compiled
    /// (or reused) once even when several tiers share them.
    pub fn build<'a>(
        &self,
        dns: &DnsSection,
        clients: impl IntoIterator<Item = ClientTier<'a>>,
    ) -> Result<(Policy, Vec<(String, ListStats)>), PolicyError> {
        let mut old = self.lists.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next: HashMap<ListKey, (Fingerprint, Arc<CompiledList>)> = HashMap::new();
        let mut by_name: HashMap<&str, Arc<CompiledList>> = HashMap::new();
        let mut stats = Vec::new();
        let mut tiers = Vec::new();
        for (tname, tier) in &dns.tiers {
            let mut lists = Vec::new();
            for lname in &tier.lists {
                if let Some(l) = by_name.get(lname.as_str()) {
                    lists.push(l.clone());
                    continue;
                }
                let Some(spec) = dns.lists.get(lname) else {
                    return Err(PolicyError::UnknownList {
                        tier: tname.clone(),
                        list: lname.clone(),
                    });
                };
                let key = ListKey {
                    path: spec.path.clone(),
                    allow: spec.allow,
                    min_depth: dns.min_wildcard_depth,
                };
                let meta = std::fs::metadata(&spec.path).map_err(|source| ListError::Read {
                    path: spec.path.clone(),
                    source,
                })?;
                let fp = Fingerprint {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                let compiled = match (next.get(&key), old.remove(&key)) {
                    (Some((_, l)), _) => l.clone(),
                    (None, Some((ofp, l))) if ofp == fp => l,
                    _ => Arc::new(compile_file(
                        &spec.path,
                        spec.allow,
                        dns.min_wildcard_depth,
                    )?),
                };
                next.insert(key, (fp, compiled.clone()));
                stats.push((lname.clone(), compiled.stats));
                by_name.insert(lname.as_str(), compiled.clone());
                lists.push(compiled);
            }
            tiers.push(Tier {
                name: tname.clone(),
                lists,
            });
        }
        let index: HashMap<&str, u16> = tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i as u16))
            .collect();
        let default_tier = index.get("default").copied();
        let mut by_addr = HashMap::new();
        for c in clients {
            if let Some(i) = c.tier.and_then(|t| index.get(t)) {
                by_addr.insert(c.addr, *i);
            }
        }
        drop(old);
        *self.lists.lock().unwrap_or_else(|e| e.into_inner()) = next;
        Ok((
            Policy {
                tiers,
                by_addr,
                default_tier,
            },
            stats,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::config::{DnsListSection, DnsTierSection};

    fn w(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        crate::filter::name_to_wire(name.as_bytes(), &mut v).unwrap();
        v
    }

    fn section(dir: &std::path::Path) -> DnsSection {
        std::fs::write(
            dir.join("ads.txt"),
            "||ads.test^\n0.0.0.0 tracker.test\n@@||ok.ads.test^\n",
        )
        .unwrap();
        std::fs::write(dir.join("family.txt"), "adult.test\n").unwrap();
        std::fs::write(dir.join("allow.txt"), "tracker.test\n").unwrap();
        let mut d = DnsSection::default();
        for (n, allow) in [("ads", false), ("family", false), ("allow", true)] {
            d.lists.insert(
                n.into(),
                DnsListSection {
                    path: dir.join(format!("{n}.txt")),
                    allow,
                },
            );
        }
        d.tiers.insert(
            "basic".into(),
            DnsTierSection {
                lists: vec!["ads".into(), "allow".into()],
            },
        );
        d.tiers.insert(
            "family".into(),
            DnsTierSection {
                lists: vec!["ads".into(), "family".into()],
            },
        );
        d
    }

    #[test]
    fn tiers_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let d = section(dir.path());
        let store = ListStore::default();
        let a: IpAddr = "10.66.0.2".parse().unwrap();
        let b: IpAddr = "fd66::3".parse().unwrap();
        let c: IpAddr = "10.66.0.9".parse().unwrap();
        let (p, stats) = store
            .build(
                &d,
                [
                    ClientTier {
                        addr: a,
                        tier: Some("basic"),
                    },
                    ClientTier {
                        addr: b,
                        tier: Some("family"),
                    },
                ],
            )
            .unwrap();
        assert_eq!(stats.len(), 3);
        let basic = p.tier_for(a).unwrap();
        let family = p.tier_for(b).unwrap();
        assert!(p.tier_for(c).is_none(), "no default tier: no lists");
        assert!(basic.blocks(&w("x.ads.test")));
        assert!(!basic.blocks(&w("ok.ads.test")), "@@ wins");
        assert!(!basic.blocks(&w("tracker.test")), "allowlist wins");
        assert!(!basic.blocks(&w("adult.test")));
        assert!(family.blocks(&w("tracker.test")) && family.blocks(&w("adult.test")));
        // Lists shared by tiers are compiled once.
        assert!(Arc::ptr_eq(&basic.lists[0], &family.lists[0]));
    }

    #[test]
    fn default_tier_and_reuse_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = section(dir.path());
        d.tiers.insert(
            "default".into(),
            DnsTierSection {
                lists: vec!["family".into()],
            },
        );
        let store = ListStore::default();
        let (p1, _) = store.build(&d, []).unwrap();
        let any: IpAddr = "10.66.0.77".parse().unwrap();
        assert!(p1.tier_for(any).unwrap().blocks(&w("adult.test")));
        // Unchanged file: same compiled list. Changed file: recompiled.
        let (p2, _) = store.build(&d, []).unwrap();
        let ads1 = &p1.tiers.iter().find(|t| t.name == "basic").unwrap().lists[0];
        let ads2 = &p2.tiers.iter().find(|t| t.name == "basic").unwrap().lists[0];
        assert!(Arc::ptr_eq(ads1, ads2));
        std::fs::write(dir.path().join("ads.txt"), "||ads.test^\nnew.test\n").unwrap();
        let (p3, _) = store.build(&d, []).unwrap();
        let ads3 = &p3.tiers.iter().find(|t| t.name == "basic").unwrap().lists[0];
        assert!(!Arc::ptr_eq(ads1, ads3));
        assert!(ads3.block.matches(&w("new.test")));
        // A missing list is an error (the caller keeps the old policy).
        std::fs::remove_file(dir.path().join("ads.txt")).unwrap();
        assert!(matches!(store.build(&d, []), Err(PolicyError::List(_))));
    }
}
