//! Fleet trust: the formats the repository carries besides images (DESIGN.md
//! "Fleet trust", docs/fleet.md), shared by the node and `palisade-fleet`.
//!
//! The top-level targets role signs nothing itself; it delegates, by path,
//! to one role per kind of content ([`ROLES`]). A node takes each target only
//! from the role that owns its path: a config signed by `images` is refused
//! (`wrong-role`) even though tough would load it.
//!
//! | role          | paths                                 | content                              |
//! |---------------|---------------------------------------|--------------------------------------|
//! | `images`      | `images/*`, `rollout.json`            | slot images, the rollout policy      |
//! | `configs`     | `nodes/*`, `mesh/*`                   | `nodes/<id>/config.toml`, `nodes/<id>/grants.json`, `mesh/anchors.pem` (metrics mTLS anchors) |
//! | `grants`      | `jwks.json`                           | the grant issuer's public keys       |
//! | `revocations` | `revoked.json`                        | [`Revocations`]                      |
//! | `lists`       | `lists/*`                             | `lists/<name>.txt` DNS lists         |
//! | `nodelists`   | `regions/*`                           | signed node lists (client failover)  |

use serde::{Deserialize, Serialize};

/// A delegated role and the target paths it may sign (TUF glob patterns,
/// `*` matches across `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    pub name: &'static str,
    pub paths: &'static [&'static str],
}

pub const IMAGES: Role = Role { name: "images", paths: &["images/*", "rollout.json"] };
pub const CONFIGS: Role = Role { name: "configs", paths: &["nodes/*", "mesh/*"] };
pub const GRANTS: Role = Role { name: "grants", paths: &["jwks.json"] };
pub const REVOCATIONS: Role = Role { name: "revocations", paths: &["revoked.json"] };
pub const LISTS: Role = Role { name: "lists", paths: &["lists/*"] };
pub const NODELISTS: Role = Role { name: "nodelists", paths: &["regions/*"] };

/// Every delegated role, in delegation order.
pub const ROLES: [Role; 6] = [IMAGES, CONFIGS, GRANTS, REVOCATIONS, LISTS, NODELISTS];

impl Role {
    /// Whether `target` is one of this role's paths. Our patterns are an
    /// exact name or `prefix*`.
    pub fn owns(&self, target: &str) -> bool {
        self.paths.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => target.starts_with(prefix) && target.len() > prefix.len(),
            None => target == *p,
        })
    }

    /// The role by name.
    pub fn by_name(name: &str) -> Option<Role> {
        ROLES.into_iter().find(|r| r.name == name)
    }
}

/// The role that owns `target`, if any.
pub fn owner(target: &str) -> Option<Role> {
    ROLES.into_iter().find(|r| r.owns(target))
}

/// The issuer's public keys (a JSON Web Key Set of ES384 keys).
pub const JWKS_TARGET: &str = "jwks.json";
/// The revocation list ([`Revocations`]).
pub const REVOKED_TARGET: &str = "revoked.json";

/// The management mesh's trust anchors: a PEM bundle of CA certificates
/// that metrics scrapers' certificates chain to (docs/metrics.md). A
/// repository without it has no repository anchors.
pub const MESH_ANCHORS_TARGET: &str = "mesh/anchors.pem";

/// A node's desired config: node.toml content.
pub fn config_target(node_id: &str) -> String {
    format!("nodes/{node_id}/config.toml")
}

/// A node's client grants ([`GrantsFile`]).
pub fn grants_target(node_id: &str) -> String {
    format!("nodes/{node_id}/grants.json")
}

/// A DNS list.
pub fn list_target(name: &str) -> String {
    format!("lists/{name}.txt")
}

/// The list name of a `lists/<name>.txt` target.
pub fn list_name(target: &str) -> Option<&str> {
    let name = target.strip_prefix("lists/")?.strip_suffix(".txt")?;
    valid_name(name).then_some(name)
}

/// Names of lists, nodes and regions: 1..=64 of `[a-z0-9-]`, not starting
/// with `-`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A node id: the first 16 hex digits of SHA-256 over the node's identity
/// public key (32 bytes, ed25519).
pub fn node_id(identity_public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, identity_public_key);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the form of a node id.
pub fn valid_node_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `revoked.json`, signed by the `revocations` role. Everything listed is
/// refused by every node: a revoked node stops serving (and stays stopped
/// across reboots until re-enrolled), a revoked client key or grant id is
/// removed from the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Node ids.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Client WireGuard public keys (base64).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Grant ids (`jti`).
    #[serde(default)]
    pub grants: Vec<String>,
}

/// `nodes/<id>/grants.json`, signed by the `configs` role: the node's client
/// grants, each an ES384 JWT signed by the issuer (whose keys are
/// `jwks.json`). Two signatures stand behind every peer: the configs role
/// chose the node, the issuer granted the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsFile {
    /// Compact JWS strings.
    pub grants: Vec<String>,
}

/// The claims of a client grant (JWT, ES384, header `kid` naming a key of
/// `jwks.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Grant id (unique per grant; revocable).
    pub jti: String,
    /// The client's WireGuard public key (base64).
    pub sub: String,
    /// Tunnel addresses of the client (CIDR strings).
    pub addresses: Vec<String>,
    /// DNS tier (a `[dns.tier.*]` name); `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not valid after (Unix seconds).
    pub exp: i64,
}

/// Domain-separation prefix of the enrolment proof of possession.
pub const ENROL_PROOF_CONTEXT: &[u8] = b"palisade-enrol-v1\0";

/// The message the node signs with its identity key to prove it holds it:
/// the context, the host's nonce, then the node's public key.
pub fn enrol_proof_message(nonce: &[u8], identity_public_key: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENROL_PROOF_CONTEXT.len() + nonce.len() + identity_public_key.len());
    m.extend_from_slice(ENROL_PROOF_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(identity_public_key);
    m
}

/// What enrolment gives a node (over the serial console or as
/// `palisade/enrol.json` on a config drive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentBundle {
    /// Format version (1).
    pub version: u32,
    /// The node id this bundle was made for (from its identity): a bundle
    /// for another node is refused.
    pub node_id: String,
    /// The fleet's root metadata (`1.root.json`), the node's trust anchor.
    pub fleet_root: serde_json::Value,
    /// Base URLs of the repository (mirrors, tried in order).
    pub repositories: Vec<String>,
    /// PEM CA bundle for an https repository; `None`: public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The node's name.
    pub name: String,
    /// The node's region (waves and node lists).
    pub region: String,
    /// Management mesh prefixes (only they reach node services).
    #[serde(default)]
    pub mesh: Vec<String>,
}

/// Line prefix of the enrolment protocol on the serial console. Every
/// protocol line is `PALISADE-ENROL <json>\n`; anything else on the line
/// (kernel and log output) is ignored by both sides.
pub const ENROL_PREFIX: &str = "PALISADE-ENROL ";

/// Host -> node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum HostMsg {
    /// Ask for the node's identity; `nonce` is base64 (32 random bytes).
    Hello { nonce: String },
    /// Enrol with this bundle.
    Enrol { bundle: EnrolmentBundle },
}

/// Node -> host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum NodeMsg {
    /// The node's identity and the proof (ed25519 signature, base64, over
    /// [`enrol_proof_message`]).
    Identity { node_id: String, public_key: String, proof: String, enrolled: bool },
    /// Enrolment accepted and saved.
    Enrolled { node_id: String },
    /// Refused; `kind` is stable (`already-enrolled`, `wrong-node`, `invalid`, `io`).
    Refused { kind: String, reason: String },
}

/// One protocol line (with the trailing newline).
pub fn encode_line<T: Serialize>(msg: &T) -> String {
    // Plain data with string keys: serialization cannot fail.
    format!("{ENROL_PREFIX}{}\n", serde_json::to_string(msg).expect("serializable"))
}

/// The message on a protocol line, if `line` is one (leading garbage, e.g.
/// a log line the message was appended to, is skipped; `\r` is ignored).
pub fn decode_line<T: for<'de> Deserialize<'de>>(line: &str) -> Option<Result<T, serde_json::Error>> {
    let at = line.find(ENROL_PREFIX)?;
    let body = line[at + ENROL_PREFIX.len()..].trim_end_matches(['\r', '\n']);
    Some(serde_json::from_str(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_own_their_paths_only() {
        assert_eq!(owner("images/qemu-x86_64/1.0.0.img"), Some(IMAGES));
        assert_eq!(owner("rollout.json"), Some(IMAGES));
        assert_eq!(owner(&config_target("0123456789abcdef")), Some(CONFIGS));
        assert_eq!(owner(&grants_target("0123456789abcdef")), Some(CONFIGS));
        assert_eq!(owner(JWKS_TARGET), Some(GRANTS));
        assert_eq!(owner(REVOKED_TARGET), Some(REVOCATIONS));
        assert_eq!(owner(&list_target("ads")), Some(LISTS));
        assert_eq!(owner("regions/eu.json"), Some(NODELISTS));
        for none in ["nodes/", "jwks.json.bak", "other.txt", "lists/"] {
            assert_eq!(owner(none), None, "{none}");
        }
        // Each path pattern belongs to exactly one role.
        for r in ROLES {
            for p in r.paths {
                let sample = p.replace('*', "x");
                assert_eq!(owner(&sample), Some(r), "{p}");
            }
        }
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(list_name("lists/ads.txt"), Some("ads"));
        assert_eq!(list_name("lists/../x.txt"), None);
        assert_eq!(list_name("lists/Ads.txt"), None);
        let id = node_id(&[7u8; 32]);
        assert!(valid_node_id(&id), "{id}");
        assert!(!valid_node_id("0123456789ABCDEF"));
        assert!(!valid_name("-a") && !valid_name("") && valid_name("eu-west-1"));
    }

    #[test]
    fn protocol_lines_round_trip_through_log_noise() {
        let m = HostMsg::Hello { nonce: "AAAA".into() };
        let line = encode_line(&m);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let noisy = format!("[   12.5] palisaded: something {}", line.replace('\n', "\r\n"));
        assert_eq!(decode_line::<HostMsg>(&noisy).unwrap().unwrap(), m);
        assert!(decode_line::<HostMsg>("plain log line").is_none());
        assert!(decode_line::<NodeMsg>("PALISADE-ENROL {not json").unwrap().is_err());
    }
}
