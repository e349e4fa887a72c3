//! The resolver through the tunnel: a real palisaded in the node namespace, a
//! wireguard-go client, dnsmasq as the upstream on "the internet"
//! (203.0.113.53, zone example.test). Proves:
//! - clients resolve through the tunnel on 10.66.0.1 and fd66::1, port 53;
//! - the node's block list applies (NXDOMAIN for a listed name and its
//!   subdomains, the rest resolves);
//! - the uplink gets no DNS answer: neither the uplink address nor the
//!   tunnel address answers a query from the internet namespace;
//! - palisaded's log holds no queried name and no client address after the
//!   traffic (zero-log, production log filter at its most verbose).

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{addr, probe, Bins, TestBed};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const T: Duration = Duration::from_millis(1500);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn dns_through_the_tunnel_and_never_on_the_uplink() {
    let mut bed = TestBed::new(1, bins()).expect("build test bed");
    let list = bed.dir.path().join("ads.txt");
    std::fs::write(&list, "||ads.example.test^\n0.0.0.0 adult.example.test\n").unwrap();
    let opts = NodeOptions {
        extra_toml: format!(
            "\n[dns.list.ads]\npath = \"{}\"\n\n[dns.tier.default]\nlists = [\"ads\"]\n",
            list.display()
        ),
        ..NodeOptions::default()
    };
    // The most verbose operator setting: the hickory pin must still hold.
    std::env::set_var("PALISADE_LOG", "trace");
    let p = Palisade::start(&mut bed, &opts).expect("start palisaded");
    bed.wait_handshake(1, Duration::from_secs(10))
        .expect("handshake");
    let c = &bed.clients[0];

    let v4 = SocketAddr::new(addr::NODE_TUN_V4.into(), 53);
    let v6 = SocketAddr::new(addr::NODE_TUN_V6.into(), 53);
    let ask = |server: SocketAddr, name: &str, qtype: u16| {
        c.ns.enter(|| probe::dns_udp(server, name, qtype, T))
            .expect("enter client netns")
    };
    // The resolver may come up a moment after the interface.
    palisade_tests::wait_until(
        Duration::from_secs(10),
        "resolver answering in the tunnel",
        || ask(v4, "www.example.test", 1).ok(),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", bed.dump_logs()));

    for server in [v4, v6] {
        let a = ask(server, "www.example.test", 1).expect("answer for www");
        assert_eq!(
            (a.rcode, a.addrs.clone()),
            (0, vec![IpAddr::from(addr::WEB_V4)]),
            "via {server}"
        );
        let a = ask(server, "www.example.test", 28).expect("AAAA answer");
        assert_eq!(a.addrs, vec![IpAddr::from(addr::WEB_V6)]);
        for blocked in [
            "ads.example.test",
            "tracker.ads.example.test",
            "adult.example.test",
        ] {
            let a = ask(server, blocked, 1).expect("answer for a blocked name");
            assert_eq!(
                (a.rcode, a.addrs.len()),
                (3, 0),
                "{blocked} blocked via {server}"
            );
        }
        let a = ask(server, "allowed.example.test", 1).expect("answer");
        assert_eq!(a.addrs, vec![IpAddr::from(addr::WEB_V4)]);
    }

    // The uplink: no answer from the node's uplink addresses, nor from the
    // tunnel address reached from outside the tunnel (the internet namespace
    // routes 10.66.0.0/16 and fd66::/64 to the node).
    for server in [
        SocketAddr::new(addr::NODE_UP_V4.into(), 53),
        SocketAddr::new(addr::NODE_UP_V6.into(), 53),
        v4,
        v6,
    ] {
        let r = bed
            .inet
            .enter(|| probe::dns_udp(server, "www.example.test", 1, T))
            .unwrap();
        assert!(
            r.is_err(),
            "the uplink side got a DNS answer from {server}: {r:?}"
        );
    }

    // `palisade dns stats`: it must work, hold aggregates only, and count what
    // this test did: 3 blocked names on each of the 2 tunnel addresses.
    let out = p
        .cli_ok(&bed, &["dns", "stats", "--json"])
        .expect("palisade dns stats");
    assert!(
        !out.contains("example.test") && !out.contains(&c.tun_v4.to_string()),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
    assert_eq!(v["enabled"], true, "{out}");
    assert_eq!(v["blocked"], 6, "blocked queries counted: {out}");
    assert_eq!(v["tiers"]["default"]["blocked"], 6, "{out}");
    let q = v["queries"].as_u64().unwrap_or_default();
    assert!(q >= 12, "at least the 12 queries after the first answer: {out}");

    // Zero-log: the daemon's whole log after this traffic.
    let log = bed
        .node_procs
        .palisaded
        .as_ref()
        .map(|p| p.log_text())
        .unwrap_or_default();
    assert!(
        !log.is_empty(),
        "palisaded logged nothing at trace: capture broken?"
    );
    for needle in [
        "example.test".to_string(),
        c.tun_v4.to_string(),
        c.tun_v6.to_string(),
        c.up_v4.to_string(),
    ] {
        assert!(!log.contains(&needle), "palisaded log leaks {needle:?}");
    }
}
