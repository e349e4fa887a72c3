//! palisade-client: a Linux WireGuard client that stays connected across
//! node failures (docs/failover.md).
//!
//! It reads its private key, its tunnel addresses and a signed node list
//! (verified against the pinned fleet key, refused when expired), installs
//! the kill-switch, brings up the tunnel to the first node, and then probes
//! the node's resolver through the tunnel. When the node stops answering (or
//! its handshake goes stale) it moves the peer to the next node in list
//! order. It resolves nothing outside the tunnel (the list carries
//! addresses) and points DNS only at the current node's resolver. On SIGINT
//! or SIGTERM it removes the tunnel, the kill-switch and its resolv.conf.

mod health;
mod killswitch;
mod probe;
mod tunnel;

use anyhow::{bail, Context, Result};
use clap::Parser;
use health::{decide, next_node, Observed, Timing, Verdict};
use ipnet::IpNet;
use palisade_nodelist::{NodeList, PublicKey};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tunnel::{BackendChoice, Tunnel};
use wireguard_control::Key;
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(
    name = "palisade-client",
    version,
    about = "WireGuard client with node failover and a kill-switch"
)]
struct Args {
    /// The client's WireGuard private key (base64, one line; keep it 0600).
    #[arg(long, value_name = "FILE")]
    private_key_file: PathBuf,
    /// The client's tunnel addresses from its grant (repeat: IPv4 and IPv6).
    #[arg(long = "address", value_name = "CIDR", required = true)]
    addresses: Vec<IpNet>,
    /// The signed node list of the client's region (`palisade-fleet nodelist set` writes it).
    #[arg(long, value_name = "FILE")]
    node_list: PathBuf,
    /// The fleet's node-list public key (base64 ed25519; repeat during a key change).
    #[arg(long = "node-list-key", value_name = "BASE64", required = true)]
    node_list_keys: Vec<String>,
    /// The WireGuard interface to create.
    #[arg(long, default_value = "palisade0")]
    interface: String,
    /// Kernel WireGuard or wireguard-go.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// The wireguard-go program (userspace backend).
    #[arg(long, default_value = "wireguard-go")]
    wireguard_go: String,
    /// Write `nameserver <current node's resolver>` here (e.g. /etc/resolv.conf)
    /// on every switch; the previous content is restored on exit.
    #[arg(long, value_name = "PATH")]
    resolv_conf: Option<PathBuf>,
    /// Milliseconds between probes through the tunnel.
    #[arg(long, default_value_t = 500)]
    probe_interval_ms: u64,
    /// Milliseconds a probe waits for its answer.
    #[arg(long, default_value_t = 400)]
    probe_timeout_ms: u64,
    /// Milliseconds without a probe answer after which the node is dead.
    #[arg(long, default_value_t = 2500)]
    dead_after_ms: u64,
    /// The tunnel's fwmark and routing table number.
    #[arg(long, default_value_t = 51820)]
    fwmark: u32,
    /// Priority of the first of the two routing rules the client adds.
    #[arg(long, default_value_t = 32100)]
    rule_priority: u32,
}

fn read_private_key(path: &Path) -> Result<Key> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("private key file {}", path.display()))?,
    );
    Key::from_base64(text.trim()).map_err(|_| {
        anyhow::anyhow!(
            "private key file {}: not a WireGuard key (base64 of 32 bytes)",
            path.display()
        )
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn load_list(path: &Path, keys: &[PublicKey]) -> Result<NodeList> {
    let meta = std::fs::metadata(path).with_context(|| format!("node list {}", path.display()))?;
    if meta.len() > palisade_nodelist::MAX_BYTES as u64 {
        bail!(
            "node list {}: {} bytes, more than {}",
            path.display(),
            meta.len(),
            palisade_nodelist::MAX_BYTES
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("node list {}", path.display()))?;
    palisade_nodelist::verify(&bytes, keys, unix_now())
        .with_context(|| format!("node list {}", path.display()))
}

/// resolv.conf written atomically; the previous content comes back on drop.
struct Resolv {
    path: PathBuf,
    previous: Option<Vec<u8>>,
}

impl Resolv {
    fn new(path: PathBuf) -> Resolv {
        let previous = std::fs::read(&path).ok();
        Resolv { path, previous }
    }

    fn write(&self, text: &[u8]) -> Result<()> {
        let tmp = self.path.with_extension("palisade-client.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replace {}", self.path.display()))
    }

    fn set(&self, resolver: std::net::IpAddr) -> Result<()> {
        self.write(format!("# written by palisade-client: the current node's resolver, inside the tunnel\nnameserver {resolver}\n").as_bytes())
    }
}

impl Drop for Resolv {
    fn drop(&mut self) {
        let _ = match self.previous.take() {
            Some(p) => self.write(&p),
            None => std::fs::remove_file(&self.path).map_err(Into::into),
        };
    }
}

fn run(args: Args, stop: Arc<AtomicBool>) -> Result<()> {
    let timing = Timing {
        probe_interval: Duration::from_millis(args.probe_interval_ms),
        probe_timeout: Duration::from_millis(args.probe_timeout_ms),
        dead_after: Duration::from_millis(args.dead_after_ms),
        ..Timing::default()
    };
    timing.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = args
        .node_list_keys
        .iter()
        .map(|k| PublicKey::from_base64(k).with_context(|| format!("--node-list-key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    let private_key = read_private_key(&args.private_key_file)?;
    let list = load_list(&args.node_list, &keys)?;
    let endpoints: Vec<_> = list.nodes.iter().map(|n| n.endpoint).collect();
    eprintln!(
        "palisade-client: region {} (list serial {}), {} node(s)",
        list.region,
        list.serial,
        list.nodes.len()
    );

    // Kill-switch first: nothing leaves outside the tunnel from here on.
    killswitch::apply(&args.interface, args.fwmark, &endpoints)?;
    let resolv = args.resolv_conf.clone().map(Resolv::new);
    let result = (|| {
        let mut tun = Tunnel::up(
            &args.interface,
            args.backend,
            &args.wireguard_go,
            &private_key,
            &args.addresses,
            args.fwmark,
            args.rule_priority,
        )?;
        let r = serve(&mut tun, &list, &timing, resolv.as_ref(), &stop);
        tun.down();
        r
    })();
    drop(resolv);
    let removed = killswitch::remove();
    result?;
    removed.context("remove the kill-switch")?;
    eprintln!("palisade-client: stopped; tunnel and kill-switch removed");
    Ok(())
}

fn serve(
    tun: &mut Tunnel,
    list: &NodeList,
    t: &Timing,
    resolv: Option<&Resolv>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut index = 0;
    let select = |tun: &mut Tunnel, index: usize| -> Result<Observed> {
        let node = &list.nodes[index];
        tun.select(node)?;
        if let Some(r) = resolv {
            r.set(node.resolver())?;
        }
        eprintln!(
            "palisade-client: using node {} ({} of {})",
            node.name,
            index + 1,
            list.nodes.len()
        );
        Ok(Observed {
            selected_at: Instant::now(),
            last_answer: None,
            handshake_age: None,
        })
    };
    let mut obs = select(tun, index)?;
    let mut prober = probe::Prober::new(list.nodes[index].resolver()).context("probe socket")?;
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        let resolver = list.nodes[index].resolver();
        if prober.probe(resolver, t.probe_timeout) {
            obs.last_answer = Some(Instant::now());
        }
        obs.handshake_age = tun.handshake_age()?;
        if let Verdict::Dead(why) = decide(Instant::now(), t, &obs) {
            let next = next_node(list.nodes.len(), index);
            eprintln!(
                "palisade-client: node {}: {why}; moving on",
                list.nodes[index].name
            );
            index = next;
            obs = select(tun, index)?;
            if list.nodes[index].resolver().is_ipv4() != resolver.is_ipv4() {
                prober =
                    probe::Prober::new(list.nodes[index].resolver()).context("probe socket")?;
            }
            continue;
        }
        let rest = t.probe_interval.saturating_sub(tick.elapsed());
        let end = Instant::now() + rest;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                end.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("palisade-client: signal handler: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run(args, stop) {
        eprintln!("palisade-client: {e:#}");
        std::process::exit(1);
    }
}
