//! Self-test of the test bed, WITHOUT palisaded: a hand-configured wireguard-go
//! server with forwarding and masquerade but no isolation. It proves that every
//! probe the isolation tests expect to be dropped can succeed when nothing drops
//! it, so those negative checks can fail (they are not vacuous).

use palisade_tests::{addr, sa, Bins, Outcome, TestBed};
use std::net::IpAddr;
use std::time::Duration;

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

const T: Duration = Duration::from_millis(1500);

#[test]
#[ignore = "root: run by tests/run.sh"]
fn harness_without_isolation_reaches_everything() {
    let mut bed = TestBed::new(2, bins()).expect("build test bed");
    bed.start_plain_node().expect("plain wireguard-go node");
    bed.wait_handshake(1, Duration::from_secs(10))
        .expect("client 1 handshake");
    bed.wait_handshake(2, Duration::from_secs(10))
        .expect("client 2 handshake");
    // A node service outside DNS (see the node-listener check below).
    let node_log = bed
        .start_node_listener(&[&format!("udp:0.0.0.0:{}", addr::ECHO_UDP)])
        .expect("node listener");

    let c1 = &bed.clients[0];
    let c2 = &bed.clients[1];
    // Web host through the tunnel, both families; masquerade shows the uplink address.
    let v4 = c1
        .ns
        .enter(|| palisade_tests::probe::http_get(None, sa(addr::WEB_V4, 80), T))
        .unwrap();
    assert_eq!(v4, Outcome::Answered(addr::NODE_UP_V4.to_string()));
    let v6 = c1
        .ns
        .enter(|| palisade_tests::probe::http_get(None, sa(addr::WEB_V6, 80), T))
        .unwrap();
    assert_eq!(v6, Outcome::Answered(addr::NODE_UP_V6.to_string()));

    // Without isolation, client 1 reaches client 2 by tunnel address (v4 and v6) ...
    for dst in [IpAddr::from(c2.tun_v4), IpAddr::from(c2.tun_v6)] {
        let o = c1
            .ns
            .enter(|| palisade_tests::probe::http_get(None, sa(dst, addr::CLIENT_TCP), T))
            .unwrap();
        let IpAddr::V4(_) = dst else {
            assert_eq!(
                o,
                Outcome::Answered(c1.tun_v6.to_string()),
                "client1 -> {dst}"
            );
            continue;
        };
        assert_eq!(
            o,
            Outcome::Answered(c1.tun_v4.to_string()),
            "client1 -> {dst}"
        );
    }
    // ... and every private destination the isolation tests expect dropped.
    for dst in [
        IpAddr::from(addr::PRIV_ALLOWED_V4),
        addr::PRIV_OTHER_V4.into(),
        addr::CGNAT_V4.into(),
        addr::METADATA_V4.into(),
        addr::RFC1918_192.into(),
        addr::RFC1918_172.into(),
        addr::PRIV_ALLOWED_V6.into(),
        addr::PRIV_OTHER_V6.into(),
    ] {
        let o = c1
            .ns
            .enter(|| palisade_tests::probe::http_get(None, sa(dst, 80), T))
            .unwrap();
        assert!(o.reached(), "client1 -> {dst}:80 without isolation: {o:?}");
    }
    // Unsolicited inbound from the internet reaches a client when nothing stops it.
    let o = bed
        .inet
        .enter(|| palisade_tests::probe::http_get(None, sa(c1.tun_v4, addr::CLIENT_TCP), T))
        .unwrap();
    assert_eq!(
        o,
        Outcome::Answered(addr::INET_V4.to_string()),
        "internet -> client 1 tunnel address"
    );

    // The spoofing probe really sends through the tunnel: once the node accepts
    // those sources for client 1, the web host receives them.
    let spoof_v4 = "10.66.0.99".parse::<IpAddr>().unwrap();
    let spoof_v6 = "fd66::99".parse::<IpAddr>().unwrap();
    bed.node
        .run(&[
            "wg",
            "set",
            &bed.node_if,
            "peer",
            &c1.keys.public_key,
            "allowed-ips",
            &format!(
                "{}/32,{}/128,{spoof_v4}/32,{spoof_v6}/128",
                c1.tun_v4, c1.tun_v6
            ),
        ])
        .unwrap();
    for (src, dst, label) in [
        (
            spoof_v4,
            sa(addr::WEB_V4, addr::ECHO_UDP),
            "harness-spoof-v4",
        ),
        (
            spoof_v6,
            sa(addr::WEB_V6, addr::ECHO_UDP),
            "harness-spoof-v6",
        ),
    ] {
        // (No echo comes back: the client does not own the spoofed address.)
        c1.ns
            .enter(|| palisade_tests::probe::udp_send(Some(src), dst, label.as_bytes()))
            .unwrap()
            .unwrap();
        palisade_tests::wait_until(T, label, || {
            std::fs::read_to_string(&bed.inet_log)
                .unwrap_or_default()
                .contains(label)
                .then_some(())
        })
        .expect("spoofed datagram received by the web host when the node allows its source");
    }

    // A datagram to a node port other than DNS, to the node's tunnel address and
    // to the tunnel broadcast address, arrives when nothing drops it (control
    // for the node-listener check in
    // `blocked_destinations_and_management_dropped_dns_allowed`).
    for (dst, token) in [
        (
            sa(addr::NODE_TUN_V4, addr::ECHO_UDP),
            "harness-to-node-unicast",
        ),
        (
            sa(std::net::Ipv4Addr::new(10, 66, 255, 255), addr::ECHO_UDP),
            "harness-to-node-broadcast",
        ),
    ] {
        c1.ns
            .enter(|| palisade_tests::probe::udp_send(None, dst, token.as_bytes()))
            .unwrap()
            .unwrap();
        palisade_tests::wait_until(T, token, || {
            std::fs::read_to_string(&node_log)
                .unwrap_or_default()
                .contains(token)
                .then_some(())
        })
        .expect("datagram to the node received without isolation");
    }

    // ICMP to the other client and to a blocked range works without isolation.
    for dst in [
        IpAddr::from(c2.tun_v4),
        c2.tun_v6.into(),
        addr::METADATA_V4.into(),
        addr::PRIV_OTHER_V6.into(),
    ] {
        let o = c1.ns.enter(|| palisade_tests::probe::ping(dst, T)).unwrap();
        assert!(o.reached(), "client1 ping {dst} without isolation: {o:?}");
    }

    // Control for `bulk_download_survives_a_pmtu_black_hole`: with no MSS clamp
    // on the node, a client whose tunnel MTU is 1500 stalls on a bulk download
    // once the internet drops "fragmentation needed"; with MTU 1420 it works.
    bed.pmtu_black_hole().unwrap();
    c2.ns
        .ip(&["link", "set", &c2.ifname, "mtu", "1500"])
        .unwrap();
    let full = addr::NODE_UP_V4.to_string().len() + 1 + (1 << 20);
    let big = |c: &palisade_tests::Client| match c
        .ns
        .enter(|| palisade_tests::probe::http_get_path(None, sa(addr::WEB_V4, 80), "/big", T))
        .unwrap()
    {
        Outcome::Answered(b) => b.len(),
        _ => 0,
    };
    assert_eq!(big(c1), full, "MTU 1420 client, no clamp needed");
    let stalled = big(c2);
    assert!(
        stalled < full,
        "MTU 1500 client without a clamp should stall in a PMTU black hole, got {stalled} bytes"
    );

    // The DNS test host answers from the test zone.
    let a = bed
        .inet
        .enter(|| {
            palisade_tests::probe::dns_udp(sa(addr::DNS_V4, 53), "allowed.example.test", 1, T)
        })
        .unwrap()
        .expect("dnsmasq answers");
    assert_eq!(a.addrs, vec![IpAddr::from(addr::WEB_V4)]);

    // Cleanup: every namespace of this bed disappears on drop.
    let id = bed.id.clone();
    drop(bed);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("{id}-")),
        "namespaces left behind:\n{left}"
    );
}
