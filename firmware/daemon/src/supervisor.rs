//! The supervisor loop: one engine behind a mutex, driven by the control
//! socket, SIGHUP and a timer. Engine calls block (netlink, nft), so they
//! run on the blocking pool.

use crate::dns::DnsService;
use crate::Args;
use anyhow::Context;
use palisade_core::config::PeerSection;
use palisade_core::control::{Request, Response, MAX_REQUEST};
use palisade_core::firewall::NftCli;
use palisade_core::reconcile::{Engine, Paths, Report};
use palisade_core::wg::KernelWg;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

type Shared = Arc<Mutex<Engine>>;
type Dns = Arc<Mutex<Option<DnsService>>>;

/// Bring the resolver in line with the engine's current spec: start it if
/// it is not running, otherwise swap its policy. Errors leave it as it was.
async fn sync_dns(engine: &Shared, dns: &Dns) -> Result<(), String> {
    let Some(spec) = engine.lock().expect("engine poisoned").spec().cloned() else {
        return Ok(());
    };
    let running = {
        let g = dns.lock().expect("dns poisoned");
        match g.as_ref() {
            Some(d) => Some(d.reload(&spec).map_err(|e| format!("{e:#}"))),
            None => None,
        }
    };
    match running {
        Some(r) => r,
        None => match DnsService::start(&spec).await {
            Ok(d) => {
                *dns.lock().expect("dns poisoned") = Some(d);
                Ok(())
            }
            Err(e) => Err(format!("{e:#}")),
        },
    }
}

async fn blocking<T: Send + 'static>(engine: &Shared, f: impl FnOnce(&mut Engine) -> T + Send + 'static) -> T {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || f(&mut e.lock().expect("engine poisoned")))
        .await
        .expect("engine task panicked")
}

fn log_report(what: &str, r: &Report) {
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

    // The backend comes from the config; until one loads, assume the kernel.
    let backend = palisade_core::config::read(&paths.config).map(|(c, _)| c.wireguard.backend).unwrap_or_default();
    let engine: Shared = Arc::new(Mutex::new(Engine::new(
        paths,
        Box::new(KernelWg::new(backend)),
        Box::new(NftCli::default()),
        true,
    )));

    let dns: Dns = Arc::new(Mutex::new(None));
    match blocking(&engine, |e| e.reload()).await {
        Ok(r) => log_report("start", &r),
        Err(e) => tracing::error!("start: {e}"),
    }
    // The node's public key is not secret; operators (and the demo) need it
    // to build client configs without the control socket.
    if let Some(k) = blocking(&engine, |e| e.status()["wireguard"]["public_key"].as_str().map(str::to_string)).await {
        tracing::info!("wireguard public key {k}");
    }
    if let Err(e) = sync_dns(&engine, &dns).await {
        tracing::error!("start: {e}");
    }

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

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let r = blocking(&engine, |e| e.reconcile()).await;
                log_report("reconcile", &r);
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
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    let engine = engine.clone();
                    let dns = dns.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, engine, dns).await {
                            tracing::warn!("control connection: {e}");
                        }
                    });
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // The firewall table stays loaded: its drop policies keep clients
    // isolated while palisaded is down.
    tracing::info!("stopping; firewall table left in place");
    let _ = std::fs::remove_file(&sock_path);
    let running = dns.lock().expect("dns poisoned").take();
    if let Some(d) = running {
        d.stop().await;
    }
    Ok(())
}

async fn serve(stream: UnixStream, engine: Shared, dns: Dns) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line))
        .await
        .context("client too slow")??;
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req, &engine, &dns).await,
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
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

async fn handle(req: Request, engine: &Shared, dns: &Dns) -> Response {
    match req {
        Request::Status => Response::ok(blocking(engine, |e| e.status()).await),
        Request::PeersList => Response::ok(blocking(engine, |e| e.peers()).await),
        Request::Reload => match blocking(engine, |e| e.reload()).await {
            Ok(r) => after_change("reload", r, engine, dns).await,
            Err(e) => Response::err(e),
        },
        Request::Plan => match blocking(engine, |e| e.plan()).await {
            Ok(lines) => Response::ok(serde_json::json!(lines)),
            Err(e) => Response::err(e),
        },
        Request::PeersAdd { name, public_key, addresses, tier, preshared_key } => {
            let mut addrs = Vec::new();
            for a in &addresses {
                match a.parse() {
                    Ok(n) => addrs.push(n),
                    Err(_) => return Response::err(format!("address '{a}' is not a CIDR (e.g. 10.66.0.7/32)")),
                }
            }
            let peer = PeerSection { name, public_key, addresses: addrs, tier, preshared_key };
            match blocking(engine, move |e| e.add_peer(peer)).await {
                Ok(r) => after_change("peers add", r, engine, dns).await,
                Err(e) => Response::err(e),
            }
        }
        Request::PeersRemove { peer } => match blocking(engine, move |e| e.remove_peer(&peer)).await {
            Ok(r) => after_change("peers remove", r, engine, dns).await,
            Err(e) => Response::err(e),
        },
        Request::ClientConfig { peer } => match blocking(engine, move |e| e.client_config(&peer)).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        },
        Request::DnsStats => match dns.lock().expect("dns poisoned").as_ref() {
            Some(d) => Response::ok(d.stats()),
            None => Response::err("the DNS resolver is not running (see palisaded's log)"),
        },
    }
}
