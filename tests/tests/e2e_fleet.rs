//! Fleet trust with the real image under QEMU: a node booted from the blank
//! image (its seed config, no config drive) is enrolled over its serial
//! console (QEMU's `-serial pty`, opened by `palisade-fleet enrol --serial`
//! like a USB serial adapter), gets its config and two client grants from
//! the repository (served on the bed's internet, 203.0.113.80:8000), serves
//! two wireguard-go clients, cuts one off when its grant is revoked while the
//! other keeps its session, serves its last verified config after a reboot
//! with the repository unreachable, and once revoked stops serving and stays
//! stopped across a reboot. The console never shows a client's key or
//! address.
//!
//! Needs `PALISADE_IMAGE` (tests/run.sh builds it).

use palisade_tests::guest::{append_cmdline, copy_image, guest_node_toml, image_path, state_files_off_allowlist, GuestOptions, Hw, Vm, VmDevices};
use palisade_tests::update::{fleet_bin, Fleet};
use palisade_tests::{addr, probe, sa, wait_until, Bins, Outcome, Proc, TestBed};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REPO_PORT: u16 = 8000;
/// The node's poll interval in this test (`palisade.fleet_poll=`; production: 60 s).
const POLL_SECS: u64 = 3;

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

fn serve(bed: &TestBed, repo: &Path) -> Proc {
    palisade_tests::update::serve_repository(bed, Path::new(env!("CARGO_BIN_EXE_pal-testhost")), repo, REPO_PORT).expect("serve the repository")
}

fn echo(bed: &TestBed, i: usize) -> bool {
    let c = &bed.clients[i - 1];
    c.ns.enter(|| probe::udp_exchange(None, sa(addr::WEB_V4, addr::ECHO_UDP), b"fleet", Duration::from_millis(400)))
        .map(|o| matches!(o, Outcome::Answered(_)))
        .unwrap_or(false)
}

fn handshake_of(bed: &TestBed, i: usize) -> u64 {
    bed.clients[i - 1].dump().unwrap().peers.first().map(|p| p.latest_handshake).unwrap_or(0)
}

/// The node config as the fleet publishes it: the bed's guest config
/// without `[[peer]]` tables (peers come from grants).
fn fleet_config(bed: &TestBed) -> String {
    let full = guest_node_toml(bed, &GuestOptions::default());
    let mut out = String::new();
    let mut in_peer = false;
    for line in full.lines() {
        if line.starts_with('[') {
            in_peer = line == "[[peer]]";
        }
        if !in_peer {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn addresses(bed: &TestBed, i: usize) -> Vec<String> {
    let c = &bed.clients[i - 1];
    vec![format!("{}/32", c.tun_v4), format!("{}/128", c.tun_v6)]
}

/// `palisade-fleet enrol --serial PTY` (its output).
fn enrol(fleet: &Fleet, pty: &Path, repo_url: &str, name: &str, timeout: u64) -> std::process::Output {
    Command::new(fleet_bin().unwrap())
        .args(["enrol", "--serial"])
        .arg(pty)
        .args(["--repository", repo_url, "--node-name", name, "--region", "test", "--timeout", &timeout.to_string(), "--json"])
        .arg("--repo")
        .arg(&fleet.repo)
        .arg("--keys")
        .arg(&fleet.keys)
        .output()
        .unwrap()
}

/// The node's WireGuard public key, as the supervisor announces it.
fn node_wg_key(vm: &Vm) -> String {
    let text = vm.console_text();
    text.lines().rev().find_map(|l| l.split("wireguard public key ").nth(1)).map(|k| k.trim().to_string()).expect("node key on the console")
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn enrolled_over_serial_configured_from_the_repository_and_revoked() {
    let image = image_path().expect("image to test");
    let bed = TestBed::new_for_guest(2, bins()).expect("test bed");
    let work = bed.dir.path().join("fleet");
    std::fs::create_dir_all(&work).unwrap();
    let fleet = Fleet::init(&work).expect("repo init");
    fleet.issuer_init().unwrap();
    let mut server = serve(&bed, &fleet.repo);

    // The blank image: no config drive, only the fast poll for the test.
    let disk = copy_image(&image, bed.log_dir()).unwrap();
    append_cmdline(&disk, &format!("palisade.fleet_poll={POLL_SECS}")).unwrap();
    let devices = VmDevices { serial_pty: true, ..Default::default() };
    let mut vm = Vm::start_with(&bed, &disk, None, false, devices, Hw::Virtio).expect("boot");
    vm.wait_console("fleet: enrolment protocol on /dev/ttyS0", Duration::from_secs(180)).unwrap();
    let pty = vm.serial_pty().unwrap();

    // Enrol over the serial console.
    let repo_url = format!("http://{}:{REPO_PORT}", addr::WEB_V4);
    let t0 = Instant::now();
    let out = enrol(&fleet, &pty, &repo_url, "edge-e2e", 60);
    assert!(
        out.status.success(),
        "enrol: {}\n{}{}\nconsole:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        vm.console_text()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = v["node_id"].as_str().unwrap_or_else(|| panic!("no node_id in {v}")).to_string();
    println!("enrolled node {node} over {} in {:.1} s", pty.display(), t0.elapsed().as_secs_f64());
    vm.wait_console(&format!("fleet: enrolled as edge-e2e (region test), node {node}"), Duration::from_secs(10)).unwrap();
    // A second enrolment is refused: the node is enrolled.
    let again = enrol(&fleet, &pty, &repo_url, "other", 30);
    assert_eq!(again.status.code(), Some(3), "re-enrolment of an enrolled node: {}", String::from_utf8_lossy(&again.stdout));

    // Its config and two grants.
    fleet.config_set(&node, &fleet_config(&bed), &work).unwrap();
    let k: Vec<String> = bed.clients.iter().map(|c| c.keys.public_key.clone()).collect();
    let g1 = fleet.grant_issue(&node, &k[0], &addresses(&bed, 1), "1h").unwrap();
    fleet.grant_issue(&node, &k[1], &addresses(&bed, 2), "1h").unwrap();
    vm.wait_console(", 2 grant(s) active", Duration::from_secs(60)).unwrap();
    let node_key = node_wg_key(&vm);
    for c in &bed.clients {
        c.connect(&node_key).unwrap();
    }
    wait_until(Duration::from_secs(60), "both clients served", || (echo(&bed, 1) && echo(&bed, 2)).then_some(()))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", vm.console_text()));

    // Revoke client 1's grant.
    let hs2 = handshake_of(&bed, 2);
    let published = Instant::now();
    fleet.revoke(&["--grant", &g1]).unwrap();
    let cut = wait_until(Duration::from_secs(60), "client 1 cut off", || (!echo(&bed, 1)).then(|| published.elapsed()))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", vm.console_text()));
    println!("grant revocation: client 1 cut off {:.1} s after publication (poll {POLL_SECS} s)", cut.as_secs_f64());
    assert!(echo(&bed, 2), "client 2 lost service when client 1 was revoked");
    assert_eq!(handshake_of(&bed, 2), hs2, "client 2 had to handshake again");

    // Reboot with the repository unreachable: the last verified config.
    server.stop(Duration::from_secs(5)).unwrap();
    let boots = vm.console_text().matches("fleet: serving the last verified fleet state").count();
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_console_count("fleet: serving the last verified fleet state", boots + 1, Duration::from_secs(240)).unwrap();
    wait_until(Duration::from_secs(90), "client 2 served after the reboot", || echo(&bed, 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", vm.console_text()));
    assert!(!echo(&bed, 1), "client 1's revoked grant is back after the reboot");

    // Revoke the node: it stops serving within the poll, and stays stopped
    // across a reboot.
    let _server = serve(&bed, &fleet.repo);
    let published = Instant::now();
    fleet.revoke(&["--node", &node]).unwrap();
    vm.wait_console("fleet: node ", Duration::from_secs(1)).ok();
    let stopped = wait_until(Duration::from_secs(90), "the revoked node stops serving", || {
        (vm.console_text().contains("revoked by the fleet") && !echo(&bed, 2)).then(|| published.elapsed())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", vm.console_text()));
    println!("node revocation: stopped serving {:.1} s after publication (poll {POLL_SECS} s)", stopped.as_secs_f64());
    let n = vm.console_text().matches("palisade-init: Palisade").count();
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_console_count("palisade-init: Palisade", n + 1, Duration::from_secs(240)).unwrap();
    vm.wait_console("fleet: this node is revoked; it stays stopped until it is enrolled again", Duration::from_secs(120)).unwrap();
    std::thread::sleep(Duration::from_secs(2 * POLL_SECS));
    for i in 1..=2 {
        assert!(!echo(&bed, i), "client {i} served by a revoked node after its reboot");
    }

    // Zero-log: no client key or tunnel address on the console.
    let text = vm.console_text();
    for c in &bed.clients {
        for needle in [c.keys.public_key.clone(), c.tun_v4.to_string(), c.up_v4.to_string()] {
            assert!(!text.contains(&needle), "console shows client data {needle}");
        }
    }
    vm.kill();

    // The state partition holds only allowlisted files: the revoked node's
    // keys and fleet root are gone, its store says revoked.
    let (off_list, files) = state_files_off_allowlist(&disk).unwrap();
    println!("state partition after revocation: {files:?}");
    assert!(off_list.is_empty(), "on the state partition but not on the allowlist: {off_list:?} (all: {files:?})");
    for gone in ["wg0.key", "fleet-root.json", "store/enrolment.json", "store/fleet-state.json"] {
        assert!(!files.iter().any(|f| f == gone), "{gone} survived the revocation: {files:?}");
    }
    assert!(files.iter().any(|f| f == "store/revoked.json"), "{files:?}");
}
