//! `pal-loadgen`: many WireGuard clients in one process against a test-bed
//! node (bench/README.md, "Load generator").
//!
//! - `pal-loadgen peers --count N --seed S` prints the node config's
//!   `[[peer]]` tables for the N clients the same seed gives `run`.
//! - `pal-loadgen run --node-key KEY --count N --seed S ...` ramps N clients
//!   up (one handshake each, paced), then runs DNS, UDP echo and HTTP flows
//!   from every client for `--duration` seconds, and reports handshake rate,
//!   goodput, per-client fairness, DNS latency and the node's CPU and RSS.
//!
//! Every address is checked against the test bed's ranges before a socket
//! is opened; counts, rates and time are capped; the run ends by itself.

mod client;
mod keys;
mod procstat;
mod stats;
mod target;

use anyhow::{bail, Context, Result};
use boringtun::noise::Tunn;
use boringtun::x25519::PublicKey;
use clap::{Parser, Subcommand};
use client::{Agg, Client, Flows, Phase};
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Hard caps: the generator is bounded whatever it is asked.
const MAX_CLIENTS: u32 = 20_000;
const MAX_DURATION_S: u64 = 900;
const MAX_RAMP_S: u64 = 900;
const MAX_HANDSHAKE_RATE: u32 = 5_000;
const MIN_INTERVAL_MS: u64 = 200;
const MAX_UDP_SIZE: usize = 1200;
/// No client round starts this close to the end (its answers would be cut off).
const LAST_ROUND_MARGIN: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "pal-loadgen",
    about = "Many WireGuard clients in one process against a test-bed node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct KeyArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Seed of the client keys (the node's peer table and the run must agree).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tunnel IPv4 address of client 0 (the others follow).
    #[arg(long, default_value = "10.66.16.0")]
    first_v4: Ipv4Addr,
    /// Tunnel IPv6 address of client 0.
    #[arg(long, default_value = "fd66::1:0")]
    first_v6: Ipv6Addr,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the `[[peer]]` tables of the node config for the clients.
    Peers(KeyArgs),
    /// Run the clients against the node.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// The node's WireGuard public key (base64).
    #[arg(long)]
    node_key: String,
    /// The node's WireGuard endpoint.
    #[arg(long, default_value = "203.0.113.10:51820")]
    endpoint: SocketAddr,
    /// Local address the clients' UDP sockets bind to (each its own port).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// The node's resolver inside the tunnel.
    #[arg(long, default_value = "10.66.0.1:53")]
    dns: SocketAddr,
    /// HTTP server for the TCP flows (the bed's web host).
    #[arg(long, default_value = "203.0.113.80:80")]
    web: SocketAddr,
    /// UDP echo server (the bed's web host).
    #[arg(long, default_value = "203.0.113.80:7")]
    echo: SocketAddr,
    /// Path each HTTP flow fetches (`/` a few bytes, `/big` 1 MiB; empty: no TCP).
    #[arg(long, default_value = "/")]
    http_path: String,
    /// Handshake initiations per second during the ramp.
    #[arg(long, default_value_t = 200)]
    handshake_rate: u32,
    /// Seconds the ramp may take before flows start anyway.
    #[arg(long, default_value_t = 120)]
    ramp_timeout: u64,
    /// Seconds of flows after the ramp.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Milliseconds between a client's rounds (one DNS query, one echo, one
    /// HTTP GET unless the last is still running).
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// Bytes of each UDP echo payload (0: no echo).
    #[arg(long, default_value_t = 256)]
    udp_size: usize,
    /// Distinct DNS names the clients cycle through.
    #[arg(long, default_value_t = 1000)]
    dns_names: u32,
    /// TCP receive window per client (bytes).
    #[arg(long, default_value_t = 8192)]
    tcp_window: usize,
    /// PID of the node process (QEMU) on this host, for its CPU and RSS.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Peers(k) => {
            check_count(k.count)?;
            let alloc = keys::Alloc {
                first_v4: k.first_v4,
                first_v6: k.first_v6,
            };
            print!("{}", keys::peers_toml(k.seed, k.count, &alloc)?);
            Ok(())
        }
        Cmd::Run(a) => run(*a),
    }
}

fn check_count(n: u32) -> Result<()> {
    if n == 0 || n > MAX_CLIENTS {
        bail!("--count {n}: must be 1..={MAX_CLIENTS}");
    }
    Ok(())
}

fn validate(a: &RunArgs) -> Result<()> {
    check_count(a.keys.count)?;
    target::check("--endpoint", a.endpoint.ip())?;
    target::check("--dns", a.dns.ip())?;
    target::check("--web", a.web.ip())?;
    target::check("--echo", a.echo.ip())?;
    if !a.bind.is_unspecified() {
        target::check("--bind", a.bind)?;
    }
    if a.dns.ip().is_ipv6() || a.web.ip().is_ipv6() || a.echo.ip().is_ipv6() {
        bail!("--dns, --web and --echo must be IPv4 (the clients' stack is IPv4)");
    }
    if a.handshake_rate == 0 || a.handshake_rate > MAX_HANDSHAKE_RATE {
        bail!(
            "--handshake-rate {}: must be 1..={MAX_HANDSHAKE_RATE}",
            a.handshake_rate
        );
    }
    if a.duration == 0 || a.duration > MAX_DURATION_S {
        bail!("--duration {}: must be 1..={MAX_DURATION_S} s", a.duration);
    }
    if a.ramp_timeout == 0 || a.ramp_timeout > MAX_RAMP_S {
        bail!(
            "--ramp-timeout {}: must be 1..={MAX_RAMP_S} s",
            a.ramp_timeout
        );
    }
    if a.interval_ms < MIN_INTERVAL_MS {
        bail!(
            "--interval-ms {}: at least {MIN_INTERVAL_MS}",
            a.interval_ms
        );
    }
    if a.udp_size > MAX_UDP_SIZE {
        bail!("--udp-size {}: at most {MAX_UDP_SIZE}", a.udp_size);
    }
    if !(1024..=1 << 20).contains(&a.tcp_window) {
        bail!("--tcp-window {}: 1024..=1048576", a.tcp_window);
    }
    if !a.http_path.is_empty()
        && (!a.http_path.starts_with('/')
            || a.http_path.len() > 200
            || a.http_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()))
    {
        bail!(
            "--http-path {:?}: an absolute path without spaces",
            a.http_path
        );
    }
    Ok(())
}

/// CPU seconds and max RSS of a process at one instant.
#[derive(Clone, Copy, Default)]
struct ProcPoint {
    cpu_s: f64,
    rss_kb: u64,
}

fn proc_point(pid: Option<u32>) -> Option<ProcPoint> {
    let (cpu_s, rss_kb) = procstat::sample(pid?).ok()?;
    Some(ProcPoint { cpu_s, rss_kb })
}

fn run(a: RunArgs) -> Result<()> {
    validate(&a)?;
    let node_pub: PublicKey = keys::parse_public(&a.node_key)?;
    let alloc = keys::Alloc {
        first_v4: a.keys.first_v4,
        first_v6: a.keys.first_v6,
    };
    let node_v4 = match a.dns.ip() {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => unreachable!("validated"),
    };
    let flows = Flows {
        dns: a.dns,
        web: a.web,
        echo: a.echo,
        http_path: a.http_path.clone(),
        udp_size: a.udp_size,
        dns_names: a.dns_names,
        interval: Duration::from_millis(a.interval_ms),
        tcp_window: a.tcp_window,
    };
    let n = a.keys.count;
    let self_pid = Some(std::process::id());

    let mut poll = Poll::new().context("mio poll")?;
    let t0 = Instant::now();
    let mut clients: Vec<Client> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (v4, _) = alloc.addrs(i)?;
        let secret = keys::client_secret(a.keys.seed, i);
        let tunn = Tunn::new(secret, node_pub, None, None, i, None);
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(a.bind, 0))
            .with_context(|| format!("bind UDP socket {} of {n} (raise `ulimit -n`?)", i + 1))?;
        std_sock
            .connect(a.endpoint)
            .context("connect UDP socket to the endpoint")?;
        std_sock.set_nonblocking(true)?;
        let mut sock = mio::net::UdpSocket::from_std(std_sock);
        poll.registry()
            .register(&mut sock, Token(i as usize), Interest::READABLE)?;
        clients.push(Client::new(i, tunn, sock, v4, node_v4, &flows, t0));
    }
    let setup = t0.elapsed();

    let mut agg = Agg::default();
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 65536];
    let mut scratch = vec![0u8; 65536];
    let mut events = Events::with_capacity(1024);
    // Timer wheel: (wake, client); stale entries (wake != client.wake) are skipped.
    let mut heap: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::with_capacity(n as usize * 2);
    let ramp_start = Instant::now();
    let node0 = proc_point(a.node_pid);
    let gen0 = proc_point(self_pid);
    let per = Duration::from_secs_f64(1.0 / f64::from(a.handshake_rate));
    for c in clients.iter_mut() {
        c.wake = ramp_start + per * c.index;
        heap.push(Reverse((c.wake, c.index)));
    }
    let ramp_deadline = ramp_start + Duration::from_secs(a.ramp_timeout);
    let mut up = 0u32;
    let mut all_up_at: Option<Instant> = None;
    let mut flows_at: Option<Instant> = None;
    let mut end: Option<Instant> = None;
    let mut last_round_by = ramp_deadline;
    let mut node_at_flows = None;
    let mut gen_at_flows = None;
    let mut node_rss_max = node0.map_or(0, |p| p.rss_kb);
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    let mut last_progress = Instant::now();
    let mut dirty: Vec<u32> = Vec::new();
    let mut is_dirty = vec![false; n as usize];

    loop {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        let timeout = heap
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        poll.poll(&mut events, Some(timeout)).context("poll")?;
        let now = Instant::now();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            loop {
                match c.sock.recv(&mut buf) {
                    Ok(len) => {
                        let was_up = c.phase == Phase::Up;
                        c.on_datagram(now, &buf[..len], a.endpoint.ip(), &mut out, &mut agg);
                        if !was_up && c.phase == Phase::Up {
                            up += 1;
                            if let Some(f) = flows_at {
                                // Late joiner: flows start now.
                                c.start_flows(f.max(now), Duration::ZERO, last_round_by);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        agg.send_errors += 1;
                        break;
                    }
                }
            }
            if !is_dirty[i] {
                is_dirty[i] = true;
                dirty.push(i as u32);
            }
        }
        // The ramp ends when every client is up or at its deadline; flows then start.
        if flows_at.is_none() && (up == n || now >= ramp_deadline) {
            if up == n {
                all_up_at = Some(now);
            }
            flows_at = Some(now);
            end = Some(now + Duration::from_secs(a.duration));
            last_round_by = now + Duration::from_secs(a.duration).saturating_sub(LAST_ROUND_MARGIN);
            node_at_flows = proc_point(a.node_pid);
            gen_at_flows = proc_point(self_pid);
            let interval = Duration::from_millis(a.interval_ms);
            for c in clients.iter_mut() {
                // Spread the first rounds over one interval.
                let jitter = interval.mul_f64(f64::from(c.index) / f64::from(n));
                c.start_flows(now, jitter, last_round_by);
                c.wake = now + jitter;
                heap.push(Reverse((c.wake, c.index)));
            }
            eprintln!(
                "pal-loadgen: {up}/{n} clients up after {:.1} s; flows for {} s",
                (now - ramp_start).as_secs_f64(),
                a.duration
            );
        }
        for i in dirty.drain(..) {
            is_dirty[i as usize] = false;
            let c = &mut clients[i as usize];
            c.step(now, &flows, &mut out, &mut agg, &mut scratch);
            heap.push(Reverse((c.wake, c.index)));
        }
        while let Some(Reverse((t, i))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            let c = &mut clients[i as usize];
            if c.wake != t {
                continue;
            }
            if c.phase == Phase::Waiting {
                c.initiate(now, &mut out, &mut agg);
                c.wake = now + Duration::from_millis(1000);
            } else {
                c.step(now, &flows, &mut out, &mut agg, &mut scratch);
            }
            heap.push(Reverse((c.wake, c.index)));
        }
        if now >= next_sample {
            next_sample = now + Duration::from_secs(1);
            if let Some(p) = proc_point(a.node_pid) {
                node_rss_max = node_rss_max.max(p.rss_kb);
            }
        }
        if now >= last_progress + Duration::from_secs(10) {
            last_progress = now;
            eprintln!(
                "pal-loadgen: t={:.0}s up={up}/{n} initiations={} cookies={} dns_ok={} echo_ok={} tcp_done={}",
                (now - ramp_start).as_secs_f64(),
                agg.initiations,
                agg.cookie_replies,
                agg.dns_ok,
                agg.echo_ok,
                agg.tcp_done
            );
        }
    }
    let stop = Instant::now();
    let node1 = proc_point(a.node_pid);
    let gen1 = proc_point(self_pid);
    if let Some(p) = node1 {
        node_rss_max = node_rss_max.max(p.rss_kb);
    }
    let flows_at = flows_at.unwrap_or(stop);

    // Handshakes.
    let mut hs_lat: Vec<f64> = Vec::new();
    let mut last_up = ramp_start;
    for c in &clients {
        if let (Some(t), Some(l)) = (c.stats.up_at, c.stats.handshake_latency) {
            hs_lat.push(l.as_secs_f64() * 1e3);
            if t <= flows_at {
                last_up = last_up.max(t);
            }
        }
    }
    let up_in_ramp = clients
        .iter()
        .filter(|c| c.stats.up_at.is_some_and(|t| t <= flows_at))
        .count();
    let ramp_s = (last_up - ramp_start).as_secs_f64();
    let hs_rate = if ramp_s > 0.0 {
        up_in_ramp as f64 / ramp_s
    } else {
        0.0
    };
    // Per-client goodput over the time the client was scheduled for: its
    // rounds times the interval (a client whose first round came late in the
    // run is not counted as slow).
    let flow_s = (stop - flows_at).as_secs_f64().max(1e-9);
    let per_client: Vec<f64> = clients
        .iter()
        .filter(|c| c.stats.rounds > 0)
        .map(|c| {
            let secs = f64::from(c.stats.rounds) * flows.interval.as_secs_f64();
            c.stats.goodput_bytes as f64 * 8.0 / secs / 1e3
        })
        .collect();
    let total_bytes: u64 = clients.iter().map(|c| c.stats.goodput_bytes).sum();
    let goodput_mbit = total_bytes as f64 * 8.0 / flow_s / 1e6;
    let fair = stats::Spread::of(&per_client);
    let jain = stats::jain(&per_client);
    let dns = stats::Spread::of(&agg.dns_latency_ms);
    let echo = stats::Spread::of(&agg.echo_rtt_ms);
    let hs = stats::Spread::of(&hs_lat);
    let cpu_pct = |a: Option<ProcPoint>, b: Option<ProcPoint>, secs: f64| -> Option<f64> {
        Some((b?.cpu_s - a?.cpu_s) / secs.max(1e-9) * 100.0)
    };
    let ramp_wall = (flows_at - ramp_start).as_secs_f64();
    let node_cpu_ramp = cpu_pct(node0, node_at_flows, ramp_wall);
    let node_cpu_flows = cpu_pct(node_at_flows, node1, flow_s);
    let gen_cpu_ramp = cpu_pct(gen0, gen_at_flows, ramp_wall);
    let gen_cpu_flows = cpu_pct(gen_at_flows, gen1, flow_s);
    let gen_rss = gen1.map_or(0, |p| p.rss_kb);

    let f1 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "clients {n} (sockets set up in {:.1} s), handshake rate cap {}/s",
        setup.as_secs_f64(),
        a.handshake_rate
    );
    println!(
        "handshakes: {up_in_ramp}/{n} up in the ramp, all up in {}, {hs_rate:.0}/s; {} up by the end; initiations {} cookie replies {} expired {}",
        all_up_at.map_or("- (not all)".to_string(), |t| format!("{:.1} s", (t - ramp_start).as_secs_f64())),
        up,
        agg.initiations,
        agg.cookie_replies,
        agg.expired
    );
    if let Some(h) = hs {
        println!(
            "handshake latency ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            h.p50, h.p90, h.p99, h.max
        );
    }
    println!(
        "goodput: {goodput_mbit:.2} Mbit/s aggregate over {flow_s:.1} s ({total_bytes} bytes); tcp flows {} done {} failed {}",
        agg.tcp_started, agg.tcp_done, agg.tcp_failed
    );
    if let Some(f) = fair {
        println!(
            "fairness kbit/s per client (bytes / (rounds x interval)), {} clients: min {:.3} p10 {:.3} p50 {:.3} p90 {:.3} max {:.3}; Jain {}",
            f.n, f.min, f.p10, f.p50, f.p90, f.max,
            jain.map_or("-".into(), |j| format!("{j:.3}"))
        );
    }
    match dns {
        Some(d) => println!(
            "dns ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; sent {} answered {} timeouts {}",
            d.p50, d.p90, d.p99, d.max, agg.dns_sent, agg.dns_ok, agg.dns_timeouts
        ),
        None => println!(
            "dns: no answers; sent {} timeouts {}",
            agg.dns_sent, agg.dns_timeouts
        ),
    }
    if let Some(e) = echo {
        println!(
            "udp echo rtt ms: p50 {:.2} p90 {:.2} p99 {:.2}; sent {} answered {} lost {}",
            e.p50, e.p90, e.p99, agg.echo_sent, agg.echo_ok, agg.echo_lost
        );
    }
    println!(
        "node cpu %: ramp {} flows {}; node rss max {} MiB",
        f1(node_cpu_ramp),
        f1(node_cpu_flows),
        if a.node_pid.is_some() {
            format!("{:.0}", node_rss_max as f64 / 1024.0)
        } else {
            "-".into()
        }
    );
    println!(
        "generator cpu %: ramp {} flows {}; rss {:.0} MiB; datagrams tx {} rx {} send errors {} decap errors {}",
        f1(gen_cpu_ramp),
        f1(gen_cpu_flows),
        gen_rss as f64 / 1024.0,
        agg.tx_datagrams,
        agg.rx_datagrams,
        agg.send_errors,
        agg.decap_errors
    );
    if let Some(path) = &a.json {
        let j = json!({
            "clients": n,
            "handshake_rate_cap": a.handshake_rate,
            "up_in_ramp": up_in_ramp,
            "up_at_end": up,
            "all_up_s": all_up_at.map(|t| (t - ramp_start).as_secs_f64()),
            "handshakes_per_s": hs_rate,
            "initiations": agg.initiations,
            "cookie_replies": agg.cookie_replies,
            "handshake_latency_ms": hs,
            "goodput_mbit_s": goodput_mbit,
            "goodput_bytes": total_bytes,
            "flow_s": flow_s,
            "per_client_kbit_s": fair,
            "jain": jain,
            "dns_ms": dns,
            "dns_sent": agg.dns_sent,
            "dns_answered": agg.dns_ok,
            "dns_timeouts": agg.dns_timeouts,
            "echo_rtt_ms": echo,
            "echo_sent": agg.echo_sent,
            "echo_answered": agg.echo_ok,
            "tcp_started": agg.tcp_started,
            "tcp_done": agg.tcp_done,
            "tcp_failed": agg.tcp_failed,
            "node_cpu_pct_ramp": node_cpu_ramp,
            "node_cpu_pct_flows": node_cpu_flows,
            "node_rss_max_kb": a.node_pid.map(|_| node_rss_max),
            "gen_cpu_pct_ramp": gen_cpu_ramp,
            "gen_cpu_pct_flows": gen_cpu_flows,
            "gen_rss_kb": gen_rss,
        });
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&j)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec![
            "pal-loadgen",
            "run",
            "--node-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().cmd {
            Cmd::Run(a) => *a,
            Cmd::Peers(_) => unreachable!(),
        }
    }

    #[test]
    fn defaults_target_the_bed_and_caps_hold() {
        assert!(validate(&args(&[])).is_ok());
        for bad in [
            &["--endpoint", "198.51.100.1:51820"][..],
            &["--web", "1.1.1.1:80"],
            &["--dns", "8.8.8.8:53"],
            &["--count", "20001"],
            &["--count", "0"],
            &["--duration", "901"],
            &["--handshake-rate", "0"],
            &["--interval-ms", "10"],
            &["--udp-size", "9000"],
            &["--http-path", "/a b"],
        ] {
            assert!(validate(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
