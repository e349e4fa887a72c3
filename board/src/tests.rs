use super::*;
use crate::linux::*;
use std::path::Path;
use std::io::Write;

fn boards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("boards")
}

#[test]
fn every_board_file_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(boards_dir()).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let def = BoardDef::load(&boards_dir(), &stem).unwrap();
        assert_eq!(def.name, stem);
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn qemu_board_values() {
    let def = BoardDef::load(&boards_dir(), "qemu-x86_64").unwrap();
    assert_eq!(def.console_device(), "ttyS0");
    assert!(def.kernel.package.ends_with(&def.kernel.release));
    assert!(def.modules.root.iter().any(|m| m == "wireguard"));
    assert!(def.modules.initramfs.iter().any(|m| m == "erofs"));
    assert!(def.packages.iter().any(|p| p.name == "nftables"));
}

const MIN: &str = r#"
name = "x"
arch = "amd64"
rust_target = "x86_64-unknown-linux-gnu"
console = "ttyS0,115200"
efi_boot_name = "BOOTX64.EFI"
[kernel]
package = "linux-image-6.1.0-1-cloud-amd64"
version = "6.1.1-1"
release = "6.1.0-1-cloud-amd64"
[modules]
[partitions]
esp = 40
slot = 32
state = 8
"#;

#[test]
fn board_toml_round_trips_with_extra_cmdline() {
    let def = BoardDef::load(&boards_dir(), "qemu-x86_64").unwrap();
    let text = def.to_toml().unwrap();
    assert_eq!(BoardDef::from_str(&text, Path::new("x.toml")).unwrap(), def);

    let ext = def.with_extra_cmdline("  palisade.health_timeout=10 ");
    assert_eq!(
        ext.cmdline,
        format!("{} palisade.health_timeout=10", def.cmdline)
    );
    let back = BoardDef::from_str(&ext.to_toml().unwrap(), Path::new("x.toml")).unwrap();
    assert_eq!(back, ext);
    assert_eq!(back.packages, def.packages);
    assert_eq!(back.partitions, def.partitions);
    // Blank extra: unchanged; an empty board cmdline gets no leading space.
    assert_eq!(def.with_extra_cmdline(" "), def);
    let min = BoardDef::from_str(MIN, Path::new("x.toml")).unwrap();
    assert_eq!(min.with_extra_cmdline("a=1").cmdline, "a=1");
}

#[test]
fn appliance_board_values() {
    let def = BoardDef::load(&boards_dir(), "x86-appliance").unwrap();
    assert_eq!(def.kernel.package, "linux-image-6.1.0-56-amd64");
    for m in ["ahci", "sd_mod", "nvme", "virtio_blk", "erofs"] {
        assert!(def.modules.initramfs.iter().any(|x| x == m), "initramfs lacks {m}");
    }
    for m in ["ext4", "e1000e", "igb", "ixgbe", "virtio_net", "iTCO_wdt", "i6300esb", "button", "evdev", "wireguard", "nft_masq"] {
        assert!(def.modules.root.iter().any(|x| x == m), "root lacks {m}");
    }
    // QEMU's i6300esb registers before the TCO, so it is /dev/watchdog there.
    let pos = |m: &str| def.modules.root.iter().position(|x| x == m).unwrap();
    assert!(pos("i6300esb") < pos("iTCO_wdt"));
    assert_eq!(def.devices.watchdog.as_ref().map(|w| w.timeout_secs), Some(30));
    assert_eq!(def.devices.button, Some(ButtonDef::Evdev { key: "KEY_POWER".into() }));
    assert_eq!(def.devices.led, None);
    // Both boards install the same userland.
    let qemu = BoardDef::load(&boards_dir(), "qemu-x86_64").unwrap();
    assert_eq!(def.packages, qemu.packages);
}

#[test]
fn module_names_are_case_sensitive_but_checked() {
    let ok = MIN.replace("[modules]", "[modules]\nroot = [\"iTCO_wdt\", \"crc32c-intel\"]");
    assert_eq!(BoardDef::from_str(&ok, Path::new("x.toml")).unwrap().modules.root, ["iTCO_wdt", "crc32c-intel"]);
    for bad in ["../x", "a b", ""] {
        let t = MIN.replace("[modules]", &format!("[modules]\nroot = [\"{bad}\"]"));
        let e = BoardDef::from_str(&t, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("modules"), "{bad:?}: {e}");
    }
}

#[test]
fn minimal_parses() {
    let d = BoardDef::from_str(MIN, Path::new("x.toml")).unwrap();
    assert!(d.packages.is_empty());
    assert_eq!(d.partitions.esp, 40);
}

#[test]
fn unknown_field_rejected() {
    let t = format!("{MIN}\nextra = 1\n");
    let e = BoardDef::from_str(&t, Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("extra"), "{e}");
}

#[test]
fn bad_values_rejected_with_field() {
    let cases = [
        (MIN.replace("release = \"6.1.0-1-cloud-amd64\"", "release = \"6.1.0-2-cloud-amd64\""), "kernel.release"),
        (MIN.replace("esp = 40", "esp = 8"), "partitions"),
        (MIN.replace("version = \"6.1.1-1\"", "version = \"6.1 1\""), "kernel.version"),
        (format!("{MIN}\n[[package]]\nname = \"a\"\nversion = \"1\"\n[[package]]\nname = \"a\"\nversion = \"2\"\n"), "package[1].name"),
        (MIN.replace("console = \"ttyS0,115200\"", "console = \"/dev/x\""), "console"),
    ];
    for (text, field) in cases {
        let e = BoardDef::from_str(&text, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

#[test]
fn unknown_board_and_traversal_refused() {
    assert!(matches!(
        BoardDef::load(&boards_dir(), "nope"),
        Err(BoardError::Unknown(_))
    ));
    assert!(matches!(
        BoardDef::load(&boards_dir(), "../boards/qemu-x86_64"),
        Err(BoardError::Unknown(_))
    ));
}

fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
    let mut r = vec![0u8; 16];
    r.extend_from_slice(&ty.to_ne_bytes());
    r.extend_from_slice(&code.to_ne_bytes());
    r.extend_from_slice(&value.to_ne_bytes());
    r
}

#[test]
fn evdev_button_follows_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("event0");
    let mut bytes = Vec::new();
    bytes.extend(event(1, 116, 1)); // KEY_POWER down
    bytes.extend(event(0, 0, 0)); // SYN
    std::fs::write(&p, &bytes).unwrap();
    let mut b = EvdevButton::open_path(&p, 116).unwrap();
    assert!(b.is_high().unwrap());
    // A file keeps its offset: append the next events.
    let mut more = event(1, 28, 0); // another key up: no change
    more.extend(event(1, 116, 2)); // autorepeat: still down
    std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(&more).unwrap();
    assert!(b.is_high().unwrap());
    // A partial record waits for the rest.
    let up = event(1, 116, 0);
    std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(&up[..10]).unwrap();
    assert!(b.is_high().unwrap());
    std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(&up[10..]).unwrap();
    assert!(b.is_low().unwrap());
}

#[test]
fn key_capabilities_find_the_device() {
    // capabilities/key as the kernel prints it: 64-bit words, most significant first.
    assert!(bitmap_has("10000000000000 0", 116));
    assert!(!bitmap_has("20000000000000 0", 116));
    let power = format!("{:x} 0", 1u64 << (116 - 64));
    assert!(bitmap_has(&power, 116));
    assert!(!bitmap_has(&power, 115));
    assert!(bitmap_has("1", 0));
    assert!(!bitmap_has("0", 500));
    assert_eq!(key_code("KEY_POWER"), Some(116));
    assert_eq!(key_code("KEY_RESTART"), Some(0x198));
    assert_eq!(key_code("BTN_3"), Some(0x103));
    assert_eq!(key_code("KEY_NOPE"), None);

    let dir = tempfile::tempdir().unwrap();
    for (ev, caps) in [("event0", "0".to_string()), ("event2", power.clone()), ("event10", power.clone())] {
        std::fs::create_dir_all(dir.path().join(ev).join("device/capabilities")).unwrap();
        std::fs::write(dir.path().join(ev).join("device/capabilities/key"), format!("{caps}\n")).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("input3")).unwrap();
    assert_eq!(find_key_device(dir.path(), 116).as_deref(), Some("event2"));
    assert_eq!(find_key_device(dir.path(), 28), None);
}

#[test]
fn virtio_port_found_by_name_and_led_writes_lines() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("virtio-ports");
    for (p, name) in [("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", "palisade.led")] {
        std::fs::create_dir_all(class.join(p)).unwrap();
        std::fs::write(class.join(p).join("name"), format!("{name}\n")).unwrap();
    }
    assert_eq!(find_virtio_port(&class, Path::new("/dev"), "palisade.led"), Some(Path::new("/dev/vport1p1").to_path_buf()));
    assert_eq!(find_virtio_port(&class, Path::new("/dev"), "palisade.test"), None);

    let out = dir.path().join("port");
    std::fs::write(&out, "").unwrap();
    let mut led = LinuxLed::VirtioSerial(VirtioSerialLed::open_path(&out).unwrap());
    led.show_state("booting");
    led.set_high().unwrap();
    led.set_high().unwrap(); // no change, no line
    led.set_low().unwrap();
    led.show_state("healthy");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "state booting\nled on\nled off\nstate healthy\n");
}

#[test]
fn sysfs_led_writes_brightness() {
    let dir = tempfile::tempdir().unwrap();
    let led = dir.path().join("status");
    std::fs::create_dir_all(&led).unwrap();
    std::fs::write(led.join("brightness"), "0").unwrap();
    std::fs::write(led.join("max_brightness"), "255\n").unwrap();
    let mut l = SysfsLed::open(dir.path(), "status").unwrap();
    l.set_high().unwrap();
    assert_eq!(std::fs::read_to_string(led.join("brightness")).unwrap(), "255");
    l.set_low().unwrap();
    assert_eq!(std::fs::read_to_string(led.join("brightness")).unwrap(), "0");
    assert!(SysfsLed::open(dir.path(), "missing").is_err());
}

#[test]
fn watchdog_on_a_fifo_feeds_and_magic_closes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("watchdog");
    // A plain file stands in for the device: the ioctl fails with ENOTTY, which is tolerated.
    std::fs::write(&p, "").unwrap();
    let mut w = LinuxWatchdog::new(p.clone(), 10);
    assert!(!w.is_char_device());
    assert!(w.feed().is_err(), "feeding before start must fail");
    w.start().unwrap();
    assert_eq!(w.effective_timeout, None);
    w.feed().unwrap();
    w.stop().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"\0\0V");
    let mut b = LinuxBoard::with_devices("t", None, None, Some(LinuxWatchdog::new(p, 10)), Box::new(Vec::new()));
    assert!(b.status_led().is_none() && b.reset_button().is_none());
    assert!(b.watchdog().is_some());
    writeln!(b.console(), "banner").unwrap();
    let missing = LinuxWatchdog::new(dir.path().join("nope"), 10).start().unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn module_key_normalises() {
    assert_eq!(module_key("crc32c-intel"), "crc32c_intel");
}

#[test]
fn devices_parse_and_bad_values_are_named() {
    let def = BoardDef::load(&boards_dir(), "qemu-x86_64").unwrap();
    let wd = def.devices.watchdog.as_ref().unwrap();
    assert_eq!(wd.path, Path::new("/dev/watchdog"));
    assert_eq!(def.devices.led, Some(LedDef::VirtioSerial { port: "palisade.led".into() }));
    assert_eq!(def.devices.button, Some(ButtonDef::Evdev { key: "KEY_POWER".into() }));

    let none = BoardDef::from_str(MIN, Path::new("x.toml")).unwrap();
    assert_eq!(none.devices, DevicesDef::default());

    let cases = [
        ("[devices.watchdog]\npath = \"dev/watchdog\"\ntimeout_secs = 10\n", "devices.watchdog.path"),
        ("[devices.watchdog]\npath = \"/dev/watchdog\"\ntimeout_secs = 1\n", "devices.watchdog.timeout_secs"),
        ("[devices.led]\nkind = \"sysfs\"\nname = \"a/b\"\n", "devices.led"),
        ("[devices.button]\nkind = \"evdev\"\nkey = \"POWER\"\n", "devices.button.key"),
    ];
    for (extra, field) in cases {
        let err = BoardDef::from_str(&format!("{MIN}{extra}"), Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains(field), "{extra}: {err}");
    }
    let err = BoardDef::from_str(&format!("{MIN}[devices.led]\nkind = \"gpio\"\nline = 3\n"), Path::new("x.toml")).unwrap_err();
    assert!(err.to_string().contains("gpio"), "{err}");
}
