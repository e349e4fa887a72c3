//! The node's identity key: ed25519, made on the node at first boot, kept in
//! the store ([`Key::Identity`]) and never sent anywhere. Its public key
//! names the node ([`fleet::node_id`]) and signs the enrolment proof of
//! possession ([`fleet::enrol_proof_message`]).
//!
//! The stored value is JSON, `{"ed25519_pkcs8": "<base64>"}`. A value that
//! does not parse is an error ([`StoreError::Corrupt`]), never replaced
//! silently: a new key would be a new node, which the fleet must enrol again.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::fleet;
use crate::store::{Key, Store, StoreError};

/// The JSON field holding the PKCS#8 document.
const FIELD: &str = "ed25519_pkcs8";

/// The node's identity key pair. Debug shows the node id only.
pub struct Identity {
    pair: Ed25519KeyPair,
    /// Kept to be written back; zeroised on drop.
    _pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: Key::Identity.as_str(),
        message: message.into(),
    }
}

impl Identity {
    /// The stored identity, or a new one (generated and saved, durable
    /// before this returns); the flag says whether it was created.
    pub fn load_or_create(store: &dyn Store) -> Result<(Identity, bool), StoreError> {
        if let Some(raw) = store.get(Key::Identity)? {
            let raw = Zeroizing::new(raw);
            return Identity::decode(&raw).map(|i| (i, false));
        }
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| corrupt("cannot generate a key: the system random source failed"))?;
        let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
        let id = Identity::from_pkcs8(pkcs8)?;
        let encoded = Zeroizing::new(format!(
            "{{\"{FIELD}\":\"{}\"}}",
            Zeroizing::new(B64.encode(&id._pkcs8)).as_str()
        ));
        store.put(Key::Identity, encoded.as_bytes())?;
        Ok((id, true))
    }

    fn decode(raw: &[u8]) -> Result<Identity, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            ed25519_pkcs8: String,
        }
        let s: Stored = serde_json::from_slice(raw)
            .map_err(|e| corrupt(format!("not the identity format: {e}")))?;
        let b64 = Zeroizing::new(s.ed25519_pkcs8);
        let pkcs8 = B64
            .decode(b64.as_bytes())
            .map_err(|e| corrupt(format!("{FIELD} is not base64: {e}")))?;
        Identity::from_pkcs8(Zeroizing::new(pkcs8))
    }

    fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<Identity, StoreError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| corrupt(format!("{FIELD} is not an ed25519 PKCS#8 key: {e}")))?;
        Ok(Identity {
            pair,
            _pkcs8: pkcs8,
        })
    }

    /// Removes the identity key from the store (a factory reset that gives
    /// the node a new identity at its next start).
    pub fn wipe(store: &dyn Store) -> Result<(), StoreError> {
        store.remove(Key::Identity)
    }

    /// The node id ([`fleet::node_id`] of the public key).
    pub fn node_id(&self) -> String {
        fleet::node_id(&self.public_key())
    }

    /// The private key as a PKCS#8 document: for the node's own TLS
    /// certificate (the metrics endpoint's identity is this key). Never
    /// written anywhere but the store.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self._pkcs8
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("ed25519 public keys are 32 bytes")
    }

    /// The public key, standard base64.
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.public_key())
    }

    /// An ed25519 signature over `msg` (64 bytes).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The enrolment proof for `nonce`: a signature over
    /// [`fleet::enrol_proof_message`], standard base64.
    pub fn enrol_proof(&self, nonce: &[u8]) -> String {
        B64.encode(self.sign(&fleet::enrol_proof_message(nonce, &self.public_key())))
    }
}

/// The host's check of an enrolment proof: whether `proof_b64` is the
/// signature of the key `public_key_b64` over
/// [`fleet::enrol_proof_message`]`(nonce, key)`. Malformed base64 or a key
/// that is not 32 bytes is `false`.
pub fn verify_proof(public_key_b64: &str, nonce: &[u8], proof_b64: &str) -> bool {
    let (Ok(pk), Ok(sig)) = (B64.decode(public_key_b64), B64.decode(proof_b64)) else {
        return false;
    };
    if pk.len() != 32 {
        return false;
    }
    UnparsedPublicKey::new(&ED25519, &pk)
        .verify(&fleet::enrol_proof_message(nonce, &pk), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileStore, MemStore};

    #[test]
    fn created_once_then_loaded() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let (a, created) = Identity::load_or_create(&s).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(&FileStore::open(d.path()).unwrap()).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.node_id(), b.node_id());
        assert!(fleet::valid_node_id(&a.node_id()), "{}", a.node_id());
        assert_eq!(a.node_id(), fleet::node_id(&a.public_key()));
        assert_eq!(B64.decode(a.public_key_b64()).unwrap(), a.public_key());
    }

    #[test]
    fn corrupt_value_is_an_error_and_kept() {
        let s = MemStore::new();
        for bad in [
            &b"not json"[..],
            br#"{"ed25519_pkcs8":"!!"}"#,
            br#"{"ed25519_pkcs8":"AAAA"}"#,
            br#"{"other":1}"#,
        ] {
            s.put(Key::Identity, bad).unwrap();
            let e = Identity::load_or_create(&s).unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::Corrupt {
                        key: "identity",
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(s.get(Key::Identity).unwrap().unwrap(), bad, "not replaced");
        }
    }

    #[test]
    fn wipe_gives_a_new_identity() {
        let s = MemStore::new();
        let (a, _) = Identity::load_or_create(&s).unwrap();
        Identity::wipe(&s).unwrap();
        assert_eq!(s.get(Key::Identity).unwrap(), None);
        let (b, created) = Identity::load_or_create(&s).unwrap();
        assert!(created);
        assert_ne!(a.public_key(), b.public_key());
    }

    #[test]
    fn proof_verifies_only_for_its_nonce_and_key() {
        let s = MemStore::new();
        let (id, _) = Identity::load_or_create(&s).unwrap();
        let (other, _) = Identity::load_or_create(&MemStore::new()).unwrap();
        let nonce = [9u8; 32];
        let proof = id.enrol_proof(&nonce);
        assert!(verify_proof(&id.public_key_b64(), &nonce, &proof));
        assert!(!verify_proof(&id.public_key_b64(), &[8u8; 32], &proof));
        assert!(!verify_proof(&other.public_key_b64(), &nonce, &proof));
        assert!(!verify_proof("not base64", &nonce, &proof));
        assert!(!verify_proof(&id.public_key_b64(), &nonce, "AAAA"));
        // A signature over the bare nonce (no context) is not a proof.
        let bare = B64.encode(id.sign(&nonce));
        assert!(!verify_proof(&id.public_key_b64(), &nonce, &bare));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let s = MemStore::new();
        let (id, _) = Identity::load_or_create(&s).unwrap();
        let stored = String::from_utf8(s.get(Key::Identity).unwrap().unwrap()).unwrap();
        let secret = stored.split('"').nth(3).unwrap().to_string();
        let dbg = format!("{id:?}");
        assert!(dbg.contains(&id.node_id()), "{dbg}");
        assert!(
            !dbg.contains(&secret) && !dbg.contains(&secret[..16]),
            "{dbg}"
        );
    }
}
