//! Client failover (issue 11, docs/failover.md): two palisaded nodes in
//! namespaces, both with client 1's peer; `palisade-client` (wireguard-go)
//! on node 1 with a UDP sequence stream to the web host every 50 ms; node 1
//! is killed (palisaded SIGKILLed, its WireGuard interface deleted); the
//! stream must flow through node 2, and a capture on the internet side of
//! the client's link must show nothing from the client but the tunnel's UDP
//! to the two listed endpoints (no DNS, no stream packet, no deliberate leak
//! attempt). Also: `palisade client-config --node-list`, a refused bad list,
//! and a clean exit that removes the kill-switch, the tunnel and resolv.conf.
//!
//! The QEMU variant (node 1 the guest) is e2e_client_failover; the bench
//! (bench/failover/run.sh) repeats both.

use palisade_tests::bed::addr;
use palisade_tests::capture::Capture;
use palisade_tests::client::{leaked, FailoverBed, Node1, Stream, Which, NODE2_UP_V4};
use palisade_tests::probe::{dns_udp, udp_exchange, Outcome};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn bed() -> FailoverBed {
    FailoverBed::new(env!("CARGO_BIN_EXE_pal-testhost")).expect("failover bed")
}

#[test]
#[ignore = "needs root (network namespaces); run via tests/run.sh"]
fn client_moves_to_the_next_node_without_leaking() {
    let mut fb = bed();

    // client-config prints the wg-quick config unchanged and the verified list.
    let Node1::Ns(pal1) = &fb.node1 else {
        unreachable!("node 1 runs in a namespace here")
    };
    let list = fb.list.to_string_lossy().into_owned();
    let client_config = |key: &str| {
        pal1.cli(
            &fb.bed,
            &["client-config", "client-1", "--no-qr", "--node-list", &list, "--node-list-key", key],
        )
        .expect("run palisade client-config")
    };
    let o = client_config(&fb.list_key);
    assert!(o.status.success(), "client-config --node-list: {}", String::from_utf8_lossy(&o.stderr));
    let cfg = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        cfg.starts_with("[Interface]\n") && cfg.contains("Endpoint = 203.0.113.10:51820\n"),
        "{cfg}"
    );
    assert!(cfg.contains("signature verified"), "{cfg}");
    assert!(
        cfg.contains(&format!(
            "1. node-1 203.0.113.10:51820 {} tunnel 10.66.0.1/16,fd66::1/64 (this node)",
            pal1.public_key
        )),
        "{cfg}"
    );
    assert!(
        cfg.contains(&format!(
            "2. node-2 203.0.113.11:51820 {}",
            fb.node2.public_key
        )),
        "{cfg}"
    );
    assert!(cfg.contains("# palisade-client --private-key-file CLIENT.key --address 10.66.0.2/32 --address fd66::2/128"), "{cfg}");
    // A list signed by another key is refused and nothing is printed.
    let o = client_config("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && o.stdout.is_empty() && err.contains("bad signature"),
        "{err}"
    );

    // The client's state on node 1: kill-switch, resolver inside the tunnel.
    let ns = fb.client_ns();
    let table = ns
        .run(&["nft", "list", "table", "inet", "palisade_client"])
        .expect("kill-switch table");
    assert!(
        table.contains("policy drop") && table.contains("203.0.113.11 . 51820"),
        "{table}"
    );
    assert_eq!(
        std::fs::read_to_string(&fb.resolv).unwrap().lines().last(),
        Some("nameserver 10.66.0.1")
    );

    let c = &fb.bed.clients[0];
    let client_addrs: Vec<IpAddr> = vec![
        c.up_v4.into(),
        c.up_v6.into(),
        c.tun_v4.into(),
        c.tun_v6.into(),
    ];
    let endpoints = [
        SocketAddr::new(addr::NODE_UP_V4.into(), addr::WG_PORT),
        SocketAddr::new(NODE2_UP_V4.into(), addr::WG_PORT),
    ];
    let cap = Capture::start(&fb.bed.inet).expect("capture");
    let stream = Stream::start(ns, Duration::from_millis(50)).expect("stream");
    let t_on1 = Instant::now();
    stream
        .wait_via(addr::NODE_UP_V4, t_on1, Duration::from_secs(5))
        .expect("stream through node 1");

    let t0 = Instant::now();
    fb.kill(Which::One).expect("kill node 1");
    // While the client has not switched yet: a deliberate attempt to send
    // outside the tunnel (bound to eth0) and a name lookup.
    let ns = fb.client_ns();
    let leak = ns
        .enter(|| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.bind_device(Some(b"eth0")).unwrap();
            s.send_to(
                b"leak",
                &SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP).into(),
            )
        })
        .unwrap();
    assert!(
        leak.is_err(),
        "the kill-switch let a datagram out of eth0: {leak:?}"
    );
    let t1 = stream
        .wait_via(NODE2_UP_V4, t0, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\nclient log:\n{}", fb.client_log()));
    let took = t1 - t0;
    eprintln!("client failover: {} ms (goal 5000 ms)", took.as_millis());

    // DNS through the tunnel to the current node's resolver, after the switch.
    let answer = ns
        .enter(|| {
            dns_udp(
                SocketAddr::new(addr::NODE_TUN_V4.into(), 53),
                "allowed.example.test",
                1,
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert!(answer.is_ok(), "resolver through node 2: {answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let packets = cap.stop();

    let from_client: Vec<_> = packets
        .iter()
        .filter(|p| client_addrs.contains(&p.src))
        .collect();
    assert!(
        from_client.iter().any(|p| p.dst == IpAddr::V4(NODE2_UP_V4)),
        "no tunnel packets to node 2 seen: the capture is blind"
    );
    let leaks: Vec<_> = from_client
        .iter()
        .filter(|p| leaked(p, &client_addrs, &endpoints))
        .collect();
    assert!(
        leaks.is_empty(),
        "packets left the client outside the tunnel: {leaks:?}"
    );
    let dns: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.ports().is_some_and(|(s, d)| s == 53 || d == 53)
                && (client_addrs.contains(&p.src) || client_addrs.contains(&p.dst))
        })
        .collect();
    assert!(dns.is_empty(), "DNS outside the tunnel: {dns:?}");
    assert!(
        fb.client_log().contains("node node-1: no probe answer"),
        "{}",
        fb.client_log()
    );
    // Generous bound (the bench measures against the 5 s goal).
    assert!(took < Duration::from_secs(10), "failover took {took:?}");

    // Clean exit: tunnel, rules, kill-switch and resolv.conf gone.
    let st = fb
        .client
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5))
        .unwrap();
    assert!(
        st.success(),
        "palisade-client exit {st:?}: {}",
        fb.client_log()
    );
    let ns = fb.client_ns();
    assert!(
        ns.run(&["nft", "list", "table", "inet", "palisade_client"])
            .is_err(),
        "kill-switch left behind"
    );
    assert!(
        ns.ip(&["link", "show", &fb.client_if]).is_err(),
        "tunnel left behind"
    );
    assert!(
        !ns.ip(&["rule"]).unwrap().contains("51820"),
        "routing rules left behind"
    );
    assert!(
        !fb.resolv.exists(),
        "resolv.conf written by the client left behind"
    );
}

#[test]
#[ignore = "needs root (network namespaces); run via tests/run.sh"]
fn bad_node_lists_are_refused_before_anything_changes() {
    let fb = bed();
    let c = &fb.bed.clients[0];
    let bin = palisade_tests::client::client_bin().unwrap();
    let dir = fb.bed.dir.path();
    let tampered = dir.join("tampered.json");
    let text = std::fs::read_to_string(&fb.list)
        .unwrap()
        .replace("nodelist+json", "grant+json");
    std::fs::write(&tampered, text).unwrap();
    let run = |list: &std::path::Path, key: &str, ifname: &str| {
        let o =
            c.ns.output(&[
                &bin.to_string_lossy(),
                "--private-key-file",
                &c.keys.private_key_file.to_string_lossy(),
                "--address",
                "10.66.0.2/32",
                "--node-list",
                &list.to_string_lossy(),
                "--node-list-key",
                key,
                "--interface",
                ifname,
                "--backend",
                "userspace",
            ])
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&tampered, &fb.list_key, "pcx1");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not as a node list"), "{err}");
    let (code, err) = run(
        &fb.list,
        "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=",
        "pcx2",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad signature"), "{err}");
    // Nothing of the refused runs is left; the running client still serves.
    for i in ["pcx1", "pcx2"] {
        assert!(c.ns.ip(&["link", "show", i]).is_err());
    }
    let table =
        c.ns.run(&["nft", "list", "table", "inet", "palisade_client"])
            .unwrap();
    assert!(table.contains(&fb.client_if), "{table}");
    let o =
        c.ns.enter(|| {
            udp_exchange(
                None,
                SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP),
                b"still",
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert!(matches!(o, Outcome::Answered(_)), "{o:?}");
}
