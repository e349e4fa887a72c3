//! The network test bed (docs/testing.md), built from namespaces on this machine.
//!
//! ```text
//! pal-<pid>-<n>-inet  bridge br0: 203.0.113.1/24, 2001:db8:113::1/64 ("the internet")
//!   also on br0: web 203.0.113.80 / 2001:db8:113::80 (pal-testhost: tcp 80, 8080; udp 7, 8080)
//!                DNS 203.0.113.53 / 2001:db8:113::53 (dnsmasq, zone example.test;
//!                every name under canary.example.test resolves to the web host)
//!                "private" destinations clients must not reach: 10.99.0.80, 10.99.0.81,
//!                100.64.0.1, 169.254.169.254, 192.168.77.1, 172.16.77.1, fd99::80, fd99::81
//!                a management-mesh source 100.100.0.5
//!   veth n0 <-> pal-<pid>-<n>-node eth0 203.0.113.10/24, 2001:db8:113::10/64
//!                (routes the private ranges on-link through eth0, so only the
//!                node's firewall stands between a client and them)
//!   veth cN <-> pal-<pid>-<n>-cN   eth0 203.0.113.(100+N)/32, 2001:db8:113::(100+N)/128
//!                wireguard-go `pw<pid><n>c<N>`, tunnel 10.66.0.(1+N)/32, fd66::(1+N)/128,
//!                default routes through the tunnel, only the node endpoint via eth0;
//!                pal-testhost: tcp 7777, udp 7 (to prove client<->client is dropped)
//! ```
//! Every process is killed and every namespace deleted on drop, on panic too.

use crate::ns::{run_cmd, wait_until, Netns, Proc};
use crate::wg::{self, gen_keypair, KeyPair};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Fixed addresses of the test bed (all documentation or private ranges, all
/// hosted in namespaces this process created).
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    pub const INET_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const INET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
    pub const WEB_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
    pub const WEB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x80);
    pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
    pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x53);
    pub const NODE_UP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const NODE_UP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
    pub const NODE_TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
    pub const NODE_TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 1);
    pub const WG_PORT: u16 = 51820;
    /// The second web host, in a private range: the allowed-egress target.
    pub const PRIV_ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 80);
    pub const PRIV_ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0x80);
    /// A neighbour of the allowed host, same private range, never allowed.
    pub const PRIV_OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 81);
    pub const PRIV_OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0x81);
    pub const CGNAT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    pub const RFC1918_192: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    pub const RFC1918_172: Ipv4Addr = Ipv4Addr::new(172, 16, 77, 1);
    /// A source inside the management mesh (100.100.0.0/16).
    pub const MESH_SRC_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 5);
    pub const MESH_CIDR: &str = "100.100.0.0/16";
    /// TCP ports of node services (the management ports in the node config).
    pub const MGMT_PORTS: [u16; 2] = [22, 9100];
    /// Ports the internet test host serves.
    pub const WEB_HTTP: u16 = 80;
    pub const WEB_ALT: u16 = 8080;
    pub const ECHO_UDP: u16 = 7;
    /// Client-side listener (client<->client probes).
    pub const CLIENT_TCP: u16 = 7777;

    pub fn client_tun_v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 66, 0, 1 + i as u8)
    }
    pub fn client_tun_v6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 1 + i as u16)
    }
    pub fn client_up_v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 100 + i as u8)
    }
    pub fn client_up_v6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x100 + i as u16)
    }
}

static BED_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where the test binaries are. Tests pass `env!("CARGO_BIN_EXE_pal-testhost")`.
#[derive(Debug, Clone)]
pub struct Bins {
    pub testhost: PathBuf,
}

/// One WireGuard client: its own namespace, wireguard-go, key and listener.
#[derive(Debug)]
pub struct Client {
    pub index: usize,
    wg_proc: Proc,
    pub host: Proc,
    pub ifname: String,
    pub keys: KeyPair,
    pub tun_v4: Ipv4Addr,
    pub tun_v6: Ipv6Addr,
    pub up_v4: Ipv4Addr,
    pub up_v6: Ipv6Addr,
    pub ns: Netns,
}

impl Client {
    /// Peer the client with the node (`node_public_key`) at 203.0.113.10:51820 and
    /// route everything through the tunnel.
    pub fn connect(&self, node_public_key: &str) -> Result<()> {
        let ep = format!("{}:{}", addr::NODE_UP_V4, addr::WG_PORT);
        self.ns.run(&[
            "wg",
            "set",
            &self.ifname,
            "peer",
            node_public_key,
            "endpoint",
            &ep,
            "allowed-ips",
            "0.0.0.0/0,::/0",
        ])?;
        self.ns
            .ip(&["route", "replace", "default", "dev", &self.ifname])?;
        self.ns
            .ip(&["-6", "route", "replace", "default", "dev", &self.ifname])?;
        Ok(())
    }

    /// Reconfigure this client from a wg-quick config (as `palisade client-config`
    /// or `peers add --generate-key` print it): key, addresses, the one peer,
    /// routes through the tunnel except the endpoint.
    pub fn apply_wg_quick(&self, text: &str, key_dir: &Path) -> Result<wg::QuickConfig> {
        let q = wg::parse_quick(text)?;
        let key = key_dir.join(format!("c{}-quick.key", self.index));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&key)?;
            f.write_all(format!("{}\n", q.private_key).as_bytes())?;
        }
        self.ns.run(&[
            "wg",
            "set",
            &self.ifname,
            "private-key",
            &key.to_string_lossy(),
        ])?;
        for p in self.dump()?.peers {
            self.ns
                .run(&["wg", "set", &self.ifname, "peer", &p.public_key, "remove"])?;
        }
        self.ns.ip(&["addr", "flush", "dev", &self.ifname])?;
        for a in &q.addresses {
            let fam = if a.contains(':') { "-6" } else { "-4" };
            self.ns.ip(&[fam, "addr", "add", a, "dev", &self.ifname])?;
        }
        let mut args = vec![
            "wg".to_string(),
            "set".into(),
            self.ifname.clone(),
            "peer".into(),
            q.peer_public_key.clone(),
            "endpoint".into(),
            q.endpoint.clone(),
            "allowed-ips".into(),
            q.allowed_ips.join(","),
        ];
        if let Some(k) = q.persistent_keepalive {
            args.push("persistent-keepalive".into());
            args.push(k.to_string());
        }
        if let Some(psk) = &q.preshared_key {
            let f = key_dir.join(format!("c{}-quick.psk", self.index));
            std::fs::write(&f, format!("{psk}\n"))?;
            args.push("preshared-key".into());
            args.push(f.to_string_lossy().into_owned());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns.run(&argv)?;
        if let Some(m) = q.mtu {
            self.ns
                .ip(&["link", "set", &self.ifname, "mtu", &m.to_string()])?;
        }
        self.ns
            .ip(&["route", "replace", "default", "dev", &self.ifname])?;
        self.ns
            .ip(&["-6", "route", "replace", "default", "dev", &self.ifname])?;
        Ok(q)
    }

    /// The client's own view of its WireGuard interface.
    pub fn dump(&self) -> Result<wg::WgDump> {
        wg::dump(&self.ns, &self.ifname)
    }

    pub fn wg_running(&mut self) -> bool {
        self.wg_proc.running()
    }
}

/// The node side: a plain wireguard-go server (harness self-test) or palisaded.
#[derive(Debug, Default)]
pub struct NodeProcs {
    pub palisaded: Option<Proc>,
    pub plain_wg: Option<Proc>,
    pub host: Option<Proc>,
}

/// The whole bed. Field order is drop order: processes, clients, node, internet.
#[derive(Debug)]
pub struct TestBed {
    pub node_procs: NodeProcs,
    host_procs: Vec<Proc>,
    pub clients: Vec<Client>,
    pub node: Netns,
    pub inet: Netns,
    /// Logs, keys and node state (kept when a test panics; the path is printed).
    pub dir: tempfile::TempDir,
    /// `pal-<pid>-<n>`: prefix of every namespace of this bed.
    pub id: String,
    /// The node's WireGuard interface name (unique on the machine: UAPI sockets are global).
    pub node_if: String,
    pub bins: Bins,
    /// Log of the internet test host (web, private hosts).
    pub inet_log: PathBuf,
}

fn base36(n: u32) -> char {
    std::char::from_digit(n % 36, 36).expect("digit < 36")
}

impl TestBed {
    /// Build the internet, node and `clients` client namespaces, start the test
    /// hosts and the upstream DNS. No node WireGuard yet: call
    /// [`TestBed::start_plain_node`] or [`crate::palisade::Palisade::start`].
    pub fn new(clients: usize, bins: Bins) -> Result<TestBed> {
        TestBed::build(clients, bins, true)
    }

    /// The same bed for a QEMU guest node: no node namespace uplink (the node
    /// namespace stays empty); attach the guest with [`TestBed::add_tap`] and give
    /// it 203.0.113.10/24, 2001:db8:113::10/64 and gateway 203.0.113.1 (the
    /// private destinations are local to the internet namespace, so the guest
    /// reaches them through that gateway unless its firewall drops them).
    pub fn new_for_guest(clients: usize, bins: Bins) -> Result<TestBed> {
        TestBed::build(clients, bins, false)
    }

    /// Create tap `name` in the internet namespace, on br0. QEMU must run in that
    /// namespace (`bed.inet.command("qemu-system-x86_64")`) to open it. A tap of
    /// that name left by an earlier QEMU of this bed (a guest restarted after a
    /// power cut) is reused.
    pub fn add_tap(&self, name: &str) -> Result<()> {
        if self.inet.ip(&["link", "show", "dev", name]).is_ok() {
            return Ok(());
        }
        self.inet
            .ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.inet
            .ip(&["link", "set", name, "master", "br0", "up"])?;
        Ok(())
    }

    fn build(clients: usize, bins: Bins, node_uplink: bool) -> Result<TestBed> {
        preflight()?;
        crate::ns::cleanup_on_signal();
        let pid = std::process::id();
        let n = BED_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("pal-{pid}-{n}");
        let tag = format!("pw{pid}{}", base36(n));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()?;
        let inet = Netns::create(&format!("{id}-inet"))?;
        let node = Netns::create(&format!("{id}-node"))?;
        let inet_log = dir.path().join("inet-hosts.received");
        let mut bed = TestBed {
            node_procs: NodeProcs::default(),
            host_procs: Vec::new(),
            clients: Vec::new(),
            node,
            inet,
            dir,
            id,
            node_if: format!("{tag}n"),
            bins,
            inet_log,
        };
        bed.build_inet()?;
        if node_uplink {
            bed.build_node_uplink()?;
        }
        for i in 1..=clients {
            let c = bed.build_client(i, &tag)?;
            bed.clients.push(c);
        }
        Ok(bed)
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    fn build_inet(&mut self) -> Result<()> {
        let ns = &self.inet;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        let v4 = [
            format!("{}/24", addr::INET_V4),
            format!("{}/24", addr::DNS_V4),
            format!("{}/24", addr::WEB_V4),
            format!("{}/24", addr::PRIV_ALLOWED_V4),
            format!("{}/24", addr::PRIV_OTHER_V4),
            format!("{}/10", addr::CGNAT_V4),
            format!("{}/16", addr::METADATA_V4),
            format!("{}/24", addr::RFC1918_192),
            format!("{}/16", addr::RFC1918_172),
            format!("{}/16", addr::MESH_SRC_V4),
        ];
        for a in &v4 {
            ns.ip(&["addr", "add", a, "dev", "br0"])?;
        }
        let v6 = [
            format!("{}/64", addr::INET_V6),
            format!("{}/64", addr::DNS_V6),
            format!("{}/64", addr::WEB_V6),
            format!("{}/64", addr::PRIV_ALLOWED_V6),
            format!("{}/64", addr::PRIV_OTHER_V6),
        ];
        for a in &v6 {
            ns.ip(&["-6", "addr", "add", a, "dev", "br0", "nodad"])?;
        }
        // The internet knows where the tunnel prefixes are (for the unsolicited
        // uplink -> client probes); with masquerade, replies never need this.
        ns.ip(&[
            "route",
            "add",
            "10.66.0.0/16",
            "via",
            &addr::NODE_UP_V4.to_string(),
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd66::/64",
            "via",
            &addr::NODE_UP_V6.to_string(),
        ])?;

        let log = self.inet_log.to_string_lossy().into_owned();
        let th = self.bins.testhost.to_string_lossy().into_owned();
        // UDP is bound per address: a wildcard socket would answer from the
        // bridge's primary address and the reply would not match the flow.
        let mut argv: Vec<String> = vec![
            th,
            "serve".into(),
            "--log".into(),
            log,
            "tcp:[::]:80".into(),
            "tcp:[::]:8080".into(),
        ];
        for a in v4.iter().chain(v6.iter()) {
            let ip: IpAddr = a.split('/').next().unwrap_or_default().parse()?;
            for port in [addr::ECHO_UDP, addr::WEB_ALT] {
                argv.push(format!("udp:{}", SocketAddr::new(ip, port)));
            }
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let web = ns.spawn_ready(
            "inet-testhost",
            self.dir.path(),
            &argv,
            "ready",
            Duration::from_secs(5),
        )?;
        self.host_procs.push(web);
        let dns = ns.spawn(
            "inet-dnsmasq",
            self.dir.path(),
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                &format!("--listen-address={}", addr::DNS_V4),
                &format!("--listen-address={}", addr::DNS_V6),
                "--local=/example.test/",
                &format!(
                    "--host-record=allowed.example.test,{},{}",
                    addr::WEB_V4,
                    addr::WEB_V6
                ),
                &format!(
                    "--host-record=www.example.test,{},{}",
                    addr::WEB_V4,
                    addr::WEB_V6
                ),
                &format!("--host-record=ads.example.test,{}", addr::WEB_V4),
                &format!("--host-record=tracker.ads.example.test,{}", addr::WEB_V4),
                &format!("--host-record=adult.example.test,{}", addr::WEB_V4),
                // Every name under canary.example.test resolves (zero-log canaries).
                &format!("--address=/canary.example.test/{}", addr::WEB_V4),
                &format!("--address=/canary.example.test/{}", addr::WEB_V6),
                "--user=root",
            ],
        )?;
        self.host_procs.push(dns);
        let dns_addr = SocketAddr::new(addr::DNS_V4.into(), 53);
        wait_until(Duration::from_secs(5), "dnsmasq answering", || {
            self.inet
                .enter(|| {
                    crate::probe::dns_udp(
                        dns_addr,
                        "allowed.example.test",
                        1,
                        Duration::from_millis(200),
                    )
                    .ok()
                })
                .ok()
                .flatten()
        })?;
        Ok(())
    }

    fn build_node_uplink(&mut self) -> Result<()> {
        veth(&self.node, "eth0", &self.inet, "n0")?;
        let ns = &self.node;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::NODE_UP_V4),
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::NODE_UP_V6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        // Private destinations are on-link behind the uplink: without the node's
        // firewall, a client could reach every one of them.
        for r in [
            "10.99.0.0/24",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "192.168.77.0/24",
            "172.16.0.0/16",
        ] {
            ns.ip(&["route", "add", r, "dev", "eth0"])?;
        }
        ns.ip(&["-6", "route", "add", "fd99::/64", "dev", "eth0"])?;
        Ok(())
    }

    fn build_client(&mut self, i: usize, tag: &str) -> Result<Client> {
        let ns = Netns::create(&format!("{}-c{i}", self.id))?;
        veth(&ns, "eth0", &self.inet, &format!("c{i}"))?;
        let (up_v4, up_v6) = (addr::client_up_v4(i), addr::client_up_v6(i));
        ns.ip(&["addr", "add", &format!("{up_v4}/32"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{up_v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        // Only the node endpoint is reached directly; everything else will go
        // through the tunnel once connected.
        ns.ip(&[
            "route",
            "add",
            &format!("{}/32", addr::NODE_UP_V4),
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{}/128", addr::NODE_UP_V6),
            "dev",
            "eth0",
        ])?;
        let ifname = format!("{tag}c{i}");
        let keys = gen_keypair(self.dir.path(), &format!("client{i}"))?;
        let wg_proc =
            start_wireguard_go(&ns, &ifname, self.dir.path(), &format!("c{i}-wireguard-go"), true)?;
        ns.run(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            &keys.private_key_file.to_string_lossy(),
        ])?;
        let (tun_v4, tun_v6) = (addr::client_tun_v4(i), addr::client_tun_v6(i));
        ns.ip(&["addr", "add", &format!("{tun_v4}/32"), "dev", &ifname])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{tun_v6}/128"),
            "dev",
            &ifname,
            "nodad",
        ])?;
        ns.ip(&["link", "set", &ifname, "mtu", "1420", "up"])?;
        let log = self.dir.path().join(format!("c{i}-host.received"));
        let th = self.bins.testhost.to_string_lossy().into_owned();
        let host = ns.spawn_ready(
            &format!("c{i}-testhost"),
            self.dir.path(),
            &[
                &th,
                "serve",
                "--log",
                &log.to_string_lossy(),
                "tcp:[::]:7777",
                &format!("udp:{tun_v4}:7"),
                &format!("udp:[{tun_v6}]:7"),
            ],
            "ready",
            Duration::from_secs(5),
        )?;
        Ok(Client {
            index: i,
            wg_proc,
            host,
            ifname,
            keys,
            tun_v4,
            tun_v6,
            up_v4,
            up_v6,
            ns,
        })
    }

    /// Path of what client `i`'s listener received.
    pub fn client_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("c{i}-host.received"))
    }

    /// Harness self-test node: a hand-configured wireguard-go server, IPv4/IPv6
    /// forwarding and a masquerade table, NO isolation. Returns the node public key.
    pub fn start_plain_node(&mut self) -> Result<String> {
        let keys = gen_keypair(self.dir.path(), "plain-node")?;
        let p = start_wireguard_go(
            &self.node,
            &self.node_if,
            self.dir.path(),
            "node-wireguard-go",
            false,
        )?;
        self.node_procs.plain_wg = Some(p);
        let ifn = self.node_if.clone();
        let port = addr::WG_PORT.to_string();
        self.node.run(&[
            "wg",
            "set",
            &ifn,
            "listen-port",
            &port,
            "private-key",
            &keys.private_key_file.to_string_lossy(),
        ])?;
        for c in &self.clients {
            self.node.run(&[
                "wg",
                "set",
                &ifn,
                "peer",
                &c.keys.public_key,
                "allowed-ips",
                &format!("{}/32,{}/128", c.tun_v4, c.tun_v6),
            ])?;
        }
        self.node.ip(&[
            "addr",
            "add",
            &format!("{}/16", addr::NODE_TUN_V4),
            "dev",
            &ifn,
        ])?;
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addr::NODE_TUN_V6),
            "dev",
            &ifn,
            "nodad",
        ])?;
        self.node.ip(&["link", "set", &ifn, "mtu", "1420", "up"])?;
        self.node.sysctl("net.ipv4.ip_forward", "1")?;
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.nft(
            "node",
            "table inet pal_selftest {\n chain post { type nat hook postrouting priority srcnat; oifname \"eth0\" masquerade; }\n}\n",
        )?;
        for c in &self.clients {
            c.connect(&keys.public_key)?;
        }
        Ok(keys.public_key)
    }

    /// Make the internet a PMTU black hole (ICMP "fragmentation needed" and
    /// "packet too big" dropped on arrival) and make the node forward wire-size
    /// segments (no TSO/GSO at the web host, no GRO on the node's uplink), as a
    /// kernel WireGuard node sees them. Needs ethtool.
    pub fn pmtu_black_hole(&self) -> Result<()> {
        self.nft(
            "inet",
            "table inet pmtu_black_hole {\n chain in {\n  type filter hook input priority 0; policy accept;\n  icmp type destination-unreachable drop\n  icmpv6 type packet-too-big drop\n }\n}\n",
        )?;
        self.inet
            .run(&["ethtool", "-K", "br0", "tso", "off", "gso", "off"])?;
        // (A QEMU guest node has no eth0 here: its uplink is the tap.)
        if self.node.ip(&["link", "show", "eth0"]).is_ok() {
            self.node.run(&["ethtool", "-K", "eth0", "gro", "off"])?;
        }
        Ok(())
    }

    /// Load an nft script into the node (`which` = "node") or internet namespace.
    pub fn nft(&self, which: &str, script: &str) -> Result<()> {
        let ns = if which == "node" {
            &self.node
        } else {
            &self.inet
        };
        let path = self
            .dir
            .path()
            .join(format!("nft-{}.nft", std::process::id()));
        std::fs::write(&path, script)?;
        ns.run(&["nft", "-f", &path.to_string_lossy()]).map(|_| ())
    }

    /// Start a listener in the node namespace (e.g. management ports on every
    /// address, or a DNS-port stand-in). Returns its received-log path.
    pub fn start_node_listener(&mut self, specs: &[&str]) -> Result<PathBuf> {
        let log = self.dir.path().join("node-host.received");
        let th = self.bins.testhost.to_string_lossy().into_owned();
        let mut argv = vec![th.as_str(), "serve", "--log"];
        let l = log.to_string_lossy().into_owned();
        argv.push(&l);
        argv.extend_from_slice(specs);
        let p = self.node.spawn_ready(
            "node-testhost",
            self.dir.path(),
            &argv,
            "ready",
            Duration::from_secs(5),
        )?;
        self.node_procs.host = Some(p);
        Ok(log)
    }

    /// The node's WireGuard state (`wg show <node_if> dump`).
    pub fn node_dump(&self) -> Result<wg::WgDump> {
        wg::dump(&self.node, &self.node_if)
    }

    /// Wait until client `i` has a handshake with the node (sending traffic to
    /// trigger one). Returns the client-side latest-handshake time.
    pub fn wait_handshake(&self, i: usize, within: Duration) -> Result<u64> {
        let c = &self.clients[i - 1];
        wait_until(within, &format!("client {i} handshake"), || {
            let _ = c.ns.enter(|| {
                crate::probe::udp_exchange(
                    None,
                    SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP),
                    b"hs",
                    Duration::from_millis(100),
                )
            });
            let d = c.dump().ok()?;
            let hs = d.peers.first()?.latest_handshake;
            (hs > 0).then_some(hs)
        })
    }

    /// Dump the logs of every process (used when a test panics).
    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") || name.ends_with(".received") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                let _ = writeln!(
                    s,
                    "--- {name} (last {} lines)\n{}",
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        // Where a stalled client stands: its WireGuard session as the client
        // sees it, and whether the web host answers without the tunnel.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for (i, c) in self.clients.iter().enumerate() {
            match c.dump() {
                Ok(d) => {
                    for p in &d.peers {
                        let age = if p.latest_handshake == 0 {
                            "never".to_string()
                        } else {
                            format!("{} s ago", now.saturating_sub(p.latest_handshake))
                        };
                        let _ = writeln!(
                            s,
                            "--- client {}: wg peer endpoint {:?}, latest handshake {age}, rx {} B, tx {} B",
                            i + 1,
                            p.endpoint,
                            p.rx,
                            p.tx
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "--- client {}: wg dump failed: {e:#}", i + 1);
                }
            }
        }
        let direct = self.inet.enter(|| {
            crate::probe::udp_exchange(
                None,
                SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP),
                b"dump",
                Duration::from_millis(300),
            )
        });
        let _ = writeln!(s, "--- web host echo from the internet namespace (no tunnel): {direct:?}");
        s
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== test bed {} failed; process logs:\n{}",
                self.id,
                self.dump_logs()
            );
            // Keep the full logs (not the disk copies) for a post-mortem.
            let keep = std::env::temp_dir().join(format!("{}-logs", self.id));
            if std::fs::create_dir_all(&keep).is_ok() {
                for e in std::fs::read_dir(self.dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.ends_with(".log") || n.ends_with(".received") || n.ends_with(".toml") {
                        let _ = std::fs::copy(e.path(), keep.join(&n));
                    }
                }
                eprintln!("=== full logs kept in {}", keep.display());
            }
        }
        // Processes first (palisaded before the wireguard-go it may have started).
        if let Some(mut p) = self.node_procs.palisaded.take() {
            let _ = p.stop(Duration::from_secs(3));
        }
        self.node_procs.plain_wg.take();
        self.node_procs.host.take();
        self.host_procs.clear();
        self.clients.clear();
        // Namespaces are dropped with the fields (node, inet): that kills leftovers
        // (e.g. a wireguard-go palisaded started) by pid and deletes them.
        let mut ifs = vec![self.node_if.clone()];
        let tag = self.node_if.trim_end_matches('n').to_string();
        for i in 1..=9 {
            ifs.push(format!("{tag}c{i}"));
        }
        // Kill node-side leftovers now so their UAPI sockets can be removed below.
        for pid in self.node.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = wait_until(Duration::from_secs(2), "node namespace empty", || {
            self.node.pids().is_empty().then_some(())
        });
        for i in ifs {
            let sock = format!("/var/run/wireguard/{i}.sock");
            if Path::new(&sock).exists() {
                let _ = std::fs::remove_file(&sock);
            }
        }
    }
}

/// A veth pair with one end in each namespace (`b_end` joins br0 in `b`).
fn veth(a: &Netns, a_end: &str, b: &Netns, b_end: &str) -> Result<()> {
    run_cmd(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_end,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_end,
        "netns",
        b.name(),
    ]))
    .with_context(|| format!("veth {}:{a_end} <-> {}:{b_end}", a.name(), b.name()))?;
    b.ip(&["link", "set", b_end, "master", "br0", "up"])?;
    a.ip(&["link", "set", a_end, "up"])?;
    Ok(())
}

/// Start `wireguard-go -f <ifname>` in `ns` and wait (bounded) for its UAPI socket.
/// `verbose` logs its handshakes and timers (clients: a stalled session is then
/// explained by the log a failing test prints); otherwise errors only.
pub fn start_wireguard_go(ns: &Netns, ifname: &str, log_dir: &Path, label: &str, verbose: bool) -> Result<Proc> {
    if ifname.len() > 15 {
        bail!("interface name {ifname} longer than 15 characters");
    }
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    let mut p = ns.spawn_env(
        label,
        log_dir,
        &["wireguard-go", "-f", ifname],
        &[("LOG_LEVEL", if verbose { "verbose" } else { "error" })],
    )?;
    let r = wait_until(Duration::from_secs(5), &sock, || {
        Path::new(&sock).exists().then_some(())
    });
    if let Err(e) = r {
        let tail = p.log_tail(20);
        p.kill();
        bail!("{e}; wireguard-go log:\n{tail}");
    }
    Ok(p)
}

/// Check the tools the bed needs, with a clear message (run tests/deps.sh).
pub fn preflight() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("namespace tests need root: run `sudo ./tests/run.sh`");
    }
    for tool in ["ip", "nft", "wg", "wireguard-go", "dnsmasq", "sysctl", "busybox"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} not found in PATH: install the packages in tests/packages.txt (tests/deps.sh)");
        }
    }
    Ok(())
}

/// Shorthand for socket addresses in tests.
pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
