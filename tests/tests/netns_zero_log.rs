//! S10 "Zero-log" — after real traffic, DNS queries, peer churn and a restart,
//! nothing palisaded prints, answers or writes names a client's endpoint
//! address or a name a client queried.
//!
//! The clients' endpoints are their uplink addresses (203.0.113.101/102 and
//! 2001:db8:113::101/102, seen by the node as the WireGuard source). The
//! queried names are canaries (`zlcanary-...`) sent through the tunnel to the
//! node's resolver on 10.66.0.1 and fd66::1: one the upstream resolves, one it
//! answers NXDOMAIN, one the node's block list refuses, each as A and AAAA.
//! None may appear in any log line, CLI output (human or JSON) or state file,
//! as text or in DNS wire format.

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::{addr, probe, sa, Bins, Outcome, TestBed};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const T: Duration = Duration::from_millis(1500);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// Every file under `dir`, recursively, as lossy text (ASCII names and
/// addresses survive the conversion, also inside binary files).
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

/// `name` in DNS wire format (length-prefixed labels), as lossy text.
fn wire(name: &str) -> String {
    let mut w = Vec::new();
    for l in name.split('.') {
        w.push(l.len() as u8);
        w.extend_from_slice(l.as_bytes());
    }
    w.push(0);
    String::from_utf8_lossy(&w).into_owned()
}

/// The node really knows every client's endpoint right now (so the scan
/// looks for something that exists).
fn assert_endpoints_known(bed: &TestBed) {
    let d = bed.node_dump().unwrap();
    for c in &bed.clients {
        let p = d.peer(&c.keys.public_key).expect("client on the node");
        let ep = p.endpoint.clone().unwrap_or_default();
        assert!(
            ep.starts_with(&c.up_v4.to_string()) && p.latest_handshake > 0,
            "node-side endpoint of client {}: {ep:?}, handshake {}",
            c.index,
            p.latest_handshake
        );
    }
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn no_client_endpoint_or_queried_name_in_logs_cli_output_or_state() {
    // The most verbose log level an operator can ask for.
    std::env::set_var("PALISADE_LOG", "trace");
    let mut bed = TestBed::new(2, bins()).expect("build test bed");
    let list = bed.dir.path().join("zl-block.txt");
    std::fs::write(&list, "||zlblock.example.test^\n").unwrap();
    let opts = NodeOptions {
        extra_toml: format!(
            "\n[dns.list.zl]\npath = \"{}\"\n\n[dns.tier.default]\nlists = [\"zl\"]\n",
            list.display()
        ),
        ..NodeOptions::default()
    };
    let mut p = Palisade::start(&mut bed, &opts).expect("start palisaded");
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
    assert_endpoints_known(&bed);

    // Canary queries through the tunnel, from both clients, to both resolver
    // addresses, A and AAAA; each answer proves the name reached the resolver.
    let servers = [
        SocketAddr::new(addr::NODE_TUN_V4.into(), 53),
        SocketAddr::new(addr::NODE_TUN_V6.into(), 53),
    ];
    palisade_tests::wait_until(
        Duration::from_secs(10),
        "resolver answering in the tunnel",
        || {
            bed.clients[0]
                .ns
                .enter(|| probe::dns_udp(servers[0], "www.example.test", 1, T))
                .ok()?
                .ok()
        },
    )
    .unwrap();
    let mut canaries = Vec::new();
    for c in &bed.clients {
        let resolved = format!("zlcanary-resolved-c{}.canary.example.test", c.index);
        let nx = format!("zlcanary-nx-c{}.example.test", c.index);
        let blocked = format!("zlcanary-blocked-c{}.zlblock.example.test", c.index);
        for server in servers {
            for (qtype, want) in [(1u16, IpAddr::from(addr::WEB_V4)), (28, addr::WEB_V6.into())] {
                let ask = |name: &str| {
                    c.ns.enter(|| probe::dns_udp(server, name, qtype, Duration::from_secs(3)))
                        .unwrap()
                        .unwrap_or_else(|o| panic!("c{} {name} via {server}: {o:?}", c.index))
                };
                let a = ask(&resolved);
                assert_eq!((a.rcode, a.addrs), (0, vec![want]), "{resolved} via {server}");
                let a = ask(&nx);
                assert_eq!((a.rcode, a.addrs.len()), (3, 0), "{nx} via {server}");
                let a = ask(&blocked);
                assert_eq!((a.rcode, a.addrs.len()), (3, 0), "{blocked} via {server}");
            }
        }
        canaries.extend([resolved, nx, blocked]);
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

    // Still connected, endpoints known, while the CLI answers.
    assert_endpoints_known(&bed);
    let mut outputs: Vec<(String, String)> = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["peers", "list"],
        &["peers", "list", "--json"],
        &["plan"],
        &["client-config", "client-1", "--no-qr"],
        &["client-config", "client-2"],
        &["dns", "stats"],
        &["dns", "stats", "--json"],
    ] {
        let o = p.cli(&bed, args).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // Every command must work: a scan of error messages proves little.
        assert!(
            o.status.success() && !text.trim().is_empty(),
            "palisade {args:?}: {text}"
        );
        outputs.push((format!("palisade {}", args.join(" ")), text));
    }
    // The resolver counted the canaries (2 clients x 2 servers x 2 types x 3 names).
    let stats: serde_json::Value =
        serde_json::from_str(&outputs.last().unwrap().1).expect("dns stats JSON");
    assert!(
        stats["queries"].as_u64().unwrap_or_default() >= 24,
        "{stats}"
    );
    assert!(stats["blocked"].as_u64().unwrap_or_default() >= 8, "{stats}");
    assert_endpoints_known(&bed);

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

    let mut needles: Vec<String> = vec!["zlcanary".into()];
    for c in &bed.clients {
        needles.push(c.up_v4.to_string());
        needles.push(c.up_v6.to_string());
    }
    for n in &canaries {
        needles.push(n.clone());
        needles.push(wire(n));
    }
    let mut hits = Vec::new();
    for (what, text) in &outputs {
        for n in &needles {
            if text.contains(n.as_str()) {
                let line = text
                    .lines()
                    .find(|l| l.contains(n.as_str()))
                    .unwrap_or_default();
                hits.push(format!("{what}: {n:?} in {line:?}"));
            }
        }
    }
    println!(
        "scanned {} outputs for {} endpoint addresses and {} queried names (text and wire format): {} hits",
        outputs.len(),
        bed.clients.len() * 2,
        canaries.len(),
        hits.len()
    );
    assert!(
        hits.is_empty(),
        "client endpoint addresses or queried names found:\n{}",
        hits.join("\n")
    );
}
