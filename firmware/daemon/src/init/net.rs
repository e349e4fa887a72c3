//! Uplinks: lo, static addresses and gateways over netlink (the same
//! `palisade_core::netlink` module the tunnel applier uses), or DHCP (busybox
//! udhcpc with a script that ignores classless static routes, option 121 —
//! TunnelVision).

use std::process::Command;

use anyhow::bail;
use palisade_core::config::UplinkSection;
use palisade_core::netlink::{Change, Dad};
use palisade_core::uplink;

/// The changes that bring up lo and the uplinks, in order (pure, for tests).
/// DHCP uplinks are only set up here; udhcpc configures their address and
/// palisaded's uplink task their routes (from the lease the hook writes).
/// Default routes follow palisade-core's `uplink` scheme: the preferred
/// uplink holds the active route (metric 0), every uplink a standby route;
/// palisaded's uplink task moves the active one when an uplink fails.
pub fn plan(uplinks: &[UplinkSection]) -> Vec<Change> {
    let mut plan = vec![Change::SetUp {
        dev: "lo".into(),
        up: true,
    }];
    let sorted = uplink::ranked(uplinks);
    for u in &sorted {
        let dev = u.interface.clone();
        plan.push(Change::SetUp {
            dev: dev.clone(),
            up: true,
        });
        if u.dhcp {
            continue;
        }
        for a in &u.addresses {
            // A LAN may hold a duplicate: the uplink keeps the kernel's DAD.
            plan.push(Change::ReplaceAddress {
                dev: dev.clone(),
                address: *a,
                dad: Dad::Kernel,
            });
        }
    }
    let gateways: Vec<(String, Vec<std::net::IpAddr>)> = sorted
        .iter()
        .map(|u| {
            let g = [u.gateway_v4.map(std::net::IpAddr::from), u.gateway_v6.map(std::net::IpAddr::from)];
            (u.interface.clone(), g.into_iter().flatten().collect())
        })
        .collect();
    plan.extend(uplink::route_changes(&uplink::wanted_routes(&gateways, Some(0)), &[]));
    plan
}

/// Applies the plan over netlink, then starts udhcpc for DHCP uplinks.
/// Every change is tried; the errors are reported together.
pub fn bring_up(uplinks: &[UplinkSection]) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for change in plan(uplinks) {
        if let Err(e) = change.apply() {
            errors.push(e.to_string());
        }
    }
    // udhcpc stays busybox, and its script (rootfs/usr/share/palisade/udhcpc.script)
    // sets the lease with `busybox ip`: the node ships no iproute2.
    for u in uplinks.iter().filter(|u| u.dhcp) {
        // -b: background after the first lease (or at once after the tries);
        // the daemon becomes an orphan that PID 1 reaps if it ever exits.
        let r = Command::new("/usr/bin/busybox")
            .args([
                "udhcpc",
                "-b",
                "-S",
                "-t",
                "5",
                "-T",
                "2",
                "-s",
                "/usr/share/palisade/udhcpc.script",
                "-i",
            ])
            .arg(&u.interface)
            .status();
        if let Err(e) = r {
            errors.push(format!("udhcpc on {}: {e}", u.interface));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(toml: &str) -> UplinkSection {
        toml::from_str(toml).unwrap()
    }

    fn lines(plan: &[Change]) -> Vec<String> {
        plan.iter().map(Change::to_string).collect()
    }

    #[test]
    fn static_uplink_plan() {
        let u = up("interface = \"eth0\"\naddresses = [\"203.0.113.10/24\", \"2001:db8::10/64\"]\ngateway_v4 = \"203.0.113.1\"\ngateway_v6 = \"2001:db8::1\"\n");
        assert_eq!(
            lines(&plan(&[u])),
            [
                "link set lo up",
                "link set eth0 up",
                // No "nodad": duplicate address detection stays on for uplinks.
                "addr replace 203.0.113.10/24 dev eth0",
                "addr replace 2001:db8::10/64 dev eth0",
                "-4 route replace default via 203.0.113.1 dev eth0 metric 0",
                "-6 route replace default via 2001:db8::1 dev eth0 metric 0",
                "-4 route replace default via 203.0.113.1 dev eth0 metric 1000",
                "-6 route replace default via 2001:db8::1 dev eth0 metric 1000",
            ]
        );
    }

    #[test]
    fn dhcp_uplink_only_links_up_and_priority_orders_metrics() {
        let a = up("interface = \"eth1\"\ndhcp = true\npriority = 5\n");
        let b = up("interface = \"eth0\"\naddresses = [\"192.0.2.2/24\"]\ngateway_v4 = \"192.0.2.1\"\npriority = 10\n");
        let p = plan(&[b, a]);
        let c = lines(&p);
        assert_eq!(c[1], "link set eth1 up");
        assert_eq!(c[2], "link set eth0 up");
        // eth1 (DHCP) ranks first but has no gateway yet: eth0 gets the
        // standby route of rank 1 and no active one (the uplink task adds
        // it from the lease).
        assert_eq!(c.last().unwrap(), "-4 route replace default via 192.0.2.1 dev eth0 metric 1001");
        assert!(!c.iter().any(|l| l.ends_with("metric 0")));
        assert!(!p.iter().any(|ch| matches!(ch,
            Change::ReplaceAddress { dev, .. } | Change::ReplaceDefaultRoute { dev, .. } if dev == "eth1")));
    }

    #[test]
    fn no_uplinks_still_bring_up_lo() {
        assert_eq!(
            plan(&[]),
            [Change::SetUp {
                dev: "lo".into(),
                up: true
            }]
        );
    }
}
