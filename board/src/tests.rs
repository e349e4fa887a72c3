use super::*;
use crate::qemu::{FileButton, FileLed, QemuX86_64};
use std::path::Path;

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

#[test]
fn qemu_led_and_button_files() {
    let dir = tempfile::tempdir().unwrap();
    let led = dir.path().join("led");
    let btn = dir.path().join("btn");
    let mut b = QemuX86_64::with_devices(
        FileLed::new(Some(led.clone())),
        FileButton::new(btn.clone()),
        None,
        Box::new(Vec::new()),
    );
    b.status_led().set_high().unwrap();
    assert_eq!(std::fs::read_to_string(&led).unwrap(), "on\n");
    b.status_led().set_low().unwrap();
    assert_eq!(std::fs::read_to_string(&led).unwrap(), "off\n");
    assert!(!b.reset_button().is_high().unwrap());
    std::fs::write(&btn, "").unwrap();
    assert!(b.reset_button().is_high().unwrap());
    assert!(b.watchdog().is_none());
    writeln!(b.console(), "banner").unwrap();
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
