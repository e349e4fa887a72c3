//! Signed node lists for client failover (docs/failover.md).
//!
//! Per region, fleet automation publishes an ordered list of exit nodes
//! (endpoint, WireGuard public key, tunnel addresses) with an expiry. The
//! list is one self-verifying file: a JSON envelope in the shape of DSSE
//! (in-toto's Dead Simple Signing Envelope) whose payload is the
//! [`NodeList`] JSON and whose signatures are ed25519 over the DSSE
//! pre-authentication encoding of payload type and payload. The same bytes
//! are
//!
//! - the TUF target `regions/<region>.json` of the fleet repository's
//!   `nodelists` role (then TUF's own signature and the envelope's both stand
//!   behind it; [`check_role`] refuses the target from any other role), and
//! - a standalone file, signed with a fleet key (by default the `nodelists`
//!   role key), for fleets without a repository.
//!
//! Clients pin the public key ([`PublicKey`]); [`verify`] checks size,
//! shape, payload type, signature, content and expiry, each failure a
//! distinct [`Error`] naming what was wrong.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ipnet::IpNet;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// The envelope's payload type: a signature made for anything else (another
/// kind of document signed by the same key) is refused.
pub const PAYLOAD_TYPE: &str = "application/vnd.palisade.nodelist+json";
/// The delegated role of the fleet repository that owns `regions/*`.
pub const ROLE: &str = "nodelists";
/// Format version of [`NodeList`].
pub const VERSION: u32 = 1;
/// Largest node list file accepted (read before parsing).
pub const MAX_BYTES: usize = 256 * 1024;
/// Most nodes in one list.
pub const MAX_NODES: usize = 256;

/// Why a node list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Larger than [`MAX_BYTES`].
    #[error("node list is {0} bytes, more than the {MAX_BYTES} allowed")]
    TooLarge(usize),
    /// Not a signed envelope, or the payload is not a node list.
    #[error("node list is malformed: {0}")]
    Malformed(String),
    /// Signed as something other than a node list.
    #[error("signed as {0:?}, not as a node list ({PAYLOAD_TYPE})")]
    WrongType(String),
    /// Published by a repository role other than `nodelists`, or at a path
    /// that is not a region's node list.
    #[error("{target} is signed by role {role:?}; node lists are taken only from role {ROLE:?} at regions/<region>.json")]
    WrongRole { target: String, role: String },
    /// No signature by a trusted key verifies.
    #[error("bad signature: no signature by a trusted node-list key ({0}) verifies")]
    BadSignature(String),
    /// Past its expiry.
    #[error("node list for region {region:?} expired at unix time {expires} (now {now}); fetch a fresh list")]
    Expired {
        region: String,
        expires: i64,
        now: i64,
    },
    /// Well-formed but wrong content (the field is named).
    #[error("node list: {0}")]
    Invalid(String),
    /// A key that cannot sign or a public key that is not one.
    #[error("node-list key: {0}")]
    Key(String),
}

/// One exit node of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The node's name (for messages).
    pub name: String,
    /// Where its WireGuard listens: an address, never a host name (a client
    /// resolves nothing outside the tunnel).
    pub endpoint: SocketAddr,
    /// Its WireGuard public key (base64, 32 bytes).
    pub public_key: String,
    /// Its tunnel addresses with prefix (e.g. `10.66.0.1/16`): the resolver
    /// and the health probe's target.
    pub addresses: Vec<IpNet>,
}

impl Node {
    /// The address of the node's resolver inside the tunnel (its first IPv4
    /// tunnel address, else its first address).
    pub fn resolver(&self) -> IpAddr {
        self.addresses
            .iter()
            .find(|a| a.addr().is_ipv4())
            .or(self.addresses.first())
            .map(|a| a.addr())
            // validate() guarantees at least one address.
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

/// The signed content: a region's nodes in order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    /// [`VERSION`].
    pub version: u32,
    /// The region (1..=64 of `[a-z0-9-]`).
    pub region: String,
    /// Increases with every publication.
    pub serial: u64,
    /// Not valid after (unix seconds).
    pub expires: i64,
    /// In order of preference; clients move to the next on failure.
    pub nodes: Vec<Node>,
}

/// Names of regions and nodes: 1..=64 of `[a-z0-9-]`, not starting with `-`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A WireGuard public key: base64 of 32 bytes, not all zero.
pub fn valid_wg_key(s: &str) -> bool {
    matches!(B64.decode(s), Ok(k) if k.len() == 32 && k.iter().any(|b| *b != 0))
}

impl NodeList {
    /// Content checks (each error names the field).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.version != VERSION {
            return bad(format!(
                "version {} (this build reads version {VERSION})",
                self.version
            ));
        }
        if !valid_name(&self.region) {
            return bad(format!("region {:?}: 1..=64 of a-z, 0-9, '-'", self.region));
        }
        if self.nodes.is_empty() {
            return bad("nodes: empty (a list needs at least one node)".into());
        }
        if self.nodes.len() > MAX_NODES {
            return bad(format!("nodes: {} (at most {MAX_NODES})", self.nodes.len()));
        }
        let (mut names, mut keys, mut eps) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (i, n) in self.nodes.iter().enumerate() {
            let at = format!("nodes[{i}]");
            if !valid_name(&n.name) {
                return bad(format!("{at}.name {:?}: 1..=64 of a-z, 0-9, '-'", n.name));
            }
            if !names.insert(&n.name) {
                return bad(format!("{at}.name {:?}: listed twice", n.name));
            }
            if !valid_wg_key(&n.public_key) {
                return bad(format!(
                    "{at}.public_key: not a WireGuard public key (base64 of 32 bytes, not zero)"
                ));
            }
            if !keys.insert(&n.public_key) {
                return bad(format!("{at}.public_key: the same key as an earlier node"));
            }
            if n.endpoint.port() == 0 || n.endpoint.ip().is_unspecified() {
                return bad(format!(
                    "{at}.endpoint {}: needs an address and a port",
                    n.endpoint
                ));
            }
            if !eps.insert(n.endpoint) {
                return bad(format!("{at}.endpoint {}: listed twice", n.endpoint));
            }
            if n.addresses.is_empty() {
                return bad(format!(
                    "{at}.addresses: empty (the node's tunnel address is its resolver)"
                ));
            }
        }
        Ok(())
    }
}

/// An ed25519 public key trusted to sign node lists.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// From base64 (32 bytes).
    pub fn from_base64(s: &str) -> Result<PublicKey, Error> {
        let b = B64
            .decode(s.trim())
            .map_err(|e| Error::Key(format!("public key is not base64: {e}")))?;
        let a: [u8; 32] = b.try_into().map_err(|b: Vec<u8>| {
            Error::Key(format!(
                "public key is {} bytes, an ed25519 key is 32",
                b.len()
            ))
        })?;
        Ok(PublicKey(a))
    }

    /// Base64.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Key id: hex of the first 8 bytes of SHA-256 over the key.
    pub fn key_id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A signing key (PKCS#8 ed25519, as `palisade-fleet` keeps its role keys).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, Error> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey)
            .map_err(|e| Error::Key(format!("not an ed25519 PKCS#8 key: {e}")))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(a)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    /// Base64 of the payload bytes.
    payload: String,
    signatures: Vec<Signature>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    keyid: String,
    sig: String,
}

/// DSSE v1 pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    m.extend_from_slice(payload);
    m
}

/// Sign `list` (validated first) into the file's bytes.
pub fn sign(list: &NodeList, key: &SigningKey) -> Result<Vec<u8>, Error> {
    sign_as(list, key, PAYLOAD_TYPE)
}

fn sign_as(list: &NodeList, key: &SigningKey, payload_type: &str) -> Result<Vec<u8>, Error> {
    list.validate()?;
    let payload = serde_json::to_vec(list).map_err(|e| Error::Malformed(e.to_string()))?;
    let sig = key.0.sign(&pae(payload_type, &payload));
    let env = Envelope {
        payload_type: payload_type.into(),
        payload: B64.encode(&payload),
        signatures: vec![Signature {
            keyid: key.public_key().key_id(),
            sig: B64.encode(sig.as_ref()),
        }],
    };
    let mut out = serde_json::to_vec_pretty(&env).map_err(|e| Error::Malformed(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Parse and check everything but the signature (shape, payload type,
/// content, expiry at `now`): for showing a list whose key is not at hand.
/// Never use the result to connect without [`verify`].
pub fn inspect(bytes: &[u8], now: i64) -> Result<NodeList, Error> {
    let (_, payload) = open(bytes)?;
    finish(&payload, now)
}

/// Verify a node list file: size, envelope, payload type, a signature by one
/// of `trusted`, content, and expiry at `now` (unix seconds).
pub fn verify(bytes: &[u8], trusted: &[PublicKey], now: i64) -> Result<NodeList, Error> {
    let (env, payload) = open(bytes)?;
    let msg = pae(&env.payload_type, &payload);
    let ok = env.signatures.iter().any(|s| {
        let Some(k) = trusted.iter().find(|k| k.key_id() == s.keyid) else {
            return false;
        };
        let Ok(sig) = B64.decode(&s.sig) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, k.0)
            .verify(&msg, &sig)
            .is_ok()
    });
    if !ok {
        let ids: Vec<String> = trusted.iter().map(PublicKey::key_id).collect();
        return Err(Error::BadSignature(if ids.is_empty() {
            "none given".into()
        } else {
            ids.join(", ")
        }));
    }
    finish(&payload, now)
}

fn open(bytes: &[u8]) -> Result<(Envelope, Vec<u8>), Error> {
    if bytes.len() > MAX_BYTES {
        return Err(Error::TooLarge(bytes.len()));
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        Error::Malformed(format!(
            "not a signed envelope (payloadType, payload, signatures): {e}"
        ))
    })?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(Error::WrongType(env.payload_type));
    }
    if env.signatures.is_empty() {
        return Err(Error::BadSignature("the file carries no signature".into()));
    }
    let payload = B64
        .decode(&env.payload)
        .map_err(|e| Error::Malformed(format!("payload is not base64: {e}")))?;
    Ok((env, payload))
}

fn finish(payload: &[u8], now: i64) -> Result<NodeList, Error> {
    let list: NodeList =
        serde_json::from_slice(payload).map_err(|e| Error::Malformed(format!("payload: {e}")))?;
    list.validate()?;
    if list.expires <= now {
        return Err(Error::Expired {
            region: list.region,
            expires: list.expires,
            now,
        });
    }
    Ok(list)
}

/// The repository target of a region's list.
pub fn target(region: &str) -> String {
    format!("regions/{region}.json")
}

/// A node list taken from the fleet repository must be the target
/// `regions/<region>.json` signed by the `nodelists` role.
pub fn check_role(target: &str, signing_role: &str) -> Result<(), Error> {
    let region = target
        .strip_prefix("regions/")
        .and_then(|r| r.strip_suffix(".json"));
    if signing_role != ROLE || !region.is_some_and(valid_name) {
        return Err(Error::WrongRole {
            target: target.into(),
            role: signing_role.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn key() -> SigningKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        SigningKey::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn wg(b: u8) -> String {
        B64.encode([b; 32])
    }

    fn list() -> NodeList {
        NodeList {
            version: 1,
            region: "eu".into(),
            serial: 3,
            expires: 2_000,
            nodes: vec![
                Node {
                    name: "edge-1".into(),
                    endpoint: "203.0.113.10:51820".parse().unwrap(),
                    public_key: wg(1),
                    addresses: vec![
                        "10.66.0.1/16".parse().unwrap(),
                        "fd66::1/64".parse().unwrap(),
                    ],
                },
                Node {
                    name: "edge-2".into(),
                    endpoint: "[2001:db8::11]:51820".parse().unwrap(),
                    public_key: wg(2),
                    addresses: vec!["fd66::1/64".parse().unwrap()],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let k = key();
        let bytes = sign(&list(), &k).unwrap();
        let l = verify(&bytes, &[k.public_key()], 1_000).unwrap();
        assert_eq!(l, list());
        assert_eq!(l.nodes[0].resolver().to_string(), "10.66.0.1");
        assert_eq!(l.nodes[1].resolver().to_string(), "fd66::1");
        let pk = PublicKey::from_base64(&k.public_key().to_base64()).unwrap();
        assert_eq!(pk, k.public_key());
    }

    #[test]
    fn bad_signature_is_refused() {
        let (k, other) = (key(), key());
        let bytes = sign(&list(), &k).unwrap();
        // Another key.
        assert!(matches!(
            verify(&bytes, &[other.public_key()], 1_000),
            Err(Error::BadSignature(_))
        ));
        assert!(matches!(
            verify(&bytes, &[], 1_000),
            Err(Error::BadSignature(_))
        ));
        // A changed payload under the original signature (a node swapped in).
        let mut env: Envelope = serde_json::from_slice(&bytes).unwrap();
        let mut l = list();
        l.nodes[0].endpoint = "198.51.100.66:51820".parse().unwrap();
        env.payload = B64.encode(serde_json::to_vec(&l).unwrap());
        let tampered = serde_json::to_vec(&env).unwrap();
        let e = verify(&tampered, &[k.public_key()], 1_000).unwrap_err();
        assert!(matches!(e, Error::BadSignature(_)), "{e}");
        assert!(e.to_string().contains(&k.public_key().key_id()), "{e}");
        // No signature at all.
        env.signatures.clear();
        let e = verify(&serde_json::to_vec(&env).unwrap(), &[k.public_key()], 1_000).unwrap_err();
        assert!(e.to_string().contains("no signature"), "{e}");
    }

    #[test]
    fn expired_is_refused() {
        let k = key();
        let bytes = sign(&list(), &k).unwrap();
        let e = verify(&bytes, &[k.public_key()], 2_000).unwrap_err();
        assert_eq!(
            e,
            Error::Expired {
                region: "eu".into(),
                expires: 2_000,
                now: 2_000
            }
        );
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(inspect(&bytes, 2_001).is_err());
        assert!(inspect(&bytes, 1_999).is_ok());
    }

    #[test]
    fn wrong_type_and_role_are_refused() {
        let k = key();
        // The same key signing another kind of document.
        let bytes = sign_as(&list(), &k, "application/vnd.palisade.grant+json").unwrap();
        let e = verify(&bytes, &[k.public_key()], 1_000).unwrap_err();
        assert!(matches!(e, Error::WrongType(_)), "{e}");
        // Repository targets: only nodelists at regions/<region>.json.
        assert!(check_role("regions/eu.json", "nodelists").is_ok());
        for (t, r) in [
            ("regions/eu.json", "configs"),
            ("regions/eu.json", "images"),
            ("lists/eu.json", "nodelists"),
            ("regions/../x.json", "nodelists"),
        ] {
            let e = check_role(t, r).unwrap_err();
            assert!(matches!(e, Error::WrongRole { .. }), "{t} {r}");
            assert!(e.to_string().contains(r), "{e}");
        }
        assert_eq!(target("eu"), "regions/eu.json");
    }

    #[test]
    fn malformed_input_is_refused_with_the_reason() {
        let k = key();
        let pk = [k.public_key()];
        for (input, want) in [
            (&b"not json"[..], "not a signed envelope"),
            (br#"{"payloadType":"application/vnd.palisade.nodelist+json","payload":"%%","signatures":[{"keyid":"x","sig":"y"}]}"#, "not base64"),
            (br#"{"payloadType":"application/vnd.palisade.nodelist+json","payload":"","signatures":[],"extra":1}"#, "unknown field"),
        ] {
            let e = verify(input, &pk, 1_000).unwrap_err();
            assert!(e.to_string().contains(want), "{e} (want {want})");
        }
        let big = vec![b' '; MAX_BYTES + 1];
        assert_eq!(
            verify(&big, &pk, 1_000).unwrap_err(),
            Error::TooLarge(MAX_BYTES + 1)
        );
        // A signed payload that is not a node list.
        let payload = br#"{"version":1,"region":"eu"}"#;
        let sig = k.0.sign(&pae(PAYLOAD_TYPE, payload));
        let env = Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(payload),
            signatures: vec![Signature {
                keyid: k.public_key().key_id(),
                sig: B64.encode(sig.as_ref()),
            }],
        };
        let e = verify(&serde_json::to_vec(&env).unwrap(), &pk, 1_000).unwrap_err();
        assert!(
            matches!(e, Error::Malformed(ref m) if m.contains("missing field")),
            "{e}"
        );
        assert!(PublicKey::from_base64("AAAA")
            .unwrap_err()
            .to_string()
            .contains("3 bytes"));
    }

    #[test]
    fn content_is_validated_naming_the_field() {
        let k = key();
        type Edit = Box<dyn Fn(&mut NodeList)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|l| l.nodes.clear()), "nodes: empty"),
            (Box::new(|l| l.region = "EU".into()), "region"),
            (Box::new(|l| l.version = 2), "version 2"),
            (
                Box::new(|l| l.nodes[1].public_key = wg(0)),
                "nodes[1].public_key",
            ),
            (
                Box::new(|l| l.nodes[1].public_key = wg(1)),
                "nodes[1].public_key: the same key",
            ),
            (
                Box::new(|l| l.nodes[1].name = "edge-1".into()),
                "nodes[1].name",
            ),
            (
                Box::new(|l| l.nodes[0].addresses.clear()),
                "nodes[0].addresses",
            ),
            (
                Box::new(|l| l.nodes[1].endpoint = l.nodes[0].endpoint),
                "nodes[1].endpoint",
            ),
            (
                Box::new(|l| l.nodes[0].endpoint = "203.0.113.10:0".parse().unwrap()),
                "nodes[0].endpoint",
            ),
        ];
        for (f, want) in cases {
            let mut l = list();
            f(&mut l);
            let e = sign(&l, &k).unwrap_err();
            assert!(e.to_string().contains(want), "{e} (want {want})");
        }
    }
}
