//! Tunnel interface addresses, MTU and link state, through `ip` (iproute2 on
//! a host, busybox on the node). Thin: the only decisions are "which of the
//! wanted addresses are missing".

use crate::config::NodeSpec;
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
fn addresses(dev: &str) -> Result<Vec<String>, LinkError> {
    let text = ip(&["-o", "addr", "show", "dev", dev])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet" || *w == "inet6").and_then(|_| it.next()).map(str::to_string)
        })
        .collect())
}

/// Make sure the tunnel interface has its addresses, MTU and is up.
/// Returns how many things it changed.
pub fn ensure_tunnel(spec: &NodeSpec) -> Result<usize, LinkError> {
    let dev = spec.wg.interface.as_str();
    let have = addresses(dev)?;
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
    if !link.contains(&format!("mtu {mtu} ")) || !link.contains(",UP") && !link.contains("<UP") {
        ip(&["link", "set", "dev", dev, "mtu", &mtu, "up"])?;
        changed += 1;
    }
    Ok(changed)
}
