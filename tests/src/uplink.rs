//! A node with two uplinks to the bed's internet, for the uplink failover
//! test and bench (docs/failover.md).
//!
//! ```text
//! pal-..-inet  br0 203.0.113.1/24 (web host .80, clients), routes between:
//!              u1 192.0.2.1/24    <-> pal-..-node wan1 192.0.2.2/24     (priority 0)
//!              u2 198.51.100.1/24 <-> pal-..-node wan2 198.51.100.2/24  (priority 10)
//! pal-..-c1    reaches both node addresses through 203.0.113.1; its WireGuard
//!              endpoint is wan1's address; everything else goes through the tunnel
//! ```
//! The web host's UDP echo answers `<source it saw> <payload>`, so each reply
//! of a client's stream names the uplink address the node masqueraded it to.
//! Cutting wan1: its inet-side end goes down (the node sees no carrier), or a
//! black hole drops everything on it in the internet namespace while both
//! ends stay up.

use crate::bed::{addr, Bins, TestBed};
use crate::ns::{wait_until, Netns, Proc};
use crate::palisade::{render_node_toml, NodeOptions, Palisade};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const WAN1_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const WAN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const WAN2_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WAN2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// `[uplink_health]` for the node.
#[derive(Debug, Clone, Copy)]
pub struct HealthOpts {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub hold_down_secs: u64,
}

impl HealthOpts {
    /// The product defaults (docs/config.md) with another hold-down.
    pub fn product(hold_down_secs: u64) -> HealthOpts {
        HealthOpts {
            interval_ms: 500,
            timeout_ms: 400,
            fall: 3,
            rise: 3,
            hold_down_secs,
        }
    }
}

pub struct UplinkBed {
    /// DHCP server and client when wan2 uses DHCP (killed first).
    pub dhcp: Vec<Proc>,
    pub node: Palisade,
    pub bed: TestBed,
}

/// The second router address on wan2's LAN (a DHCP lease can name it).
pub const WAN2_GW_ALT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// busybox udhcpd's config for wan2's LAN, naming `router`.
fn udhcpd_conf(dir: &std::path::Path, router: Ipv4Addr) -> String {
    format!(
        "start 198.51.100.100\nend 198.51.100.110\ninterface u2\nlease_file {d}/udhcpd.leases\npidfile {d}/udhcpd.pid\noption router {router}\noption subnet 255.255.255.0\noption lease 600\n",
        d = dir.display()
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl UplinkBed {
    /// Build the bed (one client), start palisaded with two uplinks and
    /// connect the client to wan1's address. Returns once wan1 is active and
    /// the client has a handshake.
    pub fn start(bins: Bins, h: HealthOpts) -> Result<UplinkBed> {
        UplinkBed::start_with(bins, h, false)
    }

    /// Like [`UplinkBed::start`]; with `wan2_dhcp`, wan2 gets its address
    /// and router from busybox udhcpd in the internet namespace through
    /// busybox udhcpc and the node's hook script (rootfs/), as on the node.
    pub fn start_with(bins: Bins, h: HealthOpts, wan2_dhcp: bool) -> Result<UplinkBed> {
        let mut bed = TestBed::new_for_guest(1, bins)?;
        let (inet, node) = (&bed.inet, &bed.node);
        inet.sysctl("net.ipv4.ip_forward", "1")?;
        for (n, inet_end, node_end, gw, me) in [
            (1, "u1", "wan1", WAN1_GW, WAN1),
            (2, "u2", "wan2", WAN2_GW, WAN2),
        ] {
            crate::ns::run_cmd(std::process::Command::new("ip").args([
                "link",
                "add",
                "name",
                node_end,
                "netns",
                node.name(),
                "type",
                "veth",
                "peer",
                "name",
                inet_end,
                "netns",
                inet.name(),
            ]))
            .with_context(|| format!("veth for uplink {n}"))?;
            inet.ip(&["addr", "add", &format!("{gw}/24"), "dev", inet_end])?;
            inet.ip(&["link", "set", inet_end, "up"])?;
            if !(wan2_dhcp && n == 2) {
                node.ip(&["addr", "add", &format!("{me}/24"), "dev", node_end])?;
            }
            node.ip(&["link", "set", node_end, "up"])?;
        }
        let mut dhcp = Vec::new();
        if wan2_dhcp {
            inet.ip(&["addr", "add", &format!("{WAN2_GW_ALT}/24"), "dev", "u2"])?;
            let conf = bed.dir.path().join("udhcpd.conf");
            std::fs::write(&conf, udhcpd_conf(bed.dir.path(), WAN2_GW))?;
            std::fs::write(bed.dir.path().join("udhcpd.leases"), "")?;
            dhcp.push(inet.spawn(
                "inet-udhcpd",
                bed.dir.path(),
                &["busybox", "udhcpd", "-f", &conf.to_string_lossy()],
            )?);
        }
        let c = &bed.clients[0].ns;
        c.ip(&[
            "route",
            "add",
            &format!("{}/32", addr::INET_V4),
            "dev",
            "eth0",
        ])?;
        for net in ["192.0.2.0/24", "198.51.100.0/24"] {
            c.ip(&[
                "route",
                "add",
                net,
                "via",
                &addr::INET_V4.to_string(),
                "dev",
                "eth0",
            ])?;
        }
        let base = render_node_toml(&bed, &NodeOptions::default());
        let eth0 = format!(
            "[[uplink]]\ninterface = \"eth0\"\naddresses = [\"{}/24\", \"{}/64\"]\nblock_on_link = false\n",
            addr::NODE_UP_V4,
            addr::NODE_UP_V6
        );
        if !base.contains(&eth0) {
            bail!("render_node_toml changed its [[uplink]] table; update tests/src/uplink.rs");
        }
        let wan2 = if wan2_dhcp {
            "dhcp = true".to_string()
        } else {
            format!("addresses = [\"{WAN2}/24\"]\ngateway_v4 = \"{WAN2_GW}\"")
        };
        let uplinks = format!(
            "[[uplink]]\ninterface = \"wan1\"\naddresses = [\"{WAN1}/24\"]\ngateway_v4 = \"{WAN1_GW}\"\npriority = 0\nprobe_targets = [\"{t}\"]\n\n\
             [[uplink]]\ninterface = \"wan2\"\n{wan2}\npriority = 10\nprobe_targets = [\"{t}\"]\n",
            t = addr::INET_V4
        );
        let health = format!(
            "\n[uplink_health]\ninterval_ms = {}\ntimeout_ms = {}\nfall = {}\nrise = {}\nhold_down_secs = {}\n",
            h.interval_ms, h.timeout_ms, h.fall, h.rise, h.hold_down_secs
        );
        let text = base.replace(&eth0, &uplinks) + &health;
        let node = Palisade::start_with_config(&mut bed, &text, &NodeOptions::default())?;
        if wan2_dhcp {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../rootfs/usr/share/palisade/udhcpc.script");
            let run = node.run_dir.to_string_lossy().into_owned();
            dhcp.push(bed.node.spawn_env(
                "node-udhcpc",
                bed.dir.path(),
                &[
                    "busybox",
                    "udhcpc",
                    "-f",
                    "-S",
                    "-t",
                    "5",
                    "-T",
                    "1",
                    "-s",
                    &script.to_string_lossy(),
                    "-i",
                    "wan2",
                ],
                &[("PALISADE_RUN_DIR", &run)],
            )?);
        }
        let ub = UplinkBed { dhcp, node, bed };
        let c = &ub.bed.clients[0];
        c.ns.run(&[
            "wg",
            "set",
            &c.ifname,
            "peer",
            &ub.node.public_key,
            "endpoint",
            &format!("{WAN1}:{}", addr::WG_PORT),
        ])?;
        ub.wait_active("wan1", Duration::from_secs(15))?;
        ub.bed.wait_handshake(1, Duration::from_secs(10))?;
        Ok(ub)
    }

    /// `palisade status --json`'s `uplinks`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.node.cli_ok(&self.bed, &["status", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("status JSON")?;
        Ok(v["uplinks"].clone())
    }

    /// Wait until `iface` is the active uplink and every uplink is healthy.
    pub fn wait_active(&self, iface: &str, within: Duration) -> Result<serde_json::Value> {
        wait_until(
            within,
            &format!("{iface} active, every uplink healthy"),
            || {
                let s = self.status().ok()?;
                let all = s["uplinks"]
                    .as_array()?
                    .iter()
                    .all(|u| u["healthy"] == true);
                (s["active"] == iface && all).then_some(s)
            },
        )
    }

    /// The node's `switches` counter and the unix time of its last switch.
    pub fn switches(&self) -> Result<(u64, Option<f64>)> {
        let s = self.status()?;
        Ok((
            s["switches"].as_u64().unwrap_or(0),
            s["last_switch"]["unix_time"].as_f64(),
        ))
    }

    /// wan1's carrier: its internet-side end down (`false`) or up.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.bed
            .inet
            .ip(&["link", "set", "u1", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// A silent black hole on wan1: the internet drops everything to and
    /// from it; both ends stay up.
    pub fn set_black_hole(&self, on: bool) -> Result<()> {
        let script = if on {
            "table inet uplinkbh {\n chain pre { type filter hook prerouting priority -300; iifname \"u1\" drop; }\n chain post { type filter hook postrouting priority -300; oifname \"u1\" drop; }\n}\n"
        } else {
            "delete table inet uplinkbh\n"
        };
        self.bed.nft("inet", script)
    }

    /// The client's view of its one peer (the node): latest handshake (unix
    /// seconds) and endpoint.
    pub fn client_session(&self) -> Result<(u64, Option<String>)> {
        let d = self.bed.clients[0].dump()?;
        let p = d.peers.first().context("client has no peer")?;
        Ok((p.latest_handshake, p.endpoint.clone()))
    }

    /// wan2's IPv4 address now (static, or from the lease).
    pub fn wan2_addr(&self) -> Result<Ipv4Addr> {
        let out = self
            .bed
            .node
            .ip(&["-4", "-o", "addr", "show", "dev", "wan2"])?;
        let a = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .context("wan2 has no IPv4 address")?;
        Ok(a.split('/').next().unwrap_or_default().parse()?)
    }

    /// Restart the DHCP server naming `router` (the lease it gave stays in
    /// its lease file); [`UplinkBed::renew`] makes the node ask again.
    pub fn renew_lease_with_router(&mut self, router: Ipv4Addr) -> Result<()> {
        let dir = self.bed.dir.path().to_path_buf();
        std::fs::write(dir.join("udhcpd.conf"), udhcpd_conf(&dir, router))?;
        // The server first (it reads its config at start; leases stay in its file).
        let mut server = self.dhcp.remove(0);
        server.stop(Duration::from_secs(2))?;
        let conf = dir.join("udhcpd.conf");
        self.dhcp.insert(
            0,
            self.bed.inet.spawn(
                "inet-udhcpd",
                &dir,
                &["busybox", "udhcpd", "-f", &conf.to_string_lossy()],
            )?,
        );
        Ok(())
    }

    /// Ask the node's DHCP client to renew its lease now (SIGUSR1).
    pub fn renew(&self) -> Result<()> {
        self.dhcp[1].signal(nix::sys::signal::Signal::SIGUSR1)
    }

    /// Unix time now (to compare with the node's `last_switch`).
    pub fn now_unix() -> f64 {
        unix_now()
    }
}

/// A steady UDP stream from the client through the tunnel to the web host's
/// echo (one datagram every 10 ms, sequence-numbered); every reply is kept
/// with its arrival time and the source address the web host saw.
pub struct Stream {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    pub fn start(client: &Netns) -> Result<Stream> {
        let dst = SocketAddr::new(addr::WEB_V4.into(), addr::ECHO_UDP);
        let sock = client.enter(|| -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dst)?;
            s.set_read_timeout(Some(Duration::from_millis(10)))?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (st, rp) = (stop.clone(), replies.clone());
        let thread = std::thread::spawn(move || {
            let mut seq: u64 = 0;
            let mut buf = [0u8; 512];
            let mut next = Instant::now();
            // Bounded: at most 30 minutes whatever the caller does.
            let end = Instant::now() + Duration::from_secs(1800);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                if Instant::now() >= next {
                    let _ = sock.send(format!("seq {seq}").as_bytes());
                    seq += 1;
                    next += Duration::from_millis(10);
                }
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let src = text.split_whitespace().next().unwrap_or_default();
                    let ip = src
                        .rsplit_once(':')
                        .map(|(ip, _)| ip)
                        .unwrap_or(src)
                        .to_string();
                    if let Ok(mut r) = rp.lock() {
                        r.push((Instant::now(), ip));
                    }
                }
            }
        });
        Ok(Stream {
            stop,
            replies,
            thread: Some(thread),
        })
    }

    /// The first reply after `t` whose source was `via`, as time since `t`.
    pub fn first_via_after(&self, t: Instant, via: Ipv4Addr, within: Duration) -> Result<Duration> {
        let via = via.to_string();
        wait_until(within, &format!("stream reply via {via}"), || {
            let r = self.replies.lock().ok()?;
            r.iter()
                .find(|(at, ip)| *at > t && *ip == via)
                .map(|(at, _)| *at - t)
        })
    }

    /// Replies received so far.
    pub fn count(&self) -> usize {
        self.replies.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
