//! Client grants: ES384 JWTs (compact JWS) that the fleet's issuing
//! service signs and nodes verify offline against the issuer's keys
//! (`jwks.json`, a JSON Web Key Set signed into the repository by the
//! `grants` role). Claims are [`GrantClaims`]; the header names the key
//! (`kid`).
//!
//! The node side is [`Issuer`]: built from the JWKS (only EC P-384 keys with
//! `alg` ES384), it checks the header (`alg` ES384, a known `kid`), the
//! signature, the claims (a WireGuard public key in `sub`, CIDR addresses)
//! and the time on the node's own clock (`exp > now`, no leeway; `iat` at
//! most 5 minutes ahead). [`Issuer::verify_all`] spreads many grants over
//! all cores.
//!
//! The issuing side ([`generate_issuer_key`], [`jwks_for`], [`sign_grant`])
//! is here too so that `palisade-fleet`, tests and nodes share one format.
//!
//! Refusals are [`GrantError`]s with a stable [`GrantError::kind`]:
//! `expired`, `bad-signature`, `unknown-key`, `invalid`.

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ipnet::IpNet;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use zeroize::Zeroizing;

use crate::fleet::GrantClaims;

/// Largest grant accepted (one compact JWS), checked before any parsing.
pub const MAX_GRANT_LEN: usize = 16 * 1024;
/// Largest `jwks.json` accepted.
pub const MAX_JWKS_LEN: usize = 64 * 1024;
/// How far ahead of the node's clock `iat` may be (clock skew).
pub const MAX_IAT_SKEW: i64 = 300;
/// At most this many addresses per grant.
pub const MAX_ADDRESSES: usize = 64;

/// Why a grant (or the issuer's key set) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// `exp` is not after the node's clock.
    #[error("grant expired at {exp} (node clock {now}); the issuer must issue a new one")]
    Expired { exp: i64, now: i64 },
    /// The signature does not verify, or the header names another algorithm
    /// than ES384 (`none`, HS384, ...).
    #[error("grant signature refused: {detail}")]
    BadSignature { detail: String },
    /// The header's `kid` is not a key of `jwks.json`.
    #[error("grant signed by key {kid:?}, which jwks.json does not list; publish the issuer's current keys (grants role)")]
    UnknownKey { kid: String },
    /// Malformed grant or claims.
    #[error("grant invalid: {detail}")]
    Invalid { detail: String },
    /// The issuer's key set is unusable.
    #[error("issuer keys (jwks.json) refused: {detail}; only EC P-384 keys with alg ES384 and a unique kid are accepted")]
    Jwks { detail: String },
    /// The issuing side: an unusable private key or a signing failure.
    #[error("grant issuing key: {detail}")]
    Key { detail: String },
}

impl GrantError {
    /// Stable kebab-case kind: `expired`, `bad-signature`, `unknown-key`,
    /// `invalid` (issuer key set and issuing key problems are `invalid`).
    pub fn kind(&self) -> &'static str {
        match self {
            GrantError::Expired { .. } => "expired",
            GrantError::BadSignature { .. } => "bad-signature",
            GrantError::UnknownKey { .. } => "unknown-key",
            GrantError::Invalid { .. } | GrantError::Jwks { .. } | GrantError::Key { .. } => {
                "invalid"
            }
        }
    }
}

fn invalid(detail: impl Into<String>) -> GrantError {
    GrantError::Invalid {
        detail: detail.into(),
    }
}

/// A verified grant. Debug shows the grant id, tier and times; the client's
/// key and addresses are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// Grant id.
    pub jti: String,
    /// The client's WireGuard public key.
    pub public_key: [u8; 32],
    /// The client's tunnel addresses.
    pub addresses: Vec<IpNet>,
    /// DNS tier; `None`: the default.
    pub tier: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not valid at or after (Unix seconds).
    pub exp: i64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("jti", &self.jti)
            .field("public_key", &"[redacted]")
            .field(
                "addresses",
                &format_args!("[{} redacted]", self.addresses.len()),
            )
            .field("tier", &self.tier)
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .finish()
    }
}

impl Grant {
    /// The public key, standard base64 (as WireGuard writes it).
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.public_key)
    }

    /// Checks the grant's times against the node's clock: `exp > now`,
    /// `iat <= now + MAX_IAT_SKEW`.
    pub fn check_time(&self, now_unix: i64) -> Result<(), GrantError> {
        if self.exp <= now_unix {
            return Err(GrantError::Expired {
                exp: self.exp,
                now: now_unix,
            });
        }
        if self.iat > now_unix.saturating_add(MAX_IAT_SKEW) {
            return Err(invalid(format!(
                "issued at {} is in the future (node clock {now_unix})",
                self.iat
            )));
        }
        Ok(())
    }

    fn from_claims(c: GrantClaims) -> Result<Grant, GrantError> {
        if c.jti.is_empty() || c.jti.len() > 128 {
            return Err(invalid("jti must be 1..=128 characters"));
        }
        let public_key = parse_wg_key(&c.sub).ok_or_else(|| {
            invalid(format!(
                "grant {}: sub is not a WireGuard public key (32 bytes, base64)",
                c.jti
            ))
        })?;
        if c.addresses.is_empty() || c.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "grant {}: 1..={MAX_ADDRESSES} addresses required, got {}",
                c.jti,
                c.addresses.len()
            )));
        }
        let mut addresses = Vec::with_capacity(c.addresses.len());
        for a in &c.addresses {
            let net: IpNet = a.parse().map_err(|_| {
                invalid(format!(
                    "grant {}: address #{} is not a CIDR prefix",
                    c.jti,
                    addresses.len() + 1
                ))
            })?;
            addresses.push(net);
        }
        if let Some(t) = &c.tier {
            if t.is_empty() || t.len() > 64 {
                return Err(invalid(format!(
                    "grant {}: tier must be 1..=64 characters",
                    c.jti
                )));
            }
        }
        Ok(Grant {
            jti: c.jti,
            public_key,
            addresses,
            tier: c.tier,
            iat: c.iat,
            exp: c.exp,
        })
    }
}

/// A WireGuard public key: 32 bytes, standard base64.
pub fn parse_wg_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 44 {
        return None;
    }
    B64.decode(s).ok()?.try_into().ok()
}

/// Make sure jsonwebtoken uses aws-lc-rs even if another crate in the build
/// enables its other backend (then it would not pick one by itself).
fn provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err: a provider is installed already, which is what we need.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

/// The grant issuer's public keys, from `jwks.json`.
pub struct Issuer {
    keys: Vec<(String, DecodingKey)>,
    validation: Validation,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Issuer").field("kids", &kids).finish()
    }
}

impl Issuer {
    /// The issuer from a JSON Web Key Set. Every key must be EC P-384 with
    /// `alg` ES384 and a unique `kid` (`use`, if given, `sig`); anything
    /// else refuses the whole set, naming the key. An empty set is valid
    /// (no grant verifies).
    pub fn from_jwks(bytes: &[u8]) -> Result<Issuer, GrantError> {
        provider();
        let bad = |detail: String| GrantError::Jwks { detail };
        if bytes.len() > MAX_JWKS_LEN {
            return Err(bad(format!(
                "{} bytes, more than {MAX_JWKS_LEN}",
                bytes.len()
            )));
        }
        let set: JwkSet = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a JSON Web Key Set: {e}")))?;
        let mut keys: Vec<(String, DecodingKey)> = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk
                .common
                .key_id
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| bad(format!("key #{} has no kid", i + 1)))?;
            let name = format!("key {kid:?}");
            if keys.iter().any(|(k, _)| *k == kid) {
                return Err(bad(format!("{name} is listed twice")));
            }
            if jwk.common.key_algorithm != Some(KeyAlgorithm::ES384) {
                return Err(bad(format!(
                    "{name} has alg {:?}, not ES384",
                    jwk.common.key_algorithm
                )));
            }
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
            {
                return Err(bad(format!("{name} is not for signatures (use)")));
            }
            let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
                return Err(bad(format!("{name} is not an EC key")));
            };
            if ec.curve != EllipticCurve::P384 {
                return Err(bad(format!("{name} is on {:?}, not P-384", ec.curve)));
            }
            let coord = |c: &str| B64URL.decode(c).ok().filter(|v| v.len() == 48);
            if coord(&ec.x).is_none() || coord(&ec.y).is_none() {
                return Err(bad(format!(
                    "{name}: x and y must be 48 bytes each (base64url)"
                )));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{name}: {e}")))?;
            keys.push((kid, key));
        }
        let mut validation = Validation::new(Algorithm::ES384);
        // Times are checked against the node's clock passed in (check_time),
        // not the system clock inside jsonwebtoken.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Issuer { keys, validation })
    }

    /// The key ids of the set.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// Verifies one grant completely: header, signature, claims, and times
    /// against `now_unix`.
    pub fn verify(&self, jwt: &str, now_unix: i64) -> Result<Grant, GrantError> {
        let g = self.verify_signed(jwt)?;
        g.check_time(now_unix)?;
        Ok(g)
    }

    /// Verifies header, signature and claims, not the times: the part of
    /// [`Issuer::verify`] that does not change with the clock (and that
    /// `sync::Verifier` caches). Call [`Grant::check_time`] on the result.
    pub fn verify_signed(&self, jwt: &str) -> Result<Grant, GrantError> {
        if jwt.len() > MAX_GRANT_LEN {
            return Err(invalid(format!(
                "{} bytes, more than {MAX_GRANT_LEN}",
                jwt.len()
            )));
        }
        let header_b64 = jwt.split('.').next().unwrap_or_default();
        if jwt.split('.').count() != 3 {
            return Err(invalid("not a compact JWS (three dot-separated parts)"));
        }
        #[derive(serde::Deserialize)]
        struct H {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let h: H = B64URL
            .decode(header_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("the header is not base64url JSON with an alg"))?;
        if h.alg != "ES384" {
            return Err(GrantError::BadSignature {
                detail: format!("alg {:?}: only ES384 grants are accepted", h.alg),
            });
        }
        let kid = h.kid.ok_or_else(|| invalid("the header has no kid"))?;
        let key = self
            .keys
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, k)| k)
            .ok_or(GrantError::UnknownKey { kid })?;
        let data =
            jsonwebtoken::decode::<GrantClaims>(jwt, key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature | K::InvalidAlgorithm | K::InvalidEcdsaKey => {
                        GrantError::BadSignature {
                            detail: e.to_string(),
                        }
                    }
                    _ => invalid(format!("claims: {e}")),
                }
            })?;
        Grant::from_claims(data.claims)
    }

    /// Verifies every grant (as [`Issuer::verify`]), spread over
    /// `available_parallelism` threads; results in input order.
    pub fn verify_all<S: AsRef<str> + Sync>(
        &self,
        jwts: &[S],
        now_unix: i64,
    ) -> Vec<Result<Grant, GrantError>> {
        par_map(jwts, |j| self.verify(j.as_ref(), now_unix))
    }
}

/// `f` over `items` on up to `available_parallelism` scoped threads (one
/// chunk each), results in input order. Small inputs stay on this thread.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const MIN_PER_THREAD: usize = 32;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = threads.min(items.len() / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            // A panic in `f` is a bug; carry it to the caller.
            out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        out
    })
}

// ---- The issuing side (palisade-fleet, tests) ----

/// A new issuer signing key: EC P-384, PKCS#8 (keep it secret: whoever
/// holds it grants access to every node).
pub fn generate_issuer_key() -> Result<Zeroizing<Vec<u8>>, GrantError> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let doc =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).map_err(|_| {
            GrantError::Key {
                detail: "cannot generate a P-384 key (system random source)".into(),
            }
        })?;
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

/// The public JWK of an issuer key (EC P-384 PKCS#8): alg ES384, use sig,
/// `kid` the RFC 7638 SHA-256 thumbprint.
pub fn jwk_for(pkcs8: &[u8]) -> Result<Jwk, GrantError> {
    provider();
    let key_err = |e: jsonwebtoken::errors::Error| GrantError::Key {
        detail: format!("not an EC P-384 PKCS#8 key: {e}"),
    };
    let enc = EncodingKey::from_ec_der(pkcs8);
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES384).map_err(key_err)?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(key_err)?;
    jwk.common.key_id = Some(kid);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

/// `(kid, jwks.json)` for one issuer key: what the `grants` role publishes.
/// (For a key rotation, publish a set with both keys: [`jwks_for_keys`].)
pub fn jwks_for(pkcs8: &[u8]) -> Result<(String, String), GrantError> {
    let jwk = jwk_for(pkcs8)?;
    let kid = jwk.common.key_id.clone().unwrap_or_default();
    Ok((kid, jwks_json(vec![jwk])))
}

/// `jwks.json` with the public keys of several issuer keys (rotation).
pub fn jwks_for_keys(pkcs8s: &[&[u8]]) -> Result<String, GrantError> {
    let keys = pkcs8s
        .iter()
        .map(|k| jwk_for(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(jwks_json(keys))
}

fn jwks_json(keys: Vec<Jwk>) -> String {
    serde_json::to_string_pretty(&JwkSet { keys }).expect("a JWK set serializes")
}

/// Signs `claims` as a grant (ES384, header `kid`): the issuing service's
/// side of [`Issuer::verify`].
pub fn sign_grant(pkcs8: &[u8], kid: &str, claims: &GrantClaims) -> Result<String, GrantError> {
    provider();
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(pkcs8)).map_err(|e| {
        GrantError::Key {
            detail: e.to_string(),
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOW: i64 = 1_900_000_000;

    pub(crate) fn claims(n: u32) -> GrantClaims {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        k[31] = 1;
        GrantClaims {
            jti: format!("g-{n}"),
            sub: B64.encode(k),
            addresses: vec![
                format!("10.8.{}.{}/32", n / 250, n % 250 + 2),
                "fd00::2/128".into(),
            ],
            tier: Some("family".into()),
            iat: NOW - 60,
            exp: NOW + 3600,
        }
    }

    pub(crate) fn key() -> (Zeroizing<Vec<u8>>, String, Issuer) {
        let k = generate_issuer_key().unwrap();
        let (kid, jwks) = jwks_for(&k).unwrap();
        let issuer = Issuer::from_jwks(jwks.as_bytes()).unwrap();
        (k, kid, issuer)
    }

    fn b64json(v: &serde_json::Value) -> String {
        B64URL.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn valid_grant_verifies() {
        let (k, kid, issuer) = key();
        assert_eq!(issuer.kids().collect::<Vec<_>>(), [kid.as_str()]);
        let c = claims(7);
        let jwt = sign_grant(&k, &kid, &c).unwrap();
        let g = issuer.verify(&jwt, NOW).unwrap();
        assert_eq!(g.jti, "g-7");
        assert_eq!(g.public_key_b64(), c.sub);
        assert_eq!(
            g.addresses,
            vec![
                "10.8.0.9/32".parse::<IpNet>().unwrap(),
                "fd00::2/128".parse().unwrap()
            ]
        );
        assert_eq!(
            (g.tier.as_deref(), g.iat, g.exp),
            (Some("family"), NOW - 60, NOW + 3600)
        );
        // Debug redacts the client.
        let dbg = format!("{g:?}");
        assert!(!dbg.contains(&c.sub) && !dbg.contains("10.8.0.9"), "{dbg}");
    }

    #[test]
    fn expiry_has_no_leeway_and_iat_five_minutes() {
        let (k, kid, issuer) = key();
        let mut c = claims(1);
        c.exp = NOW;
        let jwt = sign_grant(&k, &kid, &c).unwrap();
        let e = issuer.verify(&jwt, NOW).unwrap_err();
        assert_eq!(e.kind(), "expired", "{e}");
        assert!(issuer.verify(&jwt, NOW - 1).is_ok());
        let mut c = claims(2);
        c.iat = NOW + MAX_IAT_SKEW;
        assert!(issuer
            .verify(&sign_grant(&k, &kid, &c).unwrap(), NOW)
            .is_ok());
        c.iat = NOW + MAX_IAT_SKEW + 1;
        let e = issuer
            .verify(&sign_grant(&k, &kid, &c).unwrap(), NOW)
            .unwrap_err();
        assert_eq!(e.kind(), "invalid", "{e}");
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let (k, kid, issuer) = key();
        let jwt = sign_grant(&k, &kid, &claims(1)).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut other = claims(1);
        other.addresses = vec!["0.0.0.0/0".into()];
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64json(&serde_json::to_value(&other).unwrap()),
            parts[2]
        );
        let e = issuer.verify(&forged, NOW).unwrap_err();
        assert_eq!(e.kind(), "bad-signature", "{e}");
        // A flipped signature byte, too.
        let mut sig = B64URL.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let e = issuer
            .verify(
                &format!("{}.{}.{}", parts[0], parts[1], B64URL.encode(sig)),
                NOW,
            )
            .unwrap_err();
        assert_eq!(e.kind(), "bad-signature", "{e}");
    }

    #[test]
    fn another_key_under_a_known_kid_is_bad_signature() {
        let (_, kid, issuer) = key();
        let (k2, _, _) = key();
        let e = issuer
            .verify(&sign_grant(&k2, &kid, &claims(1)).unwrap(), NOW)
            .unwrap_err();
        assert_eq!(e.kind(), "bad-signature", "{e}");
    }

    #[test]
    fn unknown_kid() {
        let (k, _, issuer) = key();
        let e = issuer
            .verify(&sign_grant(&k, "someone-else", &claims(1)).unwrap(), NOW)
            .unwrap_err();
        assert_eq!(e.kind(), "unknown-key", "{e}");
        assert!(e.to_string().contains("someone-else"), "{e}");
    }

    #[test]
    fn alg_none_and_hs384_are_refused() {
        let (_, kid, issuer) = key();
        let payload = b64json(&serde_json::to_value(claims(1)).unwrap());
        let none = format!(
            "{}.{payload}.",
            b64json(&serde_json::json!({"alg": "none", "kid": kid}))
        );
        let e = issuer.verify(&none, NOW).unwrap_err();
        assert_eq!(e.kind(), "bad-signature", "{e}");
        // HS384 keyed with the public key (the classic confusion).
        let jwks: serde_json::Value = serde_json::from_str(&jwks_for(&key().0).unwrap().1).unwrap();
        let mut h = Header::new(Algorithm::HS384);
        h.kid = Some(kid.clone());
        let secret = serde_json::to_vec(&jwks["keys"][0]).unwrap();
        let hs = jsonwebtoken::encode(&h, &claims(1), &EncodingKey::from_secret(&secret).unwrap())
            .unwrap();
        let e = issuer.verify(&hs, NOW).unwrap_err();
        assert_eq!(e.kind(), "bad-signature", "{e}");
        assert!(e.to_string().contains("HS384"), "{e}");
    }

    #[test]
    fn bad_claims_are_invalid() {
        let (k, kid, issuer) = key();
        type Edit = Box<dyn Fn(&mut GrantClaims)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("sub not base64", Box::new(|c| c.sub = "not a key".into())),
            ("sub 31 bytes", Box::new(|c| c.sub = B64.encode([1u8; 31]))),
            (
                "address",
                Box::new(|c| c.addresses = vec!["10.0.0.300/32".into()]),
            ),
            ("no address", Box::new(|c| c.addresses.clear())),
            ("empty jti", Box::new(|c| c.jti.clear())),
        ];
        for (what, f) in cases {
            let mut c = claims(1);
            f(&mut c);
            let e = issuer
                .verify(&sign_grant(&k, &kid, &c).unwrap(), NOW)
                .unwrap_err();
            assert_eq!(e.kind(), "invalid", "{what}: {e}");
        }
        for garbage in ["", "a.b", "a.b.c", &"x".repeat(MAX_GRANT_LEN + 1)] {
            assert_eq!(
                issuer.verify(garbage, NOW).unwrap_err().kind(),
                "invalid",
                "{garbage:.20}"
            );
        }
    }

    #[test]
    fn jwks_accepts_only_p384_es384() {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let p256 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let jwk =
            Jwk::from_encoding_key(&EncodingKey::from_ec_der(p256.as_ref()), Algorithm::ES256)
                .unwrap();
        let mut v = serde_json::to_value(&jwk).unwrap();
        v["kid"] = "p256".into();
        let set = serde_json::json!({"keys": [v.clone()]}).to_string();
        let e = Issuer::from_jwks(set.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("ES384"), "{e}");
        // Claiming ES384 on a P-256 key does not help.
        v["alg"] = "ES384".into();
        let e =
            Issuer::from_jwks(serde_json::json!({"keys": [v]}).to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("P-384"), "{e}");
        let hmac = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS384","kid":"h"}]}"#;
        assert!(Issuer::from_jwks(hmac.as_bytes()).is_err());
        // Duplicate kids and a missing kid.
        let (_, one) = jwks_for(&key().0).unwrap();
        let mut set: serde_json::Value = serde_json::from_str(&one).unwrap();
        let k0 = set["keys"][0].clone();
        set["keys"].as_array_mut().unwrap().push(k0);
        assert!(Issuer::from_jwks(set.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .contains("twice"));
        set["keys"][0].as_object_mut().unwrap().remove("kid");
        assert!(Issuer::from_jwks(set.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .contains("no kid"));
        assert_eq!(
            Issuer::from_jwks(b"not json").unwrap_err().kind(),
            "invalid"
        );
        // Rotation: two keys, both verify.
        let (a, b) = (
            generate_issuer_key().unwrap(),
            generate_issuer_key().unwrap(),
        );
        let issuer = Issuer::from_jwks(jwks_for_keys(&[&a, &b]).unwrap().as_bytes()).unwrap();
        for k in [&a, &b] {
            let kid = jwk_for(k).unwrap().common.key_id.unwrap();
            assert!(issuer
                .verify(&sign_grant(k, &kid, &claims(3)).unwrap(), NOW)
                .is_ok());
        }
    }

    #[test]
    fn verify_all_keeps_order_across_threads() {
        let (k, kid, issuer) = key();
        let mut jwts: Vec<String> = (0..300)
            .map(|n| sign_grant(&k, &kid, &claims(n)).unwrap())
            .collect();
        jwts[17] = "garbage".into();
        let out = issuer.verify_all(&jwts, NOW);
        assert_eq!(out.len(), 300);
        for (n, r) in out.iter().enumerate() {
            match r {
                Ok(g) => assert_eq!(g.jti, format!("g-{n}")),
                Err(e) => assert!(n == 17 && e.kind() == "invalid", "{n}: {e}"),
            }
        }
    }
}
