//! The board under QEMU (docs/board.md): one guest, booted with the status
//! LED on a virtio-serial port (a file here), the test-hook port, QMP (the
//! reset button is the PS/2 keyboard's power key) and
//! `palisade.test_hooks=1`, goes through, in order:
//!
//! 1. boot: the LED shows `booting`, then `healthy`; a client is served;
//! 2. health loss and recovery: the uplink's cable pulled (QEMU `set_link
//!    up0 off`) -> `degraded` with the reason on the console -> cable back ->
//!    `healthy`;
//! 3. a short press of the button -> a clean reboot (a new banner), served
//!    again; then a killed supervisor, restarted by PID 1, re-arms the
//!    watchdog in time (no reset);
//! 4. a hung palisaded (SIGSTOP through the test hook) -> the watchdog resets
//!    the machine -> served again; the time from the hang to serving is printed;
//! 5. the button held 10 s -> `factory-reset` on the LED, the state partition
//!    emptied, a reboot, the node seeded again from the config drive: a new
//!    fleet identity and a new WireGuard key (the seeded one is gone), and the
//!    client, given the new key, is served again.
//!
//! Needs `PALISADE_IMAGE` (tests/run.sh builds it).

use palisade_tests::guest::{image_path, Guest, GuestOptions, VmDevices};
use palisade_tests::{addr, probe, sa, wait_until, Bins, Outcome, TestBed};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(300);
/// The banner PID 1 prints once per boot.
const BANNER: &str = "| config from ";
/// What softdog prints when it fires.
const WATCHDOG_FIRED: &str = "softdog: Initiating system reboot";

fn bins() -> Bins {
    Bins {
        testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
    }
}

/// A UDP echo through the tunnel answered (the node forwards for client 1).
fn served(bed: &TestBed) -> bool {
    let c = &bed.clients[0];
    c.ns.enter(|| {
        probe::udp_exchange(
            None,
            sa(addr::WEB_V4, addr::ECHO_UDP),
            b"board",
            Duration::from_millis(500),
        )
    })
    .map(|o| matches!(o, Outcome::Answered(_)))
    .unwrap_or(false)
}

fn wait_served(bed: &TestBed, guest: &Guest, what: &str) -> Duration {
    let t0 = Instant::now();
    wait_until(BOOT, what, || served(bed).then_some(()))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", tail(&guest.console_text(), 60)));
    t0.elapsed()
}

fn banners(guest: &Guest) -> usize {
    guest.console_text().matches(BANNER).count()
}

/// The node's WireGuard public key as palisaded last logged it.
fn last_public_key(console: &str) -> Option<String> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split("wireguard public key ").nth(1))
        .map(|k| k.trim().to_string())
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn led_button_and_watchdog_in_the_guest() {
    let image = image_path().expect("image to test");
    let bed = TestBed::new_for_guest(1, bins()).expect("bed");
    let opts = GuestOptions {
        extra_cmdline: Some("palisade.test_hooks=1".into()),
        allow_reboot: true,
        devices: VmDevices::all(),
        ..Default::default()
    };
    let mut guest = Guest::boot(&bed, &image, &opts).expect("boot the image");

    // 1. Boot: booting, then healthy; the client is served.
    let booting = guest
        .wait_led_state("booting", 0, BOOT)
        .expect("LED booting");
    let healthy = guest
        .wait_led_state("healthy", booting + 1, BOOT)
        .expect("LED healthy after booting");
    let first = guest.started.elapsed();
    wait_served(&bed, &guest, "client served after the first boot");
    println!(
        "boot: LED booting -> healthy {:.1} s after QEMU start; states {:?}",
        first.as_secs_f64(),
        guest.led_states()
    );
    let console = guest.console_text();
    assert!(
        console.contains("board: watchdog /dev/watchdog armed, timeout 10 s"),
        "the watchdog must be armed:\n{}",
        tail(&console, 60)
    );
    let seeded_key = guest.node_key.public_key.clone();
    assert_eq!(
        last_public_key(&console).as_deref(),
        Some(seeded_key.as_str()),
        "the node runs with the seeded key"
    );

    // 2. Health loss and recovery: the uplink's cable pulled and put back.
    guest.monitor("set_link up0 off").expect("set_link off");
    let degraded = guest
        .wait_led_state("degraded", healthy + 1, Duration::from_secs(60))
        .expect("LED degraded without carrier");
    guest
        .wait_console(
            "board: status degraded: uplink eth0 has no carrier",
            Duration::from_secs(10),
        )
        .expect("the reason on the console");
    assert!(
        !served(&bed),
        "a node without uplink carrier must not serve"
    );
    guest.monitor("set_link up0 on").expect("set_link on");
    let healthy = guest
        .wait_led_state("healthy", degraded + 1, Duration::from_secs(60))
        .expect("LED healthy again");
    guest
        .wait_console("board: status healthy again", Duration::from_secs(10))
        .expect("recovery on the console");
    wait_served(&bed, &guest, "client served after the cable is back");

    // 3. A short press: a clean reboot.
    let n = banners(&guest);
    guest
        .qmp()
        .expect("QMP")
        .press_key("power", Duration::from_millis(300))
        .expect("press the power key");
    guest
        .wait_console("board: reset button: reboot", Duration::from_secs(30))
        .expect("the short press on the console");
    guest
        .wait_console_count(BANNER, n + 1, BOOT)
        .expect("a new boot after the short press");
    let console = guest.console_text();
    assert!(
        console.contains("board: watchdog released (magic close)"),
        "an orderly reboot magic-closes the watchdog:\n{}",
        tail(&console, 60)
    );
    let booting = guest
        .wait_led_state("booting", healthy + 1, BOOT)
        .expect("LED booting after the reboot");
    let healthy = guest
        .wait_led_state("healthy", booting + 1, BOOT)
        .expect("LED healthy after the reboot");
    wait_served(&bed, &guest, "client served after the short-press reboot");

    // 3b. A crashed supervisor (SIGKILL): PID 1 restarts it within the
    // watchdog's timeout and the new one re-arms the device (it stayed armed:
    // no magic close), so the board is not reset.
    let n = banners(&guest);
    let armed = "board: watchdog /dev/watchdog armed";
    let arms = guest.console_text().matches(armed).count();
    guest
        .send_test_line("kill-supervisor")
        .expect("write the test port");
    guest
        .wait_console(
            "palisade-init: test hook: supervisor killed",
            Duration::from_secs(30),
        )
        .expect("the hook killed the supervisor");
    let killed = Instant::now();
    guest
        .wait_console_count(armed, arms + 1, Duration::from_secs(60))
        .expect("the restarted supervisor re-arms the watchdog");
    println!(
        "supervisor killed -> watchdog re-armed by the restarted one in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let booting = guest
        .wait_led_state("booting", healthy + 1, BOOT)
        .expect("LED booting after the supervisor restart");
    let healthy = guest
        .wait_led_state("healthy", booting + 1, BOOT)
        .expect("LED healthy after the supervisor restart");
    // Absence of a reset needs a window: twice the timeout since the kill.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(killed.elapsed()));
    let console = guest.console_text();
    assert_eq!(
        banners(&guest),
        n,
        "the board was reset after a supervisor restart:\n{}",
        tail(&console, 60)
    );
    assert!(
        !console.contains(WATCHDOG_FIRED),
        "the watchdog fired after a supervisor restart:\n{}",
        tail(&console, 60)
    );
    wait_served(&bed, &guest, "client served after the supervisor restart");

    // 4. A hung palisaded: the watchdog resets the machine.
    let n = banners(&guest);
    let hang = Instant::now();
    guest
        .send_test_line("stop-supervisor")
        .expect("write the test port");
    guest
        .wait_console(
            "palisade-init: test hook: supervisor stopped",
            Duration::from_secs(30),
        )
        .expect("the hook stopped the supervisor");
    // The watchdog's own line (softdog prints it when it fires), timed on the way.
    let mut to_fire = None;
    wait_until(BOOT, "a new boot after the watchdog reset", || {
        let c = guest.console_text();
        if to_fire.is_none() && c.contains(WATCHDOG_FIRED) {
            to_fire = Some(hang.elapsed());
        }
        (c.matches(BANNER).count() > n).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", tail(&guest.console_text(), 60)));
    let to_banner = hang.elapsed();
    let booting = guest
        .wait_led_state("booting", healthy + 1, BOOT)
        .expect("LED booting after the watchdog reset");
    let healthy = guest
        .wait_led_state("healthy", booting + 1, BOOT)
        .expect("LED healthy after the watchdog reset");
    wait_served(&bed, &guest, "client served after the watchdog reset");
    let to_serving = hang.elapsed();
    println!(
        "watchdog: hang (test-port write) -> watchdog fired {} -> new boot banner {:.1} s -> node serving again {:.1} s (timeout 10 s, TCG)",
        to_fire.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "(not seen)".into()),
        to_banner.as_secs_f64(),
        to_serving.as_secs_f64()
    );

    // 5. Held 10 s: factory reset.
    let n = banners(&guest);
    let identities = guest
        .console_text()
        .matches("fleet: identity created")
        .count();
    let mut qmp = guest.qmp().expect("QMP");
    qmp.key("power", true).expect("press");
    let held = Instant::now();
    let fr = guest
        .wait_led_state("factory-reset", healthy + 1, Duration::from_secs(30))
        .expect("LED factory-reset while held");
    assert!(
        held.elapsed() >= Duration::from_secs(9),
        "factory-reset shown after {:?}, before 10 s",
        held.elapsed()
    );
    qmp.key("power", false).expect("release");
    guest
        .wait_console(
            "board: reset button held 10 s: factory reset",
            Duration::from_secs(30),
        )
        .expect("the long press on the console");
    guest
        .wait_console_count(BANNER, n + 1, BOOT)
        .expect("a new boot after the factory reset");
    guest
        .wait_led_state("healthy", fr + 1, BOOT)
        .expect("LED healthy after the factory reset");
    guest
        .wait_console_count("fleet: identity created", identities + 1, BOOT)
        .expect("a new identity after the factory reset");
    let console = guest.console_text();
    let new_key = wait_until(
        Duration::from_secs(60),
        "the new WireGuard key on the console",
        || last_public_key(&guest.console_text()).filter(|k| *k != seeded_key),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: the seeded key must be gone after a factory reset\n{}",
            tail(&console, 60)
        )
    });
    bed.clients[0]
        .connect(&new_key)
        .expect("client given the new key");
    wait_served(
        &bed,
        &guest,
        "client served with the new key after the factory reset",
    );
    println!(
        "factory reset: new WireGuard key {new_key}; LED states {:?}",
        guest.led_states()
    );

    let console = guest.console_text();
    assert!(
        console.contains("config from config drive"),
        "the node seeded again from the config drive:\n{}",
        tail(&console, 60)
    );

    // ctrl-alt-del: PID 1 stops the supervisor with SIGTERM, which takes its
    // orderly path (the watchdog magic-closed) well before PID 1's 10 s
    // SIGKILL, then reboots.
    let reboots = console.matches("palisade-init: rebooting").count();
    guest.monitor("sendkey ctrl-alt-delete").unwrap();
    guest
        .wait_console_count("palisade-init: rebooting", reboots + 1, Duration::from_secs(60))
        .unwrap();
    let console = guest.console_text();
    let shutdown = &console[console.rfind("palisade-init: shutting down").expect("shutting down")..];
    for want in ["stopping; firewall table left in place", "board: watchdog released (magic close)"] {
        assert!(shutdown.contains(want), "ctrl-alt-del: {want:?} missing:\n{shutdown}");
    }
    assert!(!shutdown.contains("watchdog did not stop"), "ctrl-alt-del left the watchdog armed:\n{shutdown}");
    // QEMU runs across reboots here (no -no-reboot): stop it.
    guest.kill();
}
