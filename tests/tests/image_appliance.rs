//! The x86-appliance board (board/boards/x86-appliance.toml): Debian's generic
//! kernel on appliance hardware.
//!
//! 1. The build-time module check: a copy of the board file naming a module the
//!    kernel package does not have is refused in the `modcheck` stage, before
//!    anything is built, with an error naming the board, the module (and its
//!    list) and the kernel package.
//! 2. The image is built (`--board x86-appliance`; the generic kernel is
//!    downloaded into the shared .deb cache on a clean machine) and booted with
//!    `qemu/boot.sh --hw appliance`: the disk and the config drive on AHCI, the
//!    uplink on an e1000e NIC, an i6300esb watchdog, no virtio device. It must
//!    serve: the banner (config from the SATA config drive, `sda` or `sdb`), every board
//!    module loaded, `/dev/watchdog` backed by the i6300esb (PID 1's watchdog
//!    line), the health gate's `ready`, a wireguard-go client's handshake, DNS and
//!    HTTP through the tunnel (the web host sees the node's uplink address, so the
//!    e1000e NIC came up as `eth0`, the name the node config uses).
//! 3. A hung palisaded on watchdog hardware: the supervisor stopped (SIGSTOP
//!    through the test-hook port, `palisade.test_hooks=1`), the i6300esb resets
//!    the machine after its 30 s timeout, the next boot reports the watchdog
//!    reset (the driver's bootstatus) and the client is served again; then a
//!    clean shutdown on ctrl-alt-del.
//!
//! Builds into `out/x86-appliance/` with the cache `$PALISADE_DEB_CACHE` (default
//! `out/debs`, the one tests/run.sh fills) and, when tests/run.sh's image build
//! left them in `target/<triple>/node/`, the same node binaries (`--bin-dir`).
//! `PALISADE_APPLIANCE_IMAGE=<raw>` boots a prebuilt image instead (the
//! refusal still runs). Prints the build time, the image size and boot-to-ready.
//! Root only: run by tests/run.sh (tier 3, `--test 'image_*'`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_tests::guest::{target_dir, workspace, Guest, GuestOptions, Hw, VmDevices};
use palisade_tests::probe::{self, Outcome};
use palisade_tests::{addr, sa, wait_until, Bins, TestBed};

const BOARD: &str = "x86-appliance";
const RUST_TARGET: &str = "x86_64-unknown-linux-gnu";
const KERNEL_PKG: &str = "linux-image-6.1.0-56-amd64";



fn cache() -> Result<PathBuf> {
    let c = std::env::var_os("PALISADE_DEB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("out/debs"));
    fs::create_dir_all(&c)?;
    Ok(c)
}

/// The image builder, built (debug) if needed.
fn builder() -> Result<PathBuf> {
    let st = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args(["build", "-q", "--locked", "-p", "palisade-image"])
        .current_dir(workspace())
        .status()?;
    if !st.success() {
        bail!("cargo build -p palisade-image failed");
    }
    Ok(target_dir().join("debug/palisade-image"))
}

/// `palisade-image build` with the shared cache and, if present, the prebuilt node binaries.
fn build_cmd(builder: &Path, out: &Path) -> Result<Command> {
    let mut c = Command::new(builder);
    c.args(["build", "--no-qcow2", "--workspace"])
        .arg(workspace())
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache()?);
    let node = target_dir().join(RUST_TARGET).join("node");
    if ["palisaded", "palisade"]
        .iter()
        .all(|b| node.join(b).is_file())
    {
        c.arg("--bin-dir").arg(node);
    }
    Ok(c)
}

fn bed() -> Result<TestBed> {
    TestBed::new_for_guest(
        1,
        Bins {
            testhost: env!("CARGO_BIN_EXE_pal-testhost").into(),
        },
    )
}

/// A board naming a module the kernel package lacks is refused by the module
/// check, before the node binaries are built, naming board, module and package.
fn bogus_module_is_refused(builder: &Path, scratch: &Path) -> Result<()> {
    let text = fs::read_to_string(workspace().join(format!("board/boards/{BOARD}.toml")))?;
    let bogus = text.replacen("\"evdev\",", "\"evdev\", \"palisade_no_such_module\",", 1);
    if bogus == text {
        bail!("the board file has no `\"evdev\",` to add a module after");
    }
    let file = scratch.join("bogus-board.toml");
    fs::write(&file, bogus)?;
    let t = Instant::now();
    let out = build_cmd(builder, &scratch.join("bogus-out"))?
        .arg("--board-file")
        .arg(&file)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "module check refused the bogus board in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if out.status.success() {
        bail!("a board with a module the kernel lacks was built:\n{err}");
    }
    let line = err
        .lines()
        .find(|l| l.contains("palisade_no_such_module"))
        .with_context(|| format!("no error naming the module:\n{err}"))?;
    eprintln!("  {}", line.trim());
    for want in [
        &format!("board {BOARD}"),
        "`palisade_no_such_module` (modules.root)",
        &format!("{KERNEL_PKG}=6.1.192-2"),
        "modules.builtin",
    ] {
        assert!(
            err.contains(want),
            "the refusal does not say {want:?}:\n{err}"
        );
    }
    assert!(
        err.contains("stage `modcheck`"),
        "refused by the module check stage:\n{err}"
    );
    assert!(
        !err.contains("binaries done"),
        "refused before the node binaries:\n{err}"
    );
    // Nothing partial: no disk image was written.
    assert!(!scratch
        .join(format!("bogus-out/palisade-{BOARD}.raw"))
        .exists());
    Ok(())
}

/// Builds the appliance image (or takes `$PALISADE_APPLIANCE_IMAGE`).
fn appliance_image(builder: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_APPLIANCE_IMAGE") {
        return Ok(PathBuf::from(p));
    }
    let out = workspace().join("out").join(BOARD);
    let t = Instant::now();
    let o = build_cmd(builder, &out)?
        .args(["--board", BOARD])
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        bail!("palisade-image build --board {BOARD} failed:\n{err}");
    }
    let raw = out.join(format!("palisade-{BOARD}.raw"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!(
        "built the {BOARD} image in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for l in stdout
        .lines()
        .chain(err.lines().filter(|l| l.contains("built into")))
    {
        eprintln!("  {l}");
    }
    let meta = fs::metadata(&raw).with_context(|| format!("{} after the build", raw.display()))?;
    eprintln!("  {} ({} MiB, sparse)", raw.display(), meta.len() >> 20);
    Ok(raw)
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn appliance_image_module_check_boots_on_ahci_e1000e_i6300esb_and_serves() -> Result<()> {
    let t0 = Instant::now();
    let builder = builder()?;
    let scratch = tempfile::tempdir()?;
    bogus_module_is_refused(&builder, scratch.path())?;
    let image = appliance_image(&builder)?;

    let bed = bed()?;
    let opts = GuestOptions {
        hw: Hw::Appliance,
        extra_cmdline: Some("palisade.test_hooks=1".into()),
        devices: VmDevices { test_port: true, ..Default::default() },
        // The watchdog reset reboots the guest: QEMU keeps running.
        allow_reboot: true,
        ..Default::default()
    };
    let mut guest = Guest::boot(&bed, &image, &opts)?;
    let console = |g: &Guest| g.console_text();

    let t_ready = guest.wait_console("palisade-init: ready", Duration::from_secs(240))?;
    let hs = bed.wait_handshake(1, Duration::from_secs(60));
    if let Err(e) = hs {
        bail!("{e:#}\nconsole:\n{}", console(&guest));
    }
    let t_hs = guest.started.elapsed();
    eprintln!(
        "QEMU start -> ready (TCG): {:.1} s; -> client handshake: {:.1} s",
        t_ready.as_secs_f64(),
        t_hs.as_secs_f64()
    );

    let text = console(&guest);
    let banner = text
        .lines()
        .find(|l| l.contains("palisade-init: Palisade "))
        .context("no banner")?;
    eprintln!("  {}", banner.trim());
    assert!(banner.contains("| slot a |"), "{banner}");
    // The config drive is the second SATA disk: the disks are on AHCI (sd*), not
    // virtio (vd*). Which of the two is sda varies (the ports are probed in
    // parallel): the boot disk is found by its GPT partition names, never by name.
    assert!(banner.contains("config from config drive sd"), "{banner}");
    assert!(banner.contains("state persistent"), "{banner}");
    // Every board module loaded on this hardware (a failure is one console line).
    if let Some(l) = text
        .lines()
        .find(|l| l.contains("palisade-init: module loading:"))
    {
        bail!("board modules failed to load: {l}");
    }
    let wd = text
        .lines()
        .find(|l| l.contains("palisade-init: watchdogs:"))
        .context("no watchdog line")?;
    eprintln!("  {}", wd.trim());
    assert!(
        wd.contains("watchdog0 \"i6300ESB timer\" (/dev/watchdog)"),
        "{wd}"
    );

    // Traffic through the node: DNS from the resolver, HTTP to the internet's web
    // host, which sees the node's uplink address (eth0 on the e1000e NIC).
    let c = &bed.clients[0];
    let t = Duration::from_secs(2);
    let a = wait_until(
        Duration::from_secs(30),
        "resolver answering in the tunnel",
        || {
            c.ns.enter(|| probe::dns_udp(sa(addr::NODE_TUN_V4, 53), "allowed.example.test", 1, t))
                .ok()?
                .ok()
        },
    )
    .with_context(|| console(&guest))?;
    assert_eq!(
        (a.rcode, a.addrs),
        (0, vec![std::net::IpAddr::from(addr::WEB_V4)])
    );
    // A new connection per try: right after boot the uplink's IPv6 address can
    // still be tentative (DAD starts when the e1000e reports carrier, later than
    // virtio-net does), and a flow masqueraded meanwhile keeps the source the
    // kernel picked then (seen once: the tunnel address fd66::1). The tries are printed.
    for dst in [sa(addr::WEB_V4, 80), sa(addr::WEB_V6, 80)] {
        let want = if dst.is_ipv4() {
            addr::NODE_UP_V4.to_string()
        } else {
            addr::NODE_UP_V6.to_string()
        };
        let t1 = Instant::now();
        let mut seen = Vec::new();
        let r = wait_until(
            Duration::from_secs(30),
            &format!("HTTP {dst} through the tunnel"),
            || {
                let got = c.ns.enter(|| probe::http_get(None, dst, t)).ok()?;
                seen.push(format!("{:.1}s {got:?}", t1.elapsed().as_secs_f64()));
                (got == Outcome::Answered(want.clone())).then_some(())
            },
        );
        eprintln!("  HTTP {dst}: {seen:?}");
        r?;
    }

    // 3. A hung palisaded: the i6300esb resets the machine.
    let banner = "palisade-init: Palisade ";
    let (banners, readies) = {
        let t = console(&guest);
        (t.matches(banner).count(), t.matches("palisade-init: ready").count())
    };
    let hang = Instant::now();
    guest.send_test_line("stop-supervisor")?;
    guest.wait_console("palisade-init: test hook: supervisor stopped", Duration::from_secs(30))?;
    guest
        .wait_console_count(banner, banners + 1, Duration::from_secs(240))
        .with_context(|| format!("no reset after the hang; console:\n{}", console(&guest)))?;
    let t_banner = hang.elapsed();
    guest
        .wait_console("board: the previous boot ended in a watchdog reset", Duration::from_secs(120))
        .with_context(|| console(&guest))?;
    guest.wait_console_count("palisade-init: ready", readies + 1, Duration::from_secs(240))?;
    wait_until(Duration::from_secs(120), "served again after the watchdog reset", || {
        c.ns.enter(|| probe::udp_exchange(None, sa(addr::WEB_V4, addr::ECHO_UDP), b"wd", Duration::from_millis(500)))
            .ok()
            .filter(|o| matches!(o, Outcome::Answered(_)))
    })
    .with_context(|| console(&guest))?;
    eprintln!(
        "i6300esb: hang -> next boot's banner {:.1} s -> node serving again {:.1} s (timeout 30 s, TCG)",
        t_banner.as_secs_f64(),
        hang.elapsed().as_secs_f64()
    );

    // A clean shutdown on ctrl-alt-del (PID 1 stops everything, then reboots:
    // QEMU keeps running across reboots here, so it is stopped after).
    let (downs, reboots) = {
        let t = console(&guest);
        (t.matches("palisade-init: shutting down").count(), t.matches("palisade-init: rebooting").count())
    };
    guest.monitor("sendkey ctrl-alt-delete")?;
    guest.wait_console_count("palisade-init: shutting down", downs + 1, Duration::from_secs(90))?;
    guest.wait_console_count("palisade-init: rebooting", reboots + 1, Duration::from_secs(60))?;
    guest.kill();
    eprintln!(
        "image_appliance: whole test {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
