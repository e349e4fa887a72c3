//! The image boots: build (or take `$PALISADE_IMAGE`), boot it under QEMU/TCG with
//! its uplink on a tap in a fresh "internet" namespace, and check on the serial
//! console and on the disk afterwards that palisaded ran as PID 1:
//! - the banner names the node, slot A, the seed config and a persistent state;
//! - the health gate printed `ready` (WireGuard up, firewall verified);
//! - the boot entry was blessed (`palisade-a+2-1.conf` -> `palisade-a.conf` on the ESP,
//!   slot B's entry untouched) and the first boot seeded node.toml onto the state
//!   partition;
//! - ctrl-alt-del makes it shut down cleanly (QEMU exits with -no-reboot).
//!
//! Root only: run by tests/run.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn ws() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sh(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn image() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_IMAGE") {
        return Ok(PathBuf::from(p));
    }
    let out = ws().join("target/image-boot-test");
    let st = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args([
            "run",
            "-q",
            "-p",
            "palisade-image",
            "--",
            "build",
            "--no-qcow2",
            "--out",
        ])
        .arg(&out)
        .current_dir(ws())
        .status()?;
    if !st.success() {
        bail!("image build failed");
    }
    Ok(out.join("palisade-qemu-x86_64.raw"))
}

/// Kills QEMU and removes the namespace even when the test fails.
struct Guard {
    id: String,
    qemu: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
        let _ = Command::new(ws().join("qemu/testbed.sh"))
            .args(["down", &self.id])
            .status();
    }
}

fn partition(disk: &Path, name: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(disk))?)?;
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .context("partitions")?
    {
        if p["name"] == name {
            return Ok((
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            ));
        }
    }
    bail!("no partition {name}")
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn image_boots_to_ready_blesses_and_powers_off() -> Result<()> {
    let img = image()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.raw");
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&disk))?;
    let id = format!("ib{}", std::process::id());
    let mut g = Guard {
        id: id.clone(),
        qemu: None,
    };
    sh(Command::new(ws().join("qemu/testbed.sh")).args(["up", &id]))?;
    let serial = dir.path().join("serial.log");
    let monitor = dir.path().join("mon.sock");
    let started = Instant::now();
    g.qemu = Some(
        Command::new(ws().join("qemu/boot.sh"))
            .arg(&disk)
            .args([
                "--netns",
                &format!("pal-inet-{id}"),
                "--tap",
                &format!("ptap{id}"),
                "--no-reboot",
            ])
            .arg("--serial")
            .arg(&serial)
            .arg("--monitor")
            .arg(&monitor)
            .arg("--pidfile")
            .arg(dir.path().join("qemu.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let console = || std::fs::read_to_string(&serial).unwrap_or_default();
    let wait_for = |needle: &str, within: Duration| -> Result<Duration> {
        loop {
            if console().contains(needle) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!(
                    "`{needle}` not on the console within {within:?}; console:\n{}",
                    console()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let t_ready = wait_for("palisade-init: ready:", Duration::from_secs(180))?;
    wait_for(
        "boot entry blessed: palisade-a+2-1.conf -> palisade-a.conf",
        Duration::from_secs(200),
    )?;
    eprintln!("QEMU start -> ready: {:.1} s", t_ready.as_secs_f64());
    let text = console();
    let banner = text
        .lines()
        .find(|l| l.contains("palisade-init: Palisade "))
        .context("no banner")?;
    assert!(banner.contains("| slot a |"), "{banner}");
    assert!(
        banner.contains("config from image seed (first boot)"),
        "{banner}"
    );
    assert!(banner.contains("state persistent"), "{banner}");
    assert!(banner.contains("| node edge-1 |"), "{banner}");

    // Clean shutdown: ctrl-alt-del -> SIGINT to PID 1 -> stop, unmount, reboot -> QEMU exits.
    palisade_tests::guest::monitor_command(&monitor, "sendkey ctrl-alt-delete")?;
    let q = g.qemu.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if q.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "QEMU still running 90 s after ctrl-alt-del; console:\n{}",
                console()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    g.qemu = None;
    assert!(console().contains("palisade-init: shutting down"));

    // The ESP: slot A blessed, slot B still counting.
    let (esp_off, _) = partition(&disk, "esp")?;
    let entries = sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_off}", disk.display()))
        .arg("::/loader/entries"))?;
    assert!(entries.contains("palisade-a.conf"), "{entries}");
    assert!(entries.contains("palisade-b+3.conf"), "{entries}");
    assert!(!entries.contains("palisade-a+"), "{entries}");

    // The state partition: the seed was copied, the WireGuard key generated 0600.
    let (st_off, st_size) = partition(&disk, "state")?;
    let state = dir.path().join("state.ext4");
    sh(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", state.display()))
        .args([
            "bs=1M",
            &format!("skip={}", st_off >> 20),
            &format!("count={}", st_size >> 20),
            "status=none",
        ]))?;
    let ls = sh(Command::new("debugfs").arg("-R").arg("ls -l /").arg(&state))?;
    assert!(ls.contains("node.toml"), "{ls}");
    let key = sh(Command::new("debugfs")
        .arg("-R")
        .arg("stat /wg0.key")
        .arg(&state))?;
    assert!(
        key.contains("Mode:  0600") || key.contains("Mode: 0600"),
        "{key}"
    );
    Ok(())
}

/// A/B fallback: slot A's root is destroyed; the initramfs cannot mount it and
/// reboots; systemd-boot counts A's tries down to zero and boots slot B, which comes
/// up healthy and blesses its own entry.
#[test]
#[ignore = "root: run by tests/run.sh"]
fn broken_slot_a_falls_back_to_b() -> Result<()> {
    let img = image()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.raw");
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&disk))?;
    let (a_off, _) = partition(&disk, "palisade-a")?;
    sh(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=1M",
            "count=1",
            &format!("seek={}", a_off >> 20),
            "conv=notrunc",
            "status=none",
        ]))?;
    let id = format!("fb{}", std::process::id());
    let mut g = Guard {
        id: id.clone(),
        qemu: None,
    };
    sh(Command::new(ws().join("qemu/testbed.sh")).args(["up", &id]))?;
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    g.qemu = Some(
        Command::new(ws().join("qemu/boot.sh"))
            .arg(&disk)
            .args([
                "--netns",
                &format!("pal-inet-{id}"),
                "--tap",
                &format!("ptap{id}"),
            ])
            .arg("--serial")
            .arg(&serial)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let console = || std::fs::read_to_string(&serial).unwrap_or_default();
    loop {
        let c = console();
        if c.contains("boot entry blessed: palisade-b+") {
            break;
        }
        if started.elapsed() > Duration::from_secs(420) {
            bail!("slot B was not booted and blessed within 420 s; console:\n{c}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "QEMU start -> slot B blessed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let c = console();
    assert!(
        c.matches("initramfs: cannot mount").count() >= 3,
        "A should have been tried 3 times:\n{c}"
    );
    let banner = c
        .lines()
        .find(|l| l.contains("palisade-init: Palisade "))
        .context("no banner")?;
    assert!(banner.contains("| slot b |"), "{banner}");
    // Power cut (the ESP was synced and unmounted after blessing).
    if let Some(mut q) = g.qemu.take() {
        q.kill()?;
        q.wait()?;
    }
    let (esp_off, _) = partition(&disk, "esp")?;
    let entries = sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_off}", disk.display()))
        .arg("::/loader/entries"))?;
    assert!(entries.contains("palisade-b.conf"), "{entries}");
    assert!(entries.contains("palisade-a+0-3.conf"), "{entries}");
    Ok(())
}

/// Copy of the ESP file `path` (mtools, no mounts).
fn esp_read(disk: &Path, esp_off: u64, path: &str) -> Result<String> {
    sh(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{esp_off}", disk.display()))
        .arg(format!("::{path}")))
}

/// The health gate includes DNS (issue 7 item 5): slot A holds an update whose
/// root lacks a list file the node config names (`/etc/palisade/lists/ads.txt`
/// in the image seed), so its resolver cannot start. WireGuard and the firewall
/// come up, but the canary query is never answered: A is not blessed, PID 1
/// reboots after `palisade.health_timeout`, and systemd-boot falls back to slot B,
/// which is healthy and blesses itself. To keep it short, A's entry gets one try
/// (`palisade-a+1.conf`) and `palisade.health_timeout=10`.
#[test]
#[ignore = "root: run by tests/run.sh"]
fn slot_without_a_working_resolver_is_not_blessed() -> Result<()> {
    let img = image()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.raw");
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&disk))?;

    // Slot A: the same root minus one list file.
    let (a_off, a_size) = partition(&disk, "palisade-a")?;
    let a_img = dir.path().join("a.erofs");
    sh(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", a_img.display()))
        .args([
            "bs=1M",
            &format!("skip={}", a_off >> 20),
            &format!("count={}", a_size >> 20),
            "status=none",
        ]))?;
    let root = dir.path().join("root-a");
    sh(Command::new("fsck.erofs")
        .arg(format!("--extract={}", root.display()))
        .arg(&a_img))?;
    let list = root.join("etc/palisade/lists/ads.txt");
    std::fs::remove_file(&list).with_context(|| format!("{} in slot A", list.display()))?;
    let a_new = dir.path().join("a-new.erofs");
    sh(Command::new("mkfs.erofs")
        .args(["--quiet", "-zlz4hc", "--all-root"])
        .arg(&a_new)
        .arg(&root))?;
    let new_len = std::fs::metadata(&a_new)?.len();
    assert!(new_len <= a_size, "rebuilt slot A is {new_len} bytes");
    sh(Command::new("dd")
        .arg(format!("if={}", a_new.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=1M",
            &format!("seek={}", a_off >> 20),
            "conv=notrunc",
            "status=none",
        ]))?;

    // Slot A's boot entry: one try, a 10 s health timeout.
    let (esp_off, _) = partition(&disk, "esp")?;
    let esp = format!("{}@@{esp_off}", disk.display());
    let entry = esp_read(&disk, esp_off, "/loader/entries/palisade-a+3.conf")?;
    let entry: String = entry
        .lines()
        .map(|l| {
            if l.starts_with("options ") {
                format!("{l} palisade.health_timeout=10\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(entry.contains("palisade.health_timeout=10"), "{entry}");
    let local = dir.path().join("palisade-a+1.conf");
    std::fs::write(&local, &entry)?;
    sh(Command::new("mdel").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &esp,
        "::/loader/entries/palisade-a+3.conf",
    ]))?;
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &esp])
        .arg(&local)
        .arg("::/loader/entries/palisade-a+1.conf"))?;

    let id = format!("dn{}", std::process::id());
    let mut g = Guard {
        id: id.clone(),
        qemu: None,
    };
    sh(Command::new(ws().join("qemu/testbed.sh")).args(["up", &id]))?;
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    g.qemu = Some(
        Command::new(ws().join("qemu/boot.sh"))
            .arg(&disk)
            .args([
                "--netns",
                &format!("pal-inet-{id}"),
                "--tap",
                &format!("ptap{id}"),
            ])
            .arg("--serial")
            .arg(&serial)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let console = || std::fs::read_to_string(&serial).unwrap_or_default();
    let mut t_fallback = None;
    loop {
        let c = console();
        if t_fallback.is_none() && c.contains("rebooting so the boot loader can fall back") {
            t_fallback = Some(started.elapsed());
        }
        if c.contains("boot entry blessed: palisade-b+") {
            break;
        }
        if c.contains("boot entry blessed: palisade-a+") {
            bail!("slot A was blessed although its resolver cannot start; console:\n{c}");
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("slot B was not booted and blessed within 300 s; console:\n{c}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "QEMU start -> slot A given up: {:.1} s; -> slot B blessed: {:.1} s",
        t_fallback.map(|t| t.as_secs_f64()).unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    let c = console();
    let banners: Vec<&str> = c
        .lines()
        .filter(|l| l.contains("palisade-init: Palisade "))
        .collect();
    assert_eq!(banners.len(), 2, "{c}");
    assert!(banners[0].contains("| slot a |"), "{}", banners[0]);
    assert!(banners[1].contains("| slot b |"), "{}", banners[1]);
    // On A only DNS was missing: WireGuard and the firewall were fine.
    let not_healthy = c
        .lines()
        .find(|l| l.contains("palisade-init: not healthy: "))
        .with_context(|| format!("no health report on the console:\n{c}"))?;
    assert!(
        not_healthy.contains("dns failed:") && not_healthy.contains("ads.txt"),
        "{not_healthy}"
    );
    assert!(
        !not_healthy.contains("wireguard") && !not_healthy.contains("firewall"),
        "{not_healthy}"
    );
    eprintln!("slot A: {not_healthy}");
    let slot_a = &c[..c.find(banners[1]).unwrap()];
    assert!(
        !slot_a.contains("palisade-init: ready"),
        "A must not pass the gate"
    );
    assert!(
        c.contains("palisade-init: ready: wireguard up, firewall verified, dns answering"),
        "{c}"
    );
    if let Some(mut q) = g.qemu.take() {
        q.kill()?;
        q.wait()?;
    }
    let entries = sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i", &esp])
        .arg("::/loader/entries"))?;
    assert!(entries.contains("palisade-b.conf"), "{entries}");
    assert!(entries.contains("palisade-a+0-1.conf"), "{entries}");
    Ok(())
}
