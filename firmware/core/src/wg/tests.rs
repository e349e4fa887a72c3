use super::*;
use crate::config::{PrivateKey, PublicKey};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn key(i: u32) -> PublicKey {
    // Deterministic valid keys: public keys of fixed private scalars.
    let mut b = [7u8; 32];
    b[1..5].copy_from_slice(&i.to_le_bytes());
    PublicKey(curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(b).to_bytes())
}

fn peer(i: u32, host: u32) -> PeerSpec {
    PeerSpec {
        name: format!("p{i}"),
        public_key: key(i),
        v4: Some(Ipv4Addr::from(0x0a42_0000 + host)),
        v6: Some(Ipv6Addr::from(0xfd66_u128 << 112 | host as u128)),
        tier: None,
        preshared_key: None,
    }
}

fn desired(peers: &[PeerSpec]) -> BTreeMap<PublicKey, PeerSpec> {
    peers.iter().map(|p| (p.public_key, p.clone())).collect()
}

fn observed_from(peers: &[PeerSpec]) -> Vec<ObservedPeer> {
    let wg = RecordingWg::default();
    let plan = WgPlan { peers: peers.iter().cloned().map(PeerChange::Add).collect(), ..Default::default() };
    wg.apply("wg0", &plan, &PrivateKey::generate()).unwrap();
    wg.observe("wg0").unwrap().peers
}

#[test]
fn no_change_gives_empty_diff() {
    let ps: Vec<_> = (0..50).map(|i| peer(i, i + 2)).collect();
    assert!(diff_peers(&observed_from(&ps), &desired(&ps)).is_empty());
}

#[test]
fn add_remove_update_are_single_peer_ops() {
    let old: Vec<_> = (0..5).map(|i| peer(i, i + 2)).collect();
    let mut new = old.clone();
    new.remove(1); // remove p1
    new.push(peer(9, 50)); // add p9
    new[0].v4 = Some(Ipv4Addr::new(10, 66, 0, 99)); // change p0's address
    let d = diff_peers(&observed_from(&old), &desired(&new));
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(matches!(&d[0], PeerChange::Remove(k) if *k == key(1)), "removals come first: {d:?}");
    assert!(d.iter().any(|c| matches!(c, PeerChange::Add(p) if p.public_key == key(9))));
    assert!(d.iter().any(|c| matches!(c, PeerChange::Update { public_key, allowed_ips: Some(_), preshared_key: None } if *public_key == key(0))));
}

#[test]
fn psk_change_is_an_update_and_zero_psk_means_none() {
    let old = vec![peer(1, 2)];
    let mut obs = observed_from(&old);
    obs[0].preshared_key = Some([0u8; 32]); // the kernel reports "no psk" as zeros
    assert!(diff_peers(&obs, &desired(&old)).is_empty());
    let mut new = old.clone();
    new[0].preshared_key = Some(crate::config::PresharedKey::from_base64(&base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [3u8; 32])).unwrap());
    let d = diff_peers(&obs, &desired(&new));
    assert!(matches!(&d[..], [PeerChange::Update { allowed_ips: None, preshared_key: Some(Some(_)), .. }]), "{d:?}");
}

#[test]
fn plan_sets_interface_fields_only_when_needed() {
    let text = include_str!("../../../../configs/node.toml");
    let p = std::path::Path::new("node.toml");
    let spec = crate::config::NodeConfig::from_str(text, p).unwrap().validate(p, text).unwrap();
    let k = PrivateKey::generate();
    let fresh = plan(&ObservedDevice::default(), &spec, &k.public_key());
    assert!(fresh.create_interface && fresh.set_private_key && fresh.set_listen_port == Some(51820));
    assert_eq!(fresh.peers.len(), 2);
    let wg = RecordingWg::default();
    wg.apply("wg0", &fresh, &k).unwrap();
    let again = plan(&wg.observe("wg0").unwrap(), &spec, &k.public_key());
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn endpoint_is_redacted() {
    let e = Endpoint("198.51.100.20:4242".parse().unwrap());
    assert_eq!(format!("{e} {e:?}"), "[redacted] [redacted]");
    let o = ObservedPeer { public_key: key(1), allowed_ips: vec![], preshared_key: None, endpoint: Some(e), last_handshake: None, rx_bytes: 0, tx_bytes: 0 };
    assert!(!format!("{o:?}").contains("198.51.100.20"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Reference model: applying diff(observed, desired) to observed yields
    /// exactly desired, and a second diff is empty. Untouched peers get no op.
    #[test]
    fn diff_converges(old in proptest::collection::btree_set(0u32..64, 0..20),
                      new in proptest::collection::btree_set(0u32..64, 0..20),
                      moved in proptest::collection::btree_set(0u32..64, 0..5)) {
        let olds: Vec<_> = old.iter().map(|&i| peer(i, i + 2)).collect();
        let news: Vec<_> = new.iter().map(|&i| if moved.contains(&i) { peer(i, i + 100) } else { peer(i, i + 2) }).collect();
        let wg = RecordingWg::default();
        wg.apply("wg0", &WgPlan { peers: olds.iter().cloned().map(PeerChange::Add).collect(), ..Default::default() }, &PrivateKey::generate()).unwrap();
        let d = diff_peers(&wg.observe("wg0").unwrap().peers, &desired(&news));
        for c in &d {
            let k = c.public_key();
            let i = (0u32..64).find(|i| key(*i) == *k).unwrap();
            // An op only for peers that were added, removed or moved.
            prop_assert!(old.contains(&i) != new.contains(&i) || moved.contains(&i));
        }
        wg.apply("wg0", &WgPlan { peers: d, ..Default::default() }, &PrivateKey::generate()).unwrap();
        let mut got: Vec<_> = wg.observe("wg0").unwrap().peers.iter().map(|p| (p.public_key, sorted(p.allowed_ips.clone()))).collect();
        got.sort();
        let mut want: Vec<_> = news.iter().map(|p| (p.public_key, sorted(p.allowed_ips()))).collect();
        want.sort();
        prop_assert_eq!(got, want);
        prop_assert!(diff_peers(&wg.observe("wg0").unwrap().peers, &desired(&news)).is_empty());
    }
}

fn sorted(mut v: Vec<IpNet>) -> Vec<IpNet> {
    v.sort();
    v.dedup();
    v
}
