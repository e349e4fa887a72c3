//! Client failover bed (docs/failover.md): two palisaded nodes in namespaces
//! on the bed's internet, a signed node list naming both, and
//! `palisade-client` (wireguard-go) in client 1's namespace.
//!
//! ```text
//! pal-<pid>-<n>-node   palisaded (node 1) eth0 203.0.113.10   tunnel 10.66.0.1/16
//! pal-<pid>-<n>-node2  palisaded (node 2) eth0 203.0.113.11   tunnel 10.66.0.1/16
//! pal-<pid>-<n>-c1     palisade-client, interface <tag>p1, 10.66.0.2/32, fd66::2/128
//! ```
//! Both nodes carry client 1's peer (the same grant on each node of a region).

use crate::bed::{addr, TestBed};
use crate::guest::{workspace, Guest, GuestOptions, Vm};
use crate::ns::{run_cmd, wait_until, Netns, Proc};
use crate::palisade::{render_node_toml, NodeOptions, Palisade};
use crate::probe::{udp_exchange, Outcome};
use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NODE2_UP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const NODE2_UP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x11);

/// The `palisade-client` binary: `$PALISADE_CLIENT_BIN`, else built with
/// cargo into the workspace's target directory.
pub fn client_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_CLIENT_BIN") {
        return Ok(p.into());
    }
    let ws = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "palisade-client"])
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("cargo build -p palisade-client")?;
    if !st.success() {
        bail!("cargo build -p palisade-client failed");
    }
    let p = target.join("debug/palisade-client");
    p.is_file()
        .then_some(p.clone())
        .ok_or_else(|| anyhow!("{} missing", p.display()))
}

/// The second node: palisaded in its own namespace (dropped before the bed).
pub struct Node2 {
    pub proc: Option<Proc>,
    pub ns: Netns,
    pub ifname: String,
    pub dir: PathBuf,
    pub public_key: String,
    argv: Vec<String>,
}

impl Drop for Node2 {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.stop(Duration::from_secs(3));
        }
        for pid in self.ns.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
    }
}

impl Node2 {
    fn start(&mut self) -> Result<()> {
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        let log = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into());
        let p = self.ns.spawn_env(
            "palisaded-node2",
            &self.dir,
            &argv,
            &[("PALISADE_LOG", &log)],
        )?;
        self.proc = Some(p);
        let ifn = self.ifname.clone();
        let key = wait_until(Duration::from_secs(20), "node 2: palisaded serving", || {
            let d = crate::wg::dump(&self.ns, &ifn).ok()?;
            (d.listen_port == addr::WG_PORT).then_some(())?;
            self.ns
                .run(&["nft", "list", "table", "inet", "palisade"])
                .ok()?;
            let a = self.ns.ip(&["addr", "show", "dev", &ifn]).ok()?;
            a.contains(&addr::NODE_TUN_V4.to_string())
                .then_some(d.public_key)
        });
        match key {
            Ok(k) => {
                self.public_key = k;
                Ok(())
            }
            Err(e) => bail!(
                "{e}\nnode 2 log:\n{}",
                self.proc
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    One,
    Two,
}

impl Which {
    pub fn up_v4(self) -> Ipv4Addr {
        match self {
            Which::One => addr::NODE_UP_V4,
            Which::Two => NODE2_UP_V4,
        }
    }
    pub fn other(self) -> Which {
        match self {
            Which::One => Which::Two,
            Which::Two => Which::One,
        }
    }
}

/// Node 1: palisaded in the bed's node namespace, or the QEMU guest.
pub enum Node1 {
    Ns(Palisade),
    Guest(Guest),
}

/// The whole failover bed. Field order is drop order.
pub struct FailoverBed {
    pub client: Option<Proc>,
    pub node2: Node2,
    pub node1: Node1,
    pub bed: TestBed,
    pub list: PathBuf,
    pub list_key: String,
    pub resolv: PathBuf,
    pub client_if: String,
}

/// UDP sequence numbers to the web host's echo every `period`; each answer's
/// arrival time and the node address the web host saw.
pub struct Stream {
    stop: Arc<AtomicBool>,
    pub answers: Arc<Mutex<Vec<(Instant, IpAddr)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    pub fn start(ns: &Netns, period: Duration) -> Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (st, an) = (stop.clone(), answers.clone());
        let name = ns.name().to_string();
        let thread = std::thread::spawn(move || {
            let ns = Netns::adopt(&name);
            let _ = ns.enter(|| {
                let mut seq = 0u64;
                while !st.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    seq += 1;
                    let dst = SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP);
                    if let Outcome::Answered(text) =
                        udp_exchange(None, dst, format!("seq {seq}").as_bytes(), period)
                    {
                        // "<address the web host saw> <payload>"
                        let peer = text
                            .split_whitespace()
                            .next()
                            .and_then(|p| p.parse::<IpAddr>().ok());
                        if let Some(p) = peer {
                            an.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((Instant::now(), p));
                        }
                    }
                    std::thread::sleep(period.saturating_sub(t.elapsed()));
                }
            });
            std::mem::forget(ns);
        });
        Ok(Stream {
            stop,
            answers,
            thread: Some(thread),
        })
    }

    /// The first answer at or after `since` that came through `via`.
    pub fn first_via(&self, via: Ipv4Addr, since: Instant) -> Option<Instant> {
        let a = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        a.iter()
            .find(|(t, ip)| *t >= since && *ip == IpAddr::V4(via))
            .map(|(t, _)| *t)
    }

    /// Wait until the stream flows through `via` (an answer after `since`).
    pub fn wait_via(&self, via: Ipv4Addr, since: Instant, within: Duration) -> Result<Instant> {
        wait_until(within, &format!("stream through {via}"), || {
            self.first_via(via, since)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FailoverBed {
    /// Build the bed, both nodes, the signed list, and start palisade-client
    /// on node 1 (waits until the stream flows through it).
    pub fn new(testhost: &str) -> Result<FailoverBed> {
        FailoverBed::new_with(testhost, None)
    }

    /// Like [`FailoverBed::new`], node 1 the QEMU guest booted from `image`
    /// (kernel WireGuard) when given.
    pub fn new_with(testhost: &str, image: Option<&std::path::Path>) -> Result<FailoverBed> {
        let bins = crate::bed::Bins {
            testhost: testhost.into(),
        };
        let opts = NodeOptions::default();
        let (bed, node1) = match image {
            None => {
                let mut bed = TestBed::new(1, bins)?;
                let p = Palisade::start(&mut bed, &opts)?;
                (bed, Node1::Ns(p))
            }
            Some(image) => {
                let bed = TestBed::new_for_guest(1, bins)?;
                let g = Guest::boot(&bed, image, &GuestOptions::default())?;
                if let Err(e) = bed.wait_handshake(1, Duration::from_secs(300)) {
                    bail!("{e:#}\nconsole:\n{}", g.console_text());
                }
                (bed, Node1::Guest(g))
            }
        };
        let node1_key = match &node1 {
            Node1::Ns(p) => p.public_key.clone(),
            Node1::Guest(g) => g.node_key.public_key.clone(),
        };
        let palisaded = crate::palisade::PalisadeBins::locate()?.palisaded;
        let c = &bed.clients[0];
        // The bed's own wireguard-go client gives way to palisade-client.
        c.ns.ip(&["link", "del", &c.ifname])?;
        c.ns.ip(&["route", "add", &format!("{NODE2_UP_V4}/32"), "dev", "eth0"])?;
        c.ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{NODE2_UP_V6}/128"),
            "dev",
            "eth0",
        ])?;

        // Node 2: same config but its own uplink address and interface.
        let ns = Netns::create(&format!("{}-node2", bed.id))?;
        run_cmd(Command::new("ip").args([
            "link",
            "add",
            "name",
            "eth0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "n2",
            "netns",
            bed.inet.name(),
        ]))?;
        bed.inet.ip(&["link", "set", "n2", "master", "br0", "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["addr", "add", &format!("{NODE2_UP_V4}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE2_UP_V6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        let ifname = format!("{}m", bed.node_if.trim_end_matches('n'));
        let text = render_node_toml(&bed, &opts)
            .replace(&addr::NODE_UP_V4.to_string(), &NODE2_UP_V4.to_string())
            .replace(&addr::NODE_UP_V6.to_string(), &NODE2_UP_V6.to_string())
            .replace(&format!("\"{}\"", bed.node_if), &format!("\"{ifname}\""));
        let dir = bed.dir.path().join("node2");
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::create_dir_all(dir.join("run"))?;
        std::fs::write(dir.join("state/node.toml"), text)?;
        let argv = vec![
            palisaded.to_string_lossy().into_owned(),
            "--config".into(),
            dir.join("state/node.toml").to_string_lossy().into_owned(),
            "--state-dir".into(),
            dir.join("state").to_string_lossy().into_owned(),
            "--run-dir".into(),
            dir.join("run").to_string_lossy().into_owned(),
        ];
        let mut node2 = Node2 {
            proc: None,
            ns,
            ifname,
            dir: dir.clone(),
            public_key: String::new(),
            argv,
        };
        node2.start()?;

        // The signed node list (standalone file, signed with the repository's
        // nodelists key; the same list is also published in the repository).
        let fleet = crate::update::Fleet::init(&bed.dir.path().join("fleet"))?;
        let nodes = bed.dir.path().join("nodes.toml");
        let entry = |name: &str, ep: IpAddr, key: &str| {
            format!("[[node]]\nname = \"{name}\"\nendpoint = \"{}\"\npublic_key = \"{key}\"\naddresses = [\"{}/16\", \"{}/64\"]\n", SocketAddr::new(ep, addr::WG_PORT), addr::NODE_TUN_V4, addr::NODE_TUN_V6)
        };
        std::fs::write(
            &nodes,
            entry("node-1", addr::NODE_UP_V4.into(), &node1_key)
                + &entry("node-2", NODE2_UP_V4.into(), &node2.public_key),
        )?;
        let key_file = fleet.keys.join("nodelists.pk8");
        let list = bed.dir.path().join("test.nodelist.json");
        let fb = &fleet.bin;
        let out = |args: &[&str]| -> Result<String> { run_cmd(Command::new(fb).args(args)) };
        let list_key = out(&["nodelist", "key", "--key", &key_file.to_string_lossy()])?
            .trim()
            .to_string();
        out(&[
            "nodelist",
            "set",
            "test",
            "--nodes",
            &nodes.to_string_lossy(),
            "--expires",
            "1h",
            "--key",
            &key_file.to_string_lossy(),
            "--out",
            &list.to_string_lossy(),
        ])?;
        out(&[
            "nodelist",
            "set",
            "test",
            "--nodes",
            &nodes.to_string_lossy(),
            "--repo",
            &fleet.repo.to_string_lossy(),
            "--keys",
            &fleet.keys.to_string_lossy(),
        ])?;

        let client_if = format!("{}p1", bed.node_if.trim_end_matches('n'));
        let resolv = bed.dir.path().join("c1-resolv.conf");
        let mut fb = FailoverBed {
            client: None,
            node2,
            node1,
            bed,
            list,
            list_key,
            resolv,
            client_if,
        };
        fb.start_client(&[])?;
        Ok(fb)
    }

    /// Start palisade-client in client 1's namespace and wait until the
    /// web host answers through node 1.
    pub fn start_client(&mut self, extra: &[&str]) -> Result<()> {
        let c = &self.bed.clients[0];
        let bin = client_bin()?.to_string_lossy().into_owned();
        let key = c.keys.private_key_file.to_string_lossy().into_owned();
        let (a4, a6) = (format!("{}/32", c.tun_v4), format!("{}/128", c.tun_v6));
        let (list, resolv) = (
            self.list.to_string_lossy().into_owned(),
            self.resolv.to_string_lossy().into_owned(),
        );
        let mut argv = vec![
            bin.as_str(),
            "--private-key-file",
            &key,
            "--address",
            &a4,
            "--address",
            &a6,
            "--node-list",
            &list,
            "--node-list-key",
            &self.list_key,
            "--interface",
            &self.client_if,
            "--backend",
            "userspace",
            "--resolv-conf",
            &resolv,
        ];
        argv.extend_from_slice(extra);
        let p = c.ns.spawn("palisade-client", self.bed.dir.path(), &argv)?;
        self.client = Some(p);
        let r = wait_until(
            Duration::from_secs(15),
            "palisade-client: web host answers through node 1",
            || {
                c.ns.enter(|| {
                    udp_exchange(
                        None,
                        SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP),
                        b"up",
                        Duration::from_millis(300),
                    )
                })
                .ok()
                .and_then(|o| match o {
                    Outcome::Answered(t) if t.starts_with(&format!("{} ", addr::NODE_UP_V4)) => {
                        Some(())
                    }
                    _ => None,
                })
            },
        );
        if let Err(e) = r {
            let diag = [
                "wg show all dump",
                "ip rule",
                "ip route show table all",
                "ip addr",
                "nft list ruleset",
            ]
            .iter()
            .map(|cmd| {
                format!(
                    "$ {cmd}\n{}",
                    c.ns.sh(cmd).unwrap_or_else(|e| e.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
            let probe = c.ns.enter(|| {
                udp_exchange(
                    None,
                    SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP),
                    b"diag",
                    Duration::from_millis(1000),
                )
            });
            let diag = format!("{diag}\nudp echo: {probe:?}");
            bail!(
                "{e}\npalisade-client log:\n{}\n{diag}",
                self.client
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Kill a node: SIGKILL its palisaded and delete its WireGuard interface.
    pub fn kill(&mut self, which: Which) -> Result<()> {
        match which {
            Which::One => match &mut self.node1 {
                Node1::Ns(_) => {
                    if let Some(mut p) = self.bed.node_procs.palisaded.take() {
                        p.kill();
                    }
                    self.bed.node.ip(&["link", "del", &self.bed.node_if])?;
                }
                // Power gone: QEMU killed.
                Node1::Guest(g) => g.vm.qemu.kill(),
            },
            Which::Two => {
                if let Some(mut p) = self.node2.proc.take() {
                    p.kill();
                }
                self.node2.ns.ip(&["link", "del", &self.node2.ifname])?;
            }
        }
        Ok(())
    }

    /// Start a killed node again (same key, same config) and wait until it serves.
    pub fn revive(&mut self, which: Which) -> Result<()> {
        // wireguard-go (palisaded's userspace backend) leaves its UAPI socket behind when killed.
        let sock = |i: &str| format!("/var/run/wireguard/{i}.sock");
        match which {
            Which::One => match &mut self.node1 {
                Node1::Ns(p) => {
                    let _ = std::fs::remove_file(sock(&self.bed.node_if));
                    p.spawn(&mut self.bed)
                }
                Node1::Guest(g) => {
                    // Boot the same disk again (its state partition keeps the
                    // node's key) with a fresh console log, until the health
                    // gate says ready.
                    let n = std::fs::read_dir(self.bed.log_dir())?.count();
                    let old = self.bed.log_dir().join(format!("console-before-{n}.log"));
                    let _ = std::fs::rename(&g.vm.console, old);
                    let cfg = self.bed.log_dir().join("config-drive.img");
                    let disk = g.vm.disk.clone();
                    g.vm = Vm::start(&self.bed, &disk, Some(&cfg), true)?;
                    g.vm.wait_console("ready: wireguard up", Duration::from_secs(300))
                        .map(|_| ())
                }
            },
            Which::Two => {
                let _ = std::fs::remove_file(sock(&self.node2.ifname));
                self.node2.start()
            }
        }
    }

    /// Client 1's namespace.
    pub fn client_ns(&self) -> &Netns {
        &self.bed.clients[0].ns
    }

    pub fn client_log(&self) -> String {
        self.client
            .as_ref()
            .map(|p| p.log_text())
            .unwrap_or_default()
    }
}

/// Whether `p` left client 1 outside the tunnel: sent from one of its
/// addresses and not the tunnel's UDP to a listed node endpoint (or IPv6
/// neighbour discovery).
pub fn leaked(
    p: &crate::capture::Packet,
    client_addrs: &[IpAddr],
    endpoints: &[SocketAddr],
) -> bool {
    if !client_addrs.contains(&p.src) {
        return false;
    }
    if p.proto == crate::capture::PROTO_UDP {
        if let Some((_, dport)) = p.ports() {
            return !endpoints.contains(&SocketAddr::new(p.dst, dport));
        }
    }
    if p.proto == crate::capture::PROTO_ICMPV6 {
        // 133 router solicitation, 135/136 neighbour solicitation/advertisement.
        return !matches!(p.icmp_type(), Some(133) | Some(135) | Some(136));
    }
    true
}
