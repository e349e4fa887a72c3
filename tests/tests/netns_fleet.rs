//! Fleet trust through the real palisaded in the bed's node namespace and a
//! repository published with `palisade-fleet` (file:// URL): enrolment from
//! a config-drive bundle, the node's config and client grants from the
//! repository, grant revocation (that client cut off, the other keeps its
//! session), refusals that leave the running state as it was (wrong role,
//! replayed old metadata, tampered config), grant expiry with the
//! repository unreachable, the last verified config after a restart with
//! the repository gone, key rotation, DNS lists from the repository, and a
//! revoked node that stops serving and stays stopped across a restart.
//! The serial-console enrolment and a reboot are tested under QEMU
//! (tests/tests/e2e_fleet.rs).

use palisade_tests::palisade::{render_node_toml, NodeOptions, Palisade};
use palisade_tests::probe::{self, dns_udp, Outcome};
use palisade_tests::update::Fleet;
use palisade_tests::{addr, sa, wait_until, Bins, TestBed};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

/// Seconds between the node's polls in this test (production: 60).
const POLL: &str = "2";

fn json(p: &Palisade, bed: &TestBed, args: &[&str]) -> Value {
    serde_json::from_str(&p.cli_ok(bed, args).unwrap()).unwrap()
}

fn fleet_status(p: &Palisade, bed: &TestBed) -> Value {
    json(p, bed, &["fleet", "status", "--json"])
}

/// Client `i` (1-based) reaches the web host through the tunnel.
fn reaches_web(bed: &TestBed, i: usize) -> bool {
    let c = &bed.clients[i - 1];
    matches!(
        c.ns.enter(|| probe::http_get(None, sa(addr::WEB_V4, addr::WEB_HTTP), Duration::from_millis(700))),
        Ok(Outcome::Answered(_))
    )
}

fn client_addresses(bed: &TestBed, i: usize) -> Vec<String> {
    let c = &bed.clients[i - 1];
    vec![format!("{}/32", c.tun_v4), format!("{}/128", c.tun_v6)]
}

/// Wait until the node runs the config with this sha256 and `grants` grants.
fn wait_applied(p: &Palisade, bed: &TestBed, grants: u64, within: Duration) -> Value {
    wait_until(within, &format!("fleet config with {grants} grant(s) applied"), || {
        let s = fleet_status(p, bed);
        (s["config"]["sha256"].is_string() && s["grants"]["active"] == grants).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()))
}

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn node_id(p: &Palisade, bed: &TestBed) -> String {
    json(p, bed, &["identity", "--json"])["node_id"].as_str().unwrap().to_string()
}

fn handshake_of(bed: &TestBed, i: usize) -> u64 {
    bed.clients[i - 1].dump().unwrap().peers.first().map(|p| p.latest_handshake).unwrap_or(0)
}

/// A bed with `clients` clients, palisaded on a local config with no peers
/// (not enrolled, polling every POLL s), and the fleet's work directory.
fn unenrolled_node(clients: usize) -> (TestBed, Palisade, std::path::PathBuf, String) {
    let mut bed = TestBed::new(clients, bins()).expect("test bed");
    let dir = bed.dir.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let opts = NodeOptions {
        peers: Some(vec![]),
        extra_args: vec!["--fleet-poll-secs".into(), POLL.into()],
        ..Default::default()
    };
    let base = render_node_toml(&bed, &opts);
    let p = Palisade::start(&mut bed, &opts).expect("palisaded");
    (bed, p, dir, base)
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn config_and_grants_from_the_repository_revocation_and_refusals() {
    // The node starts from a local config with no peers and is not enrolled.
    let (mut bed, mut p, dir, base) = unenrolled_node(2);
    let id = json(&p, &bed, &["identity", "--json"]);
    assert_eq!(id["enrolled"], false, "{id}");
    let node = id["node_id"].as_str().unwrap().to_string();
    assert_eq!(node.len(), 16, "{id}");

    let fleet = Fleet::init(&dir).expect("repo init");
    fleet.issuer_init().unwrap();
    // Enrolment from a config drive's bundle (the node picks it up from its
    // state directory while it is not enrolled).
    fleet.enrol_bundle(&node, &url(&fleet.repo), "n1", "test", &p.state_dir.join("enrol.json")).unwrap();
    wait_until(Duration::from_secs(20), "node enrolled", || (json(&p, &bed, &["identity", "--json"])["enrolled"] == true).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));

    // The node's config and two grants.
    fleet.config_set(&node, &base, &dir).unwrap();
    let k1 = bed.clients[0].keys.public_key.clone();
    let k2 = bed.clients[1].keys.public_key.clone();
    let g1 = fleet.grant_issue(&node, &k1, &client_addresses(&bed, 1), "1h").unwrap();
    let _g2 = fleet.grant_issue(&node, &k2, &client_addresses(&bed, 2), "1h").unwrap();
    let st = wait_applied(&p, &bed, 2, Duration::from_secs(30));
    assert_eq!(st["enrolled"], true, "{st}");
    wait_until(Duration::from_secs(20), "both clients reach the web host", || (reaches_web(&bed, 1) && reaches_web(&bed, 2)).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));

    // Revoke client 1's grant: cut off; client 2 keeps its session (no new
    // handshake needed, traffic flows throughout).
    let hs2 = handshake_of(&bed, 2);
    let published = Instant::now();
    fleet.revoke(&["--grant", &g1]).unwrap();
    let cut = wait_until(Duration::from_secs(30), "client 1 cut off", || (!reaches_web(&bed, 1)).then(|| published.elapsed()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    println!("grant revocation took effect after {:.1} s (poll {POLL} s)", cut.as_secs_f64());
    assert!(reaches_web(&bed, 2), "client 2 lost its service when client 1 was revoked");
    assert_eq!(handshake_of(&bed, 2), hs2, "client 2 had to handshake again: its session was reset");
    assert_eq!(fleet_status(&p, &bed)["grants"]["active"], 1);

    // Refusals: each leaves the running config (sha) and client 2's service.
    let running = fleet_status(&p, &bed)["config"]["sha256"].as_str().unwrap().to_string();

    // (a) A config signed by the images role (outside its paths): ignored
    // and reported; then withdrawn.
    let saved = fleet.snapshot(&dir.join("repo-saved")).unwrap();
    let evil = dir.join("evil.toml");
    std::fs::write(&evil, base.replace("[egress]", "[egress]\n# evil")).unwrap();
    fleet.sign_as("images", &format!("nodes/{node}/config.toml"), &evil).unwrap();
    refused_against(&p, &bed, &running, "config signed by the images role", "wrong-role");
    fleet.fleet(&["sign-as", "images", &format!("nodes/{node}/config.toml"), "--remove"]).unwrap();
    wait_until(Duration::from_secs(20), "wrong-role target withdrawn", || fleet_status(&p, &bed)["last_error"].is_null().then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));

    // (b) A mirror replaying the repository as it was before: refused.
    let live = dir.join("repo-live");
    std::fs::rename(&fleet.repo, &live).unwrap();
    std::fs::rename(&saved, &fleet.repo).unwrap();
    refused_against(&p, &bed, &running, "replayed old metadata", "rollback");
    std::fs::remove_dir_all(&fleet.repo).unwrap();
    std::fs::rename(&live, &fleet.repo).unwrap();
    fleet.config_set(&node, &base.replace("[egress]", "[egress]\n# v2"), &dir).unwrap();
    let st = wait_until(Duration::from_secs(30), "config v2 applied", || {
        let s = fleet_status(&p, &bed);
        (s["config"]["sha256"] != running.as_str() && s["last_error"].is_null()).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    let running = st["config"]["sha256"].as_str().unwrap().to_string();

    // (c) A tampered config (bytes changed on the mirror, not re-signed).
    let v3 = base.replace("[egress]", "[egress]\n# v3");
    let (f, signed) = fleet
        .publish_tampered(&format!("nodes/{node}/config.toml"), |staged| staged.config_set(&node, &v3, &dir))
        .unwrap();
    refused_against(&p, &bed, &running, "tampered config", "hash-mismatch");

    // Repair the mirror's copy; v3 applies.
    std::fs::write(&f, signed).unwrap();
    let st = wait_until(Duration::from_secs(30), "config v3 applied", || {
        let s = fleet_status(&p, &bed);
        (s["config"]["sha256"] != running.as_str() && s["last_error"].is_null()).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    let running = st["config"]["sha256"].as_str().unwrap().to_string();

    // Key rotation (a delegated role and the timestamp role): the node
    // follows and applies the next config.
    fleet.rotate("configs").unwrap();
    fleet.rotate("timestamp").unwrap();
    fleet.config_set(&node, &base.replace("[egress]", "[egress]\n# v4 after rotation"), &dir).unwrap();
    wait_until(Duration::from_secs(30), "config v4 applied after key rotation", || {
        let s = fleet_status(&p, &bed);
        (s["config"]["sha256"] != running.as_str() && s["last_error"].is_null()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));

    // Grant expiry with the repository unreachable: client 1 gets a grant for
    // 25 s, then the repository goes away; the grant is removed at expiry.
    let g3 = fleet.grant_issue(&node, &k1, &client_addresses(&bed, 1), "25s").unwrap();
    assert!(!g3.is_empty());
    wait_applied(&p, &bed, 2, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "client 1 back", || reaches_web(&bed, 1).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    let away = dir.join("repo-away");
    std::fs::rename(&fleet.repo, &away).unwrap();
    wait_until(Duration::from_secs(20), "repository unreachable noticed", || {
        (fleet_status(&p, &bed)["last_error"]["kind"] == "unreachable").then_some(())
    })
    .unwrap();
    wait_until(Duration::from_secs(40), "expired grant removed offline", || {
        (fleet_status(&p, &bed)["grants"]["active"] == 1 && !reaches_web(&bed, 1)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert!(reaches_web(&bed, 2));

    // Restart with the repository still unreachable: the last verified
    // config and grants are served.
    p.spawn(&mut bed).expect("restart");
    wait_applied(&p, &bed, 1, Duration::from_secs(20));
    wait_until(Duration::from_secs(30), "client 2 served after the restart", || reaches_web(&bed, 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert!(!reaches_web(&bed, 1), "client 1's expired grant came back after the restart");

    // Node revocation: stops serving (no tunnel, key wiped, drop-all table,
    // DNS off) and stays so across a restart.
    std::fs::rename(&away, &fleet.repo).unwrap();
    let published = Instant::now();
    fleet.revoke(&["--node", &node]).unwrap();
    let stopped = wait_until(Duration::from_secs(30), "node revoked: tunnel and key gone", || {
        let gone = bed.node_dump().is_err() && !p.state_dir.join("wg.key").exists();
        (json(&p, &bed, &["identity", "--json"])["revoked"] == true && gone).then(|| published.elapsed())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    println!("node revocation took effect after {:.1} s (poll {POLL} s)", stopped.as_secs_f64());
    assert_revoked(&p, &bed);
    let new_id = node_id(&p, &bed);
    assert_ne!(new_id, node, "the revoked identity key was not wiped");
    p.spawn_socket_only(&mut bed).expect("restart while revoked");
    std::thread::sleep(Duration::from_secs(6));
    assert_revoked(&p, &bed);

    // Enrolled again (as the new node id): the lockdown is lifted and the
    // new node's config and grants serve client 2.
    let new_id = node_id(&p, &bed);
    fleet.enrol_bundle(&new_id, &url(&fleet.repo), "n1b", "test", &p.state_dir.join("enrol.json")).unwrap();
    fleet.config_set(&new_id, &base, &dir).unwrap();
    fleet.grant_issue(&new_id, &k2, &client_addresses(&bed, 2), "1h").unwrap();
    wait_applied(&p, &bed, 1, Duration::from_secs(40));
    let key = bed.node_dump().expect("tunnel back after re-enrolment").public_key;
    bed.clients[1].connect(&key).unwrap();
    wait_until(Duration::from_secs(30), "client 2 served by the re-enrolled node", || reaches_web(&bed, 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    let id = json(&p, &bed, &["identity", "--json"]);
    assert_eq!((id["enrolled"].clone(), id["revoked"].clone()), (Value::Bool(true), Value::Bool(false)), "{id}");
}

fn refused_against(p: &Palisade, bed: &TestBed, running: &str, what: &str, kind: &str) {
    let s = wait_until(Duration::from_secs(20), &format!("{what}: refused as {kind}"), || {
        let s = fleet_status(p, bed);
        (s["last_error"]["kind"] == kind).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert_eq!(s["config"]["sha256"], running, "{what}: the running config changed: {s}");
    assert!(reaches_web(bed, 2), "{what}: client 2 lost service");
    println!("{what}: refused ({kind}): {}", s["last_error"]["message"]);
}

/// A revoked node: no WireGuard interface, no key file, the lockdown table
/// (every base chain drops), no DNS answer, no client reaching anything.
fn assert_revoked(p: &Palisade, bed: &TestBed) {
    let id = json(p, bed, &["identity", "--json"]);
    assert_eq!(id["revoked"], true, "{id}");
    assert_eq!(id["enrolled"], false, "{id}");
    assert!(bed.node_dump().is_err(), "the WireGuard interface still exists on a revoked node");
    let key = p.state_dir.join("wg.key");
    assert!(
        !key.exists(),
        "the WireGuard key survived revocation (modified {:?}, now {:?})\n{}",
        key.metadata().and_then(|m| m.modified()).ok(),
        std::time::SystemTime::now(),
        bed.dump_logs()
    );
    let t = bed.node.output(&["nft", "-j", "list", "table", "inet", "palisade"]).unwrap();
    let text = String::from_utf8_lossy(&t.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("nft -j: {e}: {text}"));
    let chains: Vec<&Value> = v["nftables"].as_array().unwrap().iter().filter_map(|o| o.get("chain")).filter(|c| c.get("hook").is_some()).collect();
    assert!(!chains.is_empty(), "no base chains in the lockdown table: {text}");
    for c in &chains {
        assert_eq!(c["policy"], "drop", "base chain {} does not drop: {text}", c["name"]);
    }
    for i in 1..=bed.clients.len() {
        assert!(!reaches_web(bed, i), "client {i} reaches the web host through a revoked node");
    }
    // DNS on the node's uplink address: no answer.
    let q = bed.clients[0].ns.enter(|| dns_udp(sa(addr::NODE_UP_V4, 53), "example.test", 1, Duration::from_millis(800)));
    assert!(!matches!(q, Ok(Ok(_))), "a revoked node answered DNS: {q:?}");
}

/// DNS lists from the repository (lists role): fetched, verified and
/// swapped into the running resolver without a restart; a list that is not
/// a list, or whose bytes do not match their signature, leaves the running
/// policy as it was.
#[test]
#[ignore = "root: run by tests/run.sh"]
fn dns_lists_from_the_repository_swap_without_a_restart() {
    let (mut bed, mut p, dir, _) = unenrolled_node(1);
    let node = node_id(&p, &bed);
    let fleet = Fleet::init(&dir).expect("repo init");
    fleet.issuer_init().unwrap();
    fleet.enrol_bundle(&node, &url(&fleet.repo), "n1", "test", &p.state_dir.join("enrol.json")).unwrap();
    let list = dir.join("ads.txt");
    std::fs::write(&list, "||one.canary.example.test^\n").unwrap();
    fleet.list_set("ads", &list).unwrap();
    let config = render_node_toml(
        &bed,
        &NodeOptions {
            peers: Some(vec![]),
            extra_toml: format!(
                "\n[dns.list.ads]\npath = \"{}\"\n\n[dns.tier.default]\nlists = [\"ads\"]\n",
                p.run_dir.join("lists/ads.txt").display()
            ),
            ..Default::default()
        },
    );
    fleet.config_set(&node, &config, &dir).unwrap();
    let k1 = bed.clients[0].keys.public_key.clone();
    fleet.grant_issue(&node, &k1, &client_addresses(&bed, 1), "1h").unwrap();
    wait_applied(&p, &bed, 1, Duration::from_secs(30));
    let c = &bed.clients[0];
    let server = sa(addr::NODE_TUN_V4, 53);
    let rcode = |name: &str| c.ns.enter(|| dns_udp(server, name, 1, Duration::from_millis(800))).unwrap().map(|a| a.rcode).ok();
    let blocked = |name: &str| rcode(name) == Some(3);
    wait_until(Duration::from_secs(30), "one.canary.example.test blocked by the repository's list", || blocked("one.canary.example.test").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert_eq!(rcode("two.canary.example.test"), Some(0), "two.canary.example.test is not on the list yet");
    let resolver = || json(&p, &bed, &["status", "--json"])["dns"].clone();
    let dns_before = resolver();

    // A new version of the list: swapped in without a restart.
    std::fs::write(&list, "||one.canary.example.test^\n||two.canary.example.test^\n").unwrap();
    fleet.list_set("ads", &list).unwrap();
    wait_until(Duration::from_secs(30), "two.canary.example.test blocked after the list update", || blocked("two.canary.example.test").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert!(blocked("one.canary.example.test"));
    let dns_after = resolver();
    // Running since before the update: reloaded in place, not restarted.
    let up = |v: &Value| v["running_s"].as_u64().unwrap_or_else(|| panic!("resolver not running: {v}"));
    assert!(up(&dns_after) >= up(&dns_before), "the resolver restarted for a list update: {dns_before} -> {dns_after}");

    // Not a list (an HTML error page published by mistake): refused, the
    // running policy stays.
    std::fs::write(&list, "<html><body>502 Bad Gateway</body></html>\n").unwrap();
    fleet.list_set("ads", &list).unwrap();
    wait_until(Duration::from_secs(30), "the non-list refused", || (fleet_status(&p, &bed)["last_error"]["kind"] == "invalid").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert!(blocked("one.canary.example.test") && blocked("two.canary.example.test"), "the running list changed");

    // A list whose bytes were changed on the mirror: refused by hash.
    std::fs::write(&list, "||three.canary.example.test^\n").unwrap();
    let (f, signed) = fleet.publish_tampered("lists/ads.txt", |staged| staged.list_set("ads", &list)).unwrap();
    wait_until(Duration::from_secs(30), "the tampered list refused", || {
        (fleet_status(&p, &bed)["last_error"]["kind"] == "hash-mismatch").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    assert!(blocked("two.canary.example.test"), "the running list changed");
    assert!(!blocked("three.canary.example.test"));
    // The mirror repaired: three is blocked, two no longer.
    std::fs::write(&f, signed).unwrap();
    wait_until(Duration::from_secs(30), "the repaired list applied", || (blocked("three.canary.example.test") && !blocked("two.canary.example.test")).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.dump_logs()));
    p.spawn(&mut bed).unwrap();
}
