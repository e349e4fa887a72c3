//! The reconcile engine's fleet behaviour against real nftables and a real
//! WireGuard interface (wireguard-go: this host kernel has no WireGuard
//! module; the image's kernel backend deletes its interface the same way,
//! over netlink), driven in process inside the bed's node namespace
//! (docs/security.md S11, "Revoked lockdown"):
//!
//! - a fleet config applied hot: a grant added leaves the other client's
//!   session alone;
//! - the revoked lockdown: interface deleted, key file destroyed, the
//!   lockdown table verified, nothing reaches the node or leaves it (each
//!   probe shown to pass before: the positive control), drift repaired,
//!   reloads stored but not applied, and re-enrolment coming back with a new
//!   key.

use palisade_core::config::{PeerSection, WgBackend};
use palisade_core::firewall::NftCli;
use palisade_core::reconcile::{Engine, FleetConfig, Paths, Report, REVOKED_REASON};
use palisade_core::wg::KernelWg;
use palisade_tests::matrix::{self, Case, Expect, Kind};
use palisade_tests::palisade::{render_node_toml, NodeOptions};
use palisade_tests::{addr, sa, wait_until, Bins, Outcome, TestBed};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_millis(1500);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// Run `f` on the engine from a thread inside the node namespace: netlink,
/// nft, wireguard-go and /proc/sys/net all act on that namespace.
fn on_node<R: Send>(bed: &TestBed, e: &mut Engine, f: impl FnOnce(&mut Engine) -> R + Send) -> R {
    bed.node.enter(|| f(e)).expect("enter the node namespace")
}

/// The fleet's view of client `i` (a grant turned into a peer).
fn grant(bed: &TestBed, i: usize) -> PeerSection {
    let c = &bed.clients[i - 1];
    PeerSection {
        name: format!("grant-{i}"),
        public_key: c.keys.public_key.clone(),
        addresses: vec![
            format!("{}/32", c.tun_v4).parse().unwrap(),
            format!("{}/128", c.tun_v6).parse().unwrap(),
        ],
        tier: None,
        preshared_key: None,
    }
}

fn fleet(bed: &TestBed, clients: &[usize]) -> FleetConfig {
    // The bed's node config without peers: the peers are the grants.
    let text = render_node_toml(
        bed,
        &NodeOptions {
            peers: Some(vec![]),
            ..Default::default()
        },
    );
    FleetConfig {
        source: PathBuf::from("fleet:nodes/0123456789abcdef/config.toml"),
        text,
        peers: clients.iter().map(|i| grant(bed, *i)).collect(),
    }
}

fn sysctl(bed: &TestBed, key: &str) -> String {
    bed.node
        .run(&["sysctl", "-n", key])
        .unwrap()
        .trim()
        .to_string()
}

/// The node's handshake time with client `i` (unix seconds, 0 = none).
fn node_handshake(bed: &TestBed, i: usize) -> u64 {
    let d = bed.node_dump().expect("node wg dump");
    d.peer(&bed.clients[i - 1].keys.public_key)
        .map(|p| p.latest_handshake)
        .unwrap_or(0)
}

fn public_key(bed: &TestBed, e: &mut Engine) -> String {
    on_node(bed, e, |e| {
        e.status()["wireguard"]["public_key"]
            .as_str()
            .map(str::to_string)
    })
    .expect("node key")
}

/// Chains of the live table as (name, policy), and whether it has sets or rules
/// beyond the two loopback accepts.
fn live_table(bed: &TestBed) -> serde_json::Value {
    let json = bed
        .node
        .run(&["nft", "-j", "list", "table", "inet", "palisade"])
        .expect("nft -j list table");
    serde_json::from_str(&json).expect("nft json")
}

fn assert_lockdown_table(bed: &TestBed) {
    let v = live_table(bed);
    let objs = v["nftables"].as_array().unwrap();
    let mut chains: Vec<(String, String, String)> = objs
        .iter()
        .filter_map(|o| o.get("chain"))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
            (s("name"), s("hook"), s("policy"))
        })
        .collect();
    chains.sort();
    let want = |n: &str| (n.to_string(), n.to_string(), "drop".to_string());
    assert_eq!(
        chains,
        vec![want("forward"), want("input"), want("output")],
        "{v}"
    );
    assert!(
        !objs.iter().any(|o| o.get("set").is_some()),
        "the lockdown table has no sets: {v}"
    );
    let rules: Vec<String> = objs
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| format!("{}: {}", r["chain"], r["expr"]))
        .collect();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    assert!(
        rules[0].contains("\"input\"") && rules[0].contains("iif") && rules[0].contains("\"lo\""),
        "{rules:#?}"
    );
    assert!(
        rules[1].contains("\"output\"") && rules[1].contains("oif") && rules[1].contains("\"lo\""),
        "{rules:#?}"
    );
    let text = bed
        .node
        .run(&["nft", "list", "table", "inet", "palisade"])
        .unwrap();
    assert!(!text.split_whitespace().any(|w| w == "log"), "{text}");
}

fn no_errors(what: &str, r: &Report) {
    assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn fleet_config_hot_then_revoked_lockdown_then_reenrolment() {
    let mut bed = TestBed::new(2, bins()).expect("bed");
    // The mesh source needs a way back from the node.
    bed.node
        .ip(&[
            "route",
            "replace",
            addr::MESH_CIDR,
            "via",
            &addr::INET_V4.to_string(),
        ])
        .unwrap();
    bed.start_node_listener(&["tcp:0.0.0.0:22"])
        .expect("node listener");
    let state = bed.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut paths = Paths::new(&state, None);
    paths.config = state.join("node.toml"); // never written: the fleet is the source
    let key_file = state.join("wg.key");
    let mut e = Engine::new(
        paths,
        Box::new(KernelWg::new(WgBackend::Userspace)),
        Box::new(NftCli::default()),
        true,
    );

    // Fleet config with client 1's grant.
    let r = on_node(&bed, &mut e, |e| e.set_fleet(Some(fleet(&bed, &[1])))).expect("set_fleet");
    no_errors("set_fleet", &r);
    assert!(r.firewall_verified && e.fleet_managed(), "{r:?}");
    let key1 = public_key(&bed, &mut e);
    bed.clients[0].connect(&key1).unwrap();
    bed.wait_handshake(1, Duration::from_secs(10))
        .expect("client 1 handshake");
    let (c1, c2) = (&bed.clients[0], &bed.clients[1]);
    let reach = |expect: Expect| {
        vec![
            Case::new(
                "c1 -> node tunnel (ping)",
                &c1.ns,
                Kind::Ping,
                sa(addr::NODE_TUN_V4, 0),
                expect.clone(),
            ),
            Case::new(
                "c1 -> web (udp echo)",
                &c1.ns,
                Kind::Udp,
                sa(addr::WEB_V4, addr::ECHO_UDP),
                expect.clone(),
            ),
            Case::new(
                "c1 -> web v6 (udp echo)",
                &c1.ns,
                Kind::Udp,
                sa(addr::WEB_V6, addr::ECHO_UDP),
                expect.clone(),
            ),
            Case::new(
                "mesh -> node uplink :22",
                &bed.inet,
                Kind::Tcp,
                sa(addr::NODE_UP_V4, 22),
                expect,
            )
            .src(addr::MESH_SRC_V4),
        ]
    };
    // Positive control: everything below is reached before the revocation.
    matrix::assert_all(&reach(Expect::Reached), T);
    let node_out = || {
        bed.node
            .output(&[
                "busybox",
                "ping",
                "-4",
                "-c",
                "1",
                "-W",
                "1",
                &addr::INET_V4.to_string(),
            ])
            .unwrap()
            .status
            .success()
    };
    assert!(
        node_out(),
        "control: the node reaches the internet before the revocation"
    );
    assert_eq!(sysctl(&bed, "net.ipv4.ip_forward"), "1");

    // Hot: a second grant is one peer change; client 1's session stays
    // (its handshake time on the node does not move while traffic flows).
    std::thread::sleep(Duration::from_millis(1100));
    let hs1 = node_handshake(&bed, 1);
    assert!(hs1 > 0);
    let r = on_node(&bed, &mut e, |e| e.set_fleet(Some(fleet(&bed, &[1, 2]))))
        .expect("set_fleet with two grants");
    no_errors("second set_fleet", &r);
    assert_eq!(
        (r.wg_peer_changes, r.wg_interface_changed, r.link_changes),
        (1, false, 0),
        "{r:?}"
    );
    let o = c1
        .ns
        .enter(|| {
            palisade_tests::probe::udp_exchange(None, sa(addr::WEB_V4, addr::ECHO_UDP), b"hot", T)
        })
        .unwrap();
    assert!(o.reached(), "client 1 after the hot apply: {o:?}");
    assert_eq!(
        node_handshake(&bed, 1),
        hs1,
        "client 1's session was reset by a config change that did not touch it"
    );
    c2.connect(&key1).unwrap();
    bed.wait_handshake(2, Duration::from_secs(10))
        .expect("client 2 handshake (the new grant)");
    // Peers are the fleet's.
    let err = on_node(&bed, &mut e, |e| e.add_peer(grant(&bed, 1))).unwrap_err();
    assert!(err.to_string().contains("palisade-fleet grant"), "{err}");

    // Revoked.
    assert!(key_file.exists());
    let r = on_node(&bed, &mut e, |e| e.set_revoked(true));
    no_errors("set_revoked(true)", &r);
    assert!(r.firewall_applied && r.wg_interface_changed, "{r:?}");
    assert!(
        bed.node.ip(&["link", "show", "dev", &bed.node_if]).is_err(),
        "the WireGuard interface must be gone"
    );
    assert!(!key_file.exists(), "the private key file must be gone");
    wait_until(
        Duration::from_secs(3),
        "wireguard-go gone with its socket",
        || (!Path::new(&format!("/var/run/wireguard/{}.sock", bed.node_if)).exists()).then_some(()),
    )
    .unwrap();
    assert_lockdown_table(&bed);
    assert_eq!(sysctl(&bed, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&bed, "net.ipv6.conf.all.forwarding"), "0");
    let st = on_node(&bed, &mut e, |e| e.status());
    assert_eq!(st["revoked"], true, "{st}");
    assert_eq!(st["fail_closed"], REVOKED_REASON, "{st}");
    assert_eq!(
        st["firewall"]["verified"], true,
        "the lockdown table verifies: {st}"
    );
    // Nothing answers: the same probes as the control.
    for row in matrix::run(&reach(Expect::Dropped), T) {
        assert_eq!(
            row.got,
            Outcome::Timeout,
            "{} after the revocation",
            row.label
        );
    }
    assert!(
        !node_out(),
        "the node sends nothing while revoked (output policy drop)"
    );

    // Drift is repaired with the lockdown table, and the tunnel never comes back.
    bed.node
        .run(&["nft", "delete", "table", "inet", "palisade"])
        .unwrap();
    let r = on_node(&bed, &mut e, |e| e.reconcile());
    assert!(r.firewall_applied, "{r:?}");
    assert_lockdown_table(&bed);
    let r = on_node(&bed, &mut e, |e| e.set_fleet(Some(fleet(&bed, &[1, 2]))))
        .expect("stored while revoked");
    no_errors("set_fleet while revoked", &r);
    let r = on_node(&bed, &mut e, |e| e.reload()).expect("reload while revoked");
    no_errors("reload while revoked", &r);
    assert!(
        bed.node.ip(&["link", "show", "dev", &bed.node_if]).is_err(),
        "the tunnel stays deleted"
    );
    assert!(!key_file.exists(), "no key is made while revoked");
    assert_lockdown_table(&bed);

    // Re-enrolled: a new key, the normal table, the tunnel back.
    let r = on_node(&bed, &mut e, |e| e.set_revoked(false));
    no_errors("set_revoked(false)", &r);
    assert!(r.firewall_verified, "{r:?}");
    let key2 = public_key(&bed, &mut e);
    assert_ne!(key1, key2, "a new key after re-enrolment");
    assert!(key_file.exists());
    let c1 = &bed.clients[0];
    c1.ns
        .run(&["wg", "set", &c1.ifname, "peer", &key1, "remove"])
        .unwrap();
    c1.connect(&key2).unwrap();
    bed.wait_handshake(1, Duration::from_secs(10))
        .expect("client 1 handshake with the new key");
    matrix::assert_all(&reach(Expect::Reached), T);
    assert_eq!(sysctl(&bed, "net.ipv4.ip_forward"), "1");
}
