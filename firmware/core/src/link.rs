//! Tunnel interface addresses, MTU and link state, through `ip` (iproute2 on
//! a host, busybox on the node). Thin: the only decisions are "which of the
//! wanted addresses are missing".

use crate::config::NodeSpec;
use ipnet::IpNet;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot run ip: {0}")]
    Spawn(std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

fn ip(args: &[&str]) -> Result<String, LinkError> {
    let out = Command::new("ip").args(args).output().map_err(LinkError::Spawn)?;
    if !out.status.success() {
        return Err(LinkError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Addresses (with prefix) on `dev`, as `ip -o addr show` prints them.
fn address_strings(dev: &str) -> Result<Vec<String>, LinkError> {
    let text = ip(&["-o", "addr", "show", "dev", dev])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet" || *w == "inet6").and_then(|_| it.next()).map(str::to_string)
        })
        .collect())
}

/// Addresses with prefix on `dev` (an uplink's on-link prefixes).
pub fn addresses(dev: &str) -> Result<Vec<IpNet>, LinkError> {
    Ok(address_strings(dev)?.iter().filter_map(|a| a.parse().ok()).collect())
}

/// Take `dev` down if it exists and is up (fail-closed: the tunnel takes
/// no traffic). A missing interface is already down.
pub fn set_down(dev: &str) -> Result<(), LinkError> {
    match ip(&["-o", "link", "show", "dev", dev]) {
        Ok(link) if link.contains(",UP") || link.contains("<UP") => ip(&["link", "set", "dev", dev, "down"]).map(|_| ()),
        _ => Ok(()),
    }
}

/// Make sure the tunnel interface has its addresses and MTU, and is up only
/// when `up` (the verified firewall is live). Returns how many things it
/// changed.
pub fn ensure_tunnel(spec: &NodeSpec, up: bool) -> Result<usize, LinkError> {
    let dev = spec.wg.interface.as_str();
    let have = address_strings(dev)?;
    let mut changed = 0;
    let v4 = spec.wg.address_v4.to_string();
    if !have.contains(&v4) {
        ip(&["addr", "add", &v4, "dev", dev])?;
        changed += 1;
    }
    let v6 = spec.wg.address_v6.to_string();
    if !have.contains(&v6) {
        ip(&["-6", "addr", "add", &v6, "dev", dev])?; // no "nodad": busybox ip lacks it; NOARP links skip DAD
        changed += 1;
    }
    let link = ip(&["-o", "link", "show", "dev", dev])?;
    let mtu = spec.wg.mtu.to_string();
    let is_up = link.contains(",UP") || link.contains("<UP");
    if !link.contains(&format!("mtu {mtu} ")) {
        ip(&["link", "set", "dev", dev, "mtu", &mtu])?;
        changed += 1;
    }
    if up != is_up {
        ip(&["link", "set", "dev", dev, if up { "up" } else { "down" }])?;
        changed += 1;
    }
    Ok(changed)
}
