//! Board support.
//!
//! Two halves:
//! - [`BoardDef`]: the per-board TOML in `board/boards/<name>.toml` (kernel package,
//!   modules, console, partition sizes, pinned Debian packages). The host-side image
//!   builder reads it and installs it as `/usr/share/palisade/board.toml`; on the
//!   node palisaded's update subsystem reads it (the board whose images to take,
//!   and a new slot's console and command line), the rest reaches palisaded
//!   through what the builder derived from it (`/etc/palisade/modules`, the
//!   partition layout).
//! - [`Board`]: the node's hardware as embedded-hal concepts — a status LED (an
//!   [`OutputPin`]), a reset button (an [`InputPin`]), a hardware watchdog and a
//!   console — with the Linux implementation [`linux::LinuxBoard`] (sysfs or
//!   virtio-serial LED, evdev button, watchdog device) built from the
//!   [`DevicesDef`] of the board definition; palisaded drives it (its `board.rs`).
//! - [`kmod`]: module names, `modules.dep` and load plans, the one implementation
//!   used by the image builder (what goes into the image) and by palisaded (what
//!   it loads at boot).
//! - [`entries`]: systemd-boot loader.conf and the Boot Loader Specification entries
//!   with boot counting, rendered alike by the image builder and by an update on the node.

use std::path::{Path, PathBuf};

pub use embedded_hal::digital::{InputPin, OutputPin};
use serde::{Deserialize, Serialize};

pub mod entries;
pub mod kmod;
pub mod linux;

pub use kmod::module_key;

/// Errors of board definitions and board devices.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The board TOML could not be read.
    #[error("cannot read board definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The board TOML is malformed or has unknown fields.
    #[error("invalid board definition {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The board TOML parsed but a value is unusable.
    #[error("invalid board definition {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// No board of that name exists.
    #[error("unknown board `{0}` (expected a file boards/<name>.toml; names are [a-z0-9_-])")]
    Unknown(String),
    /// A device (watchdog, console) failed.
    #[error("board device {device}: {source}")]
    Device {
        device: &'static str,
        source: std::io::Error,
    },
}

/// A board definition (`board/boards/<name>.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardDef {
    /// Board name, equal to the file stem.
    pub name: String,
    /// Debian architecture (`amd64`).
    pub arch: String,
    /// Rust target triple for the node binaries.
    pub rust_target: String,
    /// Kernel console device and speed, e.g. `ttyS0,115200`.
    pub console: String,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// File name of the removable-media EFI boot path (`BOOTX64.EFI`).
    pub efi_boot_name: String,
    /// The kernel package.
    pub kernel: KernelDef,
    /// Kernel modules to ship.
    pub modules: ModulesDef,
    /// Pinned Debian packages (besides the kernel).
    #[serde(rename = "package", default)]
    pub packages: Vec<PackagePin>,
    /// Partition sizes.
    pub partitions: PartitionSizes,
    /// The board's devices palisaded drives: watchdog, status LED, reset button.
    /// A board without a section has none of them.
    #[serde(default)]
    pub devices: DevicesDef,
}

/// The devices of a board (`[devices.*]`), read by palisaded at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesDef {
    /// The hardware watchdog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<WatchdogDef>,
    /// The status LED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub led: Option<LedDef>,
    /// The reset button.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<ButtonDef>,
}

/// A Linux watchdog device (`[devices.watchdog]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogDef {
    /// The character device (`/dev/watchdog`).
    pub path: PathBuf,
    /// Timeout set on the device (WDIOC_SETTIMEOUT), in seconds: the machine
    /// resets this long after the last feed.
    pub timeout_secs: u32,
}

/// The status LED (`[devices.led]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LedDef {
    /// An LED of the Linux LED class: `/sys/class/leds/<name>/brightness`.
    Sysfs { name: String },
    /// A virtio-serial port of that name (`/sys/class/virtio-ports/*/name`),
    /// how a virtual machine shows its LED to the host.
    VirtioSerial { port: String },
}

/// The reset button (`[devices.button]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ButtonDef {
    /// A key of a Linux input device (gpio-keys on real boards, a keyboard in
    /// a virtual machine): the first `/dev/input/event*` that reports `key`
    /// (an evdev key name such as `KEY_RESTART`).
    Evdev { key: String },
}

/// The kernel package, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDef {
    /// Versioned package name (`linux-image-6.1.0-56-cloud-amd64`).
    pub package: String,
    /// Debian version (`6.1.192-2`).
    pub version: String,
    /// Kernel release, the directory under /lib/modules (`6.1.0-56-cloud-amd64`).
    pub release: String,
}

/// Kernel modules, by name (dashes or underscores), dependencies resolved from modules.dep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesDef {
    /// Loaded by the initramfs so the root slot can be mounted.
    #[serde(default)]
    pub initramfs: Vec<String>,
    /// Shipped in the root image (with their dependencies) and written to
    /// `/etc/palisade/modules`, which palisaded loads at boot, in order.
    #[serde(default)]
    pub root: Vec<String>,
}

/// A Debian package pinned to one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    pub name: String,
    pub version: String,
}

/// Partition sizes in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSizes {
    pub esp: u64,
    pub slot: u64,
    pub state: u64,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Module names are case-sensitive (`iTCO_wdt`): letters, digits, `-`, `_`.
fn valid_module(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_pkg(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn valid_version(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.:~".contains(&b))
}

impl BoardDef {
    /// Parses and validates a board definition; `path` is used in errors only.
    pub fn from_str(text: &str, path: &Path) -> Result<BoardDef, BoardError> {
        let def: BoardDef = toml::from_str(text).map_err(|e| BoardError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        def.validate(path)?;
        Ok(def)
    }

    /// Reads `<dir>/<name>.toml`.
    pub fn load(dir: &Path, name: &str) -> Result<BoardDef, BoardError> {
        if !valid_name(name) {
            return Err(BoardError::Unknown(name.to_string()));
        }
        let path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BoardError::Unknown(name.to_string()))
            }
            Err(source) => return Err(BoardError::Read { path, source }),
        };
        let def = BoardDef::from_str(&text, &path)?;
        if def.name != name {
            return Err(BoardError::Invalid {
                path,
                field: "name".into(),
                message: format!("`{}` does not match the file name `{name}`", def.name),
            });
        }
        Ok(def)
    }

    fn validate(&self, path: &Path) -> Result<(), BoardError> {
        let bad = |field: &str, message: String| BoardError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if !valid_name(&self.name) {
            return Err(bad("name", "use [a-z0-9_-]".into()));
        }
        if !valid_pkg(&self.kernel.package) || !self.kernel.package.starts_with("linux-image-") {
            return Err(bad(
                "kernel.package",
                "expected a versioned linux-image-* package".into(),
            ));
        }
        if !valid_version(&self.kernel.version) {
            return Err(bad(
                "kernel.version",
                format!("`{}` is not a Debian version", self.kernel.version),
            ));
        }
        if self.kernel.release.is_empty() || self.kernel.release.contains('/') {
            return Err(bad(
                "kernel.release",
                "expected a kernel release like 6.1.0-56-cloud-amd64".into(),
            ));
        }
        if !self.kernel.package.ends_with(&self.kernel.release) {
            return Err(bad(
                "kernel.release",
                "does not match kernel.package".into(),
            ));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if !valid_pkg(&p.name) {
                return Err(bad(
                    &format!("package[{i}].name"),
                    format!("`{}` is not a package name", p.name),
                ));
            }
            if !valid_version(&p.version) {
                return Err(bad(
                    &format!("package[{i}].version"),
                    format!("`{}` is not a Debian version", p.version),
                ));
            }
            if self.packages[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(
                    &format!("package[{i}].name"),
                    format!("`{}` is listed twice", p.name),
                ));
            }
        }
        for m in self.modules.initramfs.iter().chain(&self.modules.root) {
            if !valid_module(m) {
                return Err(bad("modules", format!("`{m}` is not a module name")));
            }
        }
        let p = self.partitions;
        if p.esp < 33 || p.slot < 8 || p.state < 4 {
            return Err(bad(
                "partitions",
                "sizes too small (esp >= 33, slot >= 8, state >= 4 MiB)".into(),
            ));
        }
        if p.esp + 2 * p.slot + p.state > 64 * 1024 {
            return Err(bad("partitions", "total larger than 64 GiB".into()));
        }
        if let Some(w) = &self.devices.watchdog {
            if !w.path.is_absolute() {
                return Err(bad("devices.watchdog.path", "expected an absolute device path".into()));
            }
            if !(2..=600).contains(&w.timeout_secs) {
                return Err(bad("devices.watchdog.timeout_secs", "expected 2 to 600 seconds".into()));
            }
        }
        match &self.devices.led {
            Some(LedDef::Sysfs { name: n }) | Some(LedDef::VirtioSerial { port: n })
                if n.is_empty() || n.contains('/') =>
            {
                return Err(bad("devices.led", format!("`{n}` is not an LED or port name")));
            }
            _ => {}
        }
        if let Some(ButtonDef::Evdev { key }) = &self.devices.button {
            if !key.starts_with("KEY_") && !key.starts_with("BTN_") {
                return Err(bad("devices.button.key", format!("`{key}` is not an evdev key name (KEY_* or BTN_*)")));
            }
        }
        if !self.console.starts_with("tty") {
            return Err(bad(
                "console",
                "expected a tty device such as ttyS0,115200".into(),
            ));
        }
        Ok(())
    }

    /// The board with `extra` appended to its kernel command line (a space between;
    /// unchanged if `extra` is blank). What the image builder installs as
    /// `/usr/share/palisade/board.toml` when given `--cmdline`, so a node writing a
    /// boot entry after an update keeps the same command line.
    pub fn with_extra_cmdline(&self, extra: &str) -> BoardDef {
        let mut d = self.clone();
        let extra = extra.trim();
        if !extra.is_empty() {
            d.cmdline = if d.cmdline.trim().is_empty() {
                extra.to_string()
            } else {
                format!("{} {extra}", d.cmdline.trim())
            };
        }
        d
    }

    /// The definition as TOML that [`BoardDef::from_str`] reads back to an equal
    /// value (comments of the original file are not kept).
    pub fn to_toml(&self) -> Result<String, BoardError> {
        toml::to_string(self).map_err(|e| BoardError::Parse {
            path: PathBuf::from(format!("{}.toml", self.name)),
            message: e.to_string(),
        })
    }

    /// The console device name without speed (`ttyS0`).
    pub fn console_device(&self) -> &str {
        self.console.split(',').next().unwrap_or(&self.console)
    }
}

/// A hardware watchdog: once started, the board resets unless fed in time.
pub trait Watchdog {
    /// Arms the watchdog with the board's timeout (opening the device arms it
    /// on Linux) and feeds it once.
    fn start(&mut self) -> Result<(), BoardError>;
    /// Feeds it.
    fn feed(&mut self) -> Result<(), BoardError>;
    /// Disarms it cleanly (magic close), for orderly shutdown.
    fn stop(&mut self) -> Result<(), BoardError>;
}

/// The node's board: status LED, reset button, watchdog and console.
pub trait Board {
    /// The status LED: high = on.
    type Led: OutputPin;
    /// The reset button: high = pressed.
    type Button: InputPin;
    /// Board name (matches the board definition).
    fn name(&self) -> &str;
    /// The status LED, if the board has one (and it could be opened).
    fn status_led(&mut self) -> Option<&mut Self::Led>;
    /// The reset button, if the board has one (and it could be opened).
    fn reset_button(&mut self) -> Option<&mut Self::Button>;
    /// The hardware watchdog, if the board has one.
    fn watchdog(&mut self) -> Option<&mut dyn Watchdog>;
    /// The console, for the status banner (never client data).
    fn console(&mut self) -> &mut dyn std::io::Write;
}

#[cfg(test)]
mod tests;
