//! Deterministic client keys and tunnel addresses: the node's peer table and
//! the generator derive the same N clients from one seed, so the peer list
//! can be printed before the run (`pal-loadgen peers`) and nothing is stored.

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Domain separation for the key derivation (bump on any change).
const KDF_LABEL: &[u8] = b"palisade-loadgen/client-key/v1";

/// Client `index`'s private key: SHA-256(label || seed || index), clamped by
/// x25519 on use. Test keys only: the seed is on the command line.
pub fn client_secret(seed: u64, index: u32) -> StaticSecret {
    let mut h = Sha256::new();
    h.update(KDF_LABEL);
    h.update(seed.to_le_bytes());
    h.update(index.to_le_bytes());
    let bytes: [u8; 32] = h.finalize().into();
    StaticSecret::from(bytes)
}

/// Base64 of a public key, as WireGuard configs spell it.
pub fn b64(key: &PublicKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// Parse a base64 WireGuard public key (the node's).
pub fn parse_public(s: &str) -> anyhow::Result<PublicKey> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| anyhow::anyhow!("node public key {s:?} is not base64: {e}"))?;
    let a: [u8; 32] = v
        .try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("node public key has {} bytes, want 32", v.len()))?;
    Ok(PublicKey::from(a))
}

/// Where the generator's clients sit in the bed's tunnel prefixes
/// (10.66.0.0/16, fd66::/64): client `i` gets `first_v4 + i` and
/// `first_v6 + i`. The default first addresses (10.66.16.0, fd66::1:0) keep
/// clear of the node (10.66.0.1) and the bed's wireguard-go clients
/// (10.66.0.2..).
#[derive(Debug, Clone, Copy)]
pub struct Alloc {
    pub first_v4: Ipv4Addr,
    pub first_v6: Ipv6Addr,
}

impl Default for Alloc {
    fn default() -> Self {
        Alloc {
            first_v4: Ipv4Addr::new(10, 66, 16, 0),
            first_v6: Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 1, 0),
        }
    }
}

/// The bed's tunnel prefixes every client address must stay inside.
pub const TUN_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 66, 0, 0), 16);
pub const TUN_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 0), 64);

impl Alloc {
    /// Client `i`'s addresses; an error if they leave the tunnel prefixes or
    /// hit the prefix's network/broadcast address.
    pub fn addrs(&self, i: u32) -> anyhow::Result<(Ipv4Addr, Ipv6Addr)> {
        let v4 = u32::from(self.first_v4)
            .checked_add(i)
            .map(Ipv4Addr::from)
            .ok_or_else(|| anyhow::anyhow!("client {i}: IPv4 address overflows"))?;
        let v6 = u128::from(self.first_v6)
            .checked_add(u128::from(i))
            .map(Ipv6Addr::from)
            .ok_or_else(|| anyhow::anyhow!("client {i}: IPv6 address overflows"))?;
        let in4 =
            |a: Ipv4Addr| u32::from(a) >> (32 - TUN_V4.1) == u32::from(TUN_V4.0) >> (32 - TUN_V4.1);
        let in6 = |a: Ipv6Addr| {
            u128::from(a) >> (128 - TUN_V6.1) == u128::from(TUN_V6.0) >> (128 - TUN_V6.1)
        };
        let host4 = u32::from(v4) & ((1 << (32 - TUN_V4.1)) - 1);
        if !in4(v4) || host4 == 0 || host4 == (1 << (32 - TUN_V4.1)) - 1 {
            anyhow::bail!("client {i}: {v4} is not a host address in 10.66.0.0/16 (fewer clients or another --first-v4)");
        }
        if !in6(v6) || u128::from(v6) & 0xffff_ffff_ffff_ffff == 0 {
            anyhow::bail!("client {i}: {v6} is not a host address in fd66::/64");
        }
        Ok((v4, v6))
    }
}

/// The `[[peer]]` tables of the node config (firmware/core config
/// `PeerSection`) for clients `0..count`.
pub fn peers_toml(seed: u64, count: u32, alloc: &Alloc) -> anyhow::Result<String> {
    let mut s = String::with_capacity(count as usize * 130);
    for i in 0..count {
        let public = PublicKey::from(&client_secret(seed, i));
        let (v4, v6) = alloc.addrs(i)?;
        s.push_str(&format!(
            "[[peer]]\nname = \"load-{i}\"\npublic_key = \"{}\"\naddresses = [\"{v4}/32\", \"{v6}/128\"]\n\n",
            b64(&public)
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_distinct() {
        let a = PublicKey::from(&client_secret(7, 0));
        assert_eq!(a, PublicKey::from(&client_secret(7, 0)));
        assert_ne!(a, PublicKey::from(&client_secret(7, 1)));
        assert_ne!(a, PublicKey::from(&client_secret(8, 0)));
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            assert!(seen.insert(*PublicKey::from(&client_secret(1, i)).as_bytes()));
        }
        // Golden value: the derivation must not drift between the printed
        // peer table and a later run.
        assert_eq!(
            b64(&PublicKey::from(&client_secret(1, 0))),
            b64(&PublicKey::from(&StaticSecret::from(<[u8; 32]>::from(
                Sha256::digest([KDF_LABEL, &1u64.to_le_bytes(), &0u32.to_le_bytes()].concat())
            ))))
        );
    }

    #[test]
    fn public_key_round_trips_through_base64() {
        let p = PublicKey::from(&client_secret(3, 9));
        assert_eq!(parse_public(&b64(&p)).unwrap(), p);
        assert!(parse_public("not base64!").is_err());
        assert!(parse_public("AAAA").is_err());
    }

    #[test]
    fn addresses_are_allocated_in_the_tunnel_prefixes() {
        let a = Alloc::default();
        assert_eq!(
            a.addrs(0).unwrap(),
            ("10.66.16.0".parse().unwrap(), "fd66::1:0".parse().unwrap())
        );
        assert_eq!(
            a.addrs(9999).unwrap(),
            (
                "10.66.55.15".parse().unwrap(),
                "fd66::1:270f".parse().unwrap()
            )
        );
        // 10.66.255.255 is the broadcast address of the /16; past it is outside.
        assert!(a.addrs(65535 - 16 * 256).is_err());
        assert!(a.addrs(65535 - 16 * 256 - 1).is_ok());
        let bad = Alloc {
            first_v4: "10.67.0.1".parse().unwrap(),
            ..Alloc::default()
        };
        assert!(bad.addrs(0).is_err());
    }

    #[test]
    fn peers_toml_has_one_table_per_client() {
        let t = peers_toml(5, 3, &Alloc::default()).unwrap();
        assert_eq!(t.matches("[[peer]]").count(), 3);
        assert!(t.contains("name = \"load-2\"\n"));
        assert!(t.contains("addresses = [\"10.66.16.1/32\", \"fd66::1:1/128\"]"));
        let k = b64(&PublicKey::from(&client_secret(5, 1)));
        assert!(t.contains(&format!("public_key = \"{k}\"")));
    }
}
