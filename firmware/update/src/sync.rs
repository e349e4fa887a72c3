//! The fleet state a node pulls from the repository, and what it means.
//!
//! [`fetch`] reads, each from the one role that owns it
//! ([`Repo::role_entry`]): the node's config and grants (`configs`), the
//! grant issuer's keys (`grants`), the revocations (`revocations`), every
//! DNS list (`lists`) and the mesh trust anchors (`configs`,
//! `mesh/anchors.pem`), with a cap on each. A target whose signed SHA-256 is
//! the one already held is not downloaded again. Content is checked before
//! it is taken (config UTF-8, grants, keys and revocations parse): a bad
//! publish fails the fetch and the node keeps its last state.
//!
//! [`FleetState`] is what was fetched, saved in the store
//! ([`Key::FleetState`]) so that a node keeps serving its last verified
//! state across reboots while the repository is unreachable or expired.
//!
//! [`Verifier::evaluate`] (pure, the node's clock passed in) turns a state
//! into the peers to serve: grants verified against the issuer keys, minus
//! expired ones, minus revoked client keys and grant ids, one grant per
//! client key (the latest expiry). Signature checks are cached by the
//! SHA-256 of each grant, so a poll with unchanged grants does no crypto;
//! times and revocations are evaluated on every call. Rejections are
//! reported as (grant id or `#index`, kind): counts for logs, never keys.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::fleet::{self, Revocations};
use crate::grant::{self, Grant, GrantError, Issuer};
use crate::repo::{Repo, RepoError};
use crate::store::{Key, Store, StoreError};

/// Largest node config accepted.
pub const MAX_CONFIG: u64 = 1 << 20;
/// Largest grants file accepted.
pub const MAX_GRANTS: u64 = 32 << 20;
/// Largest `jwks.json` accepted.
pub const MAX_JWKS: u64 = 64 << 10;
/// Largest `revoked.json` accepted.
pub const MAX_REVOKED: u64 = 8 << 20;
/// Largest DNS list accepted (each).
pub const MAX_LIST: u64 = 64 << 20;
/// At most this many DNS lists.
pub const MAX_LISTS: usize = 64;

/// One fetched target: its signed hash, the version of the role metadata
/// that listed it, and its bytes (shared, cheap to clone).
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Version of the role's metadata it came with.
    pub role_version: u64,
    /// The content.
    pub bytes: Bytes,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Blob({} bytes, sha256 {}, role version {})",
            self.bytes.len(),
            self.sha256,
            self.role_version
        )
    }
}

/// Stored form of a [`Blob`]: the bytes as a JSON string when they are
/// UTF-8 (configs, JSON, lists), base64 otherwise.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobRepr<'a> {
    sha256: Cow<'a, str>,
    role_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (text, base64) = match std::str::from_utf8(&self.bytes) {
            Ok(t) => (Some(Cow::Borrowed(t)), None),
            Err(_) => (None, Some(B64.encode(&self.bytes))),
        };
        BlobRepr {
            sha256: Cow::Borrowed(&self.sha256),
            role_version: self.role_version,
            text,
            base64,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        use serde::de::Error as _;
        let r = BlobRepr::deserialize(d)?;
        let bytes = match (r.text, r.base64) {
            (Some(t), None) => Bytes::from(t.into_owned().into_bytes()),
            (None, Some(b)) => Bytes::from(B64.decode(b).map_err(D::Error::custom)?),
            _ => {
                return Err(D::Error::custom(
                    "a blob has exactly one of text and base64",
                ))
            }
        };
        let sha256 = r.sha256.into_owned();
        if sha256 != hex(&sha(&bytes)) {
            return Err(D::Error::custom(format!(
                "bytes do not match sha256 {sha256}"
            )));
        }
        Ok(Blob {
            sha256,
            role_version: r.role_version,
            bytes,
        })
    }
}

/// The last verified fleet state of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetState {
    /// `nodes/<id>/config.toml` (configs role).
    pub config: Option<Blob>,
    /// `nodes/<id>/grants.json` (configs role).
    pub grants: Option<Blob>,
    /// `jwks.json` (grants role).
    pub jwks: Option<Blob>,
    /// `revoked.json` (revocations role).
    pub revocations: Option<Blob>,
    /// DNS lists by name (`lists/<name>.txt`, lists role).
    #[serde(default)]
    pub lists: BTreeMap<String, Blob>,
    /// `mesh/anchors.pem` (configs role): the metrics scrapers' trust
    /// anchors. Absent in repositories that do not publish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_anchors: Option<Blob>,
    /// When it was fetched (Unix seconds, the node's clock).
    pub fetched_at: i64,
}

impl FleetState {
    /// The saved state, `None` if none was saved. A value that does not
    /// parse, or whose bytes do not match their hashes, is an error.
    pub fn load(store: &dyn Store) -> Result<Option<FleetState>, StoreError> {
        crate::store::get_json(store, Key::FleetState)
    }

    /// Whether `other` carries the same targets (the fetch time aside):
    /// nothing to save again.
    pub fn same_targets(&self, other: &FleetState) -> bool {
        self.config == other.config
            && self.grants == other.grants
            && self.jwks == other.jwks
            && self.revocations == other.revocations
            && self.lists == other.lists
            && self.mesh_anchors == other.mesh_anchors
    }

    /// Saves the state (durable when it returns `Ok`).
    pub fn save(&self, store: &dyn Store) -> Result<(), StoreError> {
        crate::store::put_json(store, Key::FleetState, self)
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads one target of `role` (see the module docs); `prev`: the same
/// target in the previous state.
async fn get(
    repo: &Repo,
    role: fleet::Role,
    name: &str,
    cap: u64,
    prev: Option<&Blob>,
) -> Result<Option<(Blob, bool)>, RepoError> {
    let Some(e) = repo.role_entry(role, name)? else {
        return Ok(None);
    };
    let sha256 = hex(&e.sha256);
    if let Some(p) = prev {
        if e.role_version < p.role_version {
            return Err(RepoError::Rollback {
                detail: format!(
                    "{name}: role `{}` is at version {}, this node already took version {}",
                    role.name, e.role_version, p.role_version
                ),
            });
        }
        if p.sha256 == sha256 {
            return Ok(Some((
                Blob {
                    sha256,
                    role_version: e.role_version,
                    bytes: p.bytes.clone(),
                },
                false,
            )));
        }
    }
    let t = repo.read_entry(&e, cap).await?;
    Ok(Some((
        Blob {
            sha256,
            role_version: t.role_version,
            bytes: Bytes::from(t.bytes),
        },
        true,
    )))
}

fn invalid(what: &str, detail: impl std::fmt::Display) -> RepoError {
    RepoError::Invalid {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Fetches the fleet state of `node_id` from `repo` (see the module docs).
/// `previous`: the last state, whose unchanged targets are reused and
/// whose role versions a target may not go below (`rollback`).
pub async fn fetch(
    repo: &Repo,
    node_id: &str,
    previous: Option<&FleetState>,
    now_unix: i64,
) -> Result<FleetState, RepoError> {
    let prev = |f: fn(&FleetState) -> Option<&Blob>| previous.and_then(f);
    let config_name = fleet::config_target(node_id);
    let grants_name = fleet::grants_target(node_id);
    let config = get(
        repo,
        fleet::CONFIGS,
        &config_name,
        MAX_CONFIG,
        prev(|s| s.config.as_ref()),
    )
    .await?;
    if let Some((b, true)) = &config {
        std::str::from_utf8(&b.bytes)
            .map_err(|e| invalid(&config_name, format!("not UTF-8: {e}")))?;
    }
    let grants = get(
        repo,
        fleet::CONFIGS,
        &grants_name,
        MAX_GRANTS,
        prev(|s| s.grants.as_ref()),
    )
    .await?;
    if let Some((b, true)) = &grants {
        parse_grants(&b.bytes).map_err(|e| invalid(&grants_name, e))?;
    }
    let jwks = get(
        repo,
        fleet::GRANTS,
        fleet::JWKS_TARGET,
        MAX_JWKS,
        prev(|s| s.jwks.as_ref()),
    )
    .await?;
    if let Some((b, true)) = &jwks {
        Issuer::from_jwks(&b.bytes).map_err(|e| invalid(fleet::JWKS_TARGET, e))?;
    }
    let revocations = get(
        repo,
        fleet::REVOCATIONS,
        fleet::REVOKED_TARGET,
        MAX_REVOKED,
        prev(|s| s.revocations.as_ref()),
    )
    .await?;
    if let Some((b, true)) = &revocations {
        serde_json::from_slice::<Revocations>(&b.bytes)
            .map_err(|e| invalid(fleet::REVOKED_TARGET, e))?;
    }
    let mesh_anchors = get(
        repo,
        fleet::CONFIGS,
        fleet::MESH_ANCHORS_TARGET,
        crate::mesh::MAX_ANCHORS_BYTES,
        prev(|s| s.mesh_anchors.as_ref()),
    )
    .await?;
    if let Some((b, true)) = &mesh_anchors {
        crate::mesh::parse_anchors(&b.bytes).map_err(|e| invalid(fleet::MESH_ANCHORS_TARGET, e))?;
    }
    let mut lists = BTreeMap::new();
    let entries: Vec<_> = repo
        .role_targets(fleet::LISTS)
        .into_iter()
        .filter(|e| fleet::list_name(&e.name).is_some())
        .collect();
    if entries.len() > MAX_LISTS {
        return Err(invalid(
            "lists",
            format!("{} lists, at most {MAX_LISTS}", entries.len()),
        ));
    }
    for e in entries {
        let name = fleet::list_name(&e.name).expect("filtered").to_string();
        let p = previous.and_then(|s| s.lists.get(&name));
        if let Some((b, _)) = get(repo, fleet::LISTS, &e.name, MAX_LIST, p).await? {
            lists.insert(name, b);
        }
    }
    let take = |x: Option<(Blob, bool)>| x.map(|(b, _)| b);
    Ok(FleetState {
        config: take(config),
        grants: take(grants),
        jwks: take(jwks),
        revocations: take(revocations),
        lists,
        mesh_anchors: take(mesh_anchors),
        fetched_at: now_unix,
    })
}

/// The grants file, its strings borrowed from `bytes` where JSON allows.
fn parse_grants(bytes: &[u8]) -> Result<Vec<Cow<'_, str>>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct G<'a> {
        #[serde(borrow)]
        grants: Vec<Cow<'a, str>>,
    }
    serde_json::from_slice::<G<'_>>(bytes).map(|g| g.grants)
}

/// What a fleet state means for this node now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluated {
    /// This node is revoked: it must stop serving (and gets nothing else).
    pub revoked_self: bool,
    /// The node's config (node.toml text), if published.
    pub config_text: Option<String>,
    /// The clients to serve.
    pub peers: Vec<Grant>,
    /// Grants (or files) not taken: (grant id, `#index` or file name, kind).
    /// Kinds: those of [`GrantError::kind`], `revoked`, `duplicate`,
    /// `missing` (grants without `jwks.json`).
    pub rejected: Vec<(String, &'static str)>,
    /// The earliest expiry among `peers` (re-evaluate then).
    pub next_expiry: Option<i64>,
    /// DNS lists by name.
    pub lists: BTreeMap<String, Bytes>,
    /// The metrics scrapers' trust anchors (PEM), if the repository
    /// publishes them.
    pub mesh_anchors: Option<Bytes>,
}

impl Evaluated {
    /// Rejections counted by kind (what logs and metrics show).
    pub fn rejected_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for (_, k) in &self.rejected {
            *m.entry(*k).or_insert(0) += 1;
        }
        m
    }
}

/// [`Verifier::evaluate`] without a cache.
pub fn evaluate(state: &FleetState, node_id: &str, now_unix: i64) -> Evaluated {
    Verifier::new().evaluate(state, node_id, now_unix)
}

/// Evaluates fleet states, caching grant signature checks across calls (by
/// the SHA-256 of each grant, for one set of issuer keys).
#[derive(Debug, Default)]
pub struct Verifier {
    jwks_sha: Option<String>,
    cache: HashMap<[u8; 32], Result<Grant, GrantError>>,
    verified: u64,
}

impl Verifier {
    /// An empty cache.
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// Signature checks done so far (cache misses).
    pub fn signatures_checked(&self) -> u64 {
        self.verified
    }

    /// What `state` means for `node_id` at `now_unix` (see the module
    /// docs). Pure but for the cache.
    pub fn evaluate(&mut self, state: &FleetState, node_id: &str, now_unix: i64) -> Evaluated {
        let mut out = Evaluated::default();
        let mut revoked = Revocations::default();
        if let Some(b) = &state.revocations {
            match serde_json::from_slice::<Revocations>(&b.bytes) {
                Ok(r) => revoked = r,
                Err(_) => {
                    // Cannot tell who is revoked: serve no one.
                    out.rejected.push((fleet::REVOKED_TARGET.into(), "invalid"));
                    return out;
                }
            }
        }
        if revoked.nodes.iter().any(|n| n == node_id) {
            out.revoked_self = true;
            return out;
        }
        if let Some(b) = &state.config {
            match std::str::from_utf8(&b.bytes) {
                Ok(t) => out.config_text = Some(t.to_string()),
                Err(_) => out.rejected.push(("config".into(), "invalid")),
            }
        }
        out.mesh_anchors = state.mesh_anchors.as_ref().map(|b| b.bytes.clone());
        out.lists = state
            .lists
            .iter()
            .map(|(n, b)| (n.clone(), b.bytes.clone()))
            .collect();
        if let Some(g) = &state.grants {
            self.peers(g, state.jwks.as_ref(), &revoked, now_unix, &mut out);
        }
        out.next_expiry = out.peers.iter().map(|p| p.exp).min();
        out
    }

    fn peers(
        &mut self,
        grants: &Blob,
        jwks: Option<&Blob>,
        revoked: &Revocations,
        now: i64,
        out: &mut Evaluated,
    ) {
        let Ok(jwts) = parse_grants(&grants.bytes) else {
            out.rejected.push(("grants.json".into(), "invalid"));
            return;
        };
        let Some(jwks) = jwks else {
            out.rejected.push((fleet::JWKS_TARGET.into(), "missing"));
            return;
        };
        let issuer = match Issuer::from_jwks(&jwks.bytes) {
            Ok(i) => i,
            Err(_) => {
                out.rejected.push((fleet::JWKS_TARGET.into(), "invalid"));
                return;
            }
        };
        if self.jwks_sha.as_deref() != Some(jwks.sha256.as_str()) {
            // Other keys: nothing verified before still holds.
            self.cache.clear();
            self.jwks_sha = Some(jwks.sha256.clone());
        }
        let hashes: Vec<[u8; 32]> = grant::par_map(&jwts, |j| sha(j.as_bytes()));
        let misses: Vec<usize> = (0..jwts.len())
            .filter(|&i| !self.cache.contains_key(&hashes[i]))
            .collect();
        let fresh = grant::par_map(&misses, |&i| issuer.verify_signed(&jwts[i]));
        self.verified += misses.len() as u64;
        let mut cache = std::mem::take(&mut self.cache);
        for (i, r) in misses.into_iter().zip(fresh) {
            cache.insert(hashes[i], r);
        }
        // Keep only what this state holds.
        let mut next: HashMap<[u8; 32], Result<Grant, GrantError>> =
            HashMap::with_capacity(jwts.len());
        let clients: HashSet<[u8; 32]> = revoked
            .clients
            .iter()
            .filter_map(|c| grant::parse_wg_key(c))
            .collect();
        let ids: HashSet<&str> = revoked.grants.iter().map(String::as_str).collect();
        // Winner per client key: index into `peers`.
        let mut by_key: HashMap<[u8; 32], usize> = HashMap::new();
        let mut peers: Vec<Option<Grant>> = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let r = match next.get(h) {
                Some(r) => r.clone(),
                None => {
                    let r = cache.remove(h).expect("verified above");
                    next.insert(*h, r.clone());
                    r
                }
            };
            let g = match r.and_then(|g| g.check_time(now).map(|()| g)) {
                Ok(g) => g,
                Err(GrantError::Expired { .. }) => {
                    out.rejected.push((label(i, &next[h]), "expired"));
                    continue;
                }
                Err(e) => {
                    out.rejected.push((label(i, &next[h]), e.kind()));
                    continue;
                }
            };
            if clients.contains(&g.public_key) || ids.contains(g.jti.as_str()) {
                out.rejected.push((g.jti, "revoked"));
                continue;
            }
            let peer = g;
            match by_key.get(&peer.public_key) {
                Some(&w) => {
                    let old = peers[w].as_ref().expect("winners are kept");
                    if peer.exp > old.exp {
                        let old = peers[w].take().expect("winner");
                        out.rejected.push((old.jti, "duplicate"));
                        by_key.insert(peer.public_key, peers.len());
                        peers.push(Some(peer));
                    } else {
                        out.rejected.push((peer.jti, "duplicate"));
                    }
                }
                None => {
                    by_key.insert(peer.public_key, peers.len());
                    peers.push(Some(peer));
                }
            }
        }
        self.cache = next;
        out.peers = peers.into_iter().flatten().collect();
    }
}

/// How a rejected grant is named: its id when the signature held, else
/// its position.
fn label(i: usize, r: &Result<Grant, GrantError>) -> String {
    match r {
        Ok(g) => g.jti.clone(),
        Err(_) => format!("#{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{GrantClaims, GrantsFile};
    use crate::grant::tests::{claims, key, NOW};
    use crate::grant::{jwks_for, sign_grant};
    use crate::store::MemStore;

    const NODE: &str = "0123456789abcdef";

    fn blob(bytes: impl Into<Vec<u8>>, v: u64) -> Blob {
        let bytes: Vec<u8> = bytes.into();
        Blob {
            sha256: hex(&sha(&bytes)),
            role_version: v,
            bytes: Bytes::from(bytes),
        }
    }

    struct Fx {
        pk8: zeroize::Zeroizing<Vec<u8>>,
        kid: String,
        state: FleetState,
    }

    impl Fx {
        fn new(grants: &[GrantClaims]) -> Fx {
            let (pk8, kid, _) = key();
            let jwks = jwks_for(&pk8).unwrap().1;
            let mut fx = Fx {
                pk8,
                kid,
                state: FleetState::default(),
            };
            fx.state.jwks = Some(blob(jwks, 1));
            fx.state.config = Some(blob("[node]\nname = \"exit-1\"\n", 1));
            fx.state.lists.insert("ads".into(), blob("ads.test\n", 1));
            fx.set_grants(grants);
            fx
        }

        fn set_grants(&mut self, grants: &[GrantClaims]) {
            let jwts: Vec<String> =
                grant::par_map(grants, |c| sign_grant(&self.pk8, &self.kid, c).unwrap());
            self.state.grants = Some(blob(
                serde_json::to_vec(&GrantsFile { grants: jwts }).unwrap(),
                1,
            ));
        }

        fn revoke(&mut self, r: Revocations) {
            self.state.revocations = Some(blob(serde_json::to_vec(&r).unwrap(), 1));
        }
    }

    fn jtis(e: &Evaluated) -> Vec<&str> {
        e.peers.iter().map(|p| p.jti.as_str()).collect()
    }

    #[test]
    fn grants_become_peers() {
        let fx = Fx::new(&[claims(1), claims(2)]);
        let e = evaluate(&fx.state, NODE, NOW);
        assert!(!e.revoked_self);
        assert_eq!(jtis(&e), ["g-1", "g-2"]);
        assert_eq!(e.peers[0].public_key_b64(), claims(1).sub);
        assert_eq!(e.peers[0].tier.as_deref(), Some("family"));
        assert_eq!(
            e.config_text.as_deref(),
            Some("[node]\nname = \"exit-1\"\n")
        );
        assert_eq!(&e.lists["ads"][..], b"ads.test\n");
        assert_eq!(e.next_expiry, Some(NOW + 3600));
        assert!(e.rejected.is_empty());
        let dbg = format!("{:?}", e.peers[0]);
        assert!(!dbg.contains(&claims(1).sub), "{dbg}");
    }

    #[test]
    fn expired_dropped_on_the_nodes_clock() {
        let mut soon = claims(1);
        soon.exp = NOW + 10;
        let fx = Fx::new(&[soon, claims(2)]);
        let mut v = Verifier::new();
        let e = v.evaluate(&fx.state, NODE, NOW);
        assert_eq!(
            (jtis(&e), e.next_expiry),
            (vec!["g-1", "g-2"], Some(NOW + 10))
        );
        // Later, same state: no new signature checks, but g-1 is gone.
        let checked = v.signatures_checked();
        let e = v.evaluate(&fx.state, NODE, NOW + 10);
        assert_eq!(v.signatures_checked(), checked);
        assert_eq!(jtis(&e), ["g-2"]);
        assert_eq!(e.rejected, vec![("g-1".to_string(), "expired")]);
        assert_eq!(e.next_expiry, Some(NOW + 3600));
    }

    #[test]
    fn revoked_clients_and_grant_ids_dropped() {
        let mut fx = Fx::new(&[claims(1), claims(2), claims(3)]);
        fx.revoke(Revocations {
            nodes: vec!["ffffffffffffffff".into()],
            clients: vec![claims(1).sub],
            grants: vec!["g-3".into()],
        });
        let e = evaluate(&fx.state, NODE, NOW);
        assert!(!e.revoked_self);
        assert_eq!(jtis(&e), ["g-2"]);
        assert_eq!(e.rejected_counts(), BTreeMap::from([("revoked", 2)]));
    }

    #[test]
    fn revoked_self_gets_nothing() {
        let mut fx = Fx::new(&[claims(1)]);
        fx.revoke(Revocations {
            nodes: vec![NODE.into()],
            ..Default::default()
        });
        let e = evaluate(&fx.state, NODE, NOW);
        assert!(e.revoked_self);
        assert!(e.peers.is_empty() && e.config_text.is_none() && e.lists.is_empty());
        // Another node of the fleet still serves.
        assert!(!evaluate(&fx.state, "1111111111111111", NOW).revoked_self);
    }

    #[test]
    fn unreadable_revocations_serve_no_one() {
        let mut fx = Fx::new(&[claims(1)]);
        fx.state.revocations = Some(blob("{\"nodes\":", 1));
        let e = evaluate(&fx.state, NODE, NOW);
        assert!(e.peers.is_empty());
        assert_eq!(e.rejected, vec![("revoked.json".to_string(), "invalid")]);
    }

    #[test]
    fn one_grant_per_client_key_latest_expiry() {
        let mut a = claims(1);
        a.jti = "old".into();
        a.exp = NOW + 100;
        let mut b = claims(1);
        b.jti = "new".into();
        b.exp = NOW + 900;
        let mut c = claims(1);
        c.jti = "older".into();
        c.exp = NOW + 50;
        let fx = Fx::new(&[a, b, c, claims(2)]);
        let e = evaluate(&fx.state, NODE, NOW);
        assert_eq!(jtis(&e), ["new", "g-2"]);
        let mut dups: Vec<&str> = e
            .rejected
            .iter()
            .filter(|r| r.1 == "duplicate")
            .map(|r| r.0.as_str())
            .collect();
        dups.sort();
        assert_eq!(dups, ["old", "older"]);
    }

    #[test]
    fn bad_grants_are_counted_and_new_keys_clear_the_cache() {
        let mut fx = Fx::new(&[claims(1), claims(2)]);
        let mut jwts = parse_grants(&fx.state.grants.as_ref().unwrap().bytes)
            .unwrap()
            .into_iter()
            .map(|c| c.into_owned())
            .collect::<Vec<_>>();
        jwts.push("garbage".into());
        let (other, okid, _) = key();
        jwts.push(sign_grant(&other, &okid, &claims(3)).unwrap());
        fx.state.grants = Some(blob(
            serde_json::to_vec(&GrantsFile { grants: jwts }).unwrap(),
            1,
        ));
        let mut v = Verifier::new();
        let e = v.evaluate(&fx.state, NODE, NOW);
        assert_eq!(jtis(&e), ["g-1", "g-2"]);
        assert_eq!(
            e.rejected,
            vec![
                ("#2".to_string(), "invalid"),
                ("#3".to_string(), "unknown-key")
            ]
        );
        assert_eq!(v.signatures_checked(), 4);
        v.evaluate(&fx.state, NODE, NOW);
        assert_eq!(v.signatures_checked(), 4, "unchanged grants: no crypto");
        // The issuer rotates to the other key only: the old grants no longer hold.
        fx.state.jwks = Some(blob(jwks_for(&other).unwrap().1, 2));
        let e = v.evaluate(&fx.state, NODE, NOW);
        assert_eq!(v.signatures_checked(), 8);
        assert_eq!(jtis(&e), ["g-3"]);
        assert_eq!(
            e.rejected_counts(),
            BTreeMap::from([("invalid", 1), ("unknown-key", 2)])
        );
        // Grants without keys: nobody.
        fx.state.jwks = None;
        let e = evaluate(&fx.state, NODE, NOW);
        assert!(e.peers.is_empty());
        assert_eq!(e.rejected, vec![("jwks.json".to_string(), "missing")]);
    }

    #[test]
    fn state_round_trips_through_the_store() {
        let mut fx = Fx::new(&[claims(1)]);
        fx.state
            .lists
            .insert("bin".into(), blob(vec![0xff, 0, 0xfe], 4));
        fx.state.fetched_at = NOW;
        let s = MemStore::new();
        assert_eq!(FleetState::load(&s).unwrap(), None);
        fx.state.save(&s).unwrap();
        assert_eq!(FleetState::load(&s).unwrap(), Some(fx.state.clone()));
        let raw = String::from_utf8(s.get(Key::FleetState).unwrap().unwrap()).unwrap();
        assert!(
            raw.contains("ads.test") && raw.contains("\"base64\":\"/wD+\""),
            "{raw}"
        );
        // Bytes that do not match their hash: corrupt, not taken.
        let bad = raw.replace("ads.test", "ads.evil");
        s.put(Key::FleetState, bad.as_bytes()).unwrap();
        assert!(matches!(
            FleetState::load(&s),
            Err(StoreError::Corrupt {
                key: "fleet-state",
                ..
            })
        ));
    }

    #[test]
    fn mesh_anchors_are_kept_and_handed_on() {
        let mut fx = Fx::new(&[claims(1)]);
        let s = MemStore::new();
        // A state saved before mesh anchors existed still loads: no anchors.
        fx.state.save(&s).unwrap();
        let raw = String::from_utf8(s.get(Key::FleetState).unwrap().unwrap()).unwrap();
        assert!(!raw.contains("mesh_anchors"), "{raw}");
        assert_eq!(evaluate(&fx.state, NODE, NOW).mesh_anchors, None);
        let pem = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        let mut with = fx.state.clone();
        with.mesh_anchors = Some(blob(pem, 2));
        assert!(!fx.state.same_targets(&with), "new anchors are a change to save");
        with.save(&s).unwrap();
        assert_eq!(FleetState::load(&s).unwrap(), Some(with.clone()));
        assert_eq!(evaluate(&with, NODE, NOW).mesh_anchors.as_deref(), Some(pem.as_bytes()));
        // A revoked node gets nothing, anchors included.
        fx.revoke(Revocations { nodes: vec![NODE.into()], ..Default::default() });
        with.revocations = fx.state.revocations.clone();
        assert_eq!(evaluate(&with, NODE, NOW).mesh_anchors, None);
    }

    #[test]
    fn ten_thousand_grants() {
        let n = 10_000u32;
        let grants: Vec<GrantClaims> = (0..n).map(claims).collect();
        let t = std::time::Instant::now();
        let fx = Fx::new(&grants);
        let size = fx.state.grants.as_ref().unwrap().bytes.len();
        println!(
            "signed {n} grants ({size} bytes of grants.json) in {:?}",
            t.elapsed()
        );
        let mut v = Verifier::new();
        let t = std::time::Instant::now();
        let e = v.evaluate(&fx.state, NODE, NOW);
        println!(
            "first evaluate of {n} grants: {:?} ({} threads)",
            t.elapsed(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        assert_eq!(e.peers.len(), n as usize);
        let t = std::time::Instant::now();
        let e = v.evaluate(&fx.state, NODE, NOW + 1);
        println!("cached evaluate of {n} grants: {:?}", t.elapsed());
        assert_eq!(e.peers.len(), n as usize);
        assert_eq!(v.signatures_checked(), n as u64);
    }
}
