//! Uplinks: lo, static addresses and gateways, or DHCP (busybox udhcpc with a script
//! that ignores classless static routes, option 121 — TunnelVision).

use std::process::Command;

use anyhow::bail;
use palisade_core::config::UplinkSection;

/// The `ip` commands for the uplinks (pure, for tests), as argument vectors.
pub fn ip_commands(uplinks: &[UplinkSection]) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> =
        vec![vec!["link".into(), "set".into(), "lo".into(), "up".into()]];
    let mut sorted: Vec<&UplinkSection> = uplinks.iter().collect();
    sorted.sort_by_key(|u| u.priority);
    for (i, u) in sorted.iter().enumerate() {
        let ifn = u.interface.clone();
        cmds.push(vec!["link".into(), "set".into(), ifn.clone(), "up".into()]);
        if u.dhcp {
            continue;
        }
        for a in &u.addresses {
            let fam = if a.addr().is_ipv6() { "-6" } else { "-4" };
            cmds.push(vec![
                fam.into(),
                "addr".into(),
                "replace".into(),
                a.to_string(),
                "dev".into(),
                ifn.clone(),
            ]);
        }
        // The preferred uplink gets metric 0; the others back it up.
        let metric = (i * 100).to_string();
        let gateways = [("-4", u.gateway_v4.map(|g| g.to_string())), ("-6", u.gateway_v6.map(|g| g.to_string()))];
        for (family, gateway) in gateways {
            if let Some(g) = gateway {
                cmds.push(
                    [family, "route", "replace", "default", "via", &g, "dev", &ifn, "metric", &metric]
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                );
            }
        }
    }
    cmds
}

/// Runs the commands with busybox `ip`; starts udhcpc for DHCP uplinks.
pub fn bring_up(uplinks: &[UplinkSection]) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for args in ip_commands(uplinks) {
        match Command::new("/usr/bin/busybox")
            .arg("ip")
            .args(&args)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("ip: {e}")),
        }
    }
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

    #[test]
    fn static_uplink_commands() {
        let u = up("interface = \"eth0\"\naddresses = [\"203.0.113.10/24\", \"2001:db8::10/64\"]\ngateway_v4 = \"203.0.113.1\"\ngateway_v6 = \"2001:db8::1\"\n");
        let c: Vec<String> = ip_commands(&[u]).iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            c,
            [
                "link set lo up",
                "link set eth0 up",
                "-4 addr replace 203.0.113.10/24 dev eth0",
                "-6 addr replace 2001:db8::10/64 dev eth0",
                "-4 route replace default via 203.0.113.1 dev eth0 metric 0",
                "-6 route replace default via 2001:db8::1 dev eth0 metric 0",
            ]
        );
    }

    #[test]
    fn dhcp_uplink_only_links_up_and_priority_orders_metrics() {
        let a = up("interface = \"eth1\"\ndhcp = true\npriority = 5\n");
        let b = up("interface = \"eth0\"\naddresses = [\"192.0.2.2/24\"]\ngateway_v4 = \"192.0.2.1\"\npriority = 10\n");
        let c: Vec<String> = ip_commands(&[b, a]).iter().map(|a| a.join(" ")).collect();
        assert_eq!(c[1], "link set eth1 up");
        assert_eq!(c[2], "link set eth0 up");
        assert!(c.last().unwrap().ends_with("metric 100"));
        assert!(!c.iter().any(|l| l.contains("eth1") && l.contains("addr")));
    }
}
