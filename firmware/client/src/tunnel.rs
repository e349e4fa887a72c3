//! The WireGuard interface and its routing: kernel WireGuard when the kernel
//! has it, else wireguard-go (a child of this process); the peer set through
//! wireguard-control; routing like wg-quick (a table with the default route
//! through the tunnel, used by everything without the tunnel's fwmark).

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use palisade_nodelist::Node;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

/// Where wireguard-go puts its UAPI socket.
const UAPI_DIR: &str = "/var/run/wireguard";

/// Which WireGuard to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Kernel WireGuard if `ip link add type wireguard` works, else wireguard-go.
    Auto,
    Kernel,
    Userspace,
}

fn ip<S: AsRef<str>>(args: &[S]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The client's interface, routes and rules; removed by [`Tunnel::down`].
pub struct Tunnel {
    pub name: String,
    iface: InterfaceName,
    backend: Backend,
    wireguard_go: Option<Child>,
    fwmark: u32,
    rule_priority: u32,
    current: Option<Key>,
}

impl Tunnel {
    /// Create the interface (no peer yet) with the client's key and
    /// addresses, and route everything unmarked through it.
    pub fn up(
        name: &str,
        choice: BackendChoice,
        wireguard_go: &str,
        private_key: &Key,
        addresses: &[IpNet],
        fwmark: u32,
        rule_priority: u32,
    ) -> Result<Tunnel> {
        let iface: InterfaceName = name
            .parse()
            .with_context(|| format!("interface name {name:?}: at most 15 characters"))?;
        let kernel = match choice {
            BackendChoice::Userspace => false,
            BackendChoice::Kernel => {
                ip(&["link", "add", name, "type", "wireguard"])
                    .context("kernel WireGuard (try --backend userspace)")?;
                true
            }
            BackendChoice::Auto => ip(&["link", "add", name, "type", "wireguard"]).is_ok(),
        };
        let mut t = Tunnel {
            name: name.into(),
            iface,
            backend: if kernel {
                Backend::Kernel
            } else {
                Backend::Userspace
            },
            wireguard_go: None,
            fwmark,
            rule_priority,
            current: None,
        };
        if !kernel {
            let child = Command::new(wireguard_go)
                .args(["-f", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .env("LOG_LEVEL", "error")
                .spawn()
                .with_context(|| format!("start {wireguard_go} (no kernel WireGuard here; install wireguard-go or pass --wireguard-go PATH)"))?;
            t.wireguard_go = Some(child);
            let sock = format!("{UAPI_DIR}/{name}.sock");
            let end = Instant::now() + Duration::from_secs(5);
            while !std::path::Path::new(&sock).exists() {
                if Instant::now() > end {
                    t.down();
                    bail!("wireguard-go did not open {sock} within 5 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let r = t.configure(private_key, addresses);
        if r.is_err() {
            t.down();
        }
        r.map(|()| t)
    }

    /// The two policy rules of family `fam` (`-4`/`-6`), as `ip` arguments
    /// for `op` (`add` or `del`): one list for both, so `down` removes
    /// exactly what `configure` added.
    fn rules(&self, fam: &str, op: &str) -> [Vec<String>; 2] {
        let (mark, p_main, p_tun) = (
            self.fwmark.to_string(),
            self.rule_priority.to_string(),
            (self.rule_priority + 1).to_string(),
        );
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        [
            args(&[
                fam,
                "rule",
                op,
                "table",
                "main",
                "suppress_prefixlength",
                "0",
                "priority",
                &p_main,
            ]),
            args(&[
                fam, "rule", op, "not", "fwmark", &mark, "table", &mark, "priority", &p_tun,
            ]),
        ]
    }

    fn configure(&mut self, private_key: &Key, addresses: &[IpNet]) -> Result<()> {
        DeviceUpdate::new()
            .set_private_key(private_key.clone())
            .set_fwmark(self.fwmark)
            .replace_peers()
            .apply(&self.iface, self.backend)
            .context("configure the WireGuard interface")?;
        let name = self.name.clone();
        for a in addresses {
            ip(&["address", "add", &a.to_string(), "dev", &name])?;
        }
        ip(&["link", "set", &name, "mtu", "1420", "up"])?;
        // wg-quick's routing: a table whose default route is the tunnel, for
        // every packet without the tunnel's own fwmark; the main table still
        // decides for everything more specific than a default route.
        let table = self.fwmark.to_string();
        for fam in ["-4", "-6"] {
            ip(&[
                fam, "route", "replace", "default", "dev", &name, "table", &table,
            ])?;
            for rule in self.rules(fam, "add") {
                ip(&rule)?;
            }
        }
        // Replies to marked packets pass reverse-path filtering (wg-quick does the same).
        std::fs::write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1")
            .context("set net.ipv4.conf.all.src_valid_mark")?;
        Ok(())
    }

    /// Make `node` the only peer (endpoint, key, every address through it).
    pub fn select(&mut self, node: &Node) -> Result<()> {
        let key = Key::from_base64(&node.public_key)
            .with_context(|| format!("node {}: public key", node.name))?;
        let peer = PeerConfigBuilder::new(&key)
            .set_endpoint(node.endpoint)
            .replace_allowed_ips()
            .add_allowed_ip("0.0.0.0".parse().expect("literal"), 0)
            .add_allowed_ip("::".parse().expect("literal"), 0)
            .set_persistent_keepalive_interval(25);
        DeviceUpdate::new()
            .replace_peers()
            .add_peer(peer)
            .apply(&self.iface, self.backend)
            .with_context(|| format!("set peer {}", node.name))?;
        self.current = Some(key);
        Ok(())
    }

    /// Age of the current peer's latest handshake (`None`: none yet).
    pub fn handshake_age(&self) -> Result<Option<Duration>> {
        let d = Device::get(&self.iface, self.backend).context("read the WireGuard interface")?;
        let Some(cur) = &self.current else {
            return Ok(None);
        };
        let p = d.peers.iter().find(|p| &p.config.public_key == cur);
        Ok(p.and_then(|p| p.stats.last_handshake_time)
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default()))
    }

    /// Remove rules, routes and the interface; stop wireguard-go. Best
    /// effort: each step is tried even when an earlier one fails.
    pub fn down(&mut self) {
        let table = self.fwmark.to_string();
        for fam in ["-4", "-6"] {
            for rule in self.rules(fam, "del") {
                let _ = ip(&rule);
            }
            let _ = ip(&[fam, "route", "flush", "table", &table]);
        }
        let _ = ip(&["link", "del", &self.name]);
        if let Some(mut c) = self.wireguard_go.take() {
            // Deleting the link ends wireguard-go; make sure.
            let end = Instant::now() + Duration::from_secs(2);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_file(format!("{UAPI_DIR}/{}.sock", self.name));
        }
    }
}
