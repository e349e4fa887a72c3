//! The supervisor loop: one engine behind a mutex, driven by the control
//! socket, SIGHUP and a timer. Engine calls block (netlink, nft), so they
//! run on the blocking pool. Beside it run: the control socket server
//! (bounded, see [`ControlLimits`]), the DNS resolver's supervisor
//! (`dns_supervisor.rs`: restarts with backoff, canary every 10 s), the
//! fleet task and the serial console's enrolment protocol (`fleet.rs`) and,
//! where the system has A/B slots, the update task (`update.rs`).

use crate::dns_supervisor::DnsSupervisor;
use crate::fleet::Fleet;
use crate::update::{self, ApplyRequest, Layout, NodeView, Updater};
use crate::Args;
use anyhow::Context;
use palisade_core::config::PeerSection;
use palisade_core::control::{ErrorKind, Request, Response, MAX_REQUEST};
use palisade_core::firewall::NftCli;
use palisade_core::reconcile::{Engine, EngineError, Paths, Report};
use palisade_core::wg::KernelWg;
use std::os::unix::fs::PermissionsExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::signal::unix::{signal, SignalKind};

pub(crate) type Shared = Arc<Mutex<Engine>>;
pub(crate) type Dns = Arc<DnsSupervisor>;
/// The fleet subsystem (identity, enrolment, fleet sync).
type FleetRef = Option<Arc<Fleet>>;

/// What the control socket's handlers reach.
#[derive(Clone)]
struct Ctx {
    engine: Shared,
    dns: Dns,
    updates: Updates,
    fleet: FleetRef,
}
/// The update subsystem, when this system can update itself.
type Updates = Option<Arc<Updater>>;

/// Bring the resolver in line with the engine's current spec (start,
/// reload, restart or stop it). Errors leave a running resolver as it was.
pub(crate) async fn sync_dns(engine: &Shared, dns: &Dns) -> Result<(), String> {
    let spec = blocking(engine, served_spec).await;
    dns.apply(spec.as_ref()).await
}

/// The spec DNS serves: none while the node is revoked.
fn served_spec(e: &mut Engine) -> Option<palisade_core::config::NodeSpec> {
    if e.revoked() {
        None
    } else {
        e.spec().cloned()
    }
}

pub(crate) async fn blocking<T: Send + 'static>(engine: &Shared, f: impl FnOnce(&mut Engine) -> T + Send + 'static) -> T {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || f(&mut e.lock().expect("engine poisoned")))
        .await
        .expect("engine task panicked")
}

pub(crate) fn log_report(what: &str, r: &Report) {
    crate::metrics::record_pass(r);
    if r.firewall_drift {
        tracing::warn!("{what}: firewall table was changed outside palisaded; restored");
    }
    if r.wg_peer_changes > 0 || r.wg_interface_changed || r.link_changes > 0 || r.sysctl_changes > 0 || r.firewall_applied {
        tracing::info!(
            "{what}: {} peer change(s), interface {}, {} link change(s), {} sysctl change(s), firewall {} ({} us)",
            r.wg_peer_changes,
            if r.wg_interface_changed { "configured" } else { "unchanged" },
            r.link_changes,
            r.sysctl_changes,
            if r.firewall_applied { "applied" } else { "unchanged" },
            r.duration_us
        );
    }
    for e in &r.errors {
        tracing::error!("{what}: {e}");
    }
    if !r.firewall_verified {
        tracing::warn!("{what}: fail-closed: no verified firewall table, forwarding off and the tunnel down");
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let paths = Paths::new(&args.state_dir, args.config.as_deref());
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    std::fs::create_dir_all(&args.run_dir).with_context(|| format!("creating {}", args.run_dir.display()))?;
    std::fs::set_permissions(&args.run_dir, std::fs::Permissions::from_mode(0o700))?;

    // The board first: a restarted supervisor re-arms the watchdog before
    // the slow parts of starting (board.rs). Each subsystem below ticks its
    // heartbeat; the watchdog is fed only while all are fresh.
    let heartbeats = crate::board::Heartbeats::new();
    let board = crate::board::start(&args.board, &args.state_dir, heartbeats.clone());
    let reconcile_hb = heartbeats.register("reconcile", Duration::from_secs(args.reconcile_secs.max(1).saturating_mul(3).saturating_add(30)));
    let runtime_hb = heartbeats.register("runtime", Duration::from_secs(15));
    let dns_hb = heartbeats.register("dns", Duration::from_secs(120));
    let runtime_task = tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            runtime_hb.tick();
        }
    });

    // The backend comes from the config; until one loads, assume the kernel.
    let backend = palisade_core::config::read(&paths.config).map(|(c, _)| c.wireguard.backend).unwrap_or_default();
    let engine: Shared = Arc::new(Mutex::new(Engine::new(
        paths,
        Box::new(KernelWg::new(backend)),
        Box::new(NftCli::default()),
        true,
    )));

    let dns: Dns = Arc::new(DnsSupervisor::default());
    let fleet: FleetRef = match Fleet::open(&args.state_dir, &args.run_dir, Duration::from_secs(args.fleet_poll_secs.clamp(1, 86400))) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!("fleet unavailable: {e:#}");
            None
        }
    };
    // A revoked node locks down before its first reconcile: no tunnel, not
    // even for a moment, until it is enrolled again.
    if fleet.as_ref().is_some_and(|f| f.is_revoked()) {
        let r = blocking(&engine, |e| e.set_revoked(true)).await;
        log_report("revoked", &r);
    }
    match blocking(&engine, |e| e.reload()).await {
        Ok(r) => log_report("start", &r),
        Err(e) => tracing::error!("start: {e}"),
    }
    // The node's public key is not secret; operators (and the demo) need it
    // to build client configs without the control socket.
    if let Some(k) = blocking(&engine, |e| e.status()["wireguard"]["public_key"].as_str().map(str::to_string)).await {
        tracing::info!("wireguard public key {k}");
    }
    // A resolver that cannot start is logged and retried by its supervisor
    // (dns_supervisor.rs); the rest of the node comes up regardless.
    let _ = sync_dns(&engine, &dns).await;

    let sock_path = args.run_dir.join("palisaded.sock");
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path).with_context(|| format!("binding {}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("control socket {}", sock_path.display());

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(args.reconcile_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The resolver's supervisor: restarts when due, canary rounds.
    let dns_task = {
        let (engine, dns) = (engine.clone(), dns.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                dns_hb.tick();
                dns.tick(|| blocking(&engine, served_spec)).await;
            }
        })
    };
    let fleet_task = fleet.clone().map(|f| {
        if let Some(dev) = args.enrol_console.clone() {
            crate::fleet::spawn_console(f.clone(), dev);
        }
        tokio::spawn(f.run(engine.clone(), dns.clone(), heartbeats.register("fleet", Duration::from_secs(300))))
    });
    let updates: Updates = match Layout::discover(&args) {
        Ok(layout) => match Updater::open(layout) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::error!("updates unavailable: {e:#}");
                None
            }
        },
        Err(why) => {
            tracing::info!("updates unavailable: {why}");
            None
        }
    };
    let update_task = updates.clone().map(|u| {
        let engine = engine.clone();
        let fleet = fleet.clone();
        let hb = heartbeats.register("update", Duration::from_secs(900));
        tokio::spawn(u.run(move || {
            let (engine, fleet) = (engine.clone(), fleet.clone());
            Box::pin(async move { node_view(&engine, fleet.as_deref()).await })
        }, hb))
    });
    // The metrics endpoint (on the mesh address, mTLS; metrics.rs).
    let metrics_task = tokio::spawn(crate::metrics::run(crate::metrics::Ctx {
        engine: engine.clone(),
        dns: dns.clone(),
        updates: updates.clone(),
        fleet: fleet.clone(),
        state_dir: args.state_dir.clone(),
        booted_slot: args.booted_slot.clone(),
    }));
    // Uplink health and failover of the default route (uplink.rs).
    let uplink_task = tokio::spawn(crate::uplink::run(engine.clone(), args.run_dir.clone()));
    // The status LED follows health, updates and revocation.
    let status_task = board.filter(|b| b.has_led).map(|b| tokio::spawn(crate::board::status_task(b, engine.clone(), dns.clone(), updates.clone(), fleet.clone())));
    let control_task = tokio::spawn(control_server(listener, Ctx { engine: engine.clone(), dns: dns.clone(), updates, fleet }, ControlLimits::default()));

    loop {
        tokio::select! {
            _ = tick.tick() => {
                reconcile_hb.tick();
                let r = blocking(&engine, |e| e.reconcile()).await;
                log_report("reconcile", &r);
                reconcile_hb.tick();
            }
            _ = hup.recv() => {
                match blocking(&engine, |e| e.reload()).await {
                    Ok(r) => {
                        log_report("reload (SIGHUP)", &r);
                        if let Err(e) = sync_dns(&engine, &dns).await {
                            tracing::error!("reload (SIGHUP): {e}");
                        }
                    }
                    Err(e) => tracing::error!("reload (SIGHUP): {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // The firewall table stays loaded: its drop policies keep clients
    // isolated while palisaded is down.
    tracing::info!("stopping; firewall table left in place");
    control_task.abort();
    metrics_task.abort();
    uplink_task.abort();
    dns_task.abort();
    runtime_task.abort();
    if let Some(t) = status_task {
        t.abort();
    }
    // An orderly stop: the watchdog is magic-closed (PID 1 reboots or powers off next).
    crate::board::release_watchdog();
    if let Some(t) = update_task {
        t.abort();
    }
    if let Some(t) = fleet_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&sock_path);
    dns.shutdown().await;
    Ok(())
}

/// Bounds on the control socket. Only root can connect (the socket is 0600),
/// but a stuck or misbehaving client must not be able to lock out the
/// operator or the health gate.
#[derive(Debug, Clone, Copy)]
pub struct ControlLimits {
    /// Connections served at once.
    pub max_conns: usize,
    /// Time a client gets to send its request line.
    pub request_timeout: Duration,
    /// Time a client gets to take its response.
    pub write_timeout: Duration,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            max_conns: 32,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Connections still waiting for their request line, oldest first: when
/// every slot is taken, a new connection evicts the oldest of these (an idle
/// client cannot keep a working one out). Connections whose request is being
/// handled or answered are never evicted; they end within the handler's time
/// plus `write_timeout`.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, Arc<Notify>)>,
}

impl Waiting {
    fn push(&mut self) -> (u64, Arc<Notify>) {
        self.next += 1;
        let n = Arc::new(Notify::new());
        self.queue.push_back((self.next, n.clone()));
        (self.next, n)
    }

    fn remove(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }

    fn evict_oldest(&mut self) -> bool {
        match self.queue.pop_front() {
            Some((_, n)) => {
                // Stored if the task is not waiting yet: it sees it at once.
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Accept control connections within `limits` (see [`ControlLimits`]).
async fn control_server(listener: UnixListener, ctx: Ctx, limits: ControlLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_conns));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = waiting.lock().expect("waiting poisoned").evict_oldest();
                if !evicted {
                    // Every slot is executing a request: refuse this one.
                    drop(stream);
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
        };
        let (w, ctx) = (waiting.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(stream, permit, w, ctx, limits).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn serve(
    stream: UnixStream,
    _permit: OwnedSemaphorePermit,
    waiting: Arc<Mutex<Waiting>>,
    ctx: Ctx,
    limits: ControlLimits,
) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let (id, evict) = waiting.lock().expect("waiting poisoned").push();
    let read = tokio::select! {
        r = tokio::time::timeout(limits.request_timeout, reader.read_line(&mut line)) => Some(r),
        _ = evict.notified() => None,
    };
    waiting.lock().expect("waiting poisoned").remove(id);
    let n = match read {
        None => anyhow::bail!("closed: every slot taken and this client had not sent its request"),
        Some(r) => r.context("client too slow")??,
    };
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req, &ctx).await,
        Err(e) => Response::err(ErrorKind::BadRequest, format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    tokio::time::timeout(limits.write_timeout, w.write_all(&out))
        .await
        .context("client does not read its response")??;
    Ok(())
}

fn report_json(r: &Report) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// A change was applied to WireGuard and the firewall; bring DNS along and
/// report its failure (the rest of the change stays applied).
async fn after_change(what: &str, r: Report, engine: &Shared, dns: &Dns) -> Response {
    log_report(what, &r);
    match sync_dns(engine, dns).await {
        Ok(()) => Response::ok(report_json(&r)),
        Err(e) => {
            tracing::error!("{what}: {e}");
            let mut r = r;
            r.errors.push(e);
            Response::ok(report_json(&r))
        }
    }
}

/// An engine refusal on the wire: its stable kind and its message.
fn refused(e: EngineError) -> Response {
    Response::err(e.kind(), e.to_string())
}

/// What the update task needs from the engine's current spec.
/// The node id is the fleet identity's (the WireGuard key's hash where
/// the fleet subsystem is unavailable).
async fn node_view(engine: &Shared, fleet: Option<&Fleet>) -> Option<NodeView> {
    let fleet_id = fleet.map(Fleet::node_id);
    blocking(engine, move |e| {
        let spec = e.spec()?.clone();
        let id = match fleet_id {
            Some(id) => id,
            None => update::node_id(e.status()["wireguard"]["public_key"].as_str()?),
        };
        Some(NodeView {
            update: spec.update.clone(),
            identity: palisade_update::schedule::NodeIdentity { id, region: spec.node.region.clone() },
        })
    })
    .await
}

fn handle_fleet(req: Request, fleet: &FleetRef) -> Response {
    let Some(f) = fleet else {
        return Response::err(ErrorKind::Unavailable, "the fleet subsystem is unavailable (see the supervisor's log: the state store could not be opened)");
    };
    match req {
        Request::Identity => Response::ok(f.identity_json()),
        Request::FleetStatus => Response::ok(f.status_json()),
        Request::FactoryReset { confirm: true } => match f.factory_reset() {
            Ok(node) => Response::ok(serde_json::json!({"node_id": node})),
            Err(e) => Response::err(ErrorKind::System, e),
        },
        Request::FactoryReset { confirm: false } => Response::err(ErrorKind::BadRequest, "factory reset needs confirm: true"),
        _ => Response::err(ErrorKind::BadRequest, "not a fleet request"),
    }
}

fn handle_update(req: Request, updates: &Updates) -> Response {
    let Some(u) = updates else {
        return Response::err(ErrorKind::Unavailable, "updates are unavailable on this system (see the supervisor's log: no A/B slots, ESP or version)");
    };
    match req {
        Request::UpdateStatus => Response::ok(u.status()),
        Request::UpdateCheck => {
            u.check_now();
            Response::ok(serde_json::json!("checking"))
        }
        Request::UpdateApply { source, version, reboot } => {
            let version = match version.as_deref().map(semver::Version::parse).transpose() {
                Ok(v) => v,
                Err(e) => return Response::err(ErrorKind::BadRequest, format!("version: {e}")),
            };
            match u.request_apply(ApplyRequest { source, version, reboot }) {
                Ok(()) => Response::ok(serde_json::json!("started")),
                Err(e) => Response::err(ErrorKind::Unavailable, e),
            }
        }
        _ => Response::err(ErrorKind::BadRequest, "not an update request"),
    }
}

async fn handle(req: Request, ctx: &Ctx) -> Response {
    let (engine, dns) = (&ctx.engine, &ctx.dns);
    match req {
        Request::Status => {
            let mut v = blocking(engine, |e| e.status()).await;
            v["dns"] = dns.status();
            v["uplinks"] = crate::uplink::status_json();
            Response::ok(v)
        }
        Request::PeersList => Response::ok(blocking(engine, |e| e.peers()).await),
        Request::Reload => match blocking(engine, |e| e.reload()).await {
            Ok(r) => after_change("reload", r, engine, dns).await,
            Err(e) => refused(e),
        },
        Request::Plan => match blocking(engine, |e| e.plan()).await {
            Ok(lines) => Response::ok(serde_json::json!(lines)),
            Err(e) => refused(e),
        },
        Request::PeersAdd { name, public_key, addresses, tier, preshared_key } => {
            let mut addrs = Vec::new();
            for a in &addresses {
                match a.parse() {
                    Ok(n) => addrs.push(n),
                    Err(_) => return Response::err(ErrorKind::BadRequest, format!("address '{a}' is not a CIDR (e.g. 10.66.0.7/32)")),
                }
            }
            let peer = PeerSection { name, public_key, addresses: addrs, tier, preshared_key };
            match blocking(engine, move |e| e.add_peer(peer)).await {
                Ok(r) => after_change("peers add", r, engine, dns).await,
                Err(e) => refused(e),
            }
        }
        Request::PeersRemove { peer } => match blocking(engine, move |e| e.remove_peer(&peer)).await {
            Ok(r) => after_change("peers remove", r, engine, dns).await,
            Err(e) => refused(e),
        },
        Request::ClientConfig { peer } => match blocking(engine, move |e| e.client_config(&peer)).await {
            Ok(v) => Response::ok(v),
            Err(e) => refused(e),
        },
        Request::DnsStats => match dns.stats() {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(ErrorKind::Unavailable, e),
        },
        r @ (Request::UpdateStatus | Request::UpdateCheck | Request::UpdateApply { .. }) => handle_update(r, &ctx.updates),
        r @ (Request::Identity | Request::FleetStatus | Request::FactoryReset { .. }) => handle_fleet(r, &ctx.fleet),
    }
}
