//! Peer isolation: the table `inet palisade`, rendered by a pure function of
//! the spec ([`render`]) and applied in one transaction ([`NftCli`]).
//!
//! The rules implement docs/security.md. The rule count depends on the
//! number of uplinks and allow rules, never on the number of peers: peer
//! addresses are covered by the tunnel prefixes and destinations by sets.
//! There is never a `log` statement.

mod apply;

pub use apply::{Firewall, FirewallError, NftCli, RecordingFirewall};

use crate::config::{NodeSpec, Protocol};
use ipnet::IpNet;
use std::fmt::Write;

/// Name of the one table Palisade owns. Nothing else is ever touched.
pub const TABLE: &str = "palisade";

fn set_elems<'a>(nets: impl Iterator<Item = &'a IpNet>) -> String {
    let v: Vec<String> = nets.map(|n| n.to_string()).collect();
    v.join(", ")
}

fn quoted_list(names: &[&str]) -> String {
    let v: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", v.join(", "))
}

/// Render the whole table as one `nft -f` transaction: create the table if
/// missing, flush it, and fill it. Applied atomically, there is no moment
/// without isolation. Pure and deterministic (snapshot-tested).
pub fn render(spec: &NodeSpec) -> String {
    let wg = &spec.wg.interface;
    let uplinks: Vec<&str> = spec.uplinks.iter().map(|u| u.interface.as_str()).collect();
    let up = quoted_list(&uplinks);
    let node4 = spec.wg.address_v4.addr();
    let node6 = spec.wg.address_v6.addr();
    let tun4 = spec.wg.address_v4.trunc();
    let tun6 = spec.wg.address_v6.trunc();
    let blocked4: Vec<&IpNet> = spec.egress.blocked.iter().filter(|n| matches!(n, IpNet::V4(_))).collect();
    let blocked6: Vec<&IpNet> = spec.egress.blocked.iter().filter(|n| matches!(n, IpNet::V6(_))).collect();
    let mesh4: Vec<&IpNet> = spec.management.mesh.iter().filter(|n| matches!(n, IpNet::V4(_))).collect();
    let mesh6: Vec<&IpNet> = spec.management.mesh.iter().filter(|n| matches!(n, IpNet::V6(_))).collect();
    let mgmt_ports: Vec<String> = spec.management.ports.iter().map(|p| p.to_string()).collect();
    let dhcp = spec.uplinks.iter().any(|u| u.dhcp);

    let mut s = String::new();
    // `add table` is a no-op if it exists; `flush` empties it; the rest fills
    // it. nft runs the whole file as one transaction.
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(s, "flush table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");

    let set = |s: &mut String, name: &str, ty: &str, elems: &[&IpNet]| {
        let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n\t\tauto-merge");
        if !elems.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", set_elems(elems.iter().copied()));
        }
        let _ = writeln!(s, "\t}}");
    };
    set(&mut s, "blocked_v4", "ipv4_addr", &blocked4);
    set(&mut s, "blocked_v6", "ipv6_addr", &blocked6);
    set(&mut s, "mesh_v4", "ipv4_addr", &mesh4);
    set(&mut s, "mesh_v6", "ipv6_addr", &mesh6);

    // Input: the node itself.
    let _ = writeln!(s, "\tchain input {{\n\t\ttype filter hook input priority filter - 10; policy drop;");
    let _ = writeln!(s, "\t\tiif \"lo\" accept");
    let _ = writeln!(s, "\t\tct state invalid drop");
    let _ = writeln!(s, "\t\tct state established,related accept");
    let _ = writeln!(s, "\t\tiifname \"{wg}\" jump input_tunnel");
    let _ = writeln!(s, "\t\tiifname {up} jump input_uplink");
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tchain input_tunnel {{");
    let _ = writeln!(s, "\t\tip daddr {node4} udp dport 53 accept");
    let _ = writeln!(s, "\t\tip daddr {node4} tcp dport 53 accept");
    let _ = writeln!(s, "\t\tip6 daddr {node6} udp dport 53 accept");
    let _ = writeln!(s, "\t\tip6 daddr {node6} tcp dport 53 accept");
    let _ = writeln!(s, "\t\tip daddr {node4} icmp type echo-request limit rate 10/second accept");
    let _ = writeln!(s, "\t\tip6 daddr {node6} icmpv6 type echo-request limit rate 10/second accept");
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tchain input_uplink {{");
    let _ = writeln!(s, "\t\tudp dport {} accept", spec.wg.listen_port);
    let _ = writeln!(
        s,
        "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} ip6 hoplimit 255 accept"
    );
    if dhcp {
        let _ = writeln!(s, "\t\tudp sport 67 udp dport 68 accept");
        let _ = writeln!(s, "\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept");
    }
    if !mgmt_ports.is_empty() {
        let ports = format!("{{ {} }}", mgmt_ports.join(", "));
        let _ = writeln!(s, "\t\tip saddr @mesh_v4 tcp dport {ports} accept");
        let _ = writeln!(s, "\t\tip6 saddr @mesh_v6 tcp dport {ports} accept");
    }
    let _ = writeln!(s, "\t\tip saddr @mesh_v4 icmp type echo-request accept");
    let _ = writeln!(s, "\t\tip6 saddr @mesh_v6 icmpv6 type echo-request accept");
    let _ = writeln!(s, "\t}}");

    // Forward: clients out to the internet only.
    let _ = writeln!(s, "\tchain forward {{\n\t\ttype filter hook forward priority filter - 10; policy drop;");
    let _ = writeln!(s, "\t\tct state invalid drop");
    let _ = writeln!(s, "\t\tiifname \"{wg}\" oifname \"{wg}\" drop");
    let _ = writeln!(s, "\t\tiifname \"{wg}\" oifname {up} jump forward_egress");
    let _ = writeln!(s, "\t\tiifname {up} oifname \"{wg}\" ct state established,related accept");
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tchain forward_egress {{");
    // Crypto-routing already pins each peer to its /32 and /128; this is the
    // second wall should AllowedIPs ever be wrong.
    let _ = writeln!(s, "\t\tmeta nfproto ipv4 ip saddr != {tun4} drop");
    let _ = writeln!(s, "\t\tmeta nfproto ipv6 ip6 saddr != {tun6} drop");
    let _ = writeln!(s, "\t\ttcp flags syn tcp option maxseg size set rt mtu");
    for r in &spec.egress.allow {
        let fam = match r.cidr {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let mut rule = format!("\t\t{fam} daddr {}", r.cidr);
        match r.protocol {
            None => {}
            Some(Protocol::Icmp) => {
                rule += if fam == "ip" { " meta l4proto icmp" } else { " meta l4proto ipv6-icmp" };
            }
            Some(p) => {
                if r.ports.is_empty() {
                    let _ = write!(rule, " meta l4proto {p}");
                } else {
                    let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
                    let _ = write!(rule, " {p} dport {{ {} }}", ports.join(", "));
                }
            }
        }
        let _ = writeln!(s, "{rule} accept");
    }
    let _ = writeln!(s, "\t\tip daddr @blocked_v4 drop");
    let _ = writeln!(s, "\t\tip6 daddr @blocked_v6 drop");
    let _ = writeln!(s, "\t\taccept");
    let _ = writeln!(s, "\t}}");

    // NAT: masquerade clients behind the uplink address (NAT66 unless a
    // routed prefix is configured).
    let _ = writeln!(s, "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;");
    let _ = writeln!(s, "\t\toifname {up} ip saddr {tun4} masquerade");
    if spec.wg.routed_prefix_v6.is_none() {
        let _ = writeln!(s, "\t\toifname {up} ip6 saddr {tun6} masquerade");
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    s
}

/// Kernel settings isolation and forwarding depend on, with the values
/// palisaded sets and verifies. `(path under /proc/sys, value, required)`.
pub fn sysctls(spec: &NodeSpec) -> Vec<(String, &'static str, bool)> {
    let mut v = vec![
        ("net/ipv4/ip_forward".to_string(), "1", true),
        ("net/ipv6/conf/all/forwarding".to_string(), "1", true),
        ("net/ipv4/conf/all/rp_filter".to_string(), "1", true),
        ("net/ipv4/conf/default/rp_filter".to_string(), "1", true),
        ("net/ipv4/conf/all/accept_redirects".to_string(), "0", true),
        ("net/ipv4/conf/all/send_redirects".to_string(), "0", true),
        ("net/ipv6/conf/all/accept_redirects".to_string(), "0", true),
        ("net/ipv4/conf/all/accept_source_route".to_string(), "0", true),
        // Short conntrack lifetimes: less client state held in the kernel.
        // Present only once nf_conntrack is loaded, which the first apply does.
        ("net/netfilter/nf_conntrack_udp_timeout".to_string(), "30", false),
        ("net/netfilter/nf_conntrack_tcp_timeout_established".to_string(), "3600", false),
        ("net/netfilter/nf_conntrack_tcp_timeout_time_wait".to_string(), "10", false),
    ];
    for u in &spec.uplinks {
        // Forwarding disables RA acceptance unless accept_ra is 2; uplinks
        // configured by DHCP/SLAAC need it.
        if u.dhcp {
            v.push((format!("net/ipv6/conf/{}/accept_ra", u.interface), "2", false));
        }
    }
    v
}

#[cfg(test)]
mod tests;
