//! The metrics endpoint (docs/metrics.md) through the real palisaded in the
//! bed's node namespace: the node's uplink holds a second address in the
//! management mesh (100.100.0.10/16); the mesh host is the bed's internet
//! namespace with its mesh source 100.100.0.5 on the same bridge. Scrapes
//! use `palisade-fleet metrics` (mutual TLS, the node pinned by its enrolled
//! identity key).
//!
//! After real traffic and DNS queries from two clients: a scrape with a
//! valid certificate shows the peers, their recent handshakes, bytes and
//! DNS counters, and no client key, address, peer name or queried name.
//! Refused: no certificate, a certificate from a CA that is not an anchor,
//! an expired one, one living longer than the node allows, and a scrape
//! that pins another key. Unreachable: the metrics address from a tunnel
//! client; nothing listens on the public uplink address. Anchors: first
//! from the node's anchors file, then from the fleet repository (taking
//! precedence) and rotated there: a new anchor issues certificates that
//! work, the retired one's are refused, without a restart.
//!
//! Latency and RSS figures: tests/tests/bench_metrics.rs (bench/metrics/run.sh).

use palisade_tests::metrics::{
    assert_nothing_per_client, assert_traffic_aggregates, fleet_with_anchor, issue, mesh_bed, metrics_addr, node_id_of, node_toml,
    sample,
    scrape, MESH_NODE, PORT,
};
use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::probe::{self, Outcome};
use palisade_tests::update::Fleet;
use palisade_tests::{addr, sa, wait_until, Bins, TestBed};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_millis(1500);

fn json(p: &Palisade, bed: &TestBed, args: &[&str]) -> Value {
    serde_json::from_str(&p.cli_ok(bed, args).unwrap()).unwrap()
}

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// A TLS client with no certificate (python3's ssl module): what it read.
fn no_cert_scrape(bed: &TestBed) -> String {
    let script = format!(
        "import socket, ssl\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
         c.check_hostname = False\n\
         c.verify_mode = ssl.CERT_NONE\n\
         out = b''\n\
         try:\n\
         \x20   t = c.wrap_socket(socket.create_connection(('{MESH_NODE}', {PORT}), 5))\n\
         \x20   t.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   while True:\n\
         \x20       d = t.recv(65536)\n\
         \x20       if not d: break\n\
         \x20       out += d\n\
         except Exception as e:\n\
         \x20   print('error:', type(e).__name__, e)\n\
         print('read', len(out), out[:200])\n"
    );
    let o = bed
        .inet
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Refused at the handshake, with the TLS alert (or local check) `why`.
fn assert_refused(r: Result<(Value, String), String>, what: &str, why: &str) {
    match r {
        Ok((v, _)) => panic!("{what}: scrape succeeded: {v}"),
        Err(e) => {
            println!("{what}: {}", e.trim());
            assert!(
                !e.contains("palisade_"),
                "{what}: metrics in the refusal: {e}"
            );
            assert!(e.contains(why), "{what}: refused, but not for {why}: {e}");
        }
    }
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn metrics_over_mtls_from_the_mesh_only_aggregates_and_anchor_rotation() {
    let (mut bed, dir, certs) = mesh_bed(2, bins());
    let opts = NodeOptions {
        extra_args: vec!["--fleet-poll-secs".into(), "2".into()],
        ..Default::default()
    };
    let text = node_toml(&bed, &opts);
    let mut p = Palisade::start_with_config(&mut bed, &text, &opts).expect("palisaded");
    for i in [1, 2] {
        bed.wait_handshake(i, Duration::from_secs(10))
            .expect("handshake");
    }

    // The fleet: a repository, the first anchor, the node in the inventory.
    // Not enrolled: the anchors come from the node's anchors file (the
    // bundle the fleet published, copied by the operator).
    let (fleet, node, c1, k1) = fleet_with_anchor(&p, &bed, &dir, &certs);

    // Real traffic and DNS queries from both clients.
    let names: Vec<String> = (1..=2)
        .map(|i| format!("mxcanary-c{i}.canary.example.test"))
        .collect();
    for (c, name) in bed.clients.iter().zip(&names) {
        let o =
            c.ns.enter(|| probe::http_get(None, sa(addr::WEB_V4, addr::WEB_HTTP), T))
                .unwrap();
        assert!(
            matches!(o, Outcome::Answered(_)),
            "c{} -> web: {o:?}",
            c.index
        );
        let a = wait_until(Duration::from_secs(10), "resolver answering", || {
            c.ns.enter(|| probe::dns_udp(sa(addr::NODE_TUN_V4, 53), name, 1, T))
                .ok()?
                .ok()
        })
        .unwrap();
        assert_eq!(a.rcode, 0, "{name}");
    }

    // A valid certificate: the aggregates, and nothing per client.
    let t0 = Instant::now();
    let (v, text) = wait_until(Duration::from_secs(20), "metrics served over mTLS", || {
        scrape(&bed, &fleet, &node, &c1, &k1).ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    println!("first scrape after {:?}", t0.elapsed());
    assert_traffic_aggregates(&v, &text, 2.0);
    assert!(
        sample(&v, "palisade_wireguard_tx_bytes_total", None).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(
        sample(&v, "palisade_dns_query_duration_seconds_count", None).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert_eq!(
        sample(&v, "palisade_health", Some(("check", "firewall"))),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&v, "palisade_reconcile_passes_total", None).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&v, "palisade_boots_total", None).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &v,
            "palisade_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        Some(1.0),
        "{text}"
    );
    // The zero-log scan of the output: no client key, tunnel or endpoint
    // address, peer name or queried name.
    assert_nothing_per_client(&bed, &names, &v, &text);

    // Refused: no certificate; a CA that is not an anchor; expired; too long-lived.
    let out = no_cert_scrape(&bed);
    assert!(
        out.contains("read 0") || out.contains("error:"),
        "no-certificate client: {out}"
    );
    assert!(
        !out.contains("palisade_"),
        "no-certificate client got metrics: {out}"
    );
    let rogue = Fleet::init(&bed.dir.path().join("rogue")).expect("rogue repo");
    // Same anchor name (and so the same issuer name) as the real a1, another
    // key: the chain's signature does not verify.
    rogue.fleet(&["mesh", "anchor", "init", "a1"]).unwrap();
    let (rc, rk) = issue(
        &rogue,
        "a1",
        "prom",
        &[],
        &bed.dir.path().join("rogue-certs"),
    );
    assert_refused(
        scrape(&bed, &fleet, &node, &rc, &rk),
        "certificate from a non-anchor CA",
        "DecryptError",
    );
    let past = (chrono::Utc::now().timestamp() - 7200).to_string();
    let (ec, ek) = issue(
        &fleet,
        "a1",
        "expired",
        &["--expires", "1h", "--not-before", &past],
        &certs,
    );
    assert_refused(
        scrape(&bed, &fleet, &node, &ec, &ek),
        "expired certificate",
        "CertificateExpired",
    );
    let (lc, lk) = issue(&fleet, "a1", "long", &["--expires", "2h"], &certs);
    assert_refused(
        scrape(&bed, &fleet, &node, &lc, &lk),
        "certificate living 2 h (node allows 1 h)",
        "CertificateUnknown",
    );
    // A scraper pinning another node's key refuses this node (the
    // inventory's entry for another id, scraped at this node's address).
    let other_key = palisade_tests::palisade::throwaway_public_key().unwrap();
    let added = fleet
        .fleet(&[
            "node",
            "add",
            "--id",
            &node_id_of(&other_key),
            "--public-key",
            &other_key,
            "--name",
            "n2",
            "--region",
            "test",
        ])
        .unwrap();
    assert_eq!(added["ok"], true, "{added}");
    assert_refused(
        scrape(&bed, &fleet, &node_id_of(&other_key), &c1, &k1),
        "the node's key is not the pinned one",
        "ApplicationVerificationFailure",
    );
    assert!(
        scrape(&bed, &fleet, &node, &c1, &k1).is_ok(),
        "valid certificate after the refusals"
    );

    // Unreachable from the tunnel side, and nothing on the public address.
    for c in &bed.clients {
        let o =
            c.ns.enter(|| probe::tcp_connect(None, metrics_addr(), T))
                .unwrap();
        assert!(
            !o.reached(),
            "client {} reached the metrics port through the tunnel: {o:?}",
            c.index
        );
    }
    let o = bed
        .inet
        .enter(|| {
            probe::tcp_connect(
                Some(IpAddr::V4(addr::MESH_SRC_V4)),
                sa(addr::NODE_UP_V4, PORT),
                T,
            )
        })
        .unwrap();
    assert!(
        !o.reached(),
        "something listens on the public uplink address: {o:?}"
    );
    let o = bed
        .inet
        .enter(|| probe::tcp_connect(Some(IpAddr::V4(addr::MESH_SRC_V4)), metrics_addr(), T))
        .unwrap();
    assert!(
        o.reached(),
        "the mesh host cannot reach the metrics address: {o:?}"
    );

    // Enrolled: the repository's anchors take precedence over the file.
    // Rotation there: a2 added and issuing, a1 retired.
    fleet
        .enrol_bundle(
            &node,
            &format!("file://{}", fleet.repo.display()),
            "n1",
            "test",
            &p.state_dir.join("enrol.json"),
        )
        .unwrap();
    wait_until(Duration::from_secs(20), "node enrolled", || {
        (json(&p, &bed, &["identity", "--json"])["enrolled"] == true).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    fleet.fleet(&["mesh", "anchor", "init", "a2"]).unwrap();
    let (c2, k2) = issue(&fleet, "a2", "prom2", &["--expires", "30m"], &certs);
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "a certificate from the new anchor a2 accepted",
        || scrape(&bed, &fleet, &node, &c2, &k2).ok(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    println!("new anchor in force after {:?}", t0.elapsed());
    assert!(
        scrape(&bed, &fleet, &node, &c1, &k1).is_ok(),
        "a1 still an anchor"
    );
    let r = fleet.fleet(&["mesh", "anchor", "retire", "a1"]).unwrap();
    assert_eq!(r["anchors"], serde_json::json!(["a2"]), "{r}");
    assert!(
        !fleet.keys.join("mesh-anchor-a1.key.pem").exists(),
        "the retired anchor's key is still there"
    );
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "a1's certificate refused after its retirement",
        || scrape(&bed, &fleet, &node, &c1, &k1).is_err().then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    println!("retired anchor refused after {:?}", t0.elapsed());
    // The anchors file still holds a1: the repository's bundle wins.
    let (v, _) = scrape(&bed, &fleet, &node, &c2, &k2).expect("a2 after a1's retirement");
    assert_eq!(sample(&v, "palisade_fleet_enrolled", None), Some(1.0));
    assert!(sample(&v, "palisade_fleet_last_sync_timestamp_seconds", None).unwrap_or(0.0) > 0.0);
    assert!(sample(&v, "palisade_metrics_handshakes_refused_total", None).unwrap_or(0.0) >= 4.0);

    // The endpoint said it serves, and never logged a scraper's address.
    let log = bed.node_procs.palisaded.as_ref().unwrap().log_tail(100_000);
    assert!(
        log.contains(&format!("metrics: serving on {} (mTLS, ", metrics_addr())),
        "{log}"
    );
    assert!(
        !log.contains(&addr::MESH_SRC_V4.to_string()),
        "the scraper's address in the log:\n{log}"
    );
    p.spawn(&mut bed).unwrap();
}
