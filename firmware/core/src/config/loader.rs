//! Loading node.toml and peers.toml again, doing only the work a change
//! needs. At 10k peers the peers file is 1.2 MB; parsing and validating it
//! all on every reload was two-thirds of a reload's time in the guest
//! (bench/reconcile/run.sh).
//!
//! - Texts equal to those of the last load the caller kept: [`Loaded::Unchanged`].
//! - Otherwise the peers file is cut before each line that starts with
//!   `[[peer]]`; a block seen before (same text, same node.toml) reuses its
//!   validated peers, a new block is parsed and checked on its own
//!   ([`PeerRules::check`]), and uniqueness of names, keys and addresses is
//!   checked across all peers.
//! - Anything that does not pass that way (a block that does not parse on
//!   its own, a peer with a problem, a duplicate) is loaded again by the
//!   whole-file path ([`super::load_with_peers`], on the texts already
//!   read), whose errors name file, line and field. So the fast path
//!   decides nothing on its own: it either yields the spec the whole-file
//!   path would, or steps aside.
//!
//! Why a block parse that succeeds means the same as the whole-file parse: a
//! cut can only fall inside a multi-line value (a string or an array), and
//! then the block before it ends inside that value and does not parse.

use super::validate::{is_host_net, PeerRules};
use super::{load_texts, read_text, ConfigError, NodeConfig, NodeSpec, PeerSpec};
use foldhash::fast::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    /// The texts are those of the last load the caller kept ([`Loader::commit`]).
    Unchanged,
    Changed(Box<NodeSpec>),
}

/// How the last load that changed something was done (for the bench and
/// the tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    /// Blocks of the peers file.
    pub blocks: usize,
    /// Blocks parsed and checked (the rest were reused).
    pub parsed: usize,
    /// The whole-file path was taken.
    pub whole_file: bool,
}

#[derive(Default)]
pub struct Loader {
    /// Texts of node.toml and the peers file of the spec the caller runs.
    kept: Option<(String, Option<String>)>,
    /// Texts of the last successful load, until the caller keeps them.
    pending: Option<(String, Option<String>)>,
    /// The node.toml text the blocks were checked against.
    node_text: String,
    /// Validated peers of each block of the peers file, by its text.
    blocks: HashMap<Box<str>, Vec<PeerSpec>, RandomState>,
    pub stats: LoadStats,
}

impl Loader {
    /// Read and load `path` and `peers_file` (if it exists).
    pub fn load(&mut self, path: &Path, peers_file: Option<&Path>) -> Result<Loaded, ConfigError> {
        let text = read_text(path)?;
        let peers = match peers_file {
            Some(pf) if pf.exists() => Some(read_text(pf)?),
            _ => None,
        };
        if self.kept.as_ref().is_some_and(|(t, p)| *t == text && *p == peers) {
            return Ok(Loaded::Unchanged);
        }
        let spec = match (self.blocks_path(path, &text, peers_file.zip(peers.as_deref())), peers_file) {
            (Some(spec), _) => spec,
            (None, pf) => {
                self.stats = LoadStats { whole_file: true, ..LoadStats::default() };
                load_texts(path, text.clone(), pf.zip(peers.as_deref()))?
            }
        };
        self.pending = Some((text, peers));
        Ok(Loaded::Changed(Box::new(spec)))
    }

    /// The caller runs the spec of the last load: the next load of the same
    /// texts is [`Loaded::Unchanged`].
    pub fn commit(&mut self) {
        if let Some(p) = self.pending.take() {
            self.kept = Some(p);
        }
    }

    /// The caller runs a spec from elsewhere (or none): the next load is a
    /// load.
    pub fn forget(&mut self) {
        self.kept = None;
    }

    /// The spec by blocks, or `None` to leave it to the whole-file path.
    fn blocks_path(&mut self, path: &Path, text: &str, peers: Option<(&Path, &str)>) -> Option<NodeSpec> {
        let cfg = NodeConfig::from_str(text, path).ok()?;
        let n = cfg.peers.len();
        let mut spec = cfg.validate_with_sources(&[(path.to_path_buf(), text.to_string(), n)]).ok()?;
        let Some((pf, ptext)) = peers else {
            self.stats = LoadStats::default();
            return Some(spec);
        };
        if self.node_text != text {
            self.blocks.clear();
            self.node_text = text.to_string();
        }
        let rules = PeerRules {
            v4: Some(spec.wg.address_v4),
            v6: Some(spec.wg.address_v6),
            routed: spec.wg.routed_prefix_v6,
            tiers: (!spec.dns.tiers.is_empty()).then_some(&spec.dns.tiers),
        };
        let mut stats = LoadStats::default();
        let mut fresh: HashMap<Box<str>, Vec<PeerSpec>, RandomState> =
            HashMap::with_capacity_and_hasher(self.blocks.len().max(16), RandomState::default());
        let mut order: Vec<&str> = Vec::new();
        for block in blocks(ptext) {
            stats.blocks += 1;
            order.push(block);
            let (key, peers) = match self.blocks.remove_entry(block) {
                Some(kept) => kept,
                None => {
                    stats.parsed += 1;
                    let sections = super::parse_peers(block, pf).ok()?;
                    let mut ok = true;
                    let peers: Vec<PeerSpec> = sections.iter().filter_map(|s| rules.check(s, |_, _| ok = false)).collect();
                    if !ok || peers.len() != sections.len() {
                        return None;
                    }
                    (block.into(), peers)
                }
            };
            if fresh.insert(key, peers).is_some() {
                return None; // the same block twice: duplicate peers
            }
        }
        // Unique across all peers: names, keys, addresses (a peer that
        // passed its checks has host addresses only).
        let total = spec.peers.len() + order.iter().map(|b| fresh[*b].len()).sum::<usize>();
        let mut names: HashSet<&str, RandomState> = HashSet::with_capacity_and_hasher(total, RandomState::default());
        let mut v4: HashSet<Ipv4Addr, RandomState> = HashSet::with_capacity_and_hasher(total, RandomState::default());
        let mut v6: HashSet<Ipv6Addr, RandomState> = HashSet::with_capacity_and_hasher(total, RandomState::default());
        let mut all: Vec<&PeerSpec> = Vec::with_capacity(total);
        all.extend(spec.peers.values());
        for b in &order {
            all.extend(fresh[*b].iter());
        }
        for p in &all {
            let unique = names.insert(p.name.as_str())
                && p.v4.is_none_or(|a| v4.insert(a))
                && p.v6.is_none_or(|a| v6.insert(a));
            if !unique {
                return None;
            }
        }
        // One bulk build of the map from references sorted by key (sorting
        // the peers themselves moves 150-byte values; the build finds the
        // order already sorted).
        all.sort_unstable_by_key(|p| p.public_key);
        if all.windows(2).any(|w| w[0].public_key == w[1].public_key) {
            return None; // a duplicate key
        }
        let peers: BTreeMap<super::PublicKey, PeerSpec> = all.iter().map(|p| (p.public_key, (*p).clone())).collect();
        drop(all);
        spec.peers = peers;
        debug_assert!(spec.peers.values().all(|p| p.allowed_ips().iter().all(is_host_net)));
        self.blocks = fresh;
        self.stats = stats;
        Some(spec)
    }
}

/// The peers file cut before each line that starts with `[[peer]]` (the
/// text before the first such line, if any, is a block too).
fn blocks(text: &str) -> impl Iterator<Item = &str> {
    let mut starts: Vec<usize> = Vec::new();
    if !text.is_empty() {
        starts.push(0);
    }
    starts.extend(text.match_indices("\n[[peer]]").map(|(i, _)| i + 1));
    let ends: Vec<usize> = starts.iter().skip(1).copied().chain(std::iter::once(text.len())).collect();
    starts.into_iter().zip(ends).map(move |(s, e)| &text[s..e])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, PrivateKey};

    const NODE: &str = include_str!("../../../../configs/node.toml");

    fn peer(i: usize, key: &str) -> String {
        format!("[[peer]]\nname = \"p{i}\"\npublic_key = \"{key}\"\naddresses = [\"10.66.1.{i}/32\", \"fd66::1:{i:x}/128\"]\n\n")
    }

    struct Files {
        _dir: tempfile::TempDir,
        node: std::path::PathBuf,
        peers: std::path::PathBuf,
        keys: Vec<String>,
    }

    impl Files {
        fn new(n: usize) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let node = dir.path().join("node.toml");
            let peers = dir.path().join("peers.toml");
            std::fs::write(&node, NODE).unwrap();
            let keys: Vec<String> = (0..n).map(|_| PrivateKey::generate().public_key().to_base64()).collect();
            let f = Files { _dir: dir, node, peers, keys };
            f.write(&(1..=n).map(|i| peer(i, &f.keys[i - 1])).collect::<String>());
            f
        }
        fn write(&self, peers: &str) {
            std::fs::write(&self.peers, format!("# peers\n{peers}")).unwrap();
        }
        /// The loader's result next to the whole-file load's.
        fn both(&self, l: &mut Loader) -> (Result<Option<NodeSpec>, String>, Result<NodeSpec, String>) {
            let fast = l.load(&self.node, Some(&self.peers)).map(|r| match r {
                Loaded::Unchanged => None,
                Loaded::Changed(s) => Some(*s),
            });
            (fast.map_err(|e| e.to_string()), load(&self.node, Some(&self.peers)).map_err(|e| e.to_string()))
        }
    }

    #[test]
    fn reuses_unchanged_blocks_and_equals_the_whole_file_load() {
        let f = Files::new(40);
        let mut l = Loader::default();
        let (fast, whole) = f.both(&mut l);
        assert_eq!(fast.unwrap().unwrap(), whole.unwrap());
        assert_eq!(l.stats, LoadStats { blocks: 41, parsed: 41, whole_file: false });
        assert_eq!(f.both(&mut l).0.unwrap().unwrap().peers.len(), 42, "not kept: loaded again");
        assert_eq!(l.stats.parsed, 0, "every block reused");
        l.commit();
        assert!(f.both(&mut l).0.unwrap().is_none(), "kept and unchanged");

        // One peer moved, one replaced, one added: three blocks parsed.
        let mut text: String = (1..=40).map(|i| peer(i, &f.keys[i - 1])).collect();
        text = text.replace("10.66.1.7/32", "10.66.2.7/32");
        text = text.replace(&f.keys[9], &PrivateKey::generate().public_key().to_base64());
        text.push_str(&peer(41, &PrivateKey::generate().public_key().to_base64()));
        f.write(&text);
        let (fast, whole) = f.both(&mut l);
        assert_eq!(fast.unwrap().unwrap(), whole.unwrap());
        assert_eq!(l.stats, LoadStats { blocks: 42, parsed: 3, whole_file: false });

        // A changed node.toml checks every block again.
        std::fs::write(&f.node, NODE.replace("listen_port = 51820", "listen_port = 51821")).unwrap();
        let (fast, whole) = f.both(&mut l);
        assert_eq!(fast.unwrap().unwrap(), whole.unwrap());
        assert_eq!(l.stats.parsed, 42);

        l.forget();
        std::fs::write(&f.node, NODE.replace("listen_port = 51820", "listen_port = 51821")).unwrap();
        assert!(f.both(&mut l).0.unwrap().is_some(), "forgotten: a load");
    }

    #[test]
    fn problems_take_the_whole_file_path_and_its_errors() {
        let f = Files::new(6);
        let good: String = (1..=6).map(|i| peer(i, &f.keys[i - 1])).collect();
        let cases = [
            // duplicates across blocks: name, key, address, the same block twice
            good.replace("name = \"p5\"", "name = \"p2\""),
            good.replace(&f.keys[4], &f.keys[1]),
            good.replace("10.66.1.5/32", "10.66.1.2/32"),
            good.clone() + &peer(6, &f.keys[5]),
            // a duplicate of a peer in node.toml (its first peer's name)
            good.replace("name = \"p3\"", &format!("name = {:?}", NODE.split("name = \"").nth(2).unwrap().split('"').next().unwrap())),
            // one block on its own: a bad key, an address outside the tunnel, a syntax error
            good.replace(&f.keys[2], "bm90IGEga2V5"),
            good.replace("10.66.1.3/32", "10.67.1.3/32"),
            good.replace("name = \"p3\"", "name = p3"),
            // a cut inside a multi-line string: both halves are one value
            good.replace("name = \"p3\"", "name = \"\"\"p3\n[[peer]]\nname = 1\"\"\""),
            // not a peer table
            good.clone() + "[other]\nx = 1\n",
        ];
        for (i, text) in cases.iter().enumerate() {
            let mut l = Loader::default();
            f.write(&good);
            let _ = f.both(&mut l);
            f.write(text);
            let (fast, whole) = f.both(&mut l);
            assert_eq!(fast.map(|s| s.expect("changed")), whole, "case {i}");
            assert!(l.stats.whole_file, "case {i}: {:?}", l.stats);
        }
    }

    #[test]
    fn blocks_cover_the_text_and_start_at_peer_headers() {
        for text in ["", "# c\n", "[[peer]]\na = 1\n", "# c\n[[peer]]\na = 1\n\n[[peer]]\nb = 2", "x\n [[peer]]\n[[peer]]"] {
            let b: Vec<&str> = blocks(text).collect();
            assert_eq!(b.concat(), text, "{text:?}");
            assert!(b.iter().skip(1).all(|b| b.starts_with("[[peer]]")), "{b:?}");
            assert!(b.iter().all(|b| !b.is_empty()), "{b:?}");
        }
        assert_eq!(blocks("# c\n[[peer]]\na\n[[peer]]\nb").collect::<Vec<_>>(), ["# c\n", "[[peer]]\na\n", "[[peer]]\nb"]);
        assert_eq!(blocks("x\n [[peer]]\n").count(), 1, "an indented header does not cut");
    }
}
