use super::*;
use crate::config::{NodeConfig, NodeSpec, PeerSpec, PrivateKey};
use std::path::Path;

fn spec() -> NodeSpec {
    let text = include_str!("../../../../configs/node.toml");
    let p = Path::new("node.toml");
    NodeConfig::from_str(text, p).unwrap().validate(p, text).unwrap()
}

#[test]
fn ruleset_snapshot() {
    insta::assert_snapshot!(render(&spec()));
}

#[test]
fn never_a_log_statement() {
    let r = render(&spec());
    assert!(!r.split_whitespace().any(|w| w == "log"), "{r}");
}

#[test]
fn rule_count_does_not_grow_with_peers() {
    let mut big = spec();
    for i in 0..10_000u32 {
        let k = PrivateKey::generate().public_key();
        let host = 10 + i;
        big.peers.insert(
            k,
            PeerSpec {
                name: format!("p{i}"),
                public_key: k,
                v4: Some(std::net::Ipv4Addr::from(0x0a42_0000 + host)),
                v6: None,
                tier: None,
                preshared_key: None,
            },
        );
    }
    assert_eq!(render(&big), render(&spec()));
}

#[test]
fn allow_rules_precede_blocked_drop_and_nat66_follows_routed_prefix() {
    let mut s = spec();
    let r = render(&s);
    let allow = r.find("ip daddr 198.51.100.7/32 tcp dport { 443 } accept").expect("allow rule rendered");
    let drop = r.find("ip daddr @blocked_v4 drop").unwrap();
    assert!(allow < drop);
    assert!(r.contains("ip6 saddr fd66::/64 masquerade"));
    s.wg.routed_prefix_v6 = Some("2001:db8:1::/64".parse().unwrap());
    assert!(!render(&s).contains("ip6 saddr fd66::/64 masquerade"));
}

/// Real nftables: the rendered ruleset passes `nft -c`, loads, verifies and
/// reloads over itself atomically. Runs in a private network namespace.
#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn nft_loads_rendered_ruleset() {
    let nft = NftCli::default();
    let fp1 = nft.apply(&render(&spec())).expect("first apply");
    let fp2 = nft.apply(&render(&spec())).expect("reapply over itself");
    assert_eq!(fp1, fp2, "same spec, same live table");
    let mut other = spec();
    other.management.ports = vec![2222];
    let fp3 = nft.apply(&render(&other)).unwrap();
    assert_ne!(fp1, fp3, "fingerprint follows the live table");
    // A broken script is refused by the check and the live table stays.
    let err = nft.apply("table inet palisade { chain x { bogus } }").unwrap_err();
    assert!(err.to_string().contains("check"), "{err}");
    assert_eq!(nft.fingerprint().unwrap().as_deref(), Some(fp3.as_str()));
}
