//! S10 "Zero-log" — after real traffic, peer churn and a restart, nothing
//! palisaded prints, answers or writes names a client's endpoint address.
//!
//! The clients' endpoints are their uplink addresses (203.0.113.101/102 and
//! 2001:db8:113::101/102, seen by the node as the WireGuard source): they must
//! appear in no log line, no CLI output (human or JSON) and no state file.

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{addr, probe, sa, Bins, Outcome, TestBed};
use std::time::Duration;

const T: Duration = Duration::from_millis(1500);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// Every file under `dir`, recursively, as lossy text.
fn read_tree(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, out);
        } else if p.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn no_client_endpoint_in_logs_cli_output_or_state() {
    // The most verbose log level an operator can ask for.
    std::env::set_var("PALISADE_LOG", "trace");
    let mut bed = TestBed::new(2, bins()).expect("build test bed");
    let mut p = Palisade::start(&mut bed, &NodeOptions::default()).expect("start palisaded");
    for i in [1, 2] {
        bed.wait_handshake(i, Duration::from_secs(10))
            .expect("handshake");
    }
    // Real traffic from both clients, both families.
    for c in &bed.clients {
        for dst in [sa(addr::WEB_V4, 80), sa(addr::WEB_V6, 80)] {
            let o = c.ns.enter(|| probe::http_get(None, dst, T)).unwrap();
            assert!(
                matches!(o, Outcome::Answered(_)),
                "c{} -> {dst}: {o:?}",
                c.index
            );
        }
    }
    // The node really knows the endpoints (so the scan below can find them).
    let d = bed.node_dump().unwrap();
    for c in &bed.clients {
        let ep = d
            .peer(&c.keys.public_key)
            .and_then(|p| p.endpoint.clone())
            .unwrap_or_default();
        assert!(
            ep.starts_with(&c.up_v4.to_string()),
            "node-side endpoint of client {}: {ep:?}",
            c.index
        );
    }

    // Peer churn and a reload, then a restart: more log lines to scan.
    let k = palisade_tests::palisade::throwaway_public_key().unwrap();
    p.cli_ok(
        &bed,
        &[
            "peers",
            "add",
            "churn",
            "--public-key",
            &k,
            "--address",
            "10.66.0.200/32",
        ],
    )
    .unwrap();
    p.cli_ok(&bed, &["peers", "remove", "churn"]).unwrap();
    p.cli_ok(&bed, &["reload"]).unwrap();

    let mut outputs: Vec<(String, String)> = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["peers", "list"],
        &["peers", "list", "--json"],
        &["plan"],
        &["client-config", "client-1", "--no-qr"],
        &["client-config", "client-2"],
        &["dns", "stats", "--json"],
    ] {
        let o = p.cli(&bed, args).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // Every command but `dns stats` (no resolver in some builds) must work:
        // a scan of error messages proves little.
        if args[0] != "dns" {
            assert!(
                o.status.success() && !text.trim().is_empty(),
                "palisade {args:?}: {text}"
            );
        }
        outputs.push((format!("palisade {}", args.join(" ")), text));
    }
    bed.node_procs
        .palisaded
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5))
        .unwrap();
    p.spawn(&mut bed).expect("restart");
    bed.node_procs
        .palisaded
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5))
        .unwrap();

    let log_path = bed.log_dir().join("palisaded.log");
    outputs.push((
        "palisaded log".into(),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    ));
    let log = &outputs.last().unwrap().1;
    assert!(
        log.matches("control socket").count() >= 2,
        "both runs' logs are scanned:\n{log}"
    );
    println!("palisaded log: {} lines", log.lines().count());
    read_tree(&p.state_dir, &mut outputs);
    read_tree(&p.run_dir, &mut outputs);
    assert!(
        outputs.iter().any(|(_, t)| t.contains("client-1")),
        "the scan sees the node's outputs"
    );

    let mut needles: Vec<String> = Vec::new();
    for c in &bed.clients {
        needles.push(c.up_v4.to_string());
        needles.push(c.up_v6.to_string());
    }
    let mut hits = Vec::new();
    for (what, text) in &outputs {
        for n in &needles {
            if text.contains(n.as_str()) {
                let line = text
                    .lines()
                    .find(|l| l.contains(n.as_str()))
                    .unwrap_or_default();
                hits.push(format!("{what}: {n} in {line:?}"));
            }
        }
    }
    println!(
        "scanned {} outputs for {} endpoint addresses: {} hits",
        outputs.len(),
        needles.len(),
        hits.len()
    );
    assert!(
        hits.is_empty(),
        "client endpoint addresses found:\n{}",
        hits.join("\n")
    );
}
