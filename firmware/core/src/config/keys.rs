//! WireGuard keys: parsing with the checks the kernel would not do for us,
//! and a private-key type that never prints and zeroes itself on drop.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use curve25519_dalek::montgomery::MontgomeryPoint;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("decodes to {0} bytes; a WireGuard key is 32 bytes (44 base64 characters)")]
    Length(usize),
    #[error("all-zero key")]
    Zero,
    #[error("low-order point: no shared secret can be derived from it")]
    LowOrder,
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?);
    if bytes.len() != 32 {
        return Err(KeyError::Length(bytes.len()));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// The u-coordinates of every point of order 1, 2, 4 or 8 on Curve25519 and
/// their non-canonical encodings (X25519 ignores the top bit), as libsodium
/// lists them. A table lookup keeps validation of 10k peers cheap; the unit
/// test proves each entry low-order by scalar multiplication and checks that
/// random keys agree with the slow method.
const LOW_ORDER: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    // 1 (order 1); 0 (order 4) is the all-zero row.
    t[1][0] = 1;
    t[2] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
        0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
    ];
    t[3] = [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
        0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
    ];
    // p - 1 (order 2), p (= 0), p + 1 (= 1).
    let mut i = 4;
    while i < 7 {
        let mut r = [0xffu8; 32];
        r[0] = 0xec + (i as u8 - 4);
        r[31] = 0x7f;
        t[i] = r;
        i += 1;
    }
    t
};

fn is_low_order(bytes: &[u8; 32]) -> bool {
    let mut k = *bytes;
    k[31] &= 0x7f;
    LOW_ORDER.contains(&k)
}

/// Slow reference: a clamped scalar is a multiple of the cofactor 8, so it
/// maps every low-order point to the identity (u = 0).
#[cfg(test)]
fn is_low_order_slow(bytes: &[u8; 32]) -> bool {
    MontgomeryPoint(*bytes).mul_clamped([0x5a; 32]).to_bytes() == [0u8; 32]
}

/// A peer's Curve25519 public key, checked to be usable (not zero, not low order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode32(text)?;
        if bytes == [0u8; 32] {
            return Err(KeyError::Zero);
        }
        if is_low_order(&bytes) {
            return Err(KeyError::LowOrder);
        }
        Ok(PublicKey(bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// The node's private key: zeroed on drop, redacted in Debug, no Display.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(Zeroizing<[u8; 32]>);

impl PrivateKey {
    /// A fresh key from the OS RNG, generated in process (never `wg genkey`).
    pub fn generate() -> PrivateKey {
        let mut k = wireguard_control::Key::generate_private();
        let out = PrivateKey(Zeroizing::new(k.0));
        k.0.zeroize();
        out
    }

    pub fn from_base64(text: &str) -> Result<PrivateKey, KeyError> {
        let bytes = decode32(text)?;
        if bytes == [0u8; 32] {
            return Err(KeyError::Zero);
        }
        Ok(PrivateKey(Zeroizing::new(bytes)))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(MontgomeryPoint::mul_base_clamped(*self.0).to_bytes())
    }

    pub fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(*self.0)
    }

    /// Read the key file, or create it (0600, written to a temp file then
    /// renamed so a crash never leaves half a key) when absent.
    pub fn load_or_generate(path: &Path) -> std::io::Result<PrivateKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                PrivateKey::from_base64(&text).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("private key file {}: {e}", path.display()),
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("tmp");
                {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    let text = Zeroizing::new(STANDARD.encode(*key.0));
                    f.write_all(text.as_bytes())?;
                    f.write_all(b"\n")?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, path)?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

/// An optional per-peer preshared key: redacted in Debug, zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(Zeroizing<[u8; 32]>);

impl PresharedKey {
    pub fn from_base64(text: &str) -> Result<PresharedKey, KeyError> {
        let bytes = decode32(text)?;
        Ok(PresharedKey(Zeroizing::new(bytes)))
    }
    pub fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(*self.0)
    }
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.0))
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(PublicKey::from_base64("abc"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64(&STANDARD.encode([1u8; 16])), Err(KeyError::Length(16)));
        assert_eq!(PublicKey::from_base64(&STANDARD.encode([0u8; 32])), Err(KeyError::Zero));
        // u = 1: order 4 point. u = p-1 (0xec ff..ff 7f): order 2.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(PublicKey::from_base64(&STANDARD.encode(one)), Err(KeyError::LowOrder));
        let mut pm1 = [0xffu8; 32];
        pm1[0] = 0xec;
        pm1[31] = 0x7f;
        assert_eq!(PublicKey::from_base64(&STANDARD.encode(pm1)), Err(KeyError::LowOrder));
        // The order-8 point from the libsodium blocklist.
        let order8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        assert_eq!(PublicKey::from_base64(&STANDARD.encode(order8)), Err(KeyError::LowOrder));
    }

    #[test]
    fn low_order_table_is_right() {
        for (i, l) in LOW_ORDER.iter().enumerate() {
            assert!(is_low_order_slow(l), "table row {i} is not low order");
            let mut hi = *l;
            hi[31] |= 0x80;
            assert!(is_low_order(&hi), "top bit must be ignored (row {i})");
        }
        for i in 0..2000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b[5] = 0x42;
            let pk = MontgomeryPoint::mul_base_clamped(b).to_bytes();
            assert!(!is_low_order(&pk) && !is_low_order_slow(&pk));
        }
    }

    #[test]
    fn generated_key_roundtrips_and_is_redacted() {
        let k = PrivateKey::generate();
        let pk = k.public_key();
        assert!(PublicKey::from_base64(&pk.to_base64()).is_ok());
        assert_eq!(format!("{k:?}"), "PrivateKey([redacted])");
        // Same derivation as wireguard-control's (and so as `wg pubkey`).
        assert_eq!(k.to_wg().get_public().0, pk.0);
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/wg0.key");
        let a = PrivateKey::load_or_generate(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = PrivateKey::load_or_generate(&p).unwrap();
        assert_eq!(a, b);
        std::fs::write(&p, "garbage").unwrap();
        let err = PrivateKey::load_or_generate(&p).unwrap_err().to_string();
        assert!(err.contains("wg0.key"), "{err}");
    }
}
