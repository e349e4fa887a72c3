//! Signed A/B updates of the real image under QEMU: a repository published
//! with `palisade-fleet` and served by a test host on the bed's internet
//! (203.0.113.80:8000), nodes polling it every 5 s.
//!
//! - A -> B -> A': two updates in a row, each from the rollout, each a real
//!   write of the inactive slot partition, a boot-counted entry, a reboot and
//!   a bless; the client's traffic resumes, the node key and config survive.
//! - A version whose health gate fails (an image whose NAT module cannot load)
//!   is tried, falls back to the good slot within its tries, is recorded as
//!   failed and is not installed again.
//! - Power cuts (QEMU killed) during the download, during the slot write,
//!   between the write and the entry switch, during the first boot of the new
//!   slot and before its bless: every time the node comes back serving from a
//!   good slot with a consistent journal.
//!
//! Needs `PALISADE_IMAGE` (tests/run.sh builds it) and the node binaries the
//! image build made (target/x86_64-unknown-linux-gnu/node), from which the
//! update payloads are built with other versions.

use palisade_tests::guest::{debugfs_read, guest_node_toml, state_files_off_allowlist, image_path, partition, workspace, Esp, Guest, GuestOptions, Vm};
use palisade_tests::update::Fleet;
use palisade_tests::{addr, probe, sa, wait_until, Bins, Proc, TestBed};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOARD: &str = "qemu-x86_64";
const REPO_PORT: u16 = 8000;

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

/// Builds an update payload (the slot image) of `version` from the node
/// binaries the suite's image build made.
fn build_payload(out: &Path, version: &str, cmdline: Option<&str>) -> PathBuf {
    let ws = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"));
    let bin_dir = target.join("x86_64-unknown-linux-gnu/node");
    let cache = std::env::var_os("PALISADE_DEB_CACHE").map(PathBuf::from).unwrap_or_else(|| ws.join("out/debs"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["run", "-q", "--locked", "-p", "palisade-image", "--", "build", "--board", BOARD, "--no-qcow2", "--version", version])
        .arg("--out")
        .arg(out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--cache")
        .arg(&cache)
        .current_dir(&ws);
    if let Some(x) = cmdline {
        c.args(["--cmdline", x]);
    }
    let st = c.status().expect("run palisade-image");
    assert!(st.success(), "building the {version} payload failed");
    let img = out.join(format!("palisade-{BOARD}-{version}.img"));
    assert!(img.is_file(), "{} missing", img.display());
    img
}

/// The repository served over HTTP by a test host on the bed's internet.
fn serve(bed: &TestBed, repo: &Path) -> Proc {
    palisade_tests::update::serve_repository(bed, Path::new(env!("CARGO_BIN_EXE_pal-testhost")), repo, REPO_PORT).expect("serve the repository")
}

fn update_toml() -> String {
    format!("[update]\nrepository = \"http://{}:{REPO_PORT}\"\npoll_secs = 5\n", addr::WEB_V4)
}

/// One UDP echo through the tunnel from client 1 to the web host.
fn echo_through_tunnel(bed: &TestBed) -> bool {
    let c = &bed.clients[0];
    c.ns
        .enter(|| probe::udp_exchange(None, sa(addr::WEB_V4, addr::ECHO_UDP), b"upd", Duration::from_millis(300)))
        .map(|o| matches!(o, palisade_tests::Outcome::Answered(_)))
        .unwrap_or(false)
}

/// Waits until client 1's traffic flows through the node again.
fn wait_serving(bed: &TestBed, vm: &Vm, what: &str) {
    wait_until(Duration::from_secs(120), what, || echo_through_tunnel(bed).then_some(()))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", vm.console_text()));
}

/// Follows one update's switch to `slot` from the client's side: UDP echoes
/// through the tunnel every 100 ms from before the reboot until the new slot
/// is blessed and answering; returns the longest gap between two answered
/// echoes (the last one before the reboot, the first one after it).
fn switch_downtime(bed: &TestBed, vm: &Vm, slot: &str) -> Duration {
    let reboot_marker = format!("update: rebooting into slot {slot}");
    let done_marker = format!("update: slot {slot} blessed; the update is complete");
    let (reboots0, done0) = {
        let t = vm.console_text();
        (t.matches(&reboot_marker).count(), t.matches(&done_marker).count())
    };
    let mut last_ok: Option<Instant> = None;
    let mut gap = Duration::ZERO;
    let mut rebooting = false;
    // Where the time goes: the reboot announced -> the new boot's banner ->
    // its health gate passed -> the first echo answered after the gap.
    let banners0 = vm.console_text().matches("palisade-init: Palisade").count();
    let readies0 = vm.console_text().matches("palisade-init: ready").count();
    let t_start = Instant::now();
    let (mut t_reboot, mut t_banner, mut t_ready) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(420);
    loop {
        assert!(Instant::now() < deadline, "the switch to slot {slot} did not complete\nconsole:\n{}", vm.console_text());
        let ok = echo_through_tunnel(bed);
        let now = Instant::now();
        let text = vm.console_text();
        rebooting = rebooting || text.matches(&reboot_marker).count() > reboots0;
        if rebooting && t_reboot.is_none() {
            t_reboot = Some(now);
        }
        if t_banner.is_none() && text.matches("palisade-init: Palisade").count() > banners0 {
            t_banner = Some(now);
        }
        if t_ready.is_none() && text.matches("palisade-init: ready").count() > readies0 {
            t_ready = Some(now);
        }
        if ok {
            // The longest silence between two answered echoes once the
            // reboot was announced: the outage as the client sees it.
            if let (true, Some(l)) = (rebooting, last_ok) {
                gap = gap.max(now.duration_since(l));
            }
            last_ok = Some(now);
        }
        if rebooting && ok && text.matches(&done_marker).count() > done0 {
            let at = |t: Option<Instant>| t.map(|t| format!("{:.1} s", t.duration_since(t_reboot.unwrap_or(t_start)).as_secs_f64())).unwrap_or("-".into());
            println!(
                "switch to slot {slot}: after the reboot was announced: new banner {}, health gate passed {}; longest client silence {:.1} s",
                at(t_banner),
                at(t_ready),
                gap.as_secs_f64()
            );
            return gap;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The distinct node public keys the supervisor announced on the console.
fn node_keys(console: &str) -> Vec<String> {
    let mut v: Vec<String> = console
        .lines()
        .filter_map(|l| l.split("wireguard public key ").nth(1))
        .map(|k| k.trim().to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A bed with one client, a repository publishing 0.2.0 to everyone, served
/// on the bed's internet, and guest options that poll it every 5 s.
fn update_bed() -> (TestBed, Fleet, Proc, GuestOptions) {
    let bed = TestBed::new_for_guest(1, bins()).expect("test bed");
    let work = bed.dir.path().join("upd");
    std::fs::create_dir_all(&work).unwrap();
    let fleet = Fleet::init(&work.join("fleet")).expect("repo init");
    let t0 = Instant::now();
    let b = build_payload(&work.join("out-b"), "0.2.0", None);
    println!("payload 0.2.0 built in {:.1} s", t0.elapsed().as_secs_f64());
    fleet.add_image(&b, BOARD, "0.2.0").unwrap();
    fleet.rollout_now("0.2.0").unwrap();
    let server = serve(&bed, &fleet.repo);
    let opts = GuestOptions {
        extra_toml: update_toml(),
        fleet_root: Some(fleet.root()),
        allow_reboot: true,
        ..Default::default()
    };
    (bed, fleet, server, opts)
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn updates_a_to_b_to_a_prime_and_a_failing_version_rolls_back_for_good() {
    let image = image_path().expect("image to test");
    let (bed, fleet, _server, opts) = update_bed();
    let work = bed.dir.path().join("upd");
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot");
    bed.wait_handshake(1, Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", guest.console_text()));
    guest.wait_console("update: installing 0.2.0", Duration::from_secs(120)).unwrap();

    let gap_ab = switch_downtime(&bed, &guest, "b");
    println!("A -> B: client downtime (last echo before the reboot -> first after): {:.1} s", gap_ab.as_secs_f64());
    let text = guest.console_text();
    assert!(text.contains("Palisade 0.2.0 | node"), "banner of 0.2.0 on slot b:\n{text}");
    assert!(text.contains("| slot b |"), "{text}");
    assert!(text.contains("boot entry blessed: palisade-b+"), "{text}");
    assert_eq!(node_keys(&text).len(), 1, "the node key survived the update: {:?}", node_keys(&text));
    assert!(text.contains("config from config drive") || text.contains("config from state"), "{text}");
    wait_serving(&bed, &guest, "client traffic through 0.2.0");

    // B -> A': a newer build written into slot A.
    let a2 = build_payload(&work.join("out-a2"), "0.3.0", None);
    fleet.add_image(&a2, BOARD, "0.3.0").unwrap();
    fleet.rollout_now("0.3.0").unwrap();
    guest.wait_console("update: installing 0.3.0", Duration::from_secs(120)).unwrap();
    let gap_ba = switch_downtime(&bed, &guest, "a");
    println!("B -> A': client downtime: {:.1} s", gap_ba.as_secs_f64());
    let text = guest.console_text();
    assert!(text.contains("Palisade 0.3.0 | node"), "{text}");
    assert_eq!(text.matches("| slot a |").count(), 2, "{text}");
    assert_eq!(node_keys(&text).len(), 1, "{:?}", node_keys(&text));
    wait_serving(&bed, &guest, "client traffic through 0.3.0");

    // A version that cannot pass its health gate: NAT cannot load, the node
    // fails closed, the entry runs out of tries, slot A boots again.
    let bad = build_payload(&work.join("out-bad"), "0.4.0", Some("module_blacklist=nft_masq palisade.health_timeout=10"));
    fleet.add_image(&bad, BOARD, "0.4.0").unwrap();
    fleet.rollout_now("0.4.0").unwrap();
    guest.wait_console("update: installing 0.4.0", Duration::from_secs(120)).unwrap();
    let back = guest
        .wait_console("failed [0.4.0]", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("0.4.0 tried and rolled back to slot a, {:.0} s after QEMU start", back.as_secs_f64());
    let text = guest.console_text();
    assert!(text.contains("not healthy"), "{text}");
    assert!(text.matches("| slot b |").count() >= 2, "0.4.0 booted in slot b: {text}");
    wait_serving(&bed, &guest, "client traffic after the rollback");
    // Several polls later it has not been installed again.
    std::thread::sleep(Duration::from_secs(20));
    let text = guest.console_text();
    assert_eq!(text.matches("update: installing 0.4.0").count(), 1, "0.4.0 retried:\n{text}");
    assert!(text.contains("failed-before"), "the refusal is recorded:\n{text}");
    let disk = guest.disk.clone();
    guest.kill();

    // Three updates later the state partition holds what it held (config,
    // node key) plus the update's allowlisted files, and nothing else.
    let (off, _) = partition(&disk, "state").unwrap();
    let toml = String::from_utf8(debugfs_read(&disk, off, "/node.toml").unwrap()).unwrap();
    assert_eq!(toml, guest_node_toml(&bed, &opts), "node.toml survived");
    let key = debugfs_read(&disk, off, "/wg0.key").unwrap();
    assert_eq!(String::from_utf8_lossy(&key).trim(), std::fs::read_to_string(&guest.node_key.private_key_file).unwrap().trim(), "node key survived");
    let (off_list, files) = state_files_off_allowlist(&disk).unwrap();
    println!("state partition: {files:?}");
    assert!(off_list.is_empty(), "on the state partition but not on the allowlist: {off_list:?} (all: {files:?})");
    assert!(files.iter().any(|f| f.starts_with("store/")) && files.iter().any(|f| f.starts_with("tuf/")), "{files:?}");
}

/// What the next boot must find in the journal after `killed` (a console)
/// was cut: the last step that boot recorded, as `update: journal after
/// boot` prints it before the arrow.
fn last_recorded_phase(killed: &str) -> String {
    if killed.contains("update: slot b blessed; the update is complete") {
        return ": idle -> ".into();
    }
    let after_boot = killed.lines().rev().find(|l| l.contains("update: journal after boot from slot b"));
    match after_boot.and_then(|l| l.split(" -> ").nth(1)).and_then(|a| a.split(", installed").next()) {
        Some(phase) => format!(": {phase} -> "),
        // Cut before slot B's supervisor started: the entry switch is the last step.
        None => ": 0.2.0 in slot b, reboot at ".into(),
    }
}

/// Boots the disk again after a power cut (the old console kept aside, so
/// every marker waited for is from the new boot).
fn restart(guest: &mut Guest, bed: &TestBed, disk: &Path, cfg: &Path, n: usize) {
    let old = guest.console.with_extension(format!("{n}.log"));
    std::fs::rename(&guest.console, &old).expect("keep the old console");
    guest.vm = Vm::start(bed, disk, Some(cfg), false).expect("restart after the cut");
}

/// Replaces `palisade.update_test_pause=...` on slot A's entry (the disk is
/// not running).
fn set_pause(disk: &Path, point: Option<&str>, scratch: &Path) {
    let esp = Esp::of(disk).unwrap();
    let name = esp.entries().unwrap().into_iter().find(|e| e.starts_with("palisade-a")).expect("slot A entry");
    let path = format!("loader/entries/{name}");
    let text = esp.read(&path).unwrap();
    let mut out = String::new();
    for l in text.lines() {
        if let Some(opts) = l.strip_prefix("options ") {
            let mut o: Vec<&str> = opts.split_whitespace().filter(|w| !w.starts_with("palisade.update_test_pause=")).collect();
            let p = point.map(|p| format!("palisade.update_test_pause={p}"));
            if let Some(p) = &p {
                o.push(p);
            }
            out.push_str(&format!("options {}\n", o.join(" ")));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    esp.write(&path, &out, scratch).unwrap();
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn power_cuts_at_every_update_step_leave_a_serving_node_and_a_consistent_journal() {
    let image = image_path().expect("image to test");
    let (bed, _fleet, _server, opts) = update_bed();
    let opts = GuestOptions { extra_cmdline: Some("palisade.update_test_pause=download".into()), ..opts };
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot");
    let disk = guest.disk.clone();
    let cfg = bed.dir.path().join("config-drive.img");

    // Cuts inside the install, on the running slot A.
    let mut boots = 1;
    for (point, next) in [("download", Some("write")), ("write", Some("written")), ("written", None)] {
        guest
            .wait_console(&format!("update: test pause at {point}"), Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e:#}"));
        guest.kill();
        let esp = Esp::of(&disk).unwrap();
        let entries = esp.entries().unwrap();
        if point == "download" {
            // Nothing touched yet: the image is staged in RAM.
            assert!(entries.iter().any(|e| e.starts_with("palisade-b")), "power cut at {point}: {entries:?}");
        } else {
            assert!(
                !entries.iter().any(|e| e.starts_with("palisade-b")),
                "power cut at {point}: slot B must have no boot entry while its bytes change: {entries:?}"
            );
        }
        set_pause(&disk, next, bed.dir.path());
        restart(&mut guest, &bed, &disk, &cfg, boots);
        boots += 1;
        guest
            .wait_console("palisade-init: ready", Duration::from_secs(240))
            .unwrap_or_else(|e| panic!("after the cut at {point}: {e:#}"));
        let text = guest.console_text();
        assert!(text.contains("| slot a |"), "after the cut at {point} slot A serves:\n{text}");
        // The phase recorded before the cut was durable, and this boot ends it.
        let was = match point {
            "download" => "downloading 0.2.0",
            "write" => "writing 0.2.0 to slot b",
            _ => "0.2.0 written to slot b",
        };
        assert!(
            text.contains(&format!("journal after boot from slot a (blessed): {was} -> idle")),
            "after the cut at {point} the journal said `{was}` and is back to idle:\n{text}"
        );
        wait_serving(&bed, &guest, &format!("serving after the cut at {point}"));
        println!("power cut at {point}: back serving from slot A (boot {boots})");
    }

    // Cuts in the new slot's first boots: during its first boot, then on
    // its second before the bless (the tries are spent one by one; the last
    // one blesses: rauc #683, no stranding). Where exactly the cut lands
    // depends on timing, so the journal the next boot reads is checked
    // against the last step the killed boot recorded: a recorded step is
    // never lost.
    guest.wait_console("update: rebooting into slot b", Duration::from_secs(300)).unwrap();
    // (marker, how many of it in the current console): the firmware starting
    // the boot loader again after the reboot; the supervisor up on slot B.
    for (what, marker, n) in [
        ("during the first boot of slot B", "BdsDxe: starting", 2),
        ("on slot B before its bless", "update: journal after boot from slot b", 1),
    ] {
        guest.wait_console_count(marker, n, Duration::from_secs(240)).unwrap_or_else(|e| panic!("{e:#}"));
        guest.kill();
        let killed = guest.console_text();
        let expect = last_recorded_phase(&killed);
        println!("power cut {what}");
        restart(&mut guest, &bed, &disk, &cfg, boots);
        boots += 1;
        guest.wait_console("update: journal after boot from slot b", Duration::from_secs(240)).unwrap_or_else(|e| panic!("{e:#}"));
        let text = guest.console_text();
        let line = text.lines().find(|l| l.contains("update: journal after boot from slot b")).unwrap_or_default();
        assert!(line.contains(&expect), "after the cut {what}: expected `{expect}` in: {line}\nkilled boot:\n{killed}");
    }
    wait_until(Duration::from_secs(300), "slot b blessed", || {
        let t = guest.console_text();
        (t.contains("update: slot b blessed; the update is complete") || t.contains("(blessed): idle -> idle, installed 0.2.0")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", guest.console_text()));
    let text = guest.console_text();
    assert!(text.contains("Palisade 0.2.0 | node"), "{text}");
    wait_serving(&bed, &guest, "serving from slot B after the cuts");
    guest.kill();
    let entries = Esp::of(&disk).unwrap().entries().unwrap();
    assert!(entries.contains(&"palisade-b.conf".to_string()), "{entries:?}");
    println!("after {boots} boots: slot B blessed, serving");
}
