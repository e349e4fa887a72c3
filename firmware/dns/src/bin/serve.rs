//! `palisade-dns-serve --config DNS.toml --listen ADDR... [--allow-source CIDR]...`
//!
//! Runs the resolver alone from a dns-only TOML file (the `[dns]` section's
//! keys at top level: `block_mode`, `[[upstream]]`, `[list.NAME]`,
//! `[tier.NAME]`; a tier named `default` applies to every client). Used by
//! the benchmark; prints the list load time and, on exit, the counters.
//! SIGHUP reloads the file; SIGINT/SIGTERM stop.

use palisade_core::config::DnsSection;
use palisade_dns::{Engine, EngineConfig, Server};
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut listen = Vec::new();
    let mut allow = Vec::new();
    let mut threads = 0usize;
    let mut args = std::env::args().skip(1);
    let usage = "usage: palisade-dns-serve --config FILE --listen ADDR... [--allow-source CIDR]... [--threads N]";
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{usage}"));
        match a.as_str() {
            "--config" => config = Some(std::path::PathBuf::from(val()?)),
            "--listen" => listen.push(val()?.parse::<std::net::SocketAddr>()?),
            "--allow-source" => allow.push(val()?.parse::<ipnet::IpNet>()?),
            "--threads" => threads = val()?.parse()?,
            _ => anyhow::bail!("{usage}"),
        }
    }
    let config = config.ok_or_else(|| anyhow::anyhow!("{usage}"))?;
    anyhow::ensure!(!listen.is_empty(), "{usage}");
    if allow.is_empty() {
        allow.push("127.0.0.0/8".parse()?);
        allow.push("::1/128".parse()?);
    }
    let read = |p: &std::path::Path| -> anyhow::Result<DnsSection> {
        let text = std::fs::read_to_string(p)?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    let rt = b.enable_all().build()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let cfg = EngineConfig::new(read(&config)?, allow.clone());
        let engine = Arc::new(Engine::new(&cfg)?);
        let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let lists = engine.stats()["lists"].clone();
        eprintln!("palisade-dns: lists loaded in {load_ms:.0} ms: {lists}");
        let server = Server::start(engine.clone(), &listen)?;
        eprintln!("palisade-dns: serving on {:?}", server.local_addrs());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let t0 = Instant::now();
                    match read(&config).map(|d| EngineConfig::new(d, allow.clone())) {
                        Ok(c) => match engine.reload(&c) {
                            Ok(()) => eprintln!("palisade-dns: reloaded in {} ms", t0.elapsed().as_millis()),
                            Err(e) => eprintln!("palisade-dns: reload failed, keeping the old policy: {e}"),
                        },
                        Err(e) => eprintln!("palisade-dns: reload failed, keeping the old policy: {e}"),
                    }
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("palisade-dns: stats {}", engine.stats());
        server.stop().await;
        Ok(())
    })
}
