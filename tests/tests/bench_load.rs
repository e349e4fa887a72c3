//! Benchmarks, not tests (run by bench/load/run.sh, never by tests/run.sh).
//!
//! Many live clients against one QEMU node: the image booted in the bed with
//! the load generator's peers (`pal-loadgen peers`) in its config, then
//! `pal-loadgen run` from the bed's internet namespace at each count of
//! BENCH_LOAD_COUNTS (default 1000,10000), BENCH_ROUNDS rounds each (default
//! 3). While each round's flows run, the bed's two wireguard-go clients probe
//! what isolation must drop (the other client, a load client, the node's own
//! ports, private and metadata ranges) next to a positive control (the web
//! host, retried while the node is saturated), and every round must drop them
//! all. Prints each figure's median
//! and spread (min-max) per count.

use palisade_tests::guest::{image_path, Guest, GuestOptions};
use palisade_tests::matrix::assert_all;
use palisade_tests::{addr, median_min_max, sa, wait_until, Bins, Case, Expect, Kind, TestBed};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The generator's client 0 (keys.rs `Alloc` default): a load client the
/// bed's clients must not reach either.
const LOAD_CLIENT0_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 16, 0);
const SEED: &str = "1";
/// Isolation probe timeout (dropped probes wait it out, in parallel; long,
/// so a slow answer from a loaded node is not taken for a drop).
const T: Duration = Duration::from_secs(10);
/// One try of the positive control.
const CONTROL_T: Duration = Duration::from_secs(10);

fn loadgen() -> PathBuf {
    PathBuf::from(
        std::env::var_os("PAL_LOADGEN_BIN")
            .expect("PAL_LOADGEN_BIN: the pal-loadgen binary (bench/load/run.sh builds it)"),
    )
}

fn probes(bed: &TestBed) {
    let (c1, c2) = (&bed.clients[0], &bed.clients[1]);
    // Positive control first: the node forwards client 1's traffic (a
    // saturated node may need a few tries), so the drops below are the
    // firewall's and not a dead tunnel.
    wait_until(Duration::from_secs(90), "control: c1 -> web host", || {
        c1.ns
            .enter(|| {
                palisade_tests::probe::http_get(None, sa(addr::WEB_V4, addr::WEB_HTTP), CONTROL_T)
            })
            .ok()
            .filter(|o| o.reached())
    })
    .expect("control path through the loaded node");
    println!("ok   c1 -> web v4 (control)");
    let mut cases = Vec::new();
    for (l, dst, port) in [
        (
            "c1 -> c2 tunnel v4",
            IpAddr::from(c2.tun_v4),
            addr::CLIENT_TCP,
        ),
        ("c1 -> c2 tunnel v6", c2.tun_v6.into(), addr::CLIENT_TCP),
        (
            "c1 -> load client 0",
            LOAD_CLIENT0_V4.into(),
            addr::CLIENT_TCP,
        ),
        (
            "c1 -> node tun :22",
            addr::NODE_TUN_V4.into(),
            addr::MGMT_PORTS[0],
        ),
        (
            "c1 -> node tun :7777",
            addr::NODE_TUN_V4.into(),
            addr::CLIENT_TCP,
        ),
        ("c1 -> 10.99.0.81 (RFC1918)", addr::PRIV_OTHER_V4.into(), 80),
        ("c1 -> 169.254.169.254", addr::METADATA_V4.into(), 80),
    ] {
        cases.push(Case::new(
            l,
            &c1.ns,
            Kind::Tcp,
            sa(dst, port),
            Expect::Dropped,
        ));
    }
    cases.push(Case::new(
        "c2 -> c1 tunnel v4",
        &c2.ns,
        Kind::Tcp,
        sa(c1.tun_v4, addr::CLIENT_TCP),
        Expect::Dropped,
    ));
    assert_all(&cases, T);
}

/// Panics with the console if QEMU exited (the guest rebooted: a reboot
/// ends QEMU in the bed).
fn node_alive(guest: &mut Guest) {
    if !guest.vm.qemu.running() {
        let console = guest.console_text();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the node (QEMU) exited under the load; console:\n{}",
            tail.join("\n")
        );
    }
}

/// One figure of a round's JSON report (null: NaN, so a missing figure shows).
fn fig(j: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = j;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
#[ignore = "bench: bench/load/run.sh"]
fn bench_load_many_clients() {
    let image = image_path().expect("image to test");
    let counts: Vec<u32> = std::env::var("BENCH_LOAD_COUNTS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_LOAD_COUNTS: numbers"))
        .collect();
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let rate: u32 = env_or("BENCH_HANDSHAKE_RATE", 200);
    let min_duration: u64 = env_or("BENCH_DURATION", 60);
    let http_path = std::env::var("BENCH_HTTP_PATH").unwrap_or_else(|_| "/".into());
    // Rounds per second over all clients (each round: a DNS query, an echo,
    // an HTTP GET): the same offered load at every count, spread thinner.
    let round_rate: u64 = env_or("BENCH_ROUND_RATE", 100);
    let max = *counts.iter().max().expect("a count");
    let lg = loadgen();

    let peers = Command::new(&lg)
        .args(["peers", "--count", &max.to_string(), "--seed", SEED])
        .output()
        .expect("run pal-loadgen peers");
    assert!(
        peers.status.success(),
        "{}",
        String::from_utf8_lossy(&peers.stderr)
    );
    let bed = TestBed::new_for_guest(2, bins()).expect("build test bed");
    let opts = GuestOptions {
        extra_toml: String::from_utf8(peers.stdout).expect("utf-8 peers"),
        ..Default::default()
    };
    let t_boot = Instant::now();
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot the image");
    let hs = bed.wait_handshake(1, Duration::from_secs(900));
    if let Err(e) = &hs {
        panic!("{e:#}\nconsole:\n{}", guest.console_text());
    }
    bed.wait_handshake(2, Duration::from_secs(60))
        .expect("client 2 handshake");
    println!(
        "boot with {max} + 2 peers to first handshake: {:.1} s",
        t_boot.elapsed().as_secs_f64()
    );
    wait_until(
        Duration::from_secs(60),
        "web host through the tunnel",
        || {
            let c1 = &bed.clients[0];
            c1.ns
                .enter(|| palisade_tests::probe::http_get(None, sa(addr::WEB_V4, 80), T))
                .ok()
                .filter(|o| o.reached())
        },
    )
    .expect("control path");
    println!("isolation before the load:");
    probes(&bed);
    let qemu_pid = guest.qemu.pid().expect("QEMU running");

    let figures: &[(&str, &[&str])] = &[
        ("all up s", &["all_up_s"]),
        ("handshakes/s", &["handshakes_per_s"]),
        ("cookie replies", &["cookie_replies"]),
        ("handshake p50 ms", &["handshake_latency_ms", "p50"]),
        ("handshake p99 ms", &["handshake_latency_ms", "p99"]),
        ("goodput Mbit/s", &["goodput_mbit_s"]),
        ("client kbit/s p10", &["per_client_kbit_s", "p10"]),
        ("client kbit/s p50", &["per_client_kbit_s", "p50"]),
        ("client kbit/s p90", &["per_client_kbit_s", "p90"]),
        ("client kbit/s min", &["per_client_kbit_s", "min"]),
        ("jain", &["jain"]),
        ("dns p50 ms", &["dns_ms", "p50"]),
        ("dns p90 ms", &["dns_ms", "p90"]),
        ("dns p99 ms", &["dns_ms", "p99"]),
        ("dns timeouts", &["dns_timeouts"]),
        ("echo p50 ms", &["echo_rtt_ms", "p50"]),
        ("node cpu % ramp", &["node_cpu_pct_ramp"]),
        ("node cpu % flows", &["node_cpu_pct_flows"]),
        ("node rss MiB", &["node_rss_max_kb"]),
        ("gen cpu % ramp", &["gen_cpu_pct_ramp"]),
        ("gen cpu % flows", &["gen_cpu_pct_flows"]),
        ("gen rss MiB", &["gen_rss_kb"]),
    ];
    for &n in &counts {
        let mut reports = Vec::new();
        for r in 1..=rounds {
            let interval_ms = (u64::from(n) * 1000 / round_rate.max(1)).max(200);
            // At least one round per client (goodput is per round).
            let duration = min_duration.max(interval_ms.div_ceil(1000) + 10);
            let json = bed.log_dir().join(format!("load-{n}-{r}.json"));
            let argv: Vec<String> = [
                lg.to_string_lossy().as_ref(),
                "run",
                "--count",
                &n.to_string(),
                "--seed",
                SEED,
                "--node-key",
                &guest.node_key.public_key,
                "--handshake-rate",
                &rate.to_string(),
                "--ramp-timeout",
                "600",
                "--duration",
                &duration.to_string(),
                "--interval-ms",
                &(u64::from(n) * 1000 / round_rate.max(1))
                    .max(200)
                    .to_string(),
                "--http-path",
                &http_path,
                "--node-pid",
                &qemu_pid.to_string(),
                "--json",
                json.to_string_lossy().as_ref(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut p = bed
                .inet
                .spawn(&format!("loadgen-{n}-{r}"), bed.log_dir(), &argv)
                .expect("start pal-loadgen");
            // Probe while the flows run: the ramp is over once it says so.
            wait_until(Duration::from_secs(700), "load generator flows", || {
                p.log_text()
                    .contains("flows for")
                    .then_some(())
                    .or_else(|| {
                        assert!(p.running(), "pal-loadgen exited:\n{}", p.log_tail(30));
                        node_alive(&mut guest);
                        None
                    })
            })
            .expect("ramp done");
            std::thread::sleep(Duration::from_secs(duration.min(10) / 2));
            println!("isolation under load ({n} clients, round {r}):");
            probes(&bed);
            wait_until(
                Duration::from_secs(duration + 120),
                "pal-loadgen exit",
                || (!p.running()).then_some(()),
            )
            .expect("pal-loadgen ends by itself");
            node_alive(&mut guest);
            let text = p.log_text();
            println!(
                "round {r}, {n} clients:\n{}",
                text.lines()
                    .filter(|l| !l.starts_with("pal-loadgen:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let j: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&json).unwrap_or_else(|e| panic!("{}: {e}\n{text}", json.display())),
            )
            .expect("JSON report");
            reports.push(j);
        }
        println!("== {n} clients, {rounds} rounds: median (min-max)");
        for (label, path) in figures {
            let mut v: Vec<f64> = reports.iter().map(|j| fig(j, path)).collect();
            if label.ends_with("MiB") {
                v.iter_mut().for_each(|x| *x /= 1024.0);
            }
            let (med, lo, hi) = median_min_max(&v);
            println!("load {n} {label}: {med:.2} ({lo:.2}-{hi:.2})");
        }
    }
}
