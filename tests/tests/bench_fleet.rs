//! Benchmarks, not tests (run by bench/fleet/run.sh, never by tests/run.sh).
//!
//! 1. Publication to effect at the default poll interval (60 s, jitter only
//!    shortens it): the real palisaded in the bed's node namespace, a
//!    `file://` repository published with `palisade-fleet`; per round, the
//!    time from the end of the publish command (at a random moment of the
//!    poll interval) to the effect, for a config
//!    change (the node reports the new config's SHA-256 as applied), a grant
//!    revocation (the client's HTTP request through the tunnel fails) and a
//!    node revocation (tunnel and key gone). BENCH_ROUNDS rounds of each
//!    (default 5), each bounded to 90 s.
//! 2. Apply time and RSS with 10 000 grants: `grant bulk` publishes 10 000
//!    grants; the node's own log gives the time to check them (ES384, all
//!    cores) and to apply them (validate + reconcile into WireGuard); the
//!    first round fetches them from the repository, the others are restarts
//!    of palisaded from its kept state onto an empty interface. RSS from
//!    /proc before and after.

use palisade_tests::palisade::{render_node_toml, NodeOptions, Palisade};
use palisade_tests::probe::{self, Outcome};
use palisade_tests::update::Fleet;
use palisade_tests::{addr, median_min_max, sa, wait_until, Bins, TestBed};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5)
}

fn json(p: &Palisade, bed: &TestBed, args: &[&str]) -> Value {
    serde_json::from_str(&p.cli_ok(bed, args).unwrap()).unwrap()
}

fn reaches_web(bed: &TestBed) -> bool {
    let c = &bed.clients[0];
    matches!(c.ns.enter(|| probe::http_get(None, sa(addr::WEB_V4, addr::WEB_HTTP), Duration::from_millis(500))), Ok(Outcome::Answered(_)))
}

fn client_addresses(bed: &TestBed) -> Vec<String> {
    let c = &bed.clients[0];
    vec![format!("{}/32", c.tun_v4), format!("{}/128", c.tun_v6)]
}

fn summary(what: &str, v: &[f64]) {
    let (median, min, max) = median_min_max(v);
    println!("{what}: {} rounds: median {median:.1} s, min {min:.1} s, max {max:.1} s (goal: within 60 s)", v.len());
}

/// A random moment within one poll interval (so publications do not line
/// up with the node's polls).
fn random_wait() {
    let mut b = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    std::thread::sleep(Duration::from_millis(u16::from_le_bytes(b) as u64 % 60_000));
}

/// Enrol the node (config-drive bundle), publish its config and a grant for
/// client 1, wait until client 1 is served. Returns the node id and the
/// grant id.
fn enrol_and_serve(p: &Palisade, bed: &TestBed, fleet: &Fleet, base: &str, dir: &std::path::Path) -> (String, String) {
    let node = json(p, bed, &["identity", "--json"])["node_id"].as_str().unwrap().to_string();
    let url = format!("file://{}", fleet.repo.display());
    fleet.enrol_bundle(&node, &url, "bench", "test", &p.state_dir.join("enrol.json")).unwrap();
    fleet.config_set(&node, base, dir).unwrap();
    let jti = fleet.grant_issue(&node, &bed.clients[0].keys.public_key, &client_addresses(bed), "1d").unwrap();
    wait_until(Duration::from_secs(150), "enrolled node serving client 1", || {
        let key = bed.node_dump().ok()?.public_key;
        bed.clients[0].connect(&key).ok()?;
        reaches_web(bed).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    (node, jti)
}

#[test]
#[ignore = "benchmark: bench/fleet/run.sh"]
fn bench_publication_to_effect_at_the_default_poll_interval() {
    let mut bed = TestBed::new(1, bins()).expect("test bed");
    let dir = bed.dir.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    // The product default poll (no --fleet-poll-secs).
    let opts = NodeOptions { peers: Some(vec![]), ..Default::default() };
    let base = render_node_toml(&bed, &opts);
    let p = Palisade::start(&mut bed, &opts).expect("palisaded");
    let fleet = Fleet::init(&dir).unwrap();
    fleet.issuer_init().unwrap();
    let (mut node, first_grant) = enrol_and_serve(&p, &bed, &fleet, &base, &dir);
    let n = rounds();

    let mut config = Vec::new();
    for r in 0..n {
        let text = format!("{base}\n# round {r}\n");
        let sha: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        random_wait();
        fleet.config_set(&node, &text, &dir).unwrap();
        let t = Instant::now();
        wait_until(Duration::from_secs(90), "config change applied", || {
            (json(&p, &bed, &["fleet", "status", "--json"])["config"]["sha256"] == sha.as_str()).then_some(())
        })
        .unwrap();
        println!("config change, round {}: {:.1} s", r + 1, t.elapsed().as_secs_f64());
        config.push(t.elapsed().as_secs_f64());
    }

    // Client 1 is served by the enrolment's grant: take it away first, so
    // each round's grant is the only one.
    fleet.revoke(&["--grant", &first_grant]).unwrap();
    wait_until(Duration::from_secs(90), "the first grant revoked", || (!reaches_web(&bed)).then_some(())).unwrap();
    let mut grant = Vec::new();
    for r in 0..n {
        let g = fleet.grant_issue(&node, &bed.clients[0].keys.public_key, &client_addresses(&bed), "1d").unwrap();
        // The previous grant was revoked: wait for this one to serve.
        wait_until(Duration::from_secs(90), "new grant serving", || reaches_web(&bed).then_some(())).unwrap();
        random_wait();
        fleet.revoke(&["--grant", &g]).unwrap();
        let t = Instant::now();
        wait_until(Duration::from_secs(90), "grant revocation effective", || (!reaches_web(&bed)).then_some(())).unwrap();
        println!("grant revocation, round {}: {:.1} s", r + 1, t.elapsed().as_secs_f64());
        grant.push(t.elapsed().as_secs_f64());
    }

    let mut nodes = Vec::new();
    for r in 0..n {
        random_wait();
        fleet.revoke(&["--node", &node]).unwrap();
        let t = Instant::now();
        wait_until(Duration::from_secs(90), "node revocation effective", || {
            let id = json(&p, &bed, &["identity", "--json"]);
            (id["revoked"] == true && bed.node_dump().is_err() && !p.state_dir.join("wg.key").exists()).then_some(())
        })
        .unwrap();
        println!("node revocation, round {}: {:.1} s", r + 1, t.elapsed().as_secs_f64());
        nodes.push(t.elapsed().as_secs_f64());
        if r + 1 < n {
            node = enrol_and_serve(&p, &bed, &fleet, &base, &dir).0;
        }
    }
    summary("publication -> config applied", &config);
    summary("publication -> revoked client cut off", &grant);
    summary("publication -> revoked node stopped (tunnel and key gone)", &nodes);
}

fn palisaded_pid(bed: &TestBed) -> u32 {
    bed.node_procs.palisaded.as_ref().and_then(|p| p.pid()).expect("palisaded running")
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// The node's own timing of its last apply with `count` grants: (checked
/// ms, applied ms), from its log.
fn apply_times(log: &str, count: usize) -> Option<(u64, u64)> {
    let needle = format!(", {count} grant(s) active");
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    let num = |after: &str| -> Option<u64> { line.split(after).nth(1)?.split_whitespace().next()?.parse().ok() };
    Some((num("grants checked in ")?, num("applied in ")?))
}

#[test]
#[ignore = "benchmark: bench/fleet/run.sh"]
fn bench_apply_ten_thousand_grants() {
    const COUNT: usize = 10_000;
    let mut bed = TestBed::new(1, bins()).expect("test bed");
    let dir = bed.dir.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let opts = NodeOptions { peers: Some(vec![]), extra_args: vec!["--fleet-poll-secs".into(), "2".into()], ..Default::default() };
    // The grants' addresses (10.66.0.0/16 from host 2) need room: the
    // node's tunnel prefix is a /16.
    let base = render_node_toml(&bed, &opts);
    let mut p = Palisade::start(&mut bed, &opts).expect("palisaded");
    let (rss0, _) = rss(palisaded_pid(&bed));
    let fleet = Fleet::init(&dir).unwrap();
    fleet.issuer_init().unwrap();
    let node = json(&p, &bed, &["identity", "--json"])["node_id"].as_str().unwrap().to_string();
    let url = format!("file://{}", fleet.repo.display());
    fleet.enrol_bundle(&node, &url, "bench", "test", &p.state_dir.join("enrol.json")).unwrap();
    fleet.config_set(&node, &base, &dir).unwrap();
    let keys = dir.join("clients.txt");
    let t = Instant::now();
    fleet
        .fleet(&["grant", "bulk", "--node", &node, "--count", &COUNT.to_string(), "--prefix", "10.66.0.0/16", "--expires", "1d", "--out-keys", &keys.to_string_lossy()])
        .unwrap();
    println!("palisade-fleet grant bulk --count {COUNT}: {:.1} s", t.elapsed().as_secs_f64());
    let mut rounds_out = Vec::new();
    for round in 0..4 {
        if round > 0 {
            // A cold start from the kept state onto an empty interface.
            if let Some(mut old) = bed.node_procs.palisaded.take() {
                let _ = old.stop(Duration::from_secs(10));
            }
            let _ = bed.node.ip(&["link", "del", &bed.node_if]);
            p.spawn(&mut bed).unwrap();
        }
        let log_path = bed.node_procs.palisaded.as_ref().unwrap().log_path().to_path_buf();
        let before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
        let started = Instant::now();
        let (checked, applied) = wait_until(Duration::from_secs(300), "10 000 grants applied", || {
            let log = std::fs::read_to_string(&log_path).ok()?;
            apply_times(&log[before.min(log.len())..], COUNT)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
        let wall = started.elapsed().as_secs_f64();
        let peers = bed.node_dump().unwrap().peers.len();
        assert!(peers >= COUNT, "{peers} peers on the interface");
        let (now, hwm) = rss(palisaded_pid(&bed));
        println!(
            "round {} ({}): grants checked in {checked} ms, applied in {applied} ms; {peers} peers on the interface; palisaded RSS {now:.1} MiB (peak {hwm:.1} MiB; {rss0:.1} MiB before any grant); {wall:.1} s until the node reported it",
            round + 1,
            if round == 0 { "fetched from the repository" } else { "restart from the kept state" }
        );
        rounds_out.push((checked, applied, now));
    }
    let c: Vec<u64> = rounds_out.iter().map(|r| r.0).collect();
    let a: Vec<u64> = rounds_out.iter().map(|r| r.1).collect();
    let m: Vec<f64> = rounds_out.iter().map(|r| r.2).collect();
    let (c, a, m) = (median_min_max(&c), median_min_max(&a), median_min_max(&m));
    println!(
        "{COUNT} grants, {} rounds: check median {} ms ({}..{}), apply median {} ms ({}..{}), RSS median {:.1} MiB ({:.1}..{:.1})",
        rounds_out.len(),
        c.0,
        c.1,
        c.2,
        a.0,
        a.1,
        a.2,
        m.0,
        m.1,
        m.2
    );
}
