//! The uplink task: health of every uplink and failover of the default
//! route (docs/failover.md). The decisions are palisade-core's pure
//! `uplink` module; this is the driver that observes, probes and applies.
//!
//! - Observes each uplink (link up, carrier, addresses, gateway: static or
//!   the DHCP lease's router) every round and at once on every kernel link
//!   or address notification (`netlink::Watch`), so a pulled cable or a new
//!   lease is acted on without waiting for probes.
//! - Probes each uplink's targets with ICMP echo through that uplink only
//!   (a raw socket bound to the device, SO_BINDTODEVICE, from the uplink's
//!   own address): `interval_ms`, `timeout_ms`, `fall`, `rise`.
//! - On a switch: the active default route moves (one route replace), the
//!   conntrack entries masqueraded onto the old uplink's addresses are
//!   deleted, and every peer with a live session gets keepalives for a few
//!   seconds so clients roam to the node's new source address.
//!
//! Status and metrics read the snapshot this task publishes (aggregates and
//! the node's own interfaces only; nothing about clients).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_core::config::{UplinkHealthSection, UplinkSection};
use palisade_core::uplink::{self as up, Health, Reason, Route, Selector};
use palisade_core::{conntrack, netlink};
use serde_json::json;
use tokio::sync::Notify;

use crate::supervisor::{blocking, Shared};

/// Rank of the active uplink (-1: none yet), for metrics.
pub static ACTIVE_RANK: AtomicI64 = AtomicI64::new(-1);
/// Uplinks healthy now, and configured.
pub static HEALTHY: AtomicU64 = AtomicU64::new(0);
pub static CONFIGURED: AtomicU64 = AtomicU64::new(0);
/// Switches of the active uplink since start (the initial choice is not one).
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);

static STATUS: OnceLock<Mutex<serde_json::Value>> = OnceLock::new();

/// The last published status (`palisade status`'s `uplinks`).
pub fn status_json() -> serde_json::Value {
    STATUS
        .get()
        .and_then(|s| s.lock().ok().map(|v| v.clone()))
        .unwrap_or(serde_json::Value::Null)
}

fn publish(v: serde_json::Value) {
    let m = STATUS.get_or_init(|| Mutex::new(serde_json::Value::Null));
    if let Ok(mut g) = m.lock() {
        *g = v;
    }
}

/// How long after a switch peers get keepalives (one a second).
const KEEPALIVE_FOR: Duration = Duration::from_secs(3);
/// A peer whose last handshake is older has no session to keep (REJECT_AFTER_TIME).
const LIVE_SESSION: Duration = Duration::from_secs(180);

/// What one round saw on one uplink.
#[derive(Debug, Clone, Default)]
struct Seen {
    exists: bool,
    up: bool,
    carrier: bool,
    addresses: Vec<IpAddr>,
    gateways: Vec<IpAddr>,
    /// Probe round: `Some(rtt)` of the fastest answer, `None` when none answered.
    probe: Option<Option<Duration>>,
}

impl Seen {
    fn usable(&self) -> bool {
        self.exists && self.up && self.carrier && !self.addresses.is_empty()
    }
}

fn observe(u: &UplinkSection, run_dir: &std::path::Path) -> Seen {
    let Ok(Some(state)) = netlink::link_state(&u.interface) else {
        return Seen::default();
    };
    let addresses = netlink::addresses(&u.interface)
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.addr())
        .filter(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    Seen {
        exists: true,
        up: state.up,
        carrier: state.lower_up,
        addresses,
        gateways: up::gateways(u, run_dir),
        probe: None,
    }
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(1);

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo to `target` through `dev` from `src`; the round-trip time
/// if the matching reply came within `timeout`.
fn ping(
    dev: &str,
    src: IpAddr,
    target: IpAddr,
    timeout: Duration,
) -> std::io::Result<Option<Duration>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = target.is_ipv6();
    let sock = if v6 {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
    };
    sock.bind_device(Some(dev.as_bytes()))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    let n = PROBE_SEQ.fetch_add(1, Relaxed);
    let id = (std::process::id() as u16) ^ ((n >> 16) as u16);
    let seq = n as u16;
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"palisade-uplink!");
    if !v6 {
        // The kernel fills in the ICMPv6 checksum; ICMPv4's is ours.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let t0 = Instant::now();
    sock.send_to(&pkt, &SocketAddr::new(target, 0).into())?;
    let sock: std::net::UdpSocket = sock.into();
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        let (len, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if from.ip() != target {
            continue;
        }
        // IPv4 raw sockets see the IP header; IPv6 ones do not.
        let icmp = if v6 {
            &buf[..len]
        } else {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            buf.get(ihl..len).unwrap_or_default()
        };
        let reply = if v6 { 129 } else { 0 };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(Some(t0.elapsed()));
        }
    }
}

/// A probe round on one usable uplink: the fastest answer of its targets.
fn probe_round(u: &UplinkSection, seen: &Seen, timeout: Duration) -> Option<Duration> {
    std::thread::scope(|s| {
        let handles: Vec<_> = u
            .probe_targets
            .iter()
            .map(|t| {
                let src = seen
                    .addresses
                    .iter()
                    .find(|a| a.is_ipv4() == t.is_ipv4())
                    .copied();
                let dev = u.interface.as_str();
                s.spawn(move || src.and_then(|src| ping(dev, src, *t, timeout).ok().flatten()))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .min()
    })
}

/// The task's state between rounds.
struct State {
    uplinks: Vec<UplinkSection>,
    health_cfg: UplinkHealthSection,
    health: Vec<Health>,
    seen: Vec<Seen>,
    selector: Selector,
    last_switch: Option<(SystemTime, String, String, Reason)>,
}

impl State {
    fn new(uplinks: Vec<UplinkSection>, cfg: UplinkHealthSection, now: Instant) -> State {
        let ranked: Vec<UplinkSection> = up::ranked(&uplinks).into_iter().cloned().collect();
        State {
            health: ranked.iter().map(|_| Health::new(now)).collect(),
            seen: ranked.iter().map(|_| Seen::default()).collect(),
            selector: Selector::new(Duration::from_secs(cfg.hold_down_secs)),
            uplinks: ranked,
            health_cfg: cfg,
            last_switch: None,
        }
    }

    /// Feed what was seen into the health trackers (probe results only
    /// when `probed`).
    fn update(&mut self, seen: Vec<Seen>, probed: bool, now: Instant) {
        let cfg = &self.health_cfg;
        for (i, s) in seen.into_iter().enumerate() {
            let h = &mut self.health[i];
            if !s.usable() {
                h.unusable(now);
            } else if self.uplinks[i].probe_targets.is_empty() {
                h.usable_unprobed(now);
            } else if probed {
                h.round(s.probe.flatten().is_some(), cfg.fall, cfg.rise, now);
            }
            // Keep the last probe result across link-event rounds.
            let last = self.seen[i].probe;
            self.seen[i] = s;
            if !probed {
                self.seen[i].probe = last;
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let active = self.selector.active;
        let list: Vec<serde_json::Value> = self
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let s = &self.seen[i];
                json!({
                    "interface": u.interface,
                    "priority": u.priority,
                    "rank": i,
                    "active": active == Some(i),
                    "healthy": self.health[i].healthy,
                    "carrier": s.carrier,
                    "gateways": s.gateways.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                    "probe_targets": u.probe_targets.len(),
                    "last_rtt_ms": s.probe.flatten().map(|d| d.as_secs_f64() * 1000.0),
                    "failed_rounds": self.health[i].fails,
                })
            })
            .collect();
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        json!({
            "active": active.map(|a| self.uplinks[a].interface.clone()),
            "switches": SWITCHES.load(Relaxed),
            "hold_down_secs": self.health_cfg.hold_down_secs,
            "last_switch": self.last_switch.as_ref().map(|(t, from, to, why)| json!({
                "unix_time": unix(*t), "from": from, "to": to, "reason": why.to_string(),
            })),
            "uplinks": list,
        })
    }
}

/// The uplinks and health settings of the engine's spec, without waiting
/// for the engine (a long reconcile pass must not delay a failover).
fn current_config(engine: &Shared) -> Option<(Vec<UplinkSection>, UplinkHealthSection)> {
    let e = engine.try_lock().ok()?;
    e.spec()
        .map(|s| (s.uplinks.clone(), s.uplink_health.clone()))
}

/// Run forever: observe, probe, decide, apply.
pub async fn run(engine: Shared, run_dir: PathBuf) {
    let changed = Arc::new(Notify::new());
    {
        let changed = changed.clone();
        std::thread::Builder::new()
            .name("uplink-watch".into())
            .spawn(move || match netlink::Watch::new() {
                Ok(mut w) => {
                    while w.wait().is_ok() {
                        changed.notify_one();
                    }
                }
                Err(e) => tracing::warn!(
                    "uplinks: no link notifications ({e}); following carrier by polling only"
                ),
            })
            .ok();
    }
    let mut state: Option<State> = None;
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let probe_now = tokio::select! {
            _ = tokio::time::sleep_until(next_probe) => true,
            _ = changed.notified() => false,
        };
        // Follow config changes (reload, fleet): a new set of uplinks or
        // settings starts the trackers afresh, keeping the active uplink.
        if let Some((uplinks, cfg)) = current_config(&engine) {
            let same = state.as_ref().is_some_and(|s| {
                s.health_cfg == cfg && up::ranked(&uplinks).into_iter().eq(s.uplinks.iter())
            });
            if !same {
                let mut s = State::new(uplinks, cfg, Instant::now());
                if let Some(old) = &state {
                    let was = old
                        .selector
                        .active
                        .map(|a| old.uplinks[a].interface.clone());
                    s.selector.active = s
                        .uplinks
                        .iter()
                        .position(|u| Some(&u.interface) == was.as_ref());
                }
                CONFIGURED.store(s.uplinks.len() as u64, Relaxed);
                state = Some(s);
            }
        }
        let Some(st) = state.as_mut() else {
            next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
            continue;
        };
        let interval = Duration::from_millis(st.health_cfg.interval_ms);
        if probe_now {
            next_probe += interval;
            let now = tokio::time::Instant::now();
            if next_probe < now {
                next_probe = now + interval;
            }
        }
        let (uplinks, timeout, dir) = (
            st.uplinks.clone(),
            Duration::from_millis(st.health_cfg.timeout_ms),
            run_dir.clone(),
        );
        let seen = tokio::task::spawn_blocking(move || {
            uplinks
                .iter()
                .map(|u| {
                    let mut s = observe(u, &dir);
                    if probe_now && s.usable() && !u.probe_targets.is_empty() {
                        s.probe = Some(probe_round(u, &s, timeout));
                    }
                    s
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if seen.len() != st.uplinks.len() {
            continue;
        }
        let now = Instant::now();
        let was_healthy: Vec<bool> = st.health.iter().map(|h| h.healthy).collect();
        st.update(seen, probe_now, now);
        for (i, h) in st.health.iter().enumerate() {
            if h.healthy != was_healthy[i] {
                let u = &st.uplinks[i].interface;
                if h.healthy {
                    tracing::info!("uplink {u}: healthy");
                } else {
                    tracing::warn!("uplink {u}: unhealthy ({})", why_unhealthy(&st.seen[i]));
                }
            }
        }
        HEALTHY.store(
            st.health.iter().filter(|h| h.healthy).count() as u64,
            Relaxed,
        );
        let mut switched = false;
        // Only an uplink with a gateway can hold the default route (one
        // without is a LAN: on-link traffic only).
        let eligible: Vec<Health> = st
            .health
            .iter()
            .zip(&st.seen)
            .map(|(h, s)| Health {
                healthy: h.healthy && !s.gateways.is_empty(),
                ..*h
            })
            .collect();
        if let Some((from, to, reason)) = st.selector.decide(&eligible, now) {
            switched = from.is_some();
            let name = |i: Option<usize>| {
                i.map(|i| st.uplinks[i].interface.clone())
                    .unwrap_or_else(|| "none".into())
            };
            let (f, t) = (name(from), name(Some(to)));
            match reason {
                Reason::Initial => tracing::info!("uplink {t}: active"),
                Reason::Failed => tracing::warn!("uplink failover: {f} -> {t} ({f} unhealthy)"),
                Reason::Recovered => tracing::info!(
                    "uplink failover: {f} -> {t} ({t} healthy for the hold-down of {} s)",
                    st.health_cfg.hold_down_secs
                ),
            }
            if from.is_some() {
                SWITCHES.fetch_add(1, Relaxed);
                st.last_switch = Some((SystemTime::now(), f, t, reason));
            }
        }
        ACTIVE_RANK.store(st.selector.active.map_or(-1, |a| a as i64), Relaxed);
        // A standby uplink that fails may still carry clients' WireGuard
        // packets (a client keeps the node address it last heard from):
        // they need keepalives from the active uplink too.
        let standby_failed = st
            .health
            .iter()
            .enumerate()
            .any(|(i, h)| was_healthy[i] && !h.healthy && Some(i) != st.selector.active);
        let old_addrs: Vec<IpAddr> = apply_routes(st, standby_failed).await;
        publish(st.json());
        if !old_addrs.is_empty() {
            flush_nat(old_addrs).await;
        }
        if switched || standby_failed {
            send_keepalives(&engine);
        }
    }
}

fn why_unhealthy(s: &Seen) -> &'static str {
    if !s.exists {
        "no such interface"
    } else if !s.up {
        "link down"
    } else if !s.carrier {
        "no carrier"
    } else if s.addresses.is_empty() {
        "no address"
    } else {
        "probes unanswered"
    }
}

/// Bring the default routes in line with the active uplink. Returns the
/// addresses of the uplink the active route left (to flush their NAT
/// mappings), empty when it did not move. `renew`: replace the active
/// route even if it is in place, so route listeners (wireguard-go's
/// sticky source addresses) look again.
async fn apply_routes(st: &State, renew: bool) -> Vec<IpAddr> {
    if st.selector.active.is_none() {
        return Vec::new(); // nothing chosen yet: leave the routes as they are
    }
    let gateways: Vec<(String, Vec<IpAddr>)> = st
        .uplinks
        .iter()
        .zip(&st.seen)
        .map(|(u, s)| (u.interface.clone(), s.gateways.clone()))
        .collect();
    let wanted = up::wanted_routes(&gateways, st.selector.active);
    let addrs: Vec<(String, Vec<IpAddr>)> = st
        .uplinks
        .iter()
        .zip(&st.seen)
        .map(|(u, s)| (u.interface.clone(), s.addresses.clone()))
        .collect();
    let active_dev = st.selector.active.map(|a| st.uplinks[a].interface.clone());
    tokio::task::spawn_blocking(move || {
        let mut observed = Vec::new();
        for (dev, _) in &gateways {
            for r in netlink::default_routes(dev).unwrap_or_default() {
                observed.push(Route {
                    dev: dev.clone(),
                    gateway: r.gateway,
                    metric: r.metric,
                });
            }
        }
        // The uplink(s) whose active route is about to move.
        let leaving: Vec<String> = observed
            .iter()
            .filter(|r| r.metric == up::ACTIVE_METRIC && Some(&r.dev) != active_dev.as_ref())
            .map(|r| r.dev.clone())
            .collect();
        let mut changes = up::route_changes(&wanted, &observed);
        if renew && changes.is_empty() {
            changes.extend(
                wanted
                    .iter()
                    .filter(|r| r.metric == up::ACTIVE_METRIC)
                    .map(|r| netlink::Change::ReplaceDefaultRoute {
                        dev: r.dev.clone(),
                        gateway: r.gateway,
                        metric: r.metric,
                    }),
            );
        }
        for c in changes {
            if let Err(e) = c.apply() {
                tracing::error!("uplink routes: {e}");
            }
        }
        addrs
            .into_iter()
            .filter(|(d, _)| leaving.contains(d))
            .flat_map(|(_, a)| a)
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// After the active route moved off an uplink: forget the flows
/// masqueraded onto its addresses.
async fn flush_nat(old: Vec<IpAddr>) {
    match tokio::task::spawn_blocking(move || conntrack::flush_nated_to(&old)).await {
        Ok(Ok(n)) => {
            tracing::info!("uplink failover: {n} NAT mapping(s) on the old uplink dropped")
        }
        Ok(Err(e)) => tracing::error!("uplink failover: {e}"),
        Err(_) => {}
    }
}

/// Keepalives for a few seconds to every peer with a live session, from
/// the active uplink: clients roam to the address they come from.
fn send_keepalives(engine: &Shared) {
    let engine = engine.clone();
    tokio::spawn(async move {
        // Route listeners (wireguard-go's sticky source addresses) see the
        // route change asynchronously: the first keepalive after them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peers = blocking(&engine, |e| e.live_peers(LIVE_SESSION)).await;
        let peers = match peers {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return,
            Err(e) => {
                tracing::error!("uplink failover: reading peers: {e}");
                return;
            }
        };
        let n = peers.len();
        // Off and on again sends one at once: three early ones (a route
        // listener that is late misses only the first), then one a second.
        let mut waited = Duration::ZERO;
        for (i, gap) in [0u64, 200, 300].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(gap)).await;
            waited += Duration::from_millis(gap);
            let p = peers.clone();
            let r = blocking(&engine, move |e| {
                if i > 0 {
                    e.set_keepalive(&p, 0)?;
                }
                e.set_keepalive(&p, 1)
            })
            .await;
            if let Err(e) = r {
                tracing::error!("uplink failover: keepalives: {e}");
                break;
            }
        }
        tracing::info!("uplink failover: keepalives to {n} peer(s) with a live session");
        tokio::time::sleep(KEEPALIVE_FOR.saturating_sub(waited)).await;
        if let Err(e) = blocking(&engine, move |e| e.set_keepalive(&peers, 0)).await {
            tracing::error!("uplink failover: keepalives off: {e}");
        }
    });
}
