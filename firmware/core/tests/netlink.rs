//! `palisade_core::netlink` and the tunnel applier against the real kernel:
//! veth interfaces in a private network namespace.
//!
//! Root. tests/run.sh tier 2a runs these (`unshare -n cargo test -p
//! palisade-core -- --ignored`); each test also moves its own thread into a
//! fresh network namespace first, so it never touches the host's links or
//! routes, however it is started. `ip` (iproute2) is used only to create
//! interfaces and as an independent observer.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use ipnet::IpNet;
use palisade_core::config::{NodeConfig, NodeSpec};
use palisade_core::netlink::{self, Change, Dad, DefaultRoute, NetlinkError};

/// A fresh network namespace for the calling thread (and the `ip` it runs).
fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): run as root");
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An interface to work on: one end of a veth pair (`<name>p` is the other;
/// it stays down, so `name` has no carrier unless a test says otherwise).
fn veth(name: &str) {
    ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{name}p"),
    ]);
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn link_state_up_down_and_mtu() {
    private_netns();
    assert_eq!(
        netlink::link_state("pal0").unwrap(),
        None,
        "a missing interface is None, not an error"
    );
    veth("pal0");
    let s = netlink::link_state("pal0").unwrap().expect("pal0 exists");
    assert!(!s.up);
    assert_eq!(s.mtu, 1500);

    netlink::set_up("pal0", true).unwrap();
    assert!(netlink::link_state("pal0").unwrap().unwrap().up);
    assert!(
        ip(&["-o", "link", "show", "dev", "pal0"]).contains(",UP"),
        "iproute2 sees it up"
    );
    netlink::set_mtu("pal0", 1420).unwrap();
    let s2 = netlink::link_state("pal0").unwrap().unwrap();
    assert_eq!(
        (s2.index, s2.up, s2.mtu),
        (s.index, true, 1420),
        "MTU changed, flags kept"
    );
    assert!(ip(&["-o", "link", "show", "dev", "pal0"]).contains("mtu 1420 "));
    netlink::set_up("pal0", false).unwrap();
    let s3 = netlink::link_state("pal0").unwrap().unwrap();
    assert!(!s3.up);
    assert_eq!(s3.mtu, 1420, "down keeps the MTU");

    // lo in a fresh namespace is down; init brings it up the same way.
    netlink::set_up("lo", true).unwrap();
    assert!(netlink::link_state("lo").unwrap().unwrap().up);

    // Errors name the interface and the operation.
    let e = netlink::set_up("nope0", true).unwrap_err();
    assert!(matches!(e, NetlinkError::NoSuchInterface { .. }), "{e:?}");
    assert_eq!(e.to_string(), "set link up on nope0: no such interface");
    let e = netlink::set_mtu("pal0", 1 << 20).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    assert!(
        e.to_string().starts_with("set mtu 1048576 on pal0: "),
        "{e}"
    );
    assert!(netlink::link_state("a-name-longer-than-ifnamsiz").is_err());
    // The tunnel applier's "down" on a missing interface is a no-op.
    palisade_core::link::set_down("nope0").unwrap();
}

#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn addresses_both_families_replace_is_idempotent() {
    private_netns();
    veth("pal0");
    veth("pal1");
    netlink::set_up("pal0", true).unwrap();
    assert!(
        netlink::addresses("pal0")
            .unwrap()
            .iter()
            .all(|a| a.addr().is_ipv6() && a.prefix_len() == 64),
        "an up link has at most its fe80::/64"
    );

    let v4 = net("10.9.0.1/24");
    let v6 = net("fd00:9::1/64");
    netlink::replace_address("pal0", v4, Dad::Skip).unwrap();
    netlink::replace_address("pal0", v6, Dad::Skip).unwrap();
    // Down links keep IPv4 addresses: the tunnel gets its addresses before it is up.
    netlink::replace_address("pal1", net("10.8.0.1/16"), Dad::Skip).unwrap();
    let have = netlink::addresses("pal0").unwrap();
    assert!(have.contains(&v4) && have.contains(&v6), "{have:?}");
    assert_eq!(
        netlink::addresses("pal1").unwrap(),
        [net("10.8.0.1/16")],
        "only pal1's own"
    );
    let shown = ip(&["-o", "addr", "show", "dev", "pal0"]);
    assert!(
        shown.contains("inet 10.9.0.1/24 ") && shown.contains("inet6 fd00:9::1/64 "),
        "{shown}"
    );

    // Replace again: no error, no duplicate.
    let before = netlink::addresses("pal0").unwrap().len();
    netlink::replace_address("pal0", v4, Dad::Skip).unwrap();
    netlink::replace_address("pal0", v6, Dad::Skip).unwrap();
    assert_eq!(netlink::addresses("pal0").unwrap().len(), before);
    // Same address, other prefix length: a second address, as with iproute2.
    netlink::replace_address("pal0", net("10.9.0.1/32"), Dad::Skip).unwrap();
    assert!(netlink::addresses("pal0")
        .unwrap()
        .contains(&net("10.9.0.1/32")));

    let e = netlink::addresses("nope0").unwrap_err();
    assert_eq!(e.to_string(), "list addresses on nope0: no such interface");
    let e = netlink::replace_address("nope0", v4, Dad::Skip).unwrap_err();
    assert_eq!(
        e.to_string(),
        "add address 10.9.0.1/24 on nope0: no such interface"
    );
}

/// IFA_F_NODAD reaches the kernel: on a link that does DAD (veth with a
/// carrier), a new IPv6 address is tentative unless DAD is skipped.
#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn ipv6_nodad_skips_duplicate_address_detection() {
    private_netns();
    ip(&[
        "link", "add", "pal0", "type", "veth", "peer", "name", "pal0p",
    ]);
    netlink::set_up("pal0p", true).unwrap();
    netlink::set_up("pal0", true).unwrap();
    netlink::replace_address("pal0", net("fd00:7::1/64"), Dad::Skip).unwrap();
    netlink::replace_address("pal0", net("fd00:7::2/64"), Dad::Kernel).unwrap();
    let shown = ip(&["-6", "-o", "addr", "show", "dev", "pal0"]);
    let line = |a: &str| {
        shown
            .lines()
            .find(|l| l.contains(a))
            .unwrap_or_else(|| panic!("{a} in {shown}"))
            .to_string()
    };
    assert!(!line("fd00:7::1/64").contains("tentative"), "{shown}");
    assert!(line("fd00:7::2/64").contains("tentative"), "{shown}");
}

#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn default_route_replace_both_families_with_metrics() {
    private_netns();
    veth("pal0");
    veth("pal1");
    for (dev, v4, v6) in [
        ("pal0", "192.0.2.10/24", "2001:db8::10/64"),
        ("pal1", "198.51.100.10/24", "2001:db8:1::10/64"),
    ] {
        netlink::set_up(dev, true).unwrap();
        netlink::replace_address(dev, net(v4), Dad::Skip).unwrap();
        netlink::replace_address(dev, net(v6), Dad::Skip).unwrap();
    }
    let routes = |dev| {
        let mut r = netlink::default_routes(dev).unwrap();
        r.sort_by_key(|r| (r.gateway.is_ipv6(), r.metric));
        r
    };
    let route = |gw, metric| DefaultRoute {
        gateway: addr(gw),
        metric,
    };
    assert!(routes("pal0").is_empty());

    netlink::replace_default_route("pal0", addr("192.0.2.1"), 0).unwrap();
    netlink::replace_default_route("pal0", addr("2001:db8::1"), 0).unwrap();
    // IPv6 turns metric 0 into 1024, as it does for `ip -6 route ... metric 0`.
    assert_eq!(
        routes("pal0"),
        [route("192.0.2.1", 0), route("2001:db8::1", 1024)]
    );
    let shown = ip(&["route", "show", "default"]);
    assert!(shown.contains("default via 192.0.2.1 dev pal0"), "{shown}");

    // Replace: same metric, new gateway; nothing left of the old one.
    netlink::replace_default_route("pal0", addr("192.0.2.2"), 0).unwrap();
    netlink::replace_default_route("pal0", addr("2001:db8::2"), 0).unwrap();
    assert_eq!(
        routes("pal0"),
        [route("192.0.2.2", 0), route("2001:db8::2", 1024)]
    );
    // Idempotent.
    netlink::replace_default_route("pal0", addr("192.0.2.2"), 0).unwrap();
    assert_eq!(routes("pal0").len(), 2);

    // A backup uplink: another metric is another route, through its own dev.
    netlink::replace_default_route("pal1", addr("198.51.100.1"), 100).unwrap();
    netlink::replace_default_route("pal1", addr("2001:db8:1::1"), 100).unwrap();
    assert_eq!(
        routes("pal1"),
        [route("198.51.100.1", 100), route("2001:db8:1::1", 100)]
    );
    assert_eq!(
        routes("pal0").len(),
        2,
        "the preferred uplink's routes stay"
    );
    let shown = ip(&["-6", "route", "show", "default"]);
    assert!(
        shown.contains("via 2001:db8:1::1 dev pal1") && shown.contains("metric 100"),
        "{shown}"
    );

    // An unreachable IPv4 gateway is refused, and the error says which and why.
    let e = netlink::replace_default_route("pal0", addr("203.0.113.1"), 0).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("replace default route via 203.0.113.1 metric 0 on pal0: "),
        "{s}"
    );
    assert!(e.errno().is_some(), "{e:?}");
    // The kernel's extended-ACK text comes along (6.x: "Nexthop has invalid gateway").
    assert!(matches!(&e, NetlinkError::Kernel { detail: Some(_), .. }), "{e:?}");
}

/// What init does for a static uplink (`init::net::plan`), applied change by
/// change, twice: the second pass changes nothing.
#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn uplink_changes_apply_and_reapply() {
    private_netns();
    veth("eth0");
    let plan = [
        Change::SetUp {
            dev: "lo".into(),
            up: true,
        },
        Change::SetUp {
            dev: "eth0".into(),
            up: true,
        },
        Change::ReplaceAddress {
            dev: "eth0".into(),
            address: net("203.0.113.10/24"),
            dad: Dad::Kernel,
        },
        Change::ReplaceAddress {
            dev: "eth0".into(),
            address: net("2001:db8::10/64"),
            dad: Dad::Kernel,
        },
        Change::ReplaceDefaultRoute {
            dev: "eth0".into(),
            gateway: addr("203.0.113.1"),
            metric: 0,
        },
        Change::ReplaceDefaultRoute {
            dev: "eth0".into(),
            gateway: addr("2001:db8::1"),
            metric: 0,
        },
    ];
    for _ in 0..2 {
        for c in &plan {
            c.apply().unwrap_or_else(|e| panic!("{c}: {e}"));
        }
    }
    let a = netlink::addresses("eth0").unwrap();
    assert!(
        a.contains(&net("203.0.113.10/24")) && a.contains(&net("2001:db8::10/64")),
        "{a:?}"
    );
    assert_eq!(netlink::default_routes("eth0").unwrap().len(), 2);
}

fn tunnel_spec(dev: &str) -> NodeSpec {
    let text = include_str!("../../../configs/node.toml");
    let p = Path::new("node.toml");
    let mut spec = NodeConfig::from_str(text, p)
        .unwrap()
        .validate(p, text)
        .unwrap();
    spec.wg.interface = dev.into();
    spec
}

/// The reconcile engine's link calls: addresses, MTU and up/down of the
/// tunnel, counted changes, and nothing to do on a second pass.
#[test]
#[ignore = "root: run by tests/run.sh (unshare -n)"]
fn ensure_tunnel_converges() {
    use palisade_core::link;
    private_netns();
    let spec = tunnel_spec("pal0");
    let e = link::ensure_tunnel(&spec, true).unwrap_err();
    assert!(matches!(e, NetlinkError::NoSuchInterface { .. }), "{e}");
    veth("pal0");

    // Fail-closed first: addresses and MTU, but stays down.
    assert_eq!(link::ensure_tunnel(&spec, false).unwrap(), 3);
    let s = netlink::link_state("pal0").unwrap().unwrap();
    assert!(!s.up);
    assert_eq!(s.mtu, spec.wg.mtu);
    // Verified firewall: up; the addresses added while down are kept.
    assert_eq!(link::ensure_tunnel(&spec, true).unwrap(), 1);
    assert_eq!(link::ensure_tunnel(&spec, true).unwrap(), 0, "converged");
    let have = link::addresses("pal0").unwrap();
    assert!(
        have.contains(&IpNet::V4(spec.wg.address_v4))
            && have.contains(&IpNet::V6(spec.wg.address_v6)),
        "{have:?}"
    );
    assert!(netlink::link_state("pal0").unwrap().unwrap().up);

    // Fail-closed again: set_down takes it down, once. Going down drops the
    // IPv6 address (keep_addr_on_down=0); the next pass puts it back, the
    // one after has nothing to do.
    link::set_down("pal0").unwrap();
    assert!(!netlink::link_state("pal0").unwrap().unwrap().up);
    link::set_down("pal0").unwrap();
    assert!(!link::addresses("pal0")
        .unwrap()
        .contains(&IpNet::V6(spec.wg.address_v6)));
    assert_eq!(link::ensure_tunnel(&spec, false).unwrap(), 1);
    assert_eq!(
        link::ensure_tunnel(&spec, false).unwrap(),
        0,
        "down and addressed: converged"
    );
    assert!(!netlink::link_state("pal0").unwrap().unwrap().up);
}
