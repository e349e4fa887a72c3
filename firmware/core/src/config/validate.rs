//! Validation: turns a parsed [`NodeConfig`] into a [`NodeSpec`] or a list of
//! errors, each naming file, line and field.

use super::{
    AllowRule, ConfigError, DnsSection, Location, ManagementSection, NodeConfig, UpdateSection,
    NodeSection, PresharedKey, Protocol, PublicKey, UplinkHealthSection, UplinkSection, WgBackend,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The whole desired state of the node, validated. Plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub node: NodeSection,
    pub uplinks: Vec<UplinkSection>,
    pub wg: WgSpec,
    /// Peers by public key (sorted, so every rendering is deterministic).
    pub peers: BTreeMap<PublicKey, PeerSpec>,
    pub egress: EgressSpec,
    pub management: ManagementSection,
    pub dns: DnsSection,
    pub update: UpdateSection,
    pub uplink_health: UplinkHealthSection,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WgSpec {
    pub interface: String,
    pub listen_port: u16,
    pub address_v4: Ipv4Net,
    pub address_v6: Ipv6Net,
    pub private_key_file: PathBuf,
    pub backend: WgBackend,
    pub routed_prefix_v6: Option<Ipv6Net>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: PublicKey,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub tier: Option<String>,
    pub preshared_key: Option<PresharedKey>,
}

impl PeerSpec {
    /// The peer's AllowedIPs: exactly its /32 and /128.
    pub fn allowed_ips(&self) -> Vec<IpNet> {
        let mut v = Vec::with_capacity(2);
        if let Some(a) = self.v4 {
            v.push(IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid prefix")));
        }
        if let Some(a) = self.v6 {
            v.push(IpNet::V6(Ipv6Net::new(a, 128).expect("128 is a valid prefix")));
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EgressSpec {
    pub blocked: Vec<IpNet>,
    pub allow: Vec<AllowRule>,
}

/// Destinations clients may never reach unless an allow rule says otherwise:
/// private, shared, link-local (cloud metadata), loopback, multicast,
/// reserved and documentation ranges of both families; prefixes that embed
/// an IPv4 address a translator on the provider's side would reach
/// (NAT64 64:ff9b::/96, 6to4 2002::/16, IPv4-compatible ::/96); cloud host
/// services in public space (168.63.129.16, AWS's fd00:ec2::254, listed
/// even where a wider range covers it, so the list documents them).
pub fn default_blocked() -> Vec<IpNet> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        // Cloud host services in public space (Azure's wire server).
        "168.63.129.16/32",
        "::/128",
        "::1/128",
        "::/96",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fd00:ec2::254/128",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|s| s.parse().expect("static CIDR"))
    .collect()
}

/// What a single `[[peer]]` is checked against: the node's tunnel prefixes,
/// its routed IPv6 prefix and its DNS tiers (when any are defined).
pub(super) struct PeerRules<'a> {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
    pub routed: Option<Ipv6Net>,
    pub tiers: Option<&'a BTreeMap<String, super::DnsTierSection>>,
}

/// An address that can be a client's: not /0, canonical, a /32 or /128.
pub(super) fn is_host_net(a: &IpNet) -> bool {
    a.prefix_len() != 0 && is_canonical(a) && a.prefix_len() == a.max_prefix_len()
}

impl PeerRules<'_> {
    /// The checks of one peer on its own (not against other peers: names,
    /// keys and addresses are unique across peers, which the caller checks).
    /// Each problem goes to `bad` with the field it is about; the peer's spec
    /// is returned when its key is valid (even if something else is not, so
    /// the caller can still find duplicate keys).
    pub fn check(&self, p: &super::PeerSection, mut bad: impl FnMut(&'static str, String)) -> Option<PeerSpec> {
        let key = match PublicKey::from_base64(&p.public_key) {
            Ok(k) => Some(k),
            Err(err) => {
                bad("public_key", format!("invalid public key: {err}"));
                None
            }
        };
        let psk = match &p.preshared_key {
            None => None,
            Some(s) => match PresharedKey::from_base64(s) {
                Ok(k) => Some(k),
                Err(err) => {
                    bad("preshared_key", format!("invalid preshared key: {err}"));
                    None
                }
            },
        };
        if let (Some(t), Some(tiers)) = (&p.tier, self.tiers) {
            if !tiers.contains_key(t) {
                bad("tier", format!("tier '{t}' is not defined under [dns.tier]"));
            }
        }
        let (mut pv4, mut pv6) = (None, None);
        if p.addresses.is_empty() {
            bad("addresses", "a peer needs a /32 and/or a /128 tunnel address".into());
        }
        for a in &p.addresses {
            if a.prefix_len() == 0 {
                bad("addresses", format!("{a} would route all traffic to this client; a client gets exactly its /32 and /128"));
                continue;
            }
            if !is_canonical(a) {
                bad("addresses", format!("{a} is not canonical (host bits set); did you mean {}?", a.trunc()));
                continue;
            }
            if a.prefix_len() != a.max_prefix_len() {
                bad("addresses", format!("{a}: a client gets exactly one /32 and one /128"));
                continue;
            }
            match a {
                IpNet::V4(n) => {
                    if pv4.is_some() {
                        bad("addresses", "more than one IPv4 address".into());
                    }
                    if let Some(t) = self.v4 {
                        if !t.trunc().contains(&n.addr()) {
                            bad("addresses", format!("{a} is outside the tunnel prefix {}", t.trunc()));
                        } else if n.addr() == t.addr() || n.addr() == t.network() || n.addr() == t.broadcast() {
                            bad("addresses", format!("{a} is the node's own, the network or the broadcast address"));
                        }
                    }
                    pv4 = Some(n.addr());
                }
                IpNet::V6(n) => {
                    if pv6.is_some() {
                        bad("addresses", "more than one IPv6 address".into());
                    }
                    if let Some(t) = self.v6 {
                        if !t.trunc().contains(&n.addr()) {
                            bad("addresses", format!("{a} is outside the tunnel prefix {}", t.trunc()));
                        } else if n.addr() == t.addr() || n.addr() == t.network() {
                            bad("addresses", format!("{a} is the node's own or the subnet-router address"));
                        }
                    }
                    pv6 = Some(n.addr());
                }
            }
        }
        if let (Some(r), Some(a)) = (self.routed, pv6) {
            if !r.contains(&a) {
                bad("addresses", format!("{a} is outside routed_prefix_v6 {r}: with a routed prefix IPv6 is not NATed, so this address would leave the node as is"));
            }
        }
        key.map(|k| PeerSpec { name: p.name.clone(), public_key: k, v4: pv4, v6: pv6, tier: p.tier.clone(), preshared_key: psk })
    }
}

/// Where each `[[peer]]` came from, for error locations.
pub(super) type Source = (PathBuf, String, usize);

#[derive(Clone)]
struct Site {
    section: String,
    index: Option<usize>,
    field: &'static str,
}

/// A source's text parsed once for locating errors, with the offsets of its
/// line ends (parsing or counting lines per error would make a 10k-peer
/// file with 10k errors quadratic).
type Doc<'a> = std::cell::OnceCell<(Option<toml::Spanned<toml::de::DeTable<'a>>>, Vec<usize>)>;

struct Errors<'a> {
    sources: &'a [Source],
    docs: Vec<Doc<'a>>,
    /// Every peer, across sources (to name peers that have no text).
    peers: &'a [super::PeerSection],
    out: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    /// Name a place cheaply; it is located in the text only if an error is
    /// pushed (locating scans the text, so doing it eagerly for 10k peers
    /// would be quadratic).
    fn at(&self, section: &str, index: Option<usize>, field: &'static str) -> Site {
        Site { section: section.to_string(), index, field }
    }

    /// Locate `field` in section `section` (`wireguard`, `peer`, `egress.allow`...),
    /// the `index`-th occurrence for arrays of tables.
    fn locate(&self, section: &str, index: Option<usize>, field: &str) -> Location {
        // Peers can come from the peers file: index counts across sources.
        if section == "peer" {
            let all = index.unwrap_or(0);
            let mut i = all;
            for (k, (file, text, n)) in self.sources.iter().enumerate() {
                if i < *n && text.is_empty() {
                    // Peers given as values (fleet grants): no text to find
                    // a line in, so the peer is named instead.
                    let name = self.peers.get(all).map(|p| p.name.as_str()).unwrap_or_default();
                    let field = if field.is_empty() { String::new() } else { format!(".{field}") };
                    return Location { file: file.clone(), line: None, field: format!("peer '{name}'{field}") };
                }
                if i < *n {
                    return Location {
                        file: file.clone(),
                        line: self.line(k, |d| find_offset(d, section, Some(i), field)),
                        field: format!("peer[{i}].{field}"),
                    };
                }
                i -= n;
            }
        }
        let (file, _, _) = &self.sources[0];
        let name = match index {
            Some(i) => format!("{section}[{i}].{field}"),
            None if field.is_empty() => section.to_string(),
            None => format!("{section}.{field}"),
        };
        Location { file: file.clone(), line: self.line(0, |d| find_offset(d, section, index, field)), field: name }
    }

    /// The 1-based line of the offset `find` gives in source `k`'s text.
    fn line(&self, k: usize, find: impl FnOnce(&toml::Spanned<toml::de::DeTable<'a>>) -> Option<usize>) -> Option<usize> {
        let text: &'a str = &self.sources[k].1;
        let (doc, ends) = self.docs[k].get_or_init(|| {
            let ends = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect();
            (toml::de::DeTable::parse(text).ok(), ends)
        });
        let offset = find(doc.as_ref()?)?;
        Some(ends.partition_point(|&nl| nl < offset) + 1)
    }

    fn push(&mut self, at: Site, message: impl Into<String>) {
        let at = self.locate(&at.section, at.index, at.field);
        self.out.push(ConfigError::Invalid { at, message: message.into() });
    }
}

/// Byte offset of `field` inside the `index`-th `[section]`/`[[section]]` table
/// (dotted sections such as `egress.allow` or `dns.tier.NAME` are paths),
/// from the TOML parser's spans; the table's own offset when the field is not
/// in the text (a missing required field, a default).
fn find_offset(doc: &toml::Spanned<toml::de::DeTable<'_>>, section: &str, index: Option<usize>, field: &str) -> Option<usize> {
    use toml::de::DeValue;
    let mut table = doc.get_ref();
    let mut span = doc.span();
    for key in section.split('.') {
        let v = table.get(key)?;
        span = v.span();
        let v = match (v.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => {
                let item = items.get(i)?;
                span = item.span();
                item.get_ref()
            }
            (DeValue::Array(items), None) => items.first()?.get_ref(),
            (other, _) => other,
        };
        table = match v {
            DeValue::Table(t) => t,
            _ => return Some(span.start),
        };
    }
    if !field.is_empty() {
        if let Some((k, _)) = table.get_key_value(field) {
            return Some(k.span().start);
        }
    }
    Some(span.start)
}

fn is_canonical(net: &IpNet) -> bool {
    net.trunc() == *net
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl NodeConfig {
    /// `[management] metrics_*`: the endpoint listens only on an address the
    /// node holds on an uplink (never a tunnel address, never the wildcard),
    /// on a port the firewall admits from the mesh only.
    fn validate_metrics(&self, e: &mut Errors<'_>, v4: Option<Ipv4Net>, v6: Option<Ipv6Net>, routed: Option<Ipv6Net>) {
        let m = &self.management;
        match m.max_cert_lifetime() {
            None => {
                let at = e.at("management", None, "metrics_max_cert_lifetime");
                e.push(at, format!("'{}' is not a duration (e.g. 90s, 30m, 24h, 7d)", m.metrics_max_cert_lifetime));
            }
            Some(d) if d > std::time::Duration::from_secs(30 * 86_400) => {
                let at = e.at("management", None, "metrics_max_cert_lifetime");
                e.push(at, "at most 30d: scraper certificates are meant to be short-lived");
            }
            Some(_) => {}
        }
        if m.metrics_anchors_file.as_os_str().is_empty() {
            let at = e.at("management", None, "metrics_anchors_file");
            e.push(at, "must name a file (a PEM bundle of CA certificates)");
        }
        let Some(listen) = m.metrics_listen else { return };
        let at = e.at("management", None, "metrics_listen");
        let ip = listen.ip();
        if ip.is_unspecified() {
            e.push(at, format!("{ip} listens everywhere (the tunnel included); give the node's mesh-facing uplink address"));
            return;
        }
        let in_tunnel = match ip {
            std::net::IpAddr::V4(a) => v4.is_some_and(|n| n.trunc().contains(&a)),
            std::net::IpAddr::V6(a) => v6.is_some_and(|n| n.trunc().contains(&a)) || routed.is_some_and(|n| n.contains(&a)),
        };
        if in_tunnel {
            e.push(at, format!("{ip} is in the tunnel prefixes; metrics are served on the management mesh only"));
            return;
        }
        if !self.uplinks.iter().any(|u| u.addresses.iter().any(|n| n.addr() == ip)) {
            e.push(at, format!("{ip} is not an address of any [[uplink]] (static `addresses`); the endpoint listens only on an address the node holds"));
            return;
        }
        if !m.ports.contains(&listen.port()) {
            e.push(at, format!("port {} is not in management.ports {:?}: the firewall would not admit it from the mesh", listen.port(), m.ports));
            return;
        }
        if m.mesh.is_empty() {
            e.push(at, "management.mesh is empty: the firewall admits the metrics port only from mesh prefixes, so no scraper could reach it");
        }
    }

    /// Validate a config that came from a single text (`file`).
    pub fn validate(&self, file: &Path, text: &str) -> Result<NodeSpec, ConfigError> {
        self.validate_with_sources(&[(file.to_path_buf(), text.to_string(), self.peers.len())])
    }

    pub(super) fn validate_with_sources(&self, sources: &[Source]) -> Result<NodeSpec, ConfigError> {
        let mut e = Errors { sources, docs: sources.iter().map(|_| Doc::new()).collect(), peers: &self.peers, out: Vec::new() };

        let n = &self.node.name;
        if n.is_empty() || n.len() > 63 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            let at = e.at("node", None, "name");
            e.push(at, "must be 1-63 letters, digits or '-'");
        }

        if self.uplinks.is_empty() {
            let at = e.at("uplink", None, "");
            e.push(at, "at least one [[uplink]] is required");
        }
        for (i, u) in self.uplinks.iter().enumerate() {
            if !valid_ifname(&u.interface) {
                let at = e.at("uplink", Some(i), "interface");
                e.push(at, format!("'{}' is not a valid interface name", u.interface));
            }
            if u.interface == self.wireguard.interface {
                let at = e.at("uplink", Some(i), "interface");
                e.push(at, format!("'{}' is the WireGuard interface; an uplink needs its own interface", u.interface));
            }
            if u.addresses.is_empty() && !u.dhcp {
                let at = e.at("uplink", Some(i), "addresses");
                e.push(at, "give static addresses or set dhcp = true");
            }
            if self.uplinks[..i].iter().any(|o| o.interface == u.interface) {
                let at = e.at("uplink", Some(i), "interface");
                e.push(at, format!("'{}' is named by an earlier [[uplink]]; each interface once", u.interface));
            }
            for t in &u.probe_targets {
                let bad = t.is_unspecified() || t.is_loopback() || t.is_multicast()
                    || matches!(t, std::net::IpAddr::V4(a) if a.is_broadcast());
                let gw = match t {
                    std::net::IpAddr::V4(_) => u.gateway_v4.is_some() || u.dhcp,
                    std::net::IpAddr::V6(_) => u.gateway_v6.is_some(),
                };
                if bad {
                    let at = e.at("uplink", Some(i), "probe_targets");
                    e.push(at, format!("{t} cannot be probed (unspecified, loopback, multicast or broadcast); give a host beyond the uplink's gateway"));
                } else if !gw {
                    let at = e.at("uplink", Some(i), "probe_targets");
                    e.push(at, format!("{t}: this uplink has no gateway of that family (gateway_v4/gateway_v6 or dhcp for IPv4), so it cannot reach the target"));
                }
            }
            if u.probe_targets.len() > 8 {
                let at = e.at("uplink", Some(i), "probe_targets");
                e.push(at, "at most 8 probe targets per uplink");
            }
        }
        let h = &self.uplink_health;
        if !(100..=60_000).contains(&h.interval_ms) {
            let at = e.at("uplink_health", None, "interval_ms");
            e.push(at, "interval_ms must be 100..=60000");
        }
        if h.timeout_ms < 50 || h.timeout_ms > h.interval_ms {
            let at = e.at("uplink_health", None, "timeout_ms");
            e.push(at, format!("timeout_ms must be 50..=interval_ms ({})", h.interval_ms));
        }
        if !(1..=20).contains(&h.fall) {
            let at = e.at("uplink_health", None, "fall");
            e.push(at, "fall must be 1..=20 (failed rounds in a row)");
        }
        if !(1..=100).contains(&h.rise) {
            let at = e.at("uplink_health", None, "rise");
            e.push(at, "rise must be 1..=100 (answered rounds in a row)");
        }
        if h.hold_down_secs > 86_400 {
            let at = e.at("uplink_health", None, "hold_down_secs");
            e.push(at, "hold_down_secs must be at most 86400");
        }

        let w = &self.wireguard;
        if !valid_ifname(&w.interface) {
            let at = e.at("wireguard", None, "interface");
            e.push(at, format!("'{}' is not a valid interface name (1-15 characters)", w.interface));
        }
        if w.listen_port == 0 {
            let at = e.at("wireguard", None, "listen_port");
            e.push(at, "must not be 0");
        }
        let v4 = match w.address_v4 {
            IpNet::V4(n) if n.prefix_len() < 31 => Some(n),
            _ => {
                let at = e.at("wireguard", None, "address_v4");
                e.push(at, "must be an IPv4 address with the tunnel prefix, e.g. 10.66.0.1/16");
                None
            }
        };
        let v6 = match w.address_v6 {
            IpNet::V6(n) if n.prefix_len() < 127 => Some(n),
            _ => {
                let at = e.at("wireguard", None, "address_v6");
                e.push(at, "must be an IPv6 address with the tunnel prefix, e.g. fd66::1/64");
                None
            }
        };
        let routed = match w.routed_prefix_v6 {
            None => None,
            Some(IpNet::V6(n)) if is_canonical(&IpNet::V6(n)) => Some(n),
            Some(other) => {
                let at = e.at("wireguard", None, "routed_prefix_v6");
                e.push(at, format!("{other} must be a canonical IPv6 prefix"));
                None
            }
        };

        // Peers.
        let mut peers = BTreeMap::new();
        let mut by_addr: HashMap<IpNet, usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let rules = PeerRules { v4, v6, routed, tiers: (!self.dns.tiers.is_empty()).then_some(&self.dns.tiers) };
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(prev) = names.insert(p.name.as_str(), i) {
                let at = e.at("peer", Some(i), "name");
                e.push(at, format!("duplicate peer name '{}'", self.peers[prev].name));
            }
            let spec = rules.check(p, |field, msg| {
                let at = e.at("peer", Some(i), field);
                e.push(at, msg);
            });
            // Overlapping AllowedIPs silently move a prefix between peers
            // in the kernel; refuse them here.
            for a in p.addresses.iter().filter(|a| is_host_net(a)) {
                if let Some(prev) = by_addr.insert(*a, i) {
                    let at = e.at("peer", Some(i), "addresses");
                    e.push(at, format!("{a} overlaps the AllowedIPs of peer '{}'", self.peers[prev].name));
                }
            }
            if let Some(spec) = spec {
                let k = spec.public_key;
                if peers.insert(k, spec).is_some() {
                    let at = e.at("peer", Some(i), "public_key");
                    e.push(at, "duplicate public key (each client needs its own key)");
                }
            }
        }

        // Egress.
        let blocked = self.egress.blocked.clone().unwrap_or_else(default_blocked);
        for net in blocked.iter().chain(&self.egress.extra_blocked) {
            if !is_canonical(net) {
                let at = e.at("egress", None, if self.egress.blocked.as_ref().is_some_and(|b| b.contains(net)) { "blocked" } else { "extra_blocked" });
                e.push(at, format!("{net} is not canonical; did you mean {}?", net.trunc()));
            }
        }
        for (i, r) in self.egress.allow.iter().enumerate() {
            if !is_canonical(&r.cidr) {
                let at = e.at("egress.allow", Some(i), "cidr");
                e.push(at, format!("{} is not canonical; did you mean {}?", r.cidr, r.cidr.trunc()));
            }
            if !r.ports.is_empty() && !matches!(r.protocol, Some(Protocol::Tcp) | Some(Protocol::Udp)) {
                let at = e.at("egress.allow", Some(i), "ports");
                e.push(at, "ports need protocol = \"tcp\" or \"udp\"");
            }
            if r.ports.contains(&0) {
                let at = e.at("egress.allow", Some(i), "ports");
                e.push(at, "port 0 is not a port");
            }
        }
        for net in &self.management.mesh {
            if !is_canonical(net) {
                let at = e.at("management", None, "mesh");
                e.push(at, format!("{net} is not canonical; did you mean {}?", net.trunc()));
            }
        }

        self.validate_metrics(&mut e, v4, v6, routed);

        if let Some(url) = &self.update.repository {
            if !["http://", "https://", "file:///"].iter().any(|p| url.starts_with(p)) {
                let at = e.at("update", None, "repository");
                e.push(at, format!("'{url}' is not an http://, https:// or file:/// URL"));
            }
        }
        if !(5..=86_400).contains(&self.update.poll_secs) {
            let at = e.at("update", None, "poll_secs");
            e.push(at, "poll_secs must be 5..=86400");
        }

        // DNS references.
        for (tname, tier) in &self.dns.tiers {
            for l in &tier.lists {
                if !self.dns.lists.contains_key(l) {
                    let at = e.at(&format!("dns.tier.{tname}"), None, "lists");
                    e.push(at, format!("list '{l}' is not defined under [dns.list]"));
                }
            }
        }
        for (i, u) in self.dns.upstreams.iter().enumerate() {
            if u.protocol.uses_tls() && u.tls_name.is_none() {
                let at = e.at("dns.upstream", Some(i), "tls_name");
                e.push(at, "tls and https upstreams need tls_name (the name verified in the certificate)");
            }
        }

        if !e.out.is_empty() {
            return Err(if e.out.len() == 1 { e.out.remove(0) } else { ConfigError::Many(e.out) });
        }
        let mut blocked_all = blocked;
        blocked_all.extend(self.egress.extra_blocked.iter().copied());
        Ok(NodeSpec {
            node: self.node.clone(),
            uplinks: self.uplinks.clone(),
            wg: WgSpec {
                interface: w.interface.clone(),
                listen_port: w.listen_port,
                address_v4: v4.expect("checked above"),
                address_v6: v6.expect("checked above"),
                private_key_file: w.private_key_file.clone(),
                backend: w.backend,
                routed_prefix_v6: routed,
                mtu: w.mtu,
            },
            peers,
            egress: EgressSpec { blocked: blocked_all, allow: self.egress.allow.clone() },
            management: self.management.clone(),
            dns: self.dns.clone(),
            update: self.update.clone(),
            uplink_health: self.uplink_health.clone(),
        })
    }
}
