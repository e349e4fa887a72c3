//! End to end: the metrics endpoint of the real image under QEMU. The node
//! config on the config drive gives the uplink a second address in the
//! management mesh (100.100.0.10/16) and the endpoint on it; the anchor
//! bundle (made with `palisade-fleet mesh anchor init`) is seeded onto the
//! state partition as `mesh-anchors.pem`. With two clients' traffic
//! flowing, the mesh host (the bed's internet namespace, source
//! 100.100.0.5) scrapes over mutual TLS, pinning the identity key the node
//! made at first boot. Refused without a certificate; unreachable from the
//! tunnel side; the output names no client key, address, peer name or
//! queried name.
//!
//! Needs `PALISADE_IMAGE` (the raw disk image; tests/run.sh builds it).

use palisade_tests::guest::{
    copy_image, debugfs_write, guest_node_toml, image_path, partition, workspace, GuestOptions, Vm,
};
use palisade_tests::metrics::{
    add_node, assert_nothing_per_client, assert_traffic_aggregates, issue, metrics_addr, sample, scrape, MESH_NODE, PORT,
};
use palisade_tests::ns::run_cmd;
use palisade_tests::update::Fleet;
use palisade_tests::wg::gen_keypair;
use palisade_tests::{addr, probe, sa, wait_until, Bins, Outcome, TestBed};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_millis(2000);

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn image_serves_metrics_over_mtls_to_the_mesh_only() {
    let image = image_path().expect("image to test");
    let bed = TestBed::new_for_guest(2, bins()).expect("build test bed");
    let dir = bed.log_dir().to_path_buf();

    // The fleet's first anchor and its bundle.
    let fleet = Fleet::init(&dir.join("fleet")).expect("repo init");
    fleet.fleet(&["mesh", "anchor", "init", "a1"]).unwrap();
    let list: Value = serde_json::from_slice(
        &std::fs::read(fleet.repo.join("inventory/mesh-anchors.json")).unwrap(),
    )
    .unwrap();
    let anchors = dir.join("mesh-anchors.pem");
    std::fs::write(&anchors, list["anchors"][0]["cert_pem"].as_str().unwrap()).unwrap();

    // The disk: node key and anchors on the state partition; the config
    // drive with the mesh address and the endpoint.
    let disk = copy_image(&image, &dir).unwrap();
    let (state_off, _) = partition(&disk, "state").unwrap();
    let node_key = gen_keypair(&dir, "guest-node").unwrap();
    debugfs_write(&disk, state_off, &node_key.private_key_file, "wg0.key").unwrap();
    debugfs_write(&disk, state_off, &anchors, "mesh-anchors.pem").unwrap();
    let up = format!(
        "addresses = [\"{}/24\", \"{}/64\"]",
        addr::NODE_UP_V4,
        addr::NODE_UP_V6
    );
    let toml = guest_node_toml(&bed, &GuestOptions::default());
    assert!(
        toml.contains(&up) && toml.contains("[management]\n"),
        "{toml}"
    );
    let toml = toml
        .replace(
            &up,
            &format!(
                "addresses = [\"{}/24\", \"{}/64\", \"{MESH_NODE}/16\"]",
                addr::NODE_UP_V4,
                addr::NODE_UP_V6
            ),
        )
        .replace(
            "[management]\n",
            &format!(
                "[management]\nmetrics_listen = \"{}\"\nmetrics_max_cert_lifetime = \"1h\"\n",
                metrics_addr()
            ),
        );
    let toml_path = dir.join("guest-node.toml");
    std::fs::write(&toml_path, &toml).unwrap();
    let cfg = dir.join("config-drive.img");
    run_cmd(
        Command::new(workspace().join("qemu/mkconfigdrive.sh"))
            .arg(&toml_path)
            .arg(&cfg),
    )
    .unwrap();
    let mut vm = Vm::start(&bed, &disk, Some(&cfg), true).expect("boot the image");
    for c in &bed.clients {
        c.connect(&node_key.public_key).unwrap();
    }
    if let Err(e) = bed.wait_handshake(1, Duration::from_secs(240)) {
        panic!("{e:#}\nconsole:\n{}", vm.console_text());
    }
    bed.wait_handshake(2, Duration::from_secs(30))
        .expect("client 2 handshake");

    // The identity the node made at first boot (logged: it is public), into
    // the fleet's inventory: the scraper pins it.
    let line = wait_until(Duration::from_secs(30), "identity on the console", || {
        vm.console_text()
            .lines()
            .find(|l| l.contains("fleet: node ") && l.contains(" identity key "))
            .map(str::to_string)
    })
    .unwrap();
    let after = line.split("fleet: node ").nth(1).unwrap();
    let mut w = after.split_whitespace();
    let node = w.next().unwrap().to_string();
    let key = after
        .split(" identity key ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    add_node(&fleet, &node, &key, "g1");
    let certs = dir.join("certs");
    let (c, k) = issue(&fleet, "a1", "prom", &["--expires", "30m"], &certs);

    // Traffic and queries from both clients.
    let names: Vec<String> = (1..=2)
        .map(|i| format!("e2emx-c{i}.canary.example.test"))
        .collect();
    for (cl, name) in bed.clients.iter().zip(&names) {
        let o = cl
            .ns
            .enter(|| probe::http_get(None, sa(addr::WEB_V4, addr::WEB_HTTP), T))
            .unwrap();
        assert!(
            matches!(o, Outcome::Answered(_)),
            "c{} -> web: {o:?}",
            cl.index
        );
        let a = wait_until(Duration::from_secs(30), "resolver answering", || {
            cl.ns
                .enter(|| probe::dns_udp(sa(addr::NODE_TUN_V4, 53), name, 1, T))
                .ok()?
                .ok()
        })
        .unwrap();
        assert_eq!(a.rcode, 0, "{name}");
    }

    let t0 = Instant::now();
    let (v, text) = wait_until(
        Duration::from_secs(60),
        "metrics over mTLS from the mesh host",
        || scrape(&bed, &fleet, &node, &c, &k).ok(),
    )
    .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", vm.console_text()));
    println!("scrape (TCG guest) answered after {:?}", t0.elapsed());
    assert_traffic_aggregates(&v, &text, 2.0);
    assert_eq!(
        sample(&v, "palisade_boots_total", None),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("palisade_build_info{") && text.contains("board=\"qemu-x86_64\""),
        "{text}"
    );

    // Zero-log scan of the output.
    assert_nothing_per_client(&bed, &names, &v, &text);

    // Refused without a certificate (python3's ssl module, no client cert).
    let script = format!(
        "import socket, ssl\nc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\nc.check_hostname = False\nc.verify_mode = ssl.CERT_NONE\nout = b''\ntry:\n    t = c.wrap_socket(socket.create_connection(('{MESH_NODE}', {PORT}), 10))\n    t.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n    while True:\n        d = t.recv(65536)\n        if not d: break\n        out += d\nexcept Exception as e:\n    print('error:', type(e).__name__, e)\nprint('read', len(out))\n"
    );
    let o = bed
        .inet
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        (out.contains("read 0") || out.contains("error:")) && !out.contains("palisade_"),
        "no-certificate client: {out}"
    );

    // Unreachable from the tunnel side.
    for cl in &bed.clients {
        let o = cl
            .ns
            .enter(|| probe::tcp_connect(None, metrics_addr(), T))
            .unwrap();
        assert!(
            !o.reached(),
            "client {} reached the metrics port through the tunnel: {o:?}",
            cl.index
        );
    }
    // Nothing listens on the public uplink address.
    let o = bed
        .inet
        .enter(|| {
            probe::tcp_connect(
                Some(addr::MESH_SRC_V4.into()),
                sa(addr::NODE_UP_V4, PORT),
                T,
            )
        })
        .unwrap();
    assert!(
        !o.reached(),
        "something listens on the public uplink address: {o:?}"
    );

    let console = vm.console_text();
    assert!(
        console.contains(&format!(
            "metrics: serving on {} (mTLS, 1 anchor(s))",
            metrics_addr()
        )),
        "{console}"
    );
    assert!(
        !console.contains(&addr::MESH_SRC_V4.to_string()),
        "the scraper's address on the console"
    );
    vm.kill();
}
