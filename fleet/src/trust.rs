//! Fleet trust content (docs/fleet.md "Publishing"): the node inventory,
//! node configs, the grant issuer and client grants, revocations, DNS lists.
//! Each publish signs only the delegated role that owns the path
//! ([`palisade_update::fleet::owner`]) plus snapshot and timestamp.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use palisade_update::fleet::{
    config_target, grants_target, list_target, node_id, valid_name, valid_node_id, GrantClaims,
    GrantsFile, Revocations, CONFIGS, GRANTS, JWKS_TARGET, LISTS, REVOCATIONS, REVOKED_TARGET,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{hex, repo_err, write_atomic, write_private, Expiries, Fleet, FleetError, Report};

fn input(what: impl std::fmt::Display) -> FleetError {
    FleetError::Input(what.to_string())
}

/// One enrolled node in the publisher's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// [`node_id`] of the public key.
    pub id: String,
    /// The node's identity public key (ed25519, base64).
    pub public_key: String,
    pub name: String,
    pub region: String,
}

/// `<repo>/inventory/nodes.json`: publisher-side bookkeeping, not a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub nodes: Vec<NodeEntry>,
}

/// A 32-byte key in standard base64 (WireGuard and ed25519 public keys).
pub fn parse_key32(s: &str, what: &str) -> Result<[u8; 32], FleetError> {
    let b = STANDARD
        .decode(s.trim())
        .map_err(|e| input(format!("{what} {s:?}: not base64 ({e})")))?;
    b.try_into()
        .map_err(|b: Vec<u8>| input(format!("{what} {s:?}: {} bytes, want 32", b.len())))
}

/// `30d`, `12h`, `45m`, `600s` from `now`, or an RFC 3339 time: Unix seconds.
pub fn parse_expires(s: &str, now: i64) -> Result<i64, FleetError> {
    let bad = || {
        input(format!(
            "expiry {s:?}: use a duration (30d, 12h, 45m, 600s) or RFC 3339"
        ))
    };
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_second());
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let mul = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(mul)
        .and_then(|d| now.checked_add(d))
        .ok_or_else(bad)
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn random_hex(bytes: usize) -> Result<String, FleetError> {
    let mut b = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| FleetError::Other("random number generator failed".into()))?;
    Ok(hex(&b))
}

/// A random grant id (16 bytes, hex).
pub fn new_grant_id() -> Result<String, FleetError> {
    random_hex(16)
}

fn json_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, FleetError> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| FleetError::Other(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}

fn unchanged(text: String, extra: Value) -> Report {
    let mut json = json!({"ok": true, "result": "unchanged"});
    if let (Value::Object(m), Value::Object(e)) = (&mut json, extra) {
        m.extend(e);
    }
    Report { text, json }
}

/// Pin jsonwebtoken to aws-lc-rs (the crypto the rest of the tool uses), so
/// a build that also enables its `rust_crypto` feature still works.
fn jwt_crypto() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }
}

/// The issuer's key: `<keys>/issuer.p8` (P-384, PKCS#8).
pub struct Issuer {
    pair: EcdsaKeyPair,
    /// The key id: first 16 hex digits of SHA-256 over the public point.
    pub kid: String,
}

/// [`Issuer::kid`] of an uncompressed P-384 public point.
pub fn issuer_kid(point: &[u8]) -> String {
    hex(&Sha256::digest(point))[..16].to_string()
}

/// The JWK (kty EC, crv P-384) of an uncompressed public point.
pub fn jwk_of(point: &[u8]) -> Result<Value, FleetError> {
    if point.len() != 97 || point[0] != 4 {
        return Err(FleetError::Other("not an uncompressed P-384 point".into()));
    }
    Ok(
        json!({"kty": "EC", "crv": "P-384", "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
        "y": URL_SAFE_NO_PAD.encode(&point[49..]), "kid": issuer_kid(point), "alg": "ES384", "use": "sig"}),
    )
}

impl Issuer {
    /// Read a PKCS#8 issuer key.
    pub fn load(path: &Path) -> Result<Issuer, FleetError> {
        let der = Zeroizing::new(std::fs::read(path).map_err(|e| {
            repo_err(format!(
                "issuer key {}: {e} (run `issuer init`)",
                path.display()
            ))
        })?);
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
            .map_err(|e| repo_err(format!("issuer key {}: {e}", path.display())))?;
        let kid = issuer_kid(pair.public_key().as_ref());
        Ok(Issuer { pair, kid })
    }

    /// This key's JWK.
    pub fn jwk(&self) -> Result<Value, FleetError> {
        jwk_of(self.pair.public_key().as_ref())
    }

    /// Sign `claims` as an ES384 JWT with header `kid`.
    pub fn sign(&self, claims: &GrantClaims, der: &[u8]) -> Result<String, FleetError> {
        jwt_crypto();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ec_der(der))
            .map_err(|e| FleetError::Other(format!("signing grant: {e}")))
    }
}

/// Verify a grant JWT against a JWK Set (`jwks.json`): ES384, a known
/// `kid`; expiry is not checked (listing shows it).
pub fn verify_grant(jwt: &str, jwks: &Value) -> Result<GrantClaims, FleetError> {
    jwt_crypto();
    let h =
        jsonwebtoken::decode_header(jwt).map_err(|e| input(format!("grant: not a JWT ({e})")))?;
    if h.alg != jsonwebtoken::Algorithm::ES384 {
        return Err(input(format!("grant: algorithm {:?}, want ES384", h.alg)));
    }
    let kid = h.kid.ok_or_else(|| input("grant: header has no kid"))?;
    let key = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| {
            input(format!(
                "grant: kid {kid} is not in the published jwks.json"
            ))
        })?;
    let dk = jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().unwrap_or_default(),
        key["y"].as_str().unwrap_or_default(),
    )
    .map_err(|e| repo_err(format!("jwks.json key {kid}: {e}")))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
    v.validate_exp = false;
    v.required_spec_claims = Default::default();
    let d = jsonwebtoken::decode::<GrantClaims>(jwt, &dk, &v)
        .map_err(|e| input(format!("grant: {e}")))?;
    check_claims(&d.claims)?;
    Ok(d.claims)
}

fn check_claims(c: &GrantClaims) -> Result<(), FleetError> {
    parse_key32(&c.sub, "grant sub (client public key)")?;
    if c.jti.is_empty() || c.jti.len() > 128 || !c.jti.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(input(format!(
            "grant id {:?}: 1..=128 printable characters",
            c.jti
        )));
    }
    if c.addresses.is_empty() {
        return Err(input("grant: at least one --address"));
    }
    for a in &c.addresses {
        a.parse::<ipnet::IpNet>()
            .map_err(|e| input(format!("address {a:?}: {e} (use CIDR, e.g. 10.64.0.2/32)")))?;
    }
    if let Some(t) = &c.tier {
        if !valid_name(t) {
            return Err(input(format!("tier {t:?}: 1..=64 of a-z, 0-9, '-'")));
        }
    }
    if c.exp <= c.iat {
        return Err(input("grant: expiry is not after issue time"));
    }
    Ok(())
}

impl Fleet {
    fn inventory_path(&self) -> PathBuf {
        self.repo.join("inventory").join("nodes.json")
    }

    /// The inventory (empty if none yet).
    pub fn inventory(&self) -> Result<Inventory, FleetError> {
        let p = self.inventory_path();
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| repo_err(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Inventory::default()),
            Err(e) => Err(repo_err(format!("{}: {e}", p.display()))),
        }
    }

    /// `node add`: record an enrolled node (idempotent; a known id gets its
    /// name and region updated).
    pub fn node_add(
        &self,
        id: &str,
        public_key: &str,
        name: &str,
        region: &str,
    ) -> Result<Report, FleetError> {
        if !self.exists() {
            return Err(repo_err(format!(
                "no repository at {} (run `repo init`)",
                self.repo.display()
            )));
        }
        let pk = parse_key32(public_key, "--public-key")?;
        let want = node_id(&pk);
        if id != want {
            return Err(input(format!(
                "node id {id:?} does not belong to this public key (its id is {want})"
            )));
        }
        for (v, what) in [(name, "--name"), (region, "--region")] {
            if !valid_name(v) {
                return Err(input(format!(
                    "{what} {v:?}: 1..=64 of a-z, 0-9, '-', not starting with '-'"
                )));
            }
        }
        let entry = NodeEntry {
            id: id.into(),
            public_key: STANDARD.encode(pk),
            name: name.into(),
            region: region.into(),
        };
        let mut inv = self.inventory()?;
        let result = match inv.nodes.iter_mut().find(|n| n.id == id) {
            Some(n) if *n == entry => "unchanged",
            Some(n) => {
                *n = entry.clone();
                "updated"
            }
            None => {
                inv.nodes.push(entry.clone());
                "added"
            }
        };
        if result != "unchanged" {
            inv.nodes.sort_by(|a, b| a.id.cmp(&b.id));
            let p = self.inventory_path();
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| repo_err(format!("{}: {e}", d.display())))?;
            }
            write_atomic(&p, &json_bytes(&inv)?)?;
        }
        Ok(Report {
            text: format!("node {id} ({name}, {region}): {result}"),
            json: json!({"ok": true, "result": result, "node": entry}),
        })
    }

    /// `node list`.
    pub fn node_list(&self) -> Result<Report, FleetError> {
        let inv = self.inventory()?;
        let text = inv
            .nodes
            .iter()
            .map(|n| format!("{} {} {}", n.id, n.name, n.region))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Report {
            text: if text.is_empty() {
                "no nodes".into()
            } else {
                text
            },
            json: json!({"ok": true, "nodes": inv.nodes}),
        })
    }

    fn check_node(&self, id: &str, force: bool) -> Result<(), FleetError> {
        if !valid_node_id(id) {
            return Err(input(format!("node id {id:?}: 16 lowercase hex digits")));
        }
        if !force && !self.inventory()?.nodes.iter().any(|n| n.id == id) {
            return Err(input(format!(
                "node {id} is not in the inventory ({}); enrol it or `node add` it first, or give --force",
                self.inventory_path().display()
            )));
        }
        Ok(())
    }

    /// `config set`: validate node.toml text and publish it as
    /// `nodes/<id>/config.toml` (configs role).
    pub async fn config_set(
        &self,
        node: &str,
        file: &Path,
        force: bool,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        self.check_node(node, force)?;
        let bytes =
            std::fs::read(file).map_err(|e| input(format!("config {}: {e}", file.display())))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| input(format!("config {}: not UTF-8 ({e})", file.display())))?;
        let cfg = palisade_core::config::NodeConfig::from_str(text, file).map_err(input)?;
        cfg.validate(file, text).map_err(input)?;
        let name = config_target(node);
        let r = self
            .put_targets(CONFIGS.name, vec![(name.clone(), bytes)], &[], exp)
            .await?;
        Ok(match r {
            None => unchanged(format!("{name} unchanged"), json!({"target": name})),
            Some(c) => Report {
                text: format!(
                    "published {name} (configs version {})",
                    c.roles[CONFIGS.name].signed.version
                ),
                json: json!({"ok": true, "result": "set", "target": name,
                    "configs_version": c.roles[CONFIGS.name].signed.version.get()}),
            },
        })
    }

    /// `revoke` (`undo`: `unrevoke`): edit `revoked.json` (revocations role).
    pub async fn revoke(
        &self,
        nodes: &[String],
        clients: &[String],
        grants: &[String],
        undo: bool,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if nodes.is_empty() && clients.is_empty() && grants.is_empty() {
            return Err(input("give at least one --node, --client or --grant"));
        }
        for n in nodes {
            if !valid_node_id(n) {
                return Err(input(format!("--node {n:?}: 16 lowercase hex digits")));
            }
        }
        let clients: Vec<String> = clients
            .iter()
            .map(|c| parse_key32(c, "--client").map(|k| STANDARD.encode(k)))
            .collect::<Result<_, _>>()?;
        for g in grants {
            if g.is_empty() || g.len() > 128 || !g.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(input(format!(
                    "--grant {g:?}: 1..=128 printable characters"
                )));
            }
        }
        let cur = self.current_delegated()?;
        let mut rev: Revocations =
            match self.read_role_target(&cur, REVOCATIONS.name, REVOKED_TARGET)? {
                Some(b) => serde_json::from_slice(&b)
                    .map_err(|e| repo_err(format!("published {REVOKED_TARGET}: {e}")))?,
                None => Revocations::default(),
            };
        let apply = |list: &mut Vec<String>, items: &[String]| {
            let mut s: BTreeSet<String> = list.drain(..).collect();
            for i in items {
                if undo {
                    s.remove(i);
                } else {
                    s.insert(i.clone());
                }
            }
            *list = s.into_iter().collect();
        };
        apply(&mut rev.nodes, nodes);
        apply(&mut rev.clients, &clients);
        apply(&mut rev.grants, grants);
        let r = self
            .put_targets(
                REVOCATIONS.name,
                vec![(REVOKED_TARGET.into(), json_bytes(&rev)?)],
                &[],
                exp,
            )
            .await?;
        let counts = json!({"nodes": rev.nodes.len(), "clients": rev.clients.len(), "grants": rev.grants.len()});
        Ok(match r {
            None => unchanged("revoked.json unchanged".into(), json!({"revoked": counts})),
            Some(c) => Report {
                text: format!(
                    "revoked.json: {} node(s), {} client(s), {} grant(s) (revocations version {})",
                    rev.nodes.len(),
                    rev.clients.len(),
                    rev.grants.len(),
                    c.roles[REVOCATIONS.name].signed.version
                ),
                json: json!({"ok": true, "result": if undo {"unrevoked"} else {"revoked"}, "revoked": counts}),
            },
        })
    }

    /// `list set`: publish a DNS list `lists/<name>.txt` (lists role).
    pub async fn list_set(
        &self,
        name: &str,
        file: &Path,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if !valid_name(name) {
            return Err(input(format!(
                "list name {name:?}: 1..=64 of a-z, 0-9, '-', not starting with '-'"
            )));
        }
        let bytes =
            std::fs::read(file).map_err(|e| input(format!("list {}: {e}", file.display())))?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(input(format!("list {}: empty", file.display())));
        }
        if bytes.contains(&0) || std::str::from_utf8(&bytes).is_err() {
            return Err(input(format!(
                "list {}: binary (want text, one name a line)",
                file.display()
            )));
        }
        let t = list_target(name);
        let r = self
            .put_targets(LISTS.name, vec![(t.clone(), bytes)], &[], exp)
            .await?;
        Ok(match r {
            None => unchanged(format!("{t} unchanged"), json!({"target": t})),
            Some(_) => Report {
                text: format!("published {t}"),
                json: json!({"ok": true, "result": "set", "target": t}),
            },
        })
    }

    /// `list remove` (idempotent).
    pub async fn list_remove(&self, name: &str, exp: Expiries) -> Result<Report, FleetError> {
        if !valid_name(name) {
            return Err(input(format!(
                "list name {name:?}: 1..=64 of a-z, 0-9, '-'"
            )));
        }
        let t = list_target(name);
        let r = self
            .put_targets(LISTS.name, vec![], std::slice::from_ref(&t), exp)
            .await?;
        Ok(match r {
            None => unchanged(
                format!("{t} not published; nothing changed"),
                json!({"target": t}),
            ),
            Some(_) => Report {
                text: format!("removed {t}"),
                json: json!({"ok": true, "result": "removed", "target": t}),
            },
        })
    }

    /// `sign-as` (a test hook): publish `target` under `role` as if that
    /// role had signed outside its paths, so that only the node's own
    /// role check stands in the way. When `role` does not own the path, its
    /// delegation is widened by exactly `target` (tough would otherwise
    /// refuse the whole repository; needs targets.pk8), and any other role
    /// listing `target` (its owner) withdraws it. Undone by `unsign_as`
    /// (the owner's copy is not restored: publish it again).
    pub async fn sign_as(
        &self,
        role: &str,
        target: &str,
        file: &Path,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        let r = palisade_update::fleet::Role::by_name(role)
            .ok_or_else(|| input(format!("role {role:?}: not a delegated role")))?;
        let bytes = std::fs::read(file).map_err(|e| input(format!("{}: {e}", file.display())))?;
        tough::TargetName::new(target).map_err(|e| input(format!("target {target:?}: {e}")))?;
        let cur = self.current_delegated()?;
        let mut change = crate::Change::default();
        if !r.owns(target) {
            let mut top = cur.targets.signed.clone();
            let d = top
                .delegations
                .as_mut()
                .ok_or_else(|| repo_err("targets.json has no delegations"))?;
            let dr = d
                .roles
                .iter_mut()
                .find(|x| x.name == role)
                .ok_or_else(|| repo_err(format!("role {role} is not delegated")))?;
            if let tough::schema::PathSet::Paths(p) = &mut dr.paths {
                if !p.iter().any(|x| x.value() == target) {
                    p.push(
                        tough::schema::PathPattern::new(target)
                            .map_err(|e| input(format!("target {target:?}: {e}")))?,
                    );
                    change.top = Some(top);
                }
            }
        }
        let mut withdrawn = Vec::new();
        for (name, t) in &cur.roles {
            if name != role && t.signed.targets.keys().any(|n| n.raw() == target) {
                let mut t = t.signed.clone();
                t.targets.retain(|n, _| n.raw() != target);
                change.roles.push((name.clone(), t));
                withdrawn.push(name.clone());
            }
        }
        let mut mine = cur
            .roles
            .get(role)
            .ok_or_else(|| repo_err(format!("role {role} is not delegated")))?
            .signed
            .clone();
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        let same = cur
            .find(role, target)
            .is_some_and(|t| t.hashes.sha256.as_ref() == sha.as_slice());
        if same && change.top.is_none() && withdrawn.is_empty() {
            return Ok(unchanged(
                format!("{target} already signed by {role}"),
                json!({"target": target, "role": role}),
            ));
        }
        let stored = self.store_target(target, &bytes)?;
        mine.targets.insert(
            tough::TargetName::new(target).map_err(|e| input(format!("target {target:?}: {e}")))?,
            stored,
        );
        change.roles.push((role.to_string(), mine));
        self.commit(&cur, change, exp).await?;
        let owner = palisade_update::fleet::owner(target).map(|r| r.name);
        Ok(Report {
            text: format!(
                "TEST HOOK: {target} signed by {role} (its owner is {}; withdrawn from: {})",
                owner.unwrap_or("no role"),
                if withdrawn.is_empty() {
                    "none".to_string()
                } else {
                    withdrawn.join(", ")
                }
            ),
            json: json!({"ok": true, "result": "signed", "target": target, "role": role,
                "owner": owner, "withdrawn_from": withdrawn}),
        })
    }

    /// `sign-as --remove` (test hook): take `target` off `role` and its
    /// delegation back to the role's own paths.
    pub async fn unsign_as(
        &self,
        role: &str,
        target: &str,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        let r = palisade_update::fleet::Role::by_name(role)
            .ok_or_else(|| input(format!("role {role:?}: not a delegated role")))?;
        let cur = self.current_delegated()?;
        let mut change = crate::Change::default();
        let mut top = cur.targets.signed.clone();
        let mut narrowed = false;
        if let Some(d) = top.delegations.as_mut() {
            for dr in d.roles.iter_mut().filter(|x| x.name == role) {
                if let tough::schema::PathSet::Paths(p) = &mut dr.paths {
                    let before = p.len();
                    p.retain(|x| r.paths.contains(&x.value()));
                    narrowed |= p.len() != before;
                }
            }
        }
        if narrowed {
            change.top = Some(top);
        }
        if let Some(t) = cur.roles.get(role) {
            if t.signed.targets.keys().any(|n| n.raw() == target) {
                let mut t = t.signed.clone();
                t.targets.retain(|n, _| n.raw() != target);
                change.roles.push((role.to_string(), t));
            }
        }
        if change.top.is_none() && change.roles.is_empty() {
            return Ok(unchanged(
                format!("{target} is not signed by {role}"),
                json!({"target": target, "role": role}),
            ));
        }
        self.commit(&cur, change, exp).await?;
        Ok(Report {
            text: format!("{target} removed from {role}; its delegation is back to its own paths"),
            json: json!({"ok": true, "result": "removed", "target": target, "role": role}),
        })
    }

    fn issuer_path(&self) -> PathBuf {
        self.keys.join("issuer.p8")
    }

    fn published_jwks(&self) -> Result<Option<Value>, FleetError> {
        let cur = self.current_delegated()?;
        match self.read_role_target(&cur, GRANTS.name, JWKS_TARGET)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| repo_err(format!("published {JWKS_TARGET}: {e}"))),
            None => Ok(None),
        }
    }

    async fn publish_jwks(&self, keys: Vec<Value>, exp: Expiries) -> Result<bool, FleetError> {
        let jwks = json!({"keys": keys});
        Ok(self
            .put_targets(
                GRANTS.name,
                vec![(JWKS_TARGET.into(), json_bytes(&jwks)?)],
                &[],
                exp,
            )
            .await?
            .is_some())
    }

    fn new_issuer_key(&self, replace: bool) -> Result<(), FleetError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| FleetError::Other(format!("issuer key generation: {e}")))?;
        write_private(&self.issuer_path(), doc.as_ref(), replace)
    }

    /// `issuer init`: make the issuer key if absent and publish `jwks.json`
    /// (grants role) with it; keys already published stay.
    pub async fn issuer_init(&self, exp: Expiries) -> Result<Report, FleetError> {
        self.current_delegated()?;
        let made = !self.issuer_path().exists();
        if made {
            std::fs::create_dir_all(&self.keys)
                .map_err(|e| repo_err(format!("{}: {e}", self.keys.display())))?;
            self.new_issuer_key(false)?;
        }
        let iss = Issuer::load(&self.issuer_path())?;
        let mut keys: Vec<Value> = self
            .published_jwks()?
            .and_then(|j| j["keys"].as_array().cloned())
            .unwrap_or_default();
        if !keys.iter().any(|k| k["kid"] == iss.kid.as_str()) {
            keys.insert(0, iss.jwk()?);
        }
        let changed = self.publish_jwks(keys, exp).await?;
        Ok(Report {
            text: format!(
                "issuer key {} ({}); jwks.json {}",
                iss.kid,
                if made { "new" } else { "existing" },
                if changed { "published" } else { "unchanged" }
            ),
            json: json!({"ok": true, "result": if made || changed {"created"} else {"unchanged"}, "kid": iss.kid}),
        })
    }

    /// `issuer rotate`: a new issuer key; `jwks.json` lists the new and the
    /// old keys (grants signed by the old one stay valid until `issuer
    /// retire`). The old key file is kept as `issuer.p8.old-<kid>`.
    pub async fn issuer_rotate(&self, exp: Expiries) -> Result<Report, FleetError> {
        let old = Issuer::load(&self.issuer_path())?;
        let mut keys: Vec<Value> = self
            .published_jwks()?
            .and_then(|j| j["keys"].as_array().cloned())
            .unwrap_or_default();
        if !keys.iter().any(|k| k["kid"] == old.kid.as_str()) {
            keys.push(old.jwk()?);
        }
        let kept = self.keys.join(format!("issuer.p8.old-{}", old.kid));
        std::fs::copy(self.issuer_path(), &kept)
            .map_err(|e| repo_err(format!("{}: {e}", kept.display())))?;
        self.new_issuer_key(true)?;
        let new = Issuer::load(&self.issuer_path())?;
        keys.insert(0, new.jwk()?);
        self.publish_jwks(keys, exp).await?;
        Ok(Report {
            text: format!(
                "issuer key {} (was {}); jwks.json lists both",
                new.kid, old.kid
            ),
            json: json!({"ok": true, "result": "rotated", "kid": new.kid, "old_kid": old.kid}),
        })
    }

    /// `issuer retire --kid`: drop an old key from `jwks.json` (grants it
    /// signed stop verifying on nodes).
    pub async fn issuer_retire(&self, kid: &str, exp: Expiries) -> Result<Report, FleetError> {
        if let Ok(cur) = Issuer::load(&self.issuer_path()) {
            if cur.kid == kid {
                return Err(input(format!(
                    "kid {kid} is the current issuer key; rotate first"
                )));
            }
        }
        let mut keys: Vec<Value> = self
            .published_jwks()?
            .and_then(|j| j["keys"].as_array().cloned())
            .unwrap_or_default();
        let before = keys.len();
        keys.retain(|k| k["kid"] != kid);
        if keys.len() == before {
            return Ok(unchanged(
                format!("kid {kid} is not in jwks.json; nothing changed"),
                json!({"kid": kid}),
            ));
        }
        self.publish_jwks(keys, exp).await?;
        Ok(Report {
            text: format!("retired issuer key {kid}"),
            json: json!({"ok": true, "result": "retired", "kid": kid}),
        })
    }

    /// Sign one grant with the issuer key (no repository key needed).
    pub fn make_grant(&self, claims: &GrantClaims) -> Result<String, FleetError> {
        check_claims(claims)?;
        let der = Zeroizing::new(std::fs::read(self.issuer_path()).map_err(|e| {
            repo_err(format!(
                "issuer key {}: {e} (run `issuer init`)",
                self.issuer_path().display()
            ))
        })?);
        Issuer::load(&self.issuer_path())?.sign(claims, &der)
    }

    fn grants_file(&self, node: &str) -> Result<GrantsFile, FleetError> {
        let cur = self.current_delegated()?;
        match self.read_role_target(&cur, CONFIGS.name, &grants_target(node))? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| repo_err(format!("published {}: {e}", grants_target(node)))),
            None => Ok(GrantsFile::default()),
        }
    }

    /// Append grant JWTs to `nodes/<node>/grants.json` (configs role), each
    /// verified against the published `jwks.json`; a jti already present
    /// with another token is refused.
    pub async fn grants_add(
        &self,
        node: &str,
        jwts: Vec<String>,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if !valid_node_id(node) {
            return Err(input(format!("node id {node:?}: 16 lowercase hex digits")));
        }
        let jwks = self
            .published_jwks()?
            .ok_or_else(|| repo_err("no jwks.json published; run `issuer init` first"))?;
        let mut file = self.grants_file(node)?;
        let mut have: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for g in &file.grants {
            if let Ok(c) = verify_grant(g, &jwks) {
                have.insert(c.jti, g.clone());
            }
        }
        let mut jtis = Vec::new();
        for j in jwts {
            let c = verify_grant(&j, &jwks)?;
            match have.get(&c.jti) {
                Some(g) if *g == j => {}
                Some(_) => {
                    return Err(input(format!(
                        "grant id {} is already used on node {node}; give another --id",
                        c.jti
                    )))
                }
                None => {
                    have.insert(c.jti.clone(), j.clone());
                    file.grants.push(j);
                }
            }
            jtis.push(c.jti);
        }
        let t = grants_target(node);
        let r = self
            .put_targets(
                CONFIGS.name,
                vec![(t.clone(), json_bytes(&file)?)],
                &[],
                exp,
            )
            .await?;
        Ok(Report {
            text: if jtis.len() == 1 {
                jtis[0].clone()
            } else {
                format!("{} grant(s) on {t}", jtis.len())
            },
            json: json!({"ok": true, "result": if r.is_some() {"added"} else {"unchanged"}, "node": node,
                "jti": jtis.first(), "count": jtis.len(), "total": file.grants.len()}),
        })
    }

    /// `grant list`.
    pub fn grant_list(&self, node: &str) -> Result<Report, FleetError> {
        if !valid_node_id(node) {
            return Err(input(format!("node id {node:?}: 16 lowercase hex digits")));
        }
        let jwks = self.published_jwks()?.unwrap_or(json!({"keys": []}));
        let now = now_unix();
        let mut rows = Vec::new();
        let mut text = String::new();
        for g in self.grants_file(node)?.grants {
            match verify_grant(&g, &jwks) {
                Ok(c) => {
                    text.push_str(&format!(
                        "{} {} tier={} exp={}{}\n",
                        c.jti,
                        c.sub,
                        c.tier.as_deref().unwrap_or("default"),
                        jiff::Timestamp::from_second(c.exp)
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        if c.exp <= now { " (expired)" } else { "" }
                    ));
                    rows.push(
                        json!({"jti": c.jti, "sub": c.sub, "tier": c.tier, "exp": c.exp,
                        "addresses": c.addresses, "expired": c.exp <= now, "valid": true}),
                    );
                }
                Err(e) => {
                    text.push_str(&format!("(invalid: {e})\n"));
                    rows.push(json!({"valid": false, "error": e.to_string()}));
                }
            }
        }
        Ok(Report {
            text: if text.is_empty() {
                "no grants".into()
            } else {
                text.trim_end().into()
            },
            json: json!({"ok": true, "node": node, "grants": rows}),
        })
    }

    /// `grant remove` (idempotent).
    pub async fn grant_remove(
        &self,
        node: &str,
        jti: &str,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if !valid_node_id(node) {
            return Err(input(format!("node id {node:?}: 16 lowercase hex digits")));
        }
        let mut file = self.grants_file(node)?;
        let before = file.grants.len();
        file.grants.retain(|g| {
            jsonwebtoken::dangerous::insecure_decode::<GrantClaims>(g)
                .map_or(true, |d| d.claims.jti != jti)
        });
        if file.grants.len() == before {
            return Ok(unchanged(
                format!("no grant {jti} on node {node}; nothing changed"),
                json!({"jti": jti}),
            ));
        }
        let t = grants_target(node);
        self.put_targets(CONFIGS.name, vec![(t, json_bytes(&file)?)], &[], exp)
            .await?;
        Ok(Report {
            text: format!("removed grant {jti}"),
            json: json!({"ok": true, "result": "removed", "jti": jti}),
        })
    }

    /// `grant bulk`: `count` client keypairs and grants (addresses from
    /// `prefix`, host 2 onwards) in one publish; the client private keys go
    /// to `out_keys` (0600, one `jti private public address` line each).
    #[allow(clippy::too_many_arguments)]
    pub async fn grant_bulk(
        &self,
        node: &str,
        count: u32,
        prefix: &str,
        expires: &str,
        tier: Option<String>,
        out_keys: &Path,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if !valid_node_id(node) {
            return Err(input(format!("node id {node:?}: 16 lowercase hex digits")));
        }
        let net: ipnet::IpNet = prefix
            .parse()
            .map_err(|e| input(format!("--prefix {prefix:?}: {e}")))?;
        let now = now_unix();
        let expiry = parse_expires(expires, now)?;
        if count == 0 {
            return Err(input("--count must be at least 1"));
        }
        let der = Zeroizing::new(std::fs::read(self.issuer_path()).map_err(|e| {
            repo_err(format!(
                "issuer key {}: {e} (run `issuer init`)",
                self.issuer_path().display()
            ))
        })?);
        let iss = Issuer::load(&self.issuer_path())?;
        let hosts = net.hosts().skip(1); // the first host is the node's own
        let mut jwts = Vec::with_capacity(count as usize);
        let mut out = Zeroizing::new(String::new());
        let rng = SystemRandom::new();
        let batch = random_hex(4)?;
        let mut n = 0u32;
        for addr in hosts.take(count as usize) {
            let mut sk = Zeroizing::new([0u8; 32]);
            rng.fill(&mut sk[..])
                .map_err(|_| FleetError::Other("random number generator failed".into()))?;
            let pk = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*sk);
            let jti = format!("bulk-{batch}-{n}");
            let cidr = format!("{addr}/{}", if addr.is_ipv4() { 32 } else { 128 });
            let claims = GrantClaims {
                jti: jti.clone(),
                sub: STANDARD.encode(pk.as_bytes()),
                addresses: vec![cidr.clone()],
                tier: tier.clone(),
                iat: now,
                exp: expiry,
            };
            check_claims(&claims)?;
            jwts.push(iss.sign(&claims, &der)?);
            out.push_str(&format!(
                "{jti} {} {} {cidr}\n",
                STANDARD.encode(*sk),
                claims.sub
            ));
            n += 1;
        }
        if n < count {
            return Err(input(format!(
                "--prefix {prefix}: room for {n} clients, not {count}"
            )));
        }
        write_private(out_keys, out.as_bytes(), true)?;
        let r = self.grants_add(node, jwts, exp).await?;
        Ok(Report {
            text: format!(
                "{count} grants on node {node}; client keys in {}",
                out_keys.display()
            ),
            json: json!({"ok": true, "result": "added", "count": count, "total": r.json["total"], "keys_file": out_keys}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries() {
        assert_eq!(parse_expires("2d", 100).unwrap(), 100 + 172_800);
        assert_eq!(parse_expires("30m", 0).unwrap(), 1800);
        assert_eq!(
            parse_expires("2030-01-01T00:00:00Z", 0).unwrap(),
            1_893_456_000
        );
        for bad in ["", "d", "0d", "-1h", "5w", "tomorrow"] {
            assert_eq!(parse_expires(bad, 0).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn keys32() {
        assert!(parse_key32(&STANDARD.encode([1u8; 32]), "k").is_ok());
        assert!(parse_key32(&STANDARD.encode([1u8; 31]), "k").is_err());
        assert!(parse_key32("not base64!", "k").is_err());
    }

    #[test]
    fn grant_signs_and_verifies_against_its_jwk_only() {
        let t = tempfile::tempdir().unwrap();
        let f = Fleet {
            repo: t.path().join("r"),
            keys: t.path().to_path_buf(),
        };
        f.new_issuer_key(false).unwrap();
        let iss = Issuer::load(&f.issuer_path()).unwrap();
        let claims = GrantClaims {
            jti: "g1".into(),
            sub: STANDARD.encode([9u8; 32]),
            addresses: vec!["10.64.0.2/32".into()],
            tier: None,
            iat: 1,
            exp: 2,
        };
        let jwt = f.make_grant(&claims).unwrap();
        let jwks = json!({"keys": [iss.jwk().unwrap()]});
        assert_eq!(verify_grant(&jwt, &jwks).unwrap(), claims);
        assert_eq!(
            jsonwebtoken::decode_header(&jwt).unwrap().kid.unwrap(),
            iss.kid
        );
        // Another key with the same kid: refused.
        let other =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let other =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, other.as_ref()).unwrap();
        let mut k = jwk_of(other.public_key().as_ref()).unwrap();
        k["kid"] = json!(iss.kid);
        assert!(verify_grant(&jwt, &json!({"keys": [k]})).is_err());
        // A tampered payload: refused.
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut c2 = claims.clone();
        c2.sub = STANDARD.encode([8u8; 32]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c2).unwrap()),
            parts[2]
        );
        assert!(verify_grant(&forged, &jwks).is_err());
        // Bad claims are refused before signing.
        let mut bad = claims;
        bad.addresses = vec!["10.64.0.2".into()];
        assert_eq!(f.make_grant(&bad).unwrap_err().exit_code(), 2);
    }
}
