//! Peer isolation: the table `inet palisade`, rendered by a pure function of
//! the spec ([`render`]) into a [`Ruleset`] and applied in one transaction
//! ([`NftCli`]), which then reads the live table back and checks it against
//! the render (every set exactly as rendered, every chain with its rules).
//!
//! The rules implement docs/security.md. The rule count depends on the
//! number of uplinks and allow rules, never on the number of peers: peer
//! addresses are covered by the tunnel prefixes and destinations by sets.
//! There is never a `log` statement.

mod apply;
mod nfnl;
mod verify;

pub use apply::{Firewall, FirewallError, NftCli, RecordingFirewall, TableReader};
pub use verify::stale;

use crate::config::{NodeSpec, Protocol};
use ipnet::IpNet;
use std::fmt::Write;

/// Name of the one table Palisade owns. Nothing else is ever touched.
pub const TABLE: &str = "palisade";

/// A named interval set of addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct SetDef {
    pub name: &'static str,
    pub v6: bool,
    pub elems: Vec<IpNet>,
}

/// A chain: base chains carry their hook line, regular chains `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainDef {
    pub name: &'static str,
    pub hook: Option<&'static str>,
    pub policy_drop: bool,
    pub rules: Vec<String>,
}

/// The whole table as plain data: what [`Ruleset::script`] loads and what
/// the read-back is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    pub sets: Vec<SetDef>,
    pub chains: Vec<ChainDef>,
}

/// Facts about the host that the ruleset depends on and the config cannot
/// know: the prefixes the uplinks have right now (DHCP, SLAAC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    /// `(interface, address with prefix)` as observed on the uplinks.
    pub uplink_addresses: Vec<(String, IpNet)>,
}

/// Objects of the live table that the render does not have (or has with
/// another hook): the transaction deletes them. Found by the read-back
/// ([`verify::stale`]); empty for a fresh table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stale {
    pub chains: Vec<String>,
    pub sets: Vec<String>,
}

impl Ruleset {
    /// The `nft -f` transaction for a node with no table yet.
    pub fn script(&self) -> String {
        self.script_over(&Stale::default())
    }

    /// One `nft -f` transaction that turns whatever table is live into this
    /// one: create the table if missing, flush it (its base chains stay
    /// registered on their hooks, so no packet ever sees a gap), delete
    /// `stale` objects, empty every set (`flush table` keeps set elements, so
    /// an element removed from the config would stay live), and fill it all.
    /// nft runs the file as one transaction.
    ///
    /// Not `delete table` + `table {..}`: that unregisters and re-registers
    /// the base chains inside the transaction, and a packet in flight at
    /// the commit was seen to pass the forward chain of neither table.
    pub fn script_over(&self, stale: &Stale) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        let _ = writeln!(s, "flush table inet {TABLE}");
        for c in &stale.chains {
            let _ = writeln!(s, "delete chain inet {TABLE} {c}");
        }
        for set in &stale.sets {
            let _ = writeln!(s, "delete set inet {TABLE} {set}");
        }
        let set_head = |set: &SetDef| {
            let ty = if set.v6 { "ipv6_addr" } else { "ipv4_addr" };
            format!("type {ty}; flags interval; auto-merge;")
        };
        for set in &self.sets {
            let _ = writeln!(s, "add set inet {TABLE} {} {{ {} }}", set.name, set_head(set));
            let _ = writeln!(s, "flush set inet {TABLE} {}", set.name);
        }
        let _ = writeln!(s, "table inet {TABLE} {{");
        for set in &self.sets {
            let _ = writeln!(s, "\tset {} {{\n\t\t{}", set.name, set_head(set));
            if !set.elems.is_empty() {
                let v: Vec<String> = set.elems.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(s, "\t\telements = {{ {} }}", v.join(", "));
            }
            let _ = writeln!(s, "\t}}");
        }
        for c in &self.chains {
            let _ = writeln!(s, "\tchain {} {{", c.name);
            if let Some(h) = c.hook {
                let policy = if c.policy_drop { "drop" } else { "accept" };
                let _ = writeln!(s, "\t\t{h}; policy {policy};");
            }
            for r in &c.rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// Every rule with its chain, in order (for the mutation check and docs).
    pub fn rules(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.chains.iter().flat_map(|c| c.rules.iter().map(move |r| (c.name, r.as_str())))
    }
}

fn quoted_list(names: &[&str]) -> String {
    let v: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", v.join(", "))
}

/// ICMP types the node never sends: a redirect from the node would tell a
/// client about another client's address, and a WireGuard interface never
/// needs one. The kernel sends IPv6 redirects before the forward hook, so
/// only an output rule stops them.
const NO_REDIRECTS: [&str; 2] = ["icmp type redirect drop", "icmpv6 type nd-redirect drop"];

/// The on-link prefixes of the uplinks that block them (a client must not
/// reach the node's neighbours on the provider's LAN): configured static
/// addresses and what is observed on the interface now (DHCP, SLAAC).
fn uplink_prefixes(spec: &NodeSpec, facts: &HostFacts) -> Vec<IpNet> {
    let mut v = Vec::new();
    for u in spec.uplinks.iter().filter(|u| u.block_on_link) {
        let observed = facts.uplink_addresses.iter().filter(|(i, _)| *i == u.interface).map(|(_, a)| a);
        for a in u.addresses.iter().chain(observed) {
            let n = a.trunc();
            // Link-local is in the blocked list already; a /32 or /128 has no neighbours.
            let link_local = matches!(n, IpNet::V6(n6) if (n6.addr().segments()[0] & 0xffc0) == 0xfe80);
            if !link_local && n.prefix_len() < n.max_prefix_len() && !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

/// Render the whole table. Pure and deterministic (snapshot-tested).
pub fn render(spec: &NodeSpec, facts: &HostFacts) -> Ruleset {
    let wg = &spec.wg.interface;
    let uplinks: Vec<&str> = spec.uplinks.iter().map(|u| u.interface.as_str()).collect();
    let up = quoted_list(&uplinks);
    let node4 = spec.wg.address_v4.addr();
    let node6 = spec.wg.address_v6.addr();
    let tun4 = spec.wg.address_v4.trunc();
    let tun6 = spec.wg.address_v6.trunc();
    let port = spec.wg.listen_port;
    let mut blocked: Vec<IpNet> = spec.egress.blocked.clone();
    for n in uplink_prefixes(spec, facts) {
        if !blocked.contains(&n) {
            blocked.push(n);
        }
    }
    let fam = |v6: bool, nets: &[IpNet]| -> Vec<IpNet> {
        nets.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).copied().collect()
    };
    let sets = vec![
        SetDef { name: "blocked_v4", v6: false, elems: fam(false, &blocked) },
        SetDef { name: "blocked_v6", v6: true, elems: fam(true, &blocked) },
        SetDef { name: "mesh_v4", v6: false, elems: fam(false, &spec.management.mesh) },
        SetDef { name: "mesh_v6", v6: true, elems: fam(true, &spec.management.mesh) },
    ];
    let dhcp = spec.uplinks.iter().any(|u| u.dhcp);
    let mut chains = Vec::new();

    // Input: the node itself.
    chains.push(ChainDef {
        name: "input",
        hook: Some("type filter hook input priority filter - 10"),
        policy_drop: true,
        rules: vec![
            "iif \"lo\" accept".into(),
            "ct state invalid drop".into(),
            "ct state established,related accept".into(),
            format!("iifname \"{wg}\" jump input_tunnel"),
            format!("iifname {up} jump input_uplink"),
        ],
    });
    chains.push(ChainDef {
        name: "input_tunnel",
        hook: None,
        policy_drop: false,
        rules: vec![
            format!("ip daddr {node4} udp dport 53 accept"),
            format!("ip daddr {node4} tcp dport 53 accept"),
            format!("ip6 daddr {node6} udp dport 53 accept"),
            format!("ip6 daddr {node6} tcp dport 53 accept"),
            format!("ip daddr {node4} icmp type echo-request limit rate 10/second accept"),
            format!("ip6 daddr {node6} icmpv6 type echo-request limit rate 10/second accept"),
        ],
    });
    let mut input_uplink = vec![
        format!("udp dport {port} accept"),
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept".to_string(),
    ];
    if dhcp {
        input_uplink.push("udp sport 67 udp dport 68 accept".into());
        input_uplink.push("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept".into());
    }
    if !spec.management.ports.is_empty() {
        let ports: Vec<String> = spec.management.ports.iter().map(|p| p.to_string()).collect();
        let ports = format!("{{ {} }}", ports.join(", "));
        input_uplink.push(format!("ip saddr @mesh_v4 tcp dport {ports} accept"));
        input_uplink.push(format!("ip6 saddr @mesh_v6 tcp dport {ports} accept"));
    }
    input_uplink.push("ip saddr @mesh_v4 icmp type echo-request accept".into());
    input_uplink.push("ip6 saddr @mesh_v6 icmpv6 type echo-request accept".into());
    chains.push(ChainDef { name: "input_uplink", hook: None, policy_drop: false, rules: input_uplink });

    // Forward: clients out to the internet only.
    chains.push(ChainDef {
        name: "forward",
        hook: Some("type filter hook forward priority filter - 10"),
        policy_drop: true,
        rules: vec![
            // Tunnel to tunnel (client to client) matches no rule here and
            // meets the policy drop: an explicit drop rule would be one no
            // packet could tell from the policy (the mutation check).
            "ct state invalid drop".into(),
            format!("iifname \"{wg}\" oifname {up} jump forward_egress"),
            format!("iifname {up} oifname \"{wg}\" ct state established,related accept"),
        ],
    });
    let mut egress = vec![
        // Crypto-routing already pins each peer to its /32 and /128; this is
        // the second wall should AllowedIPs ever be wrong.
        format!("meta nfproto ipv4 ip saddr != {tun4} drop"),
        format!("meta nfproto ipv6 ip6 saddr != {tun6} drop"),
        "tcp flags syn tcp option maxseg size set rt mtu".into(),
    ];
    for r in &spec.egress.allow {
        let fam = match r.cidr {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let mut rule = format!("{fam} daddr {}", r.cidr);
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
        egress.push(format!("{rule} accept"));
    }
    egress.push("ip daddr @blocked_v4 drop".into());
    egress.push("ip6 daddr @blocked_v6 drop".into());
    egress.push("accept".into());
    chains.push(ChainDef { name: "forward_egress", hook: None, policy_drop: false, rules: egress });

    // Output: the node never sends redirects.
    chains.push(ChainDef {
        name: "output",
        hook: Some("type filter hook output priority filter - 10"),
        policy_drop: false,
        rules: NO_REDIRECTS.iter().map(|r| r.to_string()).collect(),
    });

    // NAT: masquerade clients behind the uplink address (NAT66 unless a
    // routed prefix is configured). UDP is mapped into a port range without
    // the WireGuard listen port: a client sending from that port would
    // otherwise own the conntrack mapping that another client's handshakes
    // to the node match (port shadow, CVE-2021-3773).
    let range = masquerade_range(port);
    let mut post = vec![
        format!("oifname {up} ip saddr {tun4} meta l4proto udp masquerade to :{range}"),
        format!("oifname {up} ip saddr {tun4} masquerade"),
    ];
    if spec.wg.routed_prefix_v6.is_none() {
        post.push(format!("oifname {up} ip6 saddr {tun6} meta l4proto udp masquerade to :{range}"));
        post.push(format!("oifname {up} ip6 saddr {tun6} masquerade"));
    }
    chains.push(ChainDef {
        name: "postrouting",
        hook: Some("type nat hook postrouting priority srcnat"),
        policy_drop: false,
        rules: post,
    });
    Ruleset { sets, chains }
}

/// The larger source-port range for masqueraded UDP that leaves out `port`.
fn masquerade_range(port: u16) -> String {
    let below = (1024u32, u32::from(port).saturating_sub(1));
    let above = (u32::from(port) + 1, 65535u32);
    let size = |r: (u32, u32)| r.1.saturating_sub(r.0);
    let r = if port < 1024 { (1024, 65535) } else if size(below) >= size(above) { below } else { above };
    format!("{}-{}", r.0, r.1)
}

/// The table init loads before any uplink is up, and the one left in place
/// whenever the real table cannot be loaded: nothing is forwarded, nothing
/// reaches the node but loopback and what bringing an uplink up needs
/// (DHCP and DHCPv6 replies, IPv6 neighbour discovery).
pub fn fallback() -> Ruleset {
    Ruleset {
        sets: Vec::new(),
        chains: vec![
            ChainDef {
                name: "input",
                hook: Some("type filter hook input priority filter - 10"),
                policy_drop: true,
                rules: vec![
                    "iif \"lo\" accept".into(),
                    "udp sport 67 udp dport 68 accept".into(),
                    "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept".into(),
                    "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept".into(),
                ],
            },
            ChainDef {
                name: "forward",
                hook: Some("type filter hook forward priority filter - 10"),
                policy_drop: true,
                rules: Vec::new(),
            },
            ChainDef {
                name: "output",
                hook: Some("type filter hook output priority filter - 10"),
                policy_drop: false,
                rules: NO_REDIRECTS.iter().map(|r| r.to_string()).collect(),
            },
        ],
    }
}

/// The table of a node the fleet revoked (docs/security.md S11, "Revoked lockdown"): the same
/// table name, every filter hook dropping by policy, loopback the only
/// exception. Nothing reaches the node, nothing is forwarded, the node
/// sends nothing; no NAT chain, no sets, never a `log` statement. Loaded
/// and read back like the normal table, so drift is repaired the same way.
pub fn render_lockdown() -> Ruleset {
    let chain = |name: &'static str, rules: Vec<String>| ChainDef {
        name,
        hook: Some(match name {
            "input" => "type filter hook input priority filter - 10",
            "forward" => "type filter hook forward priority filter - 10",
            _ => "type filter hook output priority filter - 10",
        }),
        policy_drop: true,
        rules,
    };
    Ruleset {
        sets: Vec::new(),
        chains: vec![
            chain("input", vec!["iif \"lo\" accept".into()]),
            chain("forward", Vec::new()),
            chain("output", vec!["oif \"lo\" accept".into()]),
        ],
    }
}

/// Forwarding off in both families: what a node without a spec (revoked
/// before any config loaded) sets. With a spec, [`sysctls`]`(spec, false)`.
pub fn forwarding_off() -> Vec<(String, String, bool)> {
    vec![("net/ipv4/ip_forward".to_string(), "0".to_string(), true), ("net/ipv6/conf/all/forwarding".to_string(), "0".to_string(), true)]
}

/// Connection tracking entries the node allows: the kernel sizes the table
/// by memory alone (4096 entries on a 512 MiB node, a ceiling a few hundred
/// busy clients reach, after which new flows are dropped for everyone and
/// the node's own sends fail with EPERM). 16 per peer, at least 65536 and
/// at most 262144 (about 20 and 80 MiB of entries when full; nothing is
/// allocated until used). The hash table gets one bucket per entry, the
/// kernel's own ratio; the kernel rounds a bucket count up to a page of
/// list heads (512 on x86-64), and a value that reads back otherwise fails
/// the sysctl check (and with it the node, closed), so the count is a
/// multiple of 4096.
pub fn conntrack_max(peers: usize) -> u64 {
    (peers as u64).saturating_mul(16).next_multiple_of(4096).clamp(65_536, 262_144)
}

/// Kernel settings isolation and forwarding depend on, with the values
/// palisaded sets and verifies. `(path under /proc/sys, value, required)`.
///
/// `forwarding` is true only while the verified table is live: forwarding
/// follows the firewall, never the other way round. The kernel ORs
/// `send_redirects` and `log_martians` between `all` and each interface, so
/// `all` alone is not enough: every managed interface gets them too (set as
/// soon as the interface exists; the reconcile timer catches late ones).
pub fn sysctls(spec: &NodeSpec, forwarding: bool) -> Vec<(String, String, bool)> {
    let fwd = if forwarding { "1" } else { "0" };
    // Strict reverse-path filtering everywhere, unless several uplinks
    // share the default route: then a standby uplink receives what the
    // active route would not send through it (its probe replies, clients
    // roaming to its address), so uplinks are loose (2) and the tunnel stays
    // strict (the kernel takes the larger of `all` and the interface's value).
    let multi = spec.uplinks.len() > 1;
    let mut v = vec![
        ("net/ipv4/ip_forward".to_string(), fwd, true),
        ("net/ipv6/conf/all/forwarding".to_string(), fwd, true),
        ("net/ipv4/conf/all/rp_filter".to_string(), if multi { "0" } else { "1" }, true),
        ("net/ipv4/conf/default/rp_filter".to_string(), "1", true),
        ("net/ipv4/conf/all/accept_source_route".to_string(), "0", true),
        // Short conntrack lifetimes: less client state held in the kernel.
        // Present only once nf_conntrack is loaded, which the first apply does.
        ("net/netfilter/nf_conntrack_udp_timeout".to_string(), "30", false),
        ("net/netfilter/nf_conntrack_tcp_timeout_established".to_string(), "3600", false),
        ("net/netfilter/nf_conntrack_tcp_timeout_time_wait".to_string(), "10", false),
    ];
    let mut ifaces: Vec<&str> = vec!["all", "default", spec.wg.interface.as_str()];
    ifaces.extend(spec.uplinks.iter().map(|u| u.interface.as_str()));
    for i in ifaces {
        let required = i == "all" || i == "default";
        for (fam, key) in [
            ("ipv4", "send_redirects"),
            ("ipv4", "accept_redirects"),
            ("ipv4", "secure_redirects"),
            ("ipv4", "log_martians"),
            ("ipv6", "accept_redirects"),
        ] {
            v.push((format!("net/{fam}/conf/{i}/{key}"), "0", required));
        }
    }
    if multi {
        v.push((format!("net/ipv4/conf/{}/rp_filter", spec.wg.interface), "1", false));
        for u in &spec.uplinks {
            v.push((format!("net/ipv4/conf/{}/rp_filter", u.interface), "2", false));
        }
    }
    for u in &spec.uplinks {
        // Forwarding disables RA acceptance unless accept_ra is 2; uplinks
        // configured by DHCP/SLAAC need it.
        if u.dhcp {
            v.push((format!("net/ipv6/conf/{}/accept_ra", u.interface), "2", false));
        }
    }
    let mut v: Vec<(String, String, bool)> = v.into_iter().map(|(k, val, r)| (k, val.to_string(), r)).collect();
    // Global (the init namespace's): read-only in other namespaces, where
    // the write is skipped (crate::sysctl::apply).
    let ct_max = conntrack_max(spec.peers.len()).to_string();
    v.push(("net/netfilter/nf_conntrack_max".to_string(), ct_max.clone(), false));
    v.push(("net/netfilter/nf_conntrack_buckets".to_string(), ct_max, false));
    v
}

#[cfg(test)]
mod tests;
