//! Benchmarks, not tests (run by bench/metrics/run.sh, never by tests/run.sh).
//!
//! The metrics endpoint of the real palisaded in the bed's node namespace
//! (two clients with handshakes): `palisade-fleet metrics --bench N` from
//! the mesh host: N scrapes each on a new connection (TCP + TLS 1.3 mutual
//! handshake + GET /metrics), then N on one kept-alive connection; median,
//! min, max. palisaded's RSS with the endpoint on (after 5 scrapes) and off,
//! BENCH_ROUNDS rounds each (default 3), palisaded restarted each time.

use palisade_tests::metrics::{fleet_with_anchor, mesh_bed, metrics_addr, node_toml, scrape};
use palisade_tests::palisade::{render_node_toml, NodeOptions, Palisade};
use palisade_tests::update::fleet_bin;
use palisade_tests::{wait_until, Bins, TestBed};
use std::time::Duration;

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// palisaded's resident set (kB) in the node namespace.
fn rss_kb(bed: &TestBed) -> u64 {
    let pid = bed
        .node_procs
        .palisaded
        .as_ref()
        .unwrap()
        .pid()
        .expect("running");
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
#[ignore = "bench: bench/metrics/run.sh"]
fn bench_metrics_endpoint() {
    let (mut bed, dir, certs) = mesh_bed(2, bins());
    let opts = NodeOptions::default();
    let with = node_toml(&bed, &opts);
    let without = render_node_toml(&bed, &opts);
    let mut p = Palisade::start_with_config(&mut bed, &with, &opts).expect("palisaded");
    let (fleet, node, c1, k1) = fleet_with_anchor(&p, &bed, &dir, &certs);
    for i in [1, 2] {
        bed.wait_handshake(i, Duration::from_secs(10))
            .expect("handshake");
    }
    wait_until(Duration::from_secs(20), "metrics served", || {
        scrape(&bed, &fleet, &node, &c1, &k1).ok()
    })
    .unwrap();
    let n: usize = std::env::var("BENCH_SCRAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rounds_n: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bin = fleet_bin().unwrap();
    let o = bed
        .inet
        .command(&bin)
        .args([
            "metrics",
            "--node",
            &node,
            "--addr",
            &metrics_addr().to_string(),
            "--bench",
            &n.to_string(),
        ])
        .arg("--cert")
        .arg(&c1)
        .arg("--key")
        .arg(&k1)
        .arg("--repo")
        .arg(&fleet.repo)
        .output()
        .unwrap();
    println!(
        "latency: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // RSS: 3 rounds each, 10 s after start (after a few scrapes when enabled).
    let mut rounds: Vec<(bool, u64)> = Vec::new();
    for round in 0..rounds_n {
        for enabled in [true, false] {
            std::fs::write(&p.config, if enabled { &with } else { &without }).unwrap();
            if let Some(mut old) = bed.node_procs.palisaded.take() {
                old.kill();
            }
            p.spawn(&mut bed).unwrap();
            std::thread::sleep(Duration::from_secs(4));
            if enabled {
                for _ in 0..5 {
                    wait_until(Duration::from_secs(20), "metrics served", || {
                        scrape(&bed, &fleet, &node, &c1, &k1).ok()
                    })
                    .unwrap();
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            let kb = rss_kb(&bed);
            println!(
                "round {round}: endpoint {}: palisaded RSS {kb} kB",
                if enabled { "on" } else { "off" }
            );
            rounds.push((enabled, kb));
        }
    }
    for enabled in [true, false] {
        let v: Vec<u64> = rounds
            .iter()
            .filter(|r| r.0 == enabled)
            .map(|r| r.1)
            .collect();
        let (median, min, max) = palisade_tests::median_min_max(&v);
        println!(
            "RSS endpoint {}: median {median} kB (min {min}, max {max})",
            if enabled { "on" } else { "off" }
        );
    }
}
