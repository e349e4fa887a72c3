//! Tunnel interface addresses, MTU and link state over netlink (`crate::netlink`).
//! Thin: a pure plan ("which of the wanted addresses are missing, is the MTU
//! right, should it be up") and its application.

use crate::config::NodeSpec;
use crate::netlink::{self, Change, Dad, LinkState, NetlinkError, Op};
use ipnet::IpNet;

/// Addresses with prefix on `dev` (an uplink's on-link prefixes).
pub fn addresses(dev: &str) -> Result<Vec<IpNet>, NetlinkError> {
    netlink::addresses(dev)
}

/// Take `dev` down if it exists and is up (fail-closed: the tunnel takes
/// no traffic). A missing interface is already down.
pub fn set_down(dev: &str) -> Result<(), NetlinkError> {
    match netlink::link_state(dev)? {
        Some(s) if s.up => netlink::set_up(dev, false),
        _ => Ok(()),
    }
}

/// What the tunnel interface needs, given what it has (pure): its two
/// addresses (IPv6 without DAD: a WireGuard link has no neighbours, and the
/// address is usable at once), its MTU, and up only when `up`.
pub fn plan_tunnel(spec: &NodeSpec, state: &LinkState, have: &[IpNet], up: bool) -> Vec<Change> {
    let dev = &spec.wg.interface;
    let mut plan = Vec::new();
    for address in [IpNet::V4(spec.wg.address_v4), IpNet::V6(spec.wg.address_v6)] {
        if !have.contains(&address) {
            plan.push(Change::ReplaceAddress {
                dev: dev.clone(),
                address,
                dad: Dad::Skip,
            });
        }
    }
    if state.mtu != spec.wg.mtu {
        plan.push(Change::SetMtu {
            dev: dev.clone(),
            mtu: spec.wg.mtu,
        });
    }
    if state.up != up {
        plan.push(Change::SetUp {
            dev: dev.clone(),
            up,
        });
    }
    plan
}

/// Make sure the tunnel interface has its addresses and MTU, and is up only
/// when `up` (the verified firewall is live). Returns how many things it
/// changed.
pub fn ensure_tunnel(spec: &NodeSpec, up: bool) -> Result<usize, NetlinkError> {
    let dev = spec.wg.interface.as_str();
    let state = netlink::link_state(dev)?.ok_or_else(|| NetlinkError::NoSuchInterface {
        dev: dev.to_string(),
        op: Op::ReadLink,
    })?;
    let have = netlink::addresses(dev)?;
    let plan = plan_tunnel(spec, &state, &have, up);
    for change in &plan {
        change.apply()?;
    }
    Ok(plan.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        let text = include_str!("../../../configs/node.toml");
        let p = std::path::Path::new("node.toml");
        crate::config::NodeConfig::from_str(text, p)
            .unwrap()
            .validate(p, text)
            .unwrap()
    }

    #[test]
    fn tunnel_plan_adds_missing_addresses_fixes_mtu_and_follows_up() {
        let spec = spec();
        let dev = spec.wg.interface.clone();
        let bare = LinkState {
            index: 7,
            up: false,
            mtu: 1500,
            lower_up: false,
        };
        let plan: Vec<String> = plan_tunnel(&spec, &bare, &[], true)
            .iter()
            .map(Change::to_string)
            .collect();
        assert_eq!(
            plan,
            [
                format!("addr replace {} dev {dev}", spec.wg.address_v4),
                format!("addr replace {} dev {dev} nodad", spec.wg.address_v6),
                format!("link set {dev} mtu {}", spec.wg.mtu),
                format!("link set {dev} up"),
            ]
        );
    }

    #[test]
    fn tunnel_plan_is_empty_when_everything_is_in_place() {
        let spec = spec();
        let fe80: IpNet = "fe80::1/64".parse().unwrap();
        let have = [fe80, spec.wg.address_v6.into(), spec.wg.address_v4.into()];
        let ok = LinkState {
            index: 7,
            up: true,
            mtu: spec.wg.mtu,
            lower_up: true,
        };
        assert!(plan_tunnel(&spec, &ok, &have, true).is_empty());
        // Fail-closed: the same link, wanted down, gets exactly one change.
        assert_eq!(
            plan_tunnel(&spec, &ok, &have, false),
            [Change::SetUp {
                dev: spec.wg.interface.clone(),
                up: false
            }]
        );
        // Same address, other prefix length: not the wanted address.
        let other: IpNet = IpNet::new(spec.wg.address_v4.addr().into(), 32).unwrap();
        let plan = plan_tunnel(&spec, &ok, &[other, spec.wg.address_v6.into()], true);
        assert_eq!(plan.len(), 1, "{plan:?}");
    }
}
