//! A mutation check of the firewall: every rule must be caught by a probe.
//!
//! palisaded runs in the namespace bed (2 clients, an allow rule, a v4 and a v6
//! management mesh, DNS, a DHCP uplink so the DHCP rules are rendered). The
//! test reads the live `inet palisade` table, then for every rule in turn:
//! restores the pristine table (one transaction), deletes that one rule by
//! handle and runs the whole probe matrix below. Every deleted rule must make
//! at least one probe fail; the test prints which probes caught which rule (the
//! table in docs/security.md, "Which probe proves each rule") and fails,
//! listing them, if any rule survives. A run on the pristine table first (and
//! again at the end) must pass entirely: that is the matrix's own control.
//!
//! Drift repair is off during the mutations: palisaded runs with a reconcile
//! interval of a day instead of SIGSTOP, because the resolver on the tunnel
//! addresses lives in palisaded and a stopped process answers no DNS query.
//! At the end a SIGHUP (the same reconcile pass the timer runs) must put the
//! pristine table back.
//!
//! Where the kernel or WireGuard is the first wall, the test takes it down for
//! the mutations so that what a probe sees is the firewall's own wall:
//! - client 1's AllowedIPs on the node are widened to 10.77.0.5 and fd77::5
//!   (outside the tunnel prefixes: the anti-spoof rules) and to 10.66.1.0/24
//!   and fd66::1:0/112 (fresh redirect-triggering sources each round); a route
//!   to 10.77.0.0/24 through the tunnel keeps strict rp_filter out of the way;
//! - when the table drops ICMP redirects, send_redirects is switched on for the
//!   tunnel, the uplink and `all` (palisaded switches `all` off).
//!
//! Probes that need a rule's kind switch on when the live table has such
//! rules (recognised by their text): port shadow (`masquerade to :`),
//! redirects (`redirect`), DHCP (`dport 68` / `dport 546`). The extra
//! destinations (NAT64, 6to4, IPv4-compatible, 168.63.129.16, fd00:ec2::254,
//! the uplink's on-link prefix) must be dropped when the table's drop rules
//! cover them and reached otherwise.
//!
//! Run: `PALISADED_BIN=... PALISADE_BIN=... cargo test -p palisade-tests --test
//! netns_mutation -- --ignored --nocapture` (about 70 s on the 2-core machine).

use palisade_tests::matrix::{self, Case, Expect, Kind};
use palisade_tests::capture::{self, Capture, Packet};
use palisade_tests::mutation::craft;
use palisade_tests::mutation::ruleset::{self, Rule, Span};
use palisade_tests::palisade::{render_node_toml, NodeOptions, Palisade};
use palisade_tests::{addr, probe, sa, wait_until, Bins, Netns, Outcome, TestBed};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Per-probe timeout, as in the isolation tests.
const T: Duration = Duration::from_millis(1500);

/// A second web address reached through a client route with `advmss`, so the
/// client's SYN offers more than the tunnel carries: only the node's clamp
/// brings it down.
const MSS_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 82);
const MSS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x82);
/// A management-mesh source for IPv6 (the bed's mesh is IPv4 only).
const MESH_V6: &str = "fd10:100::/64";
const MESH_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x100, 0, 0, 0, 0, 0, 5);
/// Spoofed sources outside the tunnel prefixes (admitted by client 1's widened AllowedIPs).
const SPOOF_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);
const SPOOF_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 5);
/// Client 1's fixed WireGuard port (so nothing else binds 51820 in its namespace).
const C1_PORT: u16 = 51901;
/// Source ports of the hand-made invalid segments (so their answers can be found).
const INV_NODE_SPORT: u16 = 40053;
const INV_FWD_SPORT: u16 = 40080;
/// SYN|FIN|ACK: a flag combination conntrack calls invalid.
const INVALID_FLAGS: u8 = capture::TCP_SYN | capture::TCP_FIN | capture::TCP_ACK;

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// Destinations blocked by default besides the bed's private ranges. Each is
/// given to the internet namespace (so it answers when it is reached) and routed
/// on-link from the node (so only the firewall stands in the way).
#[rustfmt::skip]
fn extra_destinations() -> Vec<(&'static str, IpAddr, Option<&'static str>)> {
    vec![
        ("NAT64 64:ff9b::/96 (metadata)", ip("64:ff9b::a9fe:a9fe"), Some("64:ff9b::/96")),
        ("6to4 2002::/16 (metadata)", ip("2002:a9fe:a9fe::1"), Some("2002::/16")),
        ("IPv4-compatible ::/96 (metadata)", ip("::a9fe:a9fe"), Some("::a9fe:a9fe/128")),
        ("Azure wireserver 168.63.129.16", ip("168.63.129.16"), Some("168.63.129.16/32")),
        ("AWS IMDS fd00:ec2::254", ip("fd00:ec2::254"), Some("fd00:ec2::/64")),
        // The uplink's own on-link prefix: the bed's "internet" bridge address.
        ("uplink on-link 203.0.113.1", addr::INET_V4.into(), None),
        ("uplink on-link 2001:db8:113::1", addr::INET_V6.into(), None),
    ]
}

/// One probe's verdict in one round.
#[derive(Debug, Clone)]
struct Res {
    label: String,
    ok: bool,
    detail: String,
}

fn res(label: impl Into<String>, ok: bool, detail: impl Into<String>) -> Res {
    Res {
        label: label.into(),
        ok,
        detail: detail.into(),
    }
}

/// Everything a round needs, fixed after setup.
struct Ctx<'a> {
    bed: &'a TestBed,
    node_key: String,
    /// The table guards the listen port (UDP masquerade into a range
    /// without it): run the port-shadow probe.
    shadow: bool,
    /// The table drops ICMP redirects: no redirect may reach client 1.
    redirects: bool,
    /// DHCP rules rendered: probes from a DHCP server's ports.
    dhcp: bool,
    inet_ll: SocketAddr,
    node_ll: SocketAddr,
    /// (label, address, expectation) of the extra destinations.
    extra: Vec<(String, IpAddr, Expect)>,
    /// The largest MSS the clamp may let through (tunnel MTU - 40 / - 60).
    mss4: u16,
    mss6: u16,
}

fn seen(ip: impl Into<IpAddr>) -> Expect {
    Expect::Answer(ip.into().to_string())
}

/// The probe matrix (matrix::run kinds). Labels are stable across rounds.
#[rustfmt::skip] // tables: one probe per line
fn cases<'a>(ctx: &Ctx<'a>) -> Vec<Case<'a>> {
    use Expect::{Dropped, Reached};
    use Kind::{Http, Ping, Tcp, Udp};
    let bed = ctx.bed;
    let (c1, c2) = (&bed.clients[0], &bed.clients[1]);
    let (up4, up6) = (IpAddr::from(addr::NODE_UP_V4), IpAddr::from(addr::NODE_UP_V6));
    let (tun4, tun6) = (IpAddr::from(addr::NODE_TUN_V4), IpAddr::from(addr::NODE_TUN_V6));
    let (web4, web6) = (IpAddr::from(addr::WEB_V4), IpAddr::from(addr::WEB_V6));
    let (ok4, ok6) = (addr::PRIV_ALLOWED_V4, addr::PRIV_ALLOWED_V6);
    let (echo, ctcp) = (addr::ECHO_UDP, addr::CLIENT_TCP);
    let mut v = Vec::new();
    // S2: out through the exit, masqueraded to the uplink address.
    for c in [c1, c2] {
        for (fam, web, up) in [("v4", web4, up4), ("v6", web6, up6)] {
            let l = format!("c{} -> web {fam} http", c.index);
            v.push(Case::new(l, &c.ns, Http, sa(web, 80), seen(up)));
        }
    }
    // S3: client to client.
    for (a, b) in [(c1, c2), (c2, c1)] {
        for (fam, dst) in [("v4", IpAddr::from(b.tun_v4)), ("v6", b.tun_v6.into())] {
            let l = format!("c{} -> c{} tun {fam} tcp", a.index, b.index);
            v.push(Case::new(l, &a.ns, Tcp, sa(dst, ctcp), Dropped));
        }
    }
    let from_c1 = [
        ("c1 -> web v4 udp echo", Udp, sa(web4, echo), seen(up4)),
        ("c1 -> web v6 udp echo", Udp, sa(web6, echo), seen(up6)),
        ("c1 ping web v4", Ping, sa(web4, 0), Reached),
        // S2 step 2: the SYN's MSS is read where it arrives (capture_checks).
        ("c1 -> web .82 v4 http (MSS probe)", Http, sa(MSS_V4, 80), seen(up4)),
        ("c1 -> web ::82 v6 http (MSS probe)", Http, sa(MSS_V6, 80), seen(up6)),
        // S3.
        ("c1 -> c2 tun v4 udp", Udp, sa(c2.tun_v4, echo), Dropped),
        ("c1 -> c2 tun v6 udp", Udp, sa(c2.tun_v6, echo), Dropped),
        // S2 step 4: the blocked list.
        ("c1 -> 10.99.0.81 (RFC1918)", Tcp, sa(addr::PRIV_OTHER_V4, 80), Dropped),
        ("c1 -> 192.168.77.1 (RFC1918)", Tcp, sa(addr::RFC1918_192, 80), Dropped),
        ("c1 -> 172.16.77.1 (RFC1918)", Tcp, sa(addr::RFC1918_172, 80), Dropped),
        ("c1 -> 100.64.0.1 (CGNAT)", Tcp, sa(addr::CGNAT_V4, 80), Dropped),
        ("c1 -> 169.254.169.254 (metadata)", Tcp, sa(addr::METADATA_V4, 80), Dropped),
        ("c1 -> 169.254.169.254 udp", Udp, sa(addr::METADATA_V4, echo), Dropped),
        ("c1 ping 169.254.169.254", Ping, sa(addr::METADATA_V4, 0), Dropped),
        ("c1 -> fd99::81 (ULA)", Tcp, sa(addr::PRIV_OTHER_V6, 80), Dropped),
        // S2 step 3: the allow rule opens exactly its CIDR, protocol and port.
        ("c1 -> allowed 10.99.0.80:8080", Http, sa(ok4, 8080), seen(up4)),
        ("c1 -> allowed [fd99::80]:8080", Http, sa(ok6, 8080), seen(up6)),
        ("c1 -> 10.99.0.80:80 (other port)", Tcp, sa(ok4, 80), Dropped),
        ("c1 -> [fd99::80]:80 (other port)", Tcp, sa(ok6, 80), Dropped),
        ("c1 -> 10.99.0.80 udp 8080 (other proto)", Udp, sa(ok4, 8080), Dropped),
        ("c1 -> 10.99.0.81:8080 (neighbour)", Tcp, sa(addr::PRIV_OTHER_V4, 8080), Dropped),
        // S1: the node from the tunnel (DNS over UDP: custom_probes).
        ("c1 -> node tun v4 :53 tcp", Tcp, sa(tun4, 53), Reached),
        ("c1 -> node tun v6 :53 tcp", Tcp, sa(tun6, 53), Reached),
        ("c1 ping node tun v4", Ping, sa(tun4, 0), Reached),
        ("c1 ping node tun v6", Ping, sa(tun6, 0), Reached),
        ("c1 -> node tun v4 :22", Tcp, sa(tun4, 22), Dropped),
        ("c1 -> node tun v6 :22", Tcp, sa(tun6, 22), Dropped),
        ("c1 -> node uplink v4 :22", Tcp, sa(up4, 22), Dropped),
        ("c1 -> node uplink v4 :53 udp", Udp, sa(up4, 53), Dropped),
    ];
    let from_inet = [
        // S5: management from elsewhere than the mesh; no resolver on the uplink.
        ("internet -> uplink v4 :22", Tcp, sa(up4, 22), Dropped),
        ("internet -> uplink v6 :22", Tcp, sa(up6, 22), Dropped),
        ("internet -> uplink v4 :53 udp", Udp, sa(up4, 53), Dropped),
        // S4: nothing unsolicited from the internet to a client.
        ("internet -> c1 tun v4 tcp", Tcp, sa(c1.tun_v4, ctcp), Dropped),
        ("internet -> c1 tun v6 tcp", Tcp, sa(c1.tun_v6, ctcp), Dropped),
        ("internet -> c1 tun v4 udp", Udp, sa(c1.tun_v4, echo), Dropped),
    ];
    let from_node = [
        // The node itself: loopback, and replies to connections it opens.
        ("node -> 127.0.0.1:22 (lo)", Tcp, sa(Ipv4Addr::LOCALHOST, 22), Reached),
        ("node -> [::1]:22 (lo)", Tcp, sa(Ipv6Addr::LOCALHOST, 22), Reached),
        ("node -> own uplink v4 :22 (lo)", Tcp, sa(up4, 22), Reached),
        ("node -> web v4 http (replies)", Http, sa(web4, 80), seen(up4)),
        ("node -> web v6 http (replies)", Http, sa(web6, 80), seen(up6)),
    ];
    for (ns, table) in [(&c1.ns, &from_c1[..]), (&bed.inet, &from_inet[..]), (&bed.node, &from_node[..])] {
        for (l, k, dst, e) in table {
            v.push(Case::new(*l, ns, k.clone(), *dst, e.clone()));
        }
    }
    // The extra destinations: dropped where the table covers them.
    for (label, ip, e) in &ctx.extra {
        v.push(Case::new(format!("c1 -> {label}"), &c1.ns, Tcp, sa(*ip, 80), e.clone()));
    }
    // S2 step 1: sources outside the tunnel prefixes (capture_checks looks for them).
    for (l, src, web) in [
        ("c1 spoofs 10.77.0.5 -> web udp", IpAddr::from(SPOOF_V4), web4),
        ("c1 spoofs fd77::5 -> web udp", SPOOF_V6.into(), web6),
    ] {
        v.push(Case::new(l, &c1.ns, Udp, sa(web, echo), Dropped).src(src));
    }
    // S5: management from the mesh (v4 and v6).
    for port in addr::MGMT_PORTS {
        for (what, src, up) in [
            ("100.100.0.5 -> uplink v4", IpAddr::from(addr::MESH_SRC_V4), up4),
            ("fd10:100::5 -> uplink v6", MESH_SRC_V6.into(), up6),
        ] {
            let l = format!("mesh {what} :{port}");
            v.push(Case::new(l, &bed.inet, Tcp, sa(up, port), Reached).src(src));
        }
    }
    v
}

type Job<'s> = Box<dyn FnOnce() -> Vec<Res> + Send + 's>;

/// Probes the matrix kinds cannot express; run in parallel with the matrix.
fn custom_probes<'s>(ctx: &'s Ctx<'s>, round: u32) -> Vec<Job<'s>> {
    let bed = ctx.bed;
    let c1 = &bed.clients[0];
    let mut v: Vec<Job<'s>> = Vec::new();
    // S1: the resolver on both tunnel addresses (UDP), and an uncached name, which
    // needs the node's own upstream query and its reply (input ct established).
    for server in [sa(addr::NODE_TUN_V4, 53), sa(addr::NODE_TUN_V6, 53)] {
        v.push(Box::new(move || {
            let o = c1
                .ns
                .enter(|| probe::dns_udp(server, "allowed.example.test", 1, T));
            let (ok, d) = match o {
                Ok(Ok(a)) => (
                    a.addrs == vec![IpAddr::from(addr::WEB_V4)],
                    format!("{:?}", a.addrs),
                ),
                Ok(Err(o)) => (false, format!("{o:?}")),
                Err(e) => (false, format!("{e:#}")),
            };
            let fam = if server.is_ipv4() { "v4" } else { "v6" };
            vec![res(format!("c1 dns udp @node tun {fam}"), ok, d)]
        }));
    }
    v.push(Box::new(move || {
        let name = format!("m{round}-{}.example.test", std::process::id());
        let o = c1
            .ns
            .enter(|| probe::dns_udp(sa(addr::NODE_TUN_V4, 53), &name, 1, T));
        let (ok, d) = match o {
            Ok(Ok(a)) => (a.rcode == 3, format!("rcode {}", a.rcode)),
            Ok(Err(o)) => (false, format!("{o:?}")),
            Err(e) => (false, format!("{e:#}")),
        };
        vec![res("c1 dns uncached name (node's upstream reply)", ok, d)]
    }));
    // S5: echo from the mesh only.
    for (label, src, dst, want) in [
        (
            "mesh 100.100.0.5 ping uplink v4",
            Some(IpAddr::from(addr::MESH_SRC_V4)),
            IpAddr::from(addr::NODE_UP_V4),
            true,
        ),
        (
            "mesh fd10:100::5 ping uplink v6",
            Some(MESH_SRC_V6.into()),
            addr::NODE_UP_V6.into(),
            true,
        ),
        (
            "internet ping uplink v4",
            None,
            addr::NODE_UP_V4.into(),
            false,
        ),
        (
            "internet ping uplink v6",
            None,
            addr::NODE_UP_V6.into(),
            false,
        ),
    ] {
        v.push(Box::new(move || {
            let o = bed
                .inet
                .enter(|| match src {
                    Some(s) => craft::ping_from(s, dst, T),
                    None => probe::ping(dst, T),
                })
                .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")));
            let ok = if want {
                o.reached()
            } else {
                o == Outcome::Timeout
            };
            vec![res(label, ok, format!("{o:?}"))]
        }));
    }
    // S5: DHCP replies reach the node (no client listens in the bed, so the node
    // answers port unreachable: proof of delivery); only when rendered.
    if ctx.dhcp {
        let pairs = [
            (
                "dhcp server :67 -> uplink :68",
                sa(addr::INET_V4, 67),
                sa(addr::NODE_UP_V4, 68),
            ),
            (
                "dhcpv6 server fe80::/10 :547 -> uplink :546",
                ctx.inet_ll,
                ctx.node_ll,
            ),
        ];
        for (label, src, dst) in pairs {
            v.push(Box::new(move || {
                let o = bed
                    .inet
                    .enter(|| craft::udp_from(src, dst, b"dhcp-probe", T))
                    .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")));
                vec![res(label, o == Outcome::Refused, format!("{o:?}"))]
            }));
        }
    }
    // ct state invalid: SYN|FIN|ACK to the node's DNS port and to the web host.
    // Verdicts come from the captures (no RST back; nothing on the uplink).
    v.push(Box::new(move || {
        let sends = [
            (
                IpAddr::from(c1.tun_v4),
                sa(addr::NODE_TUN_V4, 53),
                INV_NODE_SPORT,
            ),
            (c1.tun_v6.into(), sa(addr::NODE_TUN_V6, 53), INV_NODE_SPORT),
            (c1.tun_v4.into(), sa(addr::WEB_V4, 80), INV_FWD_SPORT),
            (c1.tun_v6.into(), sa(addr::WEB_V6, 80), INV_FWD_SPORT),
        ];
        let mut out = Vec::new();
        for (src, dst, sport) in sends {
            let r = c1
                .ns
                .enter(|| {
                    craft::send_tcp(src, dst, sport, 0x5a5a_0000 | round, INVALID_FLAGS)?;
                    std::thread::sleep(Duration::from_millis(100));
                    craft::send_tcp(src, dst, sport, 0x5a5a_0000 | round, INVALID_FLAGS)
                })
                .map_err(|e| format!("{e:#}"))
                .and_then(|r| r);
            if let Err(e) = r {
                out.push(res(format!("send invalid segment to {dst}"), false, e));
            }
        }
        out
    }));
    // ICMP redirect triggers: tunnel to tunnel from a fresh source to a fresh
    // destination each round (the kernel rate-limits redirects per address).
    v.push(Box::new(move || {
        let k = (round % 250) as u8 + 1;
        let sends = [
            (
                IpAddr::from(Ipv4Addr::new(10, 66, 1, k)),
                sa(Ipv4Addr::new(10, 66, 2, k), 7),
            ),
            (
                Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 1, u16::from(k)).into(),
                sa(Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 2, u16::from(k)), 7),
            ),
        ];
        let mut out = Vec::new();
        for (src, dst) in sends {
            if let Ok(Err(e)) = c1
                .ns
                .enter(|| probe::udp_send(Some(src), dst, b"redirect-trigger"))
            {
                out.push(res(format!("send redirect trigger to {dst}"), false, e));
            }
        }
        out
    }));
    // Redirects the node itself sends (a raw socket in the node namespace
    // stands in for the kernel): the output chain drops both families
    // whatever produced them. The kernel's own IPv4 redirects for tracked
    // flows are discarded before any output hook once NAT is loaded, so
    // this is the trigger that shows the IPv4 rule.
    if ctx.redirects {
        v.push(Box::new(move || {
            let mut out = Vec::new();
            for (dst, target) in [
                (IpAddr::from(addr::WEB_V4), IpAddr::from(addr::INET_V4)),
                (IpAddr::from(addr::WEB_V6), IpAddr::from(addr::INET_V6)),
            ] {
                match bed.node.enter(|| craft::send_redirect(dst, target)) {
                    Ok(Ok(())) => {}
                    // EPERM: netfilter dropped it on output, as it should; the
                    // capture check below is the verdict either way.
                    Ok(Err(e)) if e.contains("os error 1)") => {}
                    Ok(Err(e)) => out.push(res(format!("send node redirect to {dst}"), false, e)),
                    Err(e) => out.push(res(format!("send node redirect to {dst}"), false, format!("{e:#}"))),
                }
            }
            out
        }));
    }
    v
}

/// Verdicts read from the captures and the web host's log after a round.
fn capture_checks(
    ctx: &Ctx<'_>,
    inet: &[Packet],
    c1p: &[Packet],
    web_log_new: &str,
) -> Vec<Res> {
    let mut v = Vec::new();
    // ct state invalid (input): the node's TCP would answer RST if it got the segment.
    for (fam, node) in [
        ("v4", IpAddr::from(addr::NODE_TUN_V4)),
        ("v6", addr::NODE_TUN_V6.into()),
    ] {
        let rst = c1p.iter().find(|p| {
            p.src == node
                && p.ports() == Some((53, INV_NODE_SPORT))
                && p.tcp_flags().is_some_and(|f| f & capture::TCP_RST != 0)
        });
        v.push(res(
            format!("invalid SYN+FIN+ACK -> node tun {fam}:53 draws no RST"),
            rst.is_none(),
            if rst.is_some() { "RST came back" } else { "" },
        ));
    }
    // ct state invalid (forward): the segment never leaves by the uplink.
    for (fam, web) in [
        ("v4", IpAddr::from(addr::WEB_V4)),
        ("v6", addr::WEB_V6.into()),
    ] {
        let n = inet
            .iter()
            .filter(|p| p.dst == web && p.tcp_flags() == Some(INVALID_FLAGS))
            .count();
        v.push(res(
            format!("invalid SYN+FIN+ACK -> web {fam} never on the uplink"),
            n == 0,
            format!("{n} seen"),
        ));
    }
    // MSS clamp: the SYN that reaches the web host offers at most the tunnel's MSS.
    for (fam, dst, max) in [
        ("v4", IpAddr::from(MSS_V4), ctx.mss4),
        ("v6", MSS_V6.into(), ctx.mss6),
    ] {
        let mss: Vec<u16> = inet
            .iter()
            .filter(|p| {
                p.dst == dst
                    && p.ports().map(|x| x.1) == Some(80)
                    && p.tcp_flags()
                        .is_some_and(|f| f & capture::TCP_SYN != 0 && f & capture::TCP_ACK == 0)
            })
            .filter_map(Packet::tcp_mss)
            .collect();
        let ok = !mss.is_empty() && mss.iter().all(|m| *m <= max);
        v.push(res(
            format!("MSS clamp {fam}: SYN at web offers <= {max}"),
            ok,
            format!("saw {mss:?}"),
        ));
    }
    // Anti-spoof: the spoofed sources appear neither on the uplink nor in the log.
    for (fam, src) in [("v4", IpAddr::from(SPOOF_V4)), ("v6", SPOOF_V6.into())] {
        let wire = inet.iter().filter(|p| p.src == src).count();
        let logged = web_log_new.contains(&format!(" {src} "));
        v.push(res(
            format!("spoofed {src} never reaches the web host"),
            wire == 0 && !logged,
            format!("{fam}: {wire} on the wire, in web log: {logged}"),
        ));
    }
    // Extra blocked destinations: nothing to them leaves by the uplink.
    for (label, ip, e) in &ctx.extra {
        if *e == Expect::Dropped {
            let n = inet.iter().filter(|p| p.dst == *ip).count();
            v.push(res(
                format!("nothing to {label} on the uplink"),
                n == 0,
                format!("{n} seen"),
            ));
        }
    }
    if ctx.redirects {
        let (r4, r6) = redirects(c1p);
        v.push(res(
            "no ICMP/ICMPv6 redirect reaches c1",
            r4 + r6 == 0,
            format!("{r4} v4, {r6} v6"),
        ));
        let from_node = |ip: IpAddr| -> Vec<Packet> { inet.iter().filter(|p| p.src == ip).cloned().collect() };
        let (u4, _) = redirects(&from_node(addr::NODE_UP_V4.into()));
        let (_, u6) = redirects(&from_node(addr::NODE_UP_V6.into()));
        v.push(res("no ICMP redirect from the node on the uplink", u4 == 0, format!("{u4} seen")));
        v.push(res("no ICMPv6 redirect from the node on the uplink", u6 == 0, format!("{u6} seen")));
    }
    v
}

/// ICMP redirects (v4 type 5, v6 type 137) among `pkts`.
fn redirects(pkts: &[Packet]) -> (usize, usize) {
    let r4 = pkts
        .iter()
        .filter(|p| p.proto == capture::PROTO_ICMP && p.icmp_type() == Some(5))
        .count();
    let r6 = pkts
        .iter()
        .filter(|p| p.proto == capture::PROTO_ICMPV6 && p.icmp_type() == Some(137))
        .count();
    (r4, r6)
}

/// Client 2 forgets the node and rebinds to a new port; it reconnects after
/// [`shadow_send`] so its first packets form a new flow (the `udp dport 51820
/// accept` rule must admit it; a shadowing mapping would steal it).
fn c2_forget(ctx: &Ctx<'_>, port: u16) {
    let c2 = &ctx.bed.clients[1];
    // Peer first, port second, in two commands: wireguard-go sends keepalives
    // to its peers from a new port as soon as it rebinds, and such a packet
    // would give client 2 a conntrack entry before the shadowing one.
    c2.ns
        .run(&["wg", "set", &c2.ifname, "peer", &ctx.node_key, "remove"])
        .expect("client 2: peer removed");
    c2.ns
        .run(&["wg", "set", &c2.ifname, "listen-port", &port.to_string()])
        .expect("client 2: new port");
}

/// The fresh tunnel-side source client 1 shadows from in round `n`.
fn shadow_src(n: u32) -> (Ipv4Addr, Ipv6Addr) {
    let k = (n % 250) as u8 + 1;
    (Ipv4Addr::new(10, 66, 3, k), Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 3, u16::from(k)))
}

/// Client 1 sends from source port 51820 (the node's listen port) to client 2's
/// outer address and new port: with masquerade keeping the port, the node's
/// conntrack would map client 2's handshake to client 1 (CVE-2021-3773). It
/// also sends from that port to the web host over both families, where the
/// capture shows which source port the node gave it. The socket stays open
/// for the round: whatever it receives from client 2's outer address was
/// stolen from the node.
fn shadow_send(ctx: &Ctx<'_>, port: u16, n: u32) -> Option<std::net::UdpSocket> {
    let (c1, c2) = (&ctx.bed.clients[0], &ctx.bed.clients[1]);
    let (s4, s6) = shadow_src(n);
    for (fam, a) in [("-4", format!("{s4}/32")), ("-6", format!("{s6}/128"))] {
        let _ = c1.ns.ip(&[fam, "addr", "add", &a, "dev", &c1.ifname, "nodad"]);
    }
    let dst = sa(c2.up_v4, port);
    let sock = c1
        .ns
        .enter(|| {
            let s = std::net::UdpSocket::bind(sa(s4, addr::WG_PORT)).ok()?;
            for _ in 0..3 {
                s.send_to(b"port-shadow", dst).ok()?;
            }
            s.send_to(b"port-shadow", sa(addr::WEB_V4, addr::ECHO_UDP)).ok()?;
            let s6 = std::net::UdpSocket::bind(sa(s6, addr::WG_PORT)).ok()?;
            s6.send_to(b"port-shadow", sa(addr::WEB_V6, addr::ECHO_UDP)).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        })
        .ok()
        .flatten();
    // The IPv6 source is done with; left on the interface, it could become
    // client 1's preferred source once its AllowedIPs are narrow again.
    let _ = c1.ns.ip(&["-6", "addr", "del", &format!("{s6}/128"), "dev", &c1.ifname]);
    sock
}

/// Remove round `n`'s IPv4 shadow source from client 1 (after the round).
fn shadow_done(ctx: &Ctx<'_>, n: u32) {
    let c1 = &ctx.bed.clients[0];
    let _ = c1.ns.ip(&["-4", "addr", "del", &format!("{}/32", shadow_src(n).0), "dev", &c1.ifname]);
}

/// Datagrams client 1's shadowing socket received from `from` (stolen).
fn stolen_from(sock: &std::net::UdpSocket, from: IpAddr) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok((_, peer)) = sock.recv_from(&mut buf) {
        if peer.ip() == from {
            n += 1;
        }
    }
    n
}

/// One run of the whole matrix against the live table.
fn round(ctx: &Ctx<'_>, n: u32) -> Vec<Res> {
    let (bed, shadow) = (ctx.bed, ctx.shadow);
    let _ = bed.node.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
    let _ = bed.inet.ip(&["-6", "neigh", "flush", "dev", "br0"]);
    let log_at = std::fs::metadata(&bed.inet_log)
        .map(|m| m.len())
        .unwrap_or(0);
    let cap_inet = Capture::start(&bed.inet).expect("capture in the internet namespace");
    let cap_c1 = Capture::start(&bed.clients[0].ns).expect("capture in client 1");
    let port = 52000 + n as u16;
    let mut out_pre = Vec::new();
    c2_forget(ctx, port);
    let shadow_sock = if shadow {
        let s = shadow_send(ctx, port, n);
        if s.is_none() {
            out_pre.push(res("port shadow: bind and send from c1's tunnel address :51820", false, "failed"));
        }
        s
    } else {
        None
    };
    bed.clients[1]
        .connect(&ctx.node_key)
        .expect("client 2 reconnects");

    let cs = cases(ctx);
    let mut out = std::mem::take(&mut out_pre);
    std::thread::scope(|s| {
        let jobs: Vec<_> = custom_probes(ctx, n)
            .into_iter()
            .map(|j| s.spawn(j))
            .collect();
        let rows = matrix::run(&cs, T);
        for r in rows {
            out.push(res(r.label, r.ok, format!("{:?}", r.got)));
        }
        for j in jobs {
            out.extend(j.join().expect("probe thread"));
        }
    });
    // Let the last packets (late answers, retransmits) land in the captures.
    std::thread::sleep(Duration::from_millis(100));
    let inet = cap_inet.stop();
    let c1p = cap_c1.stop();
    let log = std::fs::read(&bed.inet_log).unwrap_or_default();
    let web_log_new =
        String::from_utf8_lossy(log.get(log_at as usize..).unwrap_or_default()).into_owned();
    out.extend(capture_checks(ctx, &inet, &c1p, &web_log_new));
    if let Some(sock) = shadow_sock {
        let stolen = stolen_from(&sock, IpAddr::from(bed.clients[1].up_v4));
        shadow_done(ctx, n);
        out.push(res("port shadow: c1's socket on :51820 receives none of c2's packets", stolen == 0, format!("{stolen} received")));
        // Masqueraded client UDP never leaves from the listen port.
        for (fam, node) in [("v4", IpAddr::from(addr::NODE_UP_V4)), ("v6", IpAddr::from(addr::NODE_UP_V6))] {
            let web = if fam == "v4" { IpAddr::from(addr::WEB_V4) } else { IpAddr::from(addr::WEB_V6) };
            let sports: Vec<u16> = inet
                .iter()
                .filter(|p| p.src == node && p.dst == web && p.proto == 17 && p.udp_payload() == Some(b"port-shadow".as_slice()))
                .filter_map(|p| p.ports().map(|(sp, _)| sp))
                .collect();
            out.push(res(
                format!("port shadow {fam}: client UDP from :51820 leaves the uplink from another port"),
                !sports.is_empty() && !sports.contains(&addr::WG_PORT),
                format!("source ports seen {sports:?}"),
            ));
        }
    }
    out
}

fn table(rows: &[Res]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{} {:<58} {}",
                if r.ok { "ok  " } else { "FAIL" },
                r.label,
                r.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A command line run inside `ns` (split on whitespace); it must succeed.
fn cmd(ns: &Netns, line: &str) -> String {
    let argv: Vec<&str> = line.split_whitespace().collect();
    ns.run(&argv).unwrap_or_else(|e| panic!("{line}: {e:#}"))
}

/// The extra hosts in the internet namespace and the node's on-link routes to them.
fn add_hosts(bed: &TestBed) {
    let (inet, node) = (&bed.inet, &bed.node);
    cmd(inet, &format!("ip addr add {MSS_V4}/24 dev br0"));
    cmd(inet, &format!("ip -6 addr add {MSS_V6}/64 dev br0 nodad"));
    cmd(
        inet,
        &format!("ip -6 addr add {MESH_SRC_V6}/64 dev br0 nodad"),
    );
    cmd(node, &format!("ip -6 route add {MESH_V6} dev eth0"));
    // A DHCPv6 server's source (the bridge may have no link-local address of its own).
    cmd(inet, "ip -6 addr add fe80::d:1/64 dev br0 nodad");
    for (_, ip, route) in extra_destinations() {
        let Some(route) = route else { continue };
        let (fam, host) = match ip {
            IpAddr::V4(_) => ("-4", format!("{ip}/32")),
            IpAddr::V6(_) => ("-6", format!("{ip}/128 nodad")),
        };
        cmd(inet, &format!("ip {fam} addr add {host} dev br0"));
        cmd(node, &format!("ip {fam} route add {route} dev eth0"));
    }
    let up4 = addr::NODE_UP_V4;
    // The internet routes the spoofed sources back to the node (so a strict
    // reverse-path check there cannot hide an arrival).
    cmd(inet, &format!("ip route add 10.77.0.0/24 via {up4}"));
    cmd(
        inet,
        &format!("ip -6 route add fd77::/64 via {}", addr::NODE_UP_V6),
    );
}

/// `dev`'s IPv6 link-local address in `ns`, with `port` and its scope.
/// (The kernel adds it shortly after the link has carrier.)
fn link_local(ns: &Netns, dev: &str, port: u16) -> SocketAddr {
    let what = format!("link-local address on {dev}");
    wait_until(Duration::from_secs(5), &what, || {
        let out = ns.ip(&["-j", "-6", "addr", "show", "dev", dev, "scope", "link"]);
        let j: serde_json::Value = serde_json::from_str(&out.ok()?).ok()?;
        let ifindex = j[0]["ifindex"].as_u64()? as u32;
        // (`ip -j` leaves empty objects for the addresses the filter hides.)
        let usable = |a: &&serde_json::Value| a["scope"] == "link" && a.get("tentative").is_none();
        let a = j[0]["addr_info"].as_array()?.iter().find(usable)?;
        let a: Ipv6Addr = a["local"].as_str()?.parse().ok()?;
        Some(SocketAddr::V6(std::net::SocketAddrV6::new(
            a, port, 0, ifindex,
        )))
    })
    .unwrap()
}

fn mtu(ns: &Netns, dev: &str) -> u16 {
    let j: serde_json::Value =
        serde_json::from_str(&cmd(ns, &format!("ip -j link show dev {dev}"))).unwrap();
    j[0]["mtu"].as_u64().expect("mtu") as u16
}

/// The bed (2 clients, extra hosts), palisaded with an allow rule, a v6 mesh
/// and a DHCP uplink, listeners on the management ports, both clients
/// handshaken and the resolver answering.
fn setup() -> (TestBed, Palisade) {
    let mut bed = TestBed::new(2, bins()).expect("build test bed");
    add_hosts(&bed);
    let allow = |cidr: String| format!("cidr = \"{cidr}\"\nprotocol = \"tcp\"\nports = [8080]");
    let opts = NodeOptions {
        allow: vec![
            allow(format!("{}/32", addr::PRIV_ALLOWED_V4)),
            allow(format!("{}/128", addr::PRIV_ALLOWED_V6)),
        ],
        ..Default::default()
    };
    let base = render_node_toml(&bed, &opts);
    let mesh = format!("mesh = [\"{}\"]", addr::MESH_CIDR);
    let uplink = "[[uplink]]\ninterface = \"eth0\"\n";
    assert!(
        base.contains(&mesh) && base.contains(uplink),
        "node.toml layout changed:\n{base}"
    );
    // A v6 mesh (so the v6 mesh rules can match) and a DHCP uplink (so the DHCP
    // rules are rendered; palisaded runs no DHCP client unless it is PID 1).
    let mesh2 = format!("mesh = [\"{}\", \"{MESH_V6}\"]", addr::MESH_CIDR);
    let toml = base
        .replace(&mesh, &mesh2)
        .replace(uplink, &format!("{uplink}dhcp = true\n"));
    // Drift repair effectively off: the mutants must stay as loaded.
    let run = NodeOptions { reconcile_secs: Some(86400), ..Default::default() };
    let p = Palisade::start_with_config(&mut bed, &toml, &run).expect("start palisaded");
    bed.start_node_listener(&["tcp:[::]:22", "tcp:[::]:9100"])
        .expect("node listeners");
    let c1 = &bed.clients[0];
    cmd(
        &c1.ns,
        &format!("wg set {} listen-port {C1_PORT}", c1.ifname),
    );
    for c in &bed.clients {
        c.connect(&p.public_key).unwrap();
    }
    for i in [1, 2] {
        bed.wait_handshake(i, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("client {i}: {e:#}"));
    }
    let dns = sa(addr::NODE_TUN_V4, 53);
    wait_until(Duration::from_secs(10), "resolver in the tunnel", || {
        let a = c1
            .ns
            .enter(|| probe::dns_udp(dns, "allowed.example.test", 1, T));
        a.ok()?.ok()
    })
    .unwrap();
    // Client 1 routes whose SYN offers more than the tunnel carries (MSS probes).
    let wg1 = &c1.ifname;
    cmd(
        &c1.ns,
        &format!("ip route add {MSS_V4}/32 dev {wg1} advmss 1460"),
    );
    cmd(
        &c1.ns,
        &format!("ip -6 route add {MSS_V6}/128 dev {wg1} advmss 1440"),
    );
    (bed, p)
}

/// Take down the first walls (module doc) so the probes see the firewall's
/// own; returns the command lines (node namespace) that put them back.
fn walls_down(bed: &TestBed, redirect_rules: bool) -> Vec<String> {
    let (node, wg, c1) = (&bed.node, &bed.node_if, &bed.clients[0]);
    let key = &c1.keys.public_key;
    let own = format!("{}/32,{}/128", c1.tun_v4, c1.tun_v6);
    // 10.66.1/24 and fd66::1:0/112: redirect triggers; 10.66.3/24 and
    // fd66::3:0/112: a fresh port-shadow source each round (the kernel maps a
    // source it has seen to the port it gave it before, so a reused source
    // would hide a missing rule).
    let wide = format!("{own},{SPOOF_V4}/32,{SPOOF_V6}/128,10.66.1.0/24,fd66::1:0/112,10.66.3.0/24,fd66::3:0/112");
    cmd(node, &format!("wg set {wg} peer {key} allowed-ips {wide}"));
    cmd(node, &format!("ip route add 10.77.0.0/24 dev {wg}"));
    let mut undo = vec![
        format!("wg set {wg} peer {key} allowed-ips {own}"),
        format!("ip route del 10.77.0.0/24 dev {wg}"),
    ];
    if redirect_rules {
        for dev in [wg.as_str(), "eth0", "all"] {
            let k = format!("net.ipv4.conf.{dev}.send_redirects");
            let old = cmd(node, &format!("sysctl -n {k}"));
            cmd(node, &format!("sysctl -q -w {k}=1"));
            undo.push(format!("sysctl -q -w {k}={}", old.trim()));
        }
    }
    undo
}

/// Print the rule -> probes table (markdown: docs/security.md quotes it) and
/// the probes no deletion flips; returns the rules that survived.
fn report(caught: &[(Rule, Vec<Res>, Duration)], control: &[Res], wg: &str) -> Vec<Rule> {
    let mut survivors = Vec::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nmutation table ({} rules, {} probes):",
        caught.len(),
        control.len()
    );
    let _ = writeln!(out, "| chain | rule | probes that fail without it | time |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (rule, failed, took) in caught {
        let labels: Vec<&str> = failed.iter().map(|r| r.label.as_str()).collect();
        let shown = match labels.len() {
            0 => {
                survivors.push(rule.clone());
                "**none: SURVIVED**".into()
            }
            n if n > 6 => format!("{} (+{} more)", labels[..6].join("; "), n - 6),
            _ => labels.join("; "),
        };
        let text = rule.text.replace(wg, "wg0").replace('|', "\\|");
        let secs = took.as_secs_f64();
        let _ = writeln!(out, "| {} | `{text}` | {shown} | {secs:.1}s |", rule.chain);
    }
    println!("{out}");
    let mut flips: BTreeMap<&str, usize> = control.iter().map(|r| (r.label.as_str(), 0)).collect();
    for r in caught.iter().flat_map(|(_, failed, _)| failed) {
        *flips.entry(r.label.as_str()).or_default() += 1;
    }
    let never: Vec<&str> = flips
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(l, _)| *l)
        .collect();
    // Still controls: each shows its path is open or closed as it should be.
    println!(
        "probes no single deletion flips ({}): {}",
        never.len(),
        never.join("; ")
    );
    survivors
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn every_firewall_rule_is_caught_by_a_probe() {
    let t0 = Instant::now();
    let (bed, _p) = setup();
    let node = &bed.node;
    // What palisaded rendered (the SIGHUP at the end must bring back exactly this).
    let pristine = ruleset::listing(node).unwrap();
    let rules = ruleset::rules(node).unwrap();
    let has = |pat: &str| rules.iter().any(|r| r.text.contains(pat));
    let dropped: Vec<Span> = ruleset::dropped_destinations(node).unwrap();
    let undo = walls_down(&bed, has("redirect"));
    let extra = extra_destinations()
        .into_iter()
        .map(|(l, ip, _)| match dropped.iter().find(|s| s.contains(ip)) {
            Some(s) => (format!("{l} [blocked by {}]", s.text), ip, Expect::Dropped),
            None => (format!("{l} [not blocked]"), ip, Expect::Reached),
        })
        .collect();
    let wg_mtu = mtu(node, &bed.node_if);
    let ctx = Ctx {
        bed: &bed,
        node_key: bed.node_dump().unwrap().public_key,
        shadow: has("masquerade to :"),
        redirects: has("redirect"),
        dhcp: has("dport 68") || has("dport 546"),
        inet_ll: link_local(&bed.inet, "br0", 547),
        node_ll: link_local(node, "eth0", 546),
        extra,
        mss4: wg_mtu - 40,
        mss6: wg_mtu - 60,
    };
    let on = |b: bool| if b { "on" } else { "off (no such rule)" };
    println!(
        "setup {:.1?}: {} rules; tunnel MTU {wg_mtu}; port-shadow probe {}; redirect probes {}; DHCP probes {}",
        t0.elapsed(),
        rules.len(),
        on(ctx.shadow),
        on(ctx.redirects),
        on(ctx.dhcp),
    );
    for (l, _, e) in &ctx.extra {
        println!("  extra destination {l}: expect {e:?}");
    }

    // Control: restoring the listing gives the same table, and the pristine
    // table passes the whole matrix.
    ruleset::restore(node, &pristine, bed.log_dir()).unwrap();
    assert_eq!(
        ruleset::listing(node).unwrap(),
        pristine,
        "a restore reproduces the table"
    );
    let control = round(&ctx, 0);
    println!("control round on the pristine table:\n{}", table(&control));
    assert!(
        control.iter().all(|r| r.ok),
        "the matrix fails on the pristine table:\n{}",
        table(&control)
    );

    // The mutations: one rule deleted per round.
    let mut caught: Vec<(Rule, Vec<Res>, Duration)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let ts = Instant::now();
        ruleset::restore(node, &pristine, bed.log_dir()).unwrap();
        ruleset::delete(node, rule).unwrap_or_else(|e| panic!("delete {rule}: {e:#}"));
        let failed: Vec<Res> = round(&ctx, i as u32 + 1)
            .into_iter()
            .filter(|r| !r.ok)
            .collect();
        let took = ts.elapsed();
        let verdict = match failed.len() {
            0 => "SURVIVED".to_string(),
            n => format!("caught by {n}"),
        };
        println!(
            "[{:>2}/{}] {took:.1?} {:<70} {verdict}",
            i + 1,
            rules.len(),
            rule.to_string()
        );
        caught.push((rule.clone(), failed, took));
    }
    let n = rules.len() as u32;
    ruleset::restore(node, &pristine, bed.log_dir()).unwrap();
    let again = round(&ctx, n + 1);
    assert!(
        again.iter().all(|r| r.ok),
        "the matrix fails on the restored table:\n{}",
        table(&again)
    );
    let survivors = report(&caught, &control, &bed.node_if);
    println!(
        "mutations done in {:.1?}: {} rules, {} caught, {} survived",
        t0.elapsed(),
        caught.len(),
        caught.len() - survivors.len(),
        survivors.len()
    );

    // Put the walls back, leave a mutant in place and let one reconcile pass
    // (SIGHUP: the pass the timer runs) repair it.
    for line in &undo {
        cmd(node, line);
    }
    ruleset::delete(node, &rules[0]).unwrap();
    let th = Instant::now();
    let hup = nix::sys::signal::Signal::SIGHUP;
    bed.node_procs
        .palisaded
        .as_ref()
        .unwrap()
        .signal(hup)
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "palisaded's table after SIGHUP",
        || {
            (ruleset::listing(node).ok()? == pristine).then_some(())
        },
    )
    .unwrap();
    println!(
        "reconcile (SIGHUP) restored palisaded's table in {:.1?}",
        th.elapsed()
    );
    // Client 2 starts a new flow: the last round's shadowing mapping is alive.
    c2_forget(&ctx, 52000 + n as u16 + 4);
    bed.clients[1].connect(&ctx.node_key).unwrap();
    let core = [
        "c1 -> web v4 http",
        "c1 -> web v6 http",
        "c2 -> web v4 http",
        "c1 -> c2 tun v4 tcp",
        "c1 -> 169.254.169.254 (metadata)",
        "mesh 100.100.0.5 -> uplink v4 :22",
    ];
    let mut after: Vec<Case<'_>> = cases(&ctx);
    after.retain(|c| core.contains(&c.label.as_str()));
    assert_eq!(after.len(), core.len(), "core probes renamed");
    let back = matrix::run(&after, T);
    println!("after the repair:\n{}", matrix::table(&back));
    assert!(
        back.iter().all(|r| r.ok),
        "after the repair:\n{}",
        matrix::table(&back)
    );

    println!("total {:.1?}", t0.elapsed());
    let list: Vec<String> = survivors.iter().map(|r| format!("  {r}")).collect();
    assert!(
        survivors.is_empty(),
        "rules no probe notices (add a probe for each):\n{}",
        list.join("\n")
    );
}
