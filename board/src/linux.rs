//! Linux implementations of the board's devices, on the embedded-hal traits,
//! as real boards expose them to user space:
//!
//! - [`SysfsLed`]: an LED of the LED class (`/sys/class/leds/<name>/brightness`).
//! - [`VirtioSerialLed`]: a virtio-serial port (how a virtual machine shows an
//!   LED to its host): each level change is written as a line `led on` /
//!   `led off`, and [`StatusLed::show_state`] writes `state <name>`, so the
//!   host reads the LED and the state it stands for from the port's chardev.
//! - [`EvdevButton`]: a key of an input device (gpio-keys on real boards, a
//!   keyboard in a VM), found by the key it reports
//!   (`/sys/class/input/event*/device/capabilities/key`), read as
//!   `input_event` records.
//! - [`LinuxWatchdog`]: the watchdog character device: WDIOC_SETTIMEOUT on
//!   start, a write per feed, the magic close ('V') on a clean stop.
//!
//! [`LinuxBoard`] puts them together from a board definition's [`DevicesDef`].

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use crate::{Board, BoardError, ButtonDef, DevicesDef, LedDef, Watchdog};

fn dev_err(device: &'static str, source: std::io::Error) -> BoardError {
    BoardError::Device { device, source }
}

/// An LED that can also say which state it shows (a no-op for a plain LED).
pub trait StatusLed: OutputPin {
    /// Announce the state the LED now shows (`healthy`, `degraded`, ...).
    fn show_state(&mut self, _name: &str) {}
}

/// An LED of the Linux LED class.
#[derive(Debug)]
pub struct SysfsLed {
    brightness: PathBuf,
    max: u32,
}

impl SysfsLed {
    /// The LED `name` under `class_dir` (normally `/sys/class/leds`).
    pub fn open(class_dir: &Path, name: &str) -> Result<SysfsLed, BoardError> {
        let dir = class_dir.join(name);
        let max = std::fs::read_to_string(dir.join("max_brightness"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1)
            .max(1);
        let brightness = dir.join("brightness");
        // Fail now, not at the first blink, when the LED does not exist.
        OpenOptions::new()
            .write(true)
            .open(&brightness)
            .map_err(|e| {
                dev_err(
                    "led",
                    std::io::Error::new(e.kind(), format!("{}: {e}", brightness.display())),
                )
            })?;
        Ok(SysfsLed { brightness, max })
    }
}

impl ErrorType for SysfsLed {
    type Error = Infallible;
}

impl OutputPin for SysfsLed {
    fn set_low(&mut self) -> Result<(), Infallible> {
        // Best effort: an LED that cannot be set must not stop the node.
        let _ = std::fs::write(&self.brightness, "0");
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        let _ = std::fs::write(&self.brightness, self.max.to_string());
        Ok(())
    }
}

impl StatusLed for SysfsLed {}

/// The device node of the virtio-serial port named `port`: the
/// `/sys/class/virtio-ports/<vportNpM>` whose `name` is `port`, as
/// `<dev>/<vportNpM>`.
pub fn find_virtio_port(class_dir: &Path, dev: &Path, port: &str) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(class_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries.into_iter().find_map(|e| {
        let name = std::fs::read_to_string(e.join("name")).ok()?;
        let file = e.file_name()?;
        (name.trim_end_matches('\n') == port).then(|| dev.join(file))
    })
}

/// An LED shown to the host as lines on a virtio-serial port.
#[derive(Debug)]
pub struct VirtioSerialLed {
    out: File,
    on: Option<bool>,
}

impl VirtioSerialLed {
    /// Opens the port named `port` (`/sys/class/virtio-ports`, `/dev`).
    pub fn open(port: &str) -> Result<VirtioSerialLed, BoardError> {
        let path = find_virtio_port(
            Path::new("/sys/class/virtio-ports"),
            Path::new("/dev"),
            port,
        )
        .ok_or_else(|| {
            dev_err(
                "led",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no virtio-serial port named {port}"),
                ),
            )
        })?;
        Self::open_path(&path)
    }

    /// Opens the port's device node (or any writable file, in tests).
    /// Non-blocking: while no host listens, lines are dropped instead of
    /// stalling the caller.
    pub fn open_path(path: &Path) -> Result<VirtioSerialLed, BoardError> {
        let out = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                dev_err(
                    "led",
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                )
            })?;
        Ok(VirtioSerialLed { out, on: None })
    }

    fn line(&mut self, s: &str) {
        // Best effort (EAGAIN while the host is not connected).
        let _ = self.out.write_all(format!("{s}\n").as_bytes());
    }

    fn set(&mut self, on: bool) {
        if self.on != Some(on) {
            self.on = Some(on);
            self.line(if on { "led on" } else { "led off" });
        }
    }
}

impl ErrorType for VirtioSerialLed {
    type Error = Infallible;
}

impl OutputPin for VirtioSerialLed {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.set(true);
        Ok(())
    }
}

impl StatusLed for VirtioSerialLed {
    fn show_state(&mut self, name: &str) {
        self.line(&format!("state {name}"));
    }
}

/// The status LED of a [`LinuxBoard`].
#[derive(Debug)]
pub enum LinuxLed {
    Sysfs(SysfsLed),
    VirtioSerial(VirtioSerialLed),
}

impl LinuxLed {
    /// Opens the LED `def` names.
    pub fn open(def: &LedDef) -> Result<LinuxLed, BoardError> {
        match def {
            LedDef::Sysfs { name } => {
                SysfsLed::open(Path::new("/sys/class/leds"), name).map(LinuxLed::Sysfs)
            }
            LedDef::VirtioSerial { port } => {
                VirtioSerialLed::open(port).map(LinuxLed::VirtioSerial)
            }
        }
    }
}

impl ErrorType for LinuxLed {
    type Error = Infallible;
}

impl OutputPin for LinuxLed {
    fn set_low(&mut self) -> Result<(), Infallible> {
        match self {
            LinuxLed::Sysfs(l) => l.set_low(),
            LinuxLed::VirtioSerial(l) => l.set_low(),
        }
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        match self {
            LinuxLed::Sysfs(l) => l.set_high(),
            LinuxLed::VirtioSerial(l) => l.set_high(),
        }
    }
}

impl StatusLed for LinuxLed {
    fn show_state(&mut self, name: &str) {
        match self {
            LinuxLed::Sysfs(l) => l.show_state(name),
            LinuxLed::VirtioSerial(l) => l.show_state(name),
        }
    }
}

/// evdev event type of keys and buttons.
const EV_KEY: u16 = 1;

/// The evdev key codes palisaded's boards use (linux/input-event-codes.h).
pub fn key_code(name: &str) -> Option<u16> {
    Some(match name {
        "KEY_ESC" => 1,
        "KEY_ENTER" => 28,
        "KEY_POWER" => 116,
        "KEY_SETUP" => 141,
        "KEY_SLEEP" => 142,
        "KEY_WAKEUP" => 143,
        "KEY_PROG1" => 148,
        "KEY_PROG2" => 149,
        "KEY_CONFIG" => 171,
        "KEY_POWER2" => 0x164,
        "KEY_VENDOR" => 0x168,
        "KEY_RESTART" => 0x198,
        _ => {
            let n = name.strip_prefix("BTN_")?;
            if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() {
                0x100 + u16::from(n.as_bytes()[0] - b'0')
            } else {
                return None;
            }
        }
    })
}

/// Whether a sysfs capability bitmap (`capabilities/key`: hex words of the
/// kernel's `unsigned long`, most significant first) has bit `code`.
pub fn bitmap_has(bitmap: &str, code: u16) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let (word, bit) = (usize::from(code) / 64, u32::from(code) % 64);
    let Some(w) = words.len().checked_sub(word + 1).and_then(|i| words.get(i)) else {
        return false;
    };
    u64::from_str_radix(w, 16).is_ok_and(|v| v & (1u64 << bit) != 0)
}

/// The first `eventN` (sorted by number) under `class_dir`
/// (`/sys/class/input`) whose device reports key `code`.
pub fn find_key_device(class_dir: &Path, code: u16) -> Option<String> {
    let mut names: Vec<(u32, String)> = std::fs::read_dir(class_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            Some((n.strip_prefix("event")?.parse().ok()?, n))
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, n)| n).find(|n| {
        std::fs::read_to_string(class_dir.join(n).join("device/capabilities/key"))
            .is_ok_and(|b| bitmap_has(&b, code))
    })
}

/// Size of `struct input_event` on 64-bit Linux (timeval, type, code, value).
pub const INPUT_EVENT_SIZE: usize = 24;

/// The key's state after `records` (whole `input_event`s; value 0 release,
/// 1 press, 2 autorepeat), starting from `pressed`.
pub fn apply_events(mut pressed: bool, records: &[u8], code: u16) -> bool {
    for r in records.chunks_exact(INPUT_EVENT_SIZE) {
        let ty = u16::from_ne_bytes([r[16], r[17]]);
        let c = u16::from_ne_bytes([r[18], r[19]]);
        let v = i32::from_ne_bytes([r[20], r[21], r[22], r[23]]);
        if ty == EV_KEY && c == code {
            pressed = v != 0;
        }
    }
    pressed
}

/// A key of an evdev input device as a button: high while pressed.
#[derive(Debug)]
pub struct EvdevButton {
    dev: File,
    code: u16,
    pressed: bool,
    partial: Vec<u8>,
    /// The device node, for messages.
    pub path: PathBuf,
}

impl EvdevButton {
    /// The first `/dev/input/event*` that reports `key` (`KEY_POWER`).
    pub fn open(key: &str) -> Result<EvdevButton, BoardError> {
        let code = key_code(key).ok_or_else(|| {
            dev_err(
                "button",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("unsupported key name {key}"),
                ),
            )
        })?;
        let ev = find_key_device(Path::new("/sys/class/input"), code).ok_or_else(|| {
            dev_err(
                "button",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no input device reports {key}"),
                ),
            )
        })?;
        Self::open_path(&Path::new("/dev/input").join(ev), code)
    }

    /// Reads `input_event`s for key `code` from `path` (non-blocking).
    pub fn open_path(path: &Path, code: u16) -> Result<EvdevButton, BoardError> {
        let dev = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                dev_err(
                    "button",
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
                )
            })?;
        Ok(EvdevButton {
            dev,
            code,
            pressed: false,
            partial: Vec::new(),
            path: path.to_path_buf(),
        })
    }

    /// Reads every pending event.
    fn drain(&mut self) {
        let mut buf = [0u8; INPUT_EVENT_SIZE * 32];
        loop {
            match self.dev.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    let whole = self.partial.len() / INPUT_EVENT_SIZE * INPUT_EVENT_SIZE;
                    self.pressed = apply_events(self.pressed, &self.partial[..whole], self.code);
                    self.partial.drain(..whole);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

impl ErrorType for EvdevButton {
    type Error = Infallible;
}

impl InputPin for EvdevButton {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        self.drain();
        Ok(self.pressed)
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

/// WDIOC_SETTIMEOUT: `_IOWR('W', 6, int)`; the driver writes back the
/// timeout it set (it may round).
mod ioctl {
    #![allow(unsafe_code)]
    nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

    /// Sets the watchdog timeout of the open device `fd`; returns the timeout the driver set.
    pub fn set_timeout(fd: &std::fs::File, secs: u32) -> nix::Result<u32> {
        use std::os::fd::AsRawFd;
        let mut t = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is an open file for the whole call and `t` is a valid,
        // exclusively borrowed c_int, the argument type this ioctl reads and writes.
        unsafe { wdioc_settimeout(fd.as_raw_fd(), &mut t) }?;
        Ok(u32::try_from(t).unwrap_or(secs))
    }
}

/// The Linux watchdog character device.
#[derive(Debug)]
pub struct LinuxWatchdog {
    path: PathBuf,
    timeout_secs: u32,
    dev: Option<File>,
    /// The timeout the driver set (None: not a watchdog device, e.g. a FIFO in tests).
    pub effective_timeout: Option<u32>,
}

impl LinuxWatchdog {
    pub fn new(path: PathBuf, timeout_secs: u32) -> Self {
        LinuxWatchdog {
            path,
            timeout_secs,
            dev: None,
            effective_timeout: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path is a character device (a real watchdog, not a test FIFO).
    pub fn is_char_device(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.file_type().is_char_device())
    }
}

impl Watchdog for LinuxWatchdog {
    fn start(&mut self) -> Result<(), BoardError> {
        if self.dev.is_some() {
            return Ok(());
        }
        // Opening arms it. The device is single-open: EBUSY while another
        // process (a supervisor that has not exited yet) holds it.
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| {
                dev_err(
                    "watchdog",
                    std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())),
                )
            })?;
        self.effective_timeout = match ioctl::set_timeout(&f, self.timeout_secs) {
            Ok(t) => Some(t),
            // Not a watchdog (a FIFO or file standing in for one in tests).
            Err(nix::errno::Errno::ENOTTY) => None,
            Err(e) => {
                return Err(dev_err(
                    "watchdog",
                    std::io::Error::other(format!("WDIOC_SETTIMEOUT {} s: {e}", self.timeout_secs)),
                ))
            }
        };
        self.dev = Some(f);
        // The first feed right away: the new timeout counts from now.
        self.feed()
    }
    fn feed(&mut self) -> Result<(), BoardError> {
        match &mut self.dev {
            Some(f) => f.write_all(b"\0").map_err(|e| dev_err("watchdog", e)),
            None => Err(dev_err("watchdog", std::io::Error::other("not started"))),
        }
    }
    fn stop(&mut self) -> Result<(), BoardError> {
        if let Some(mut f) = self.dev.take() {
            // 'V' is the magic close: the driver disarms on close instead of
            // resetting (unless it was built or loaded with nowayout).
            f.write_all(b"V").map_err(|e| dev_err("watchdog", e))?;
        }
        Ok(())
    }
}

/// A board whose devices are the Linux devices its definition names.
pub struct LinuxBoard {
    name: String,
    led: Option<LinuxLed>,
    button: Option<EvdevButton>,
    watchdog: Option<LinuxWatchdog>,
    console: Box<dyn Write + Send>,
    /// Devices that are defined but could not be opened, with why.
    pub missing: Vec<String>,
}

impl LinuxBoard {
    /// Opens the devices `devices` names. A device that cannot be opened is
    /// left out and named in [`LinuxBoard::missing`] (the node runs without
    /// it). The watchdog is opened (armed) only by [`Watchdog::start`].
    pub fn open(name: &str, devices: &DevicesDef) -> LinuxBoard {
        let mut missing = Vec::new();
        let led = match devices.led.as_ref().map(LinuxLed::open) {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                missing.push(e.to_string());
                None
            }
            None => None,
        };
        let button = match &devices.button {
            Some(ButtonDef::Evdev { key }) => match EvdevButton::open(key) {
                Ok(b) => Some(b),
                Err(e) => {
                    missing.push(e.to_string());
                    None
                }
            },
            None => None,
        };
        let console: Box<dyn Write + Send> =
            match OpenOptions::new().write(true).open("/dev/console") {
                Ok(f) => Box::new(f),
                Err(_) => Box::new(std::io::stderr()),
            };
        LinuxBoard {
            name: name.to_string(),
            led,
            button,
            watchdog: devices
                .watchdog
                .as_ref()
                .map(|w| LinuxWatchdog::new(w.path.clone(), w.timeout_secs)),
            console,
            missing,
        }
    }

    /// A board with explicit devices (tests).
    pub fn with_devices(
        name: &str,
        led: Option<LinuxLed>,
        button: Option<EvdevButton>,
        watchdog: Option<LinuxWatchdog>,
        console: Box<dyn Write + Send>,
    ) -> LinuxBoard {
        LinuxBoard {
            name: name.to_string(),
            led,
            button,
            watchdog,
            console,
            missing: Vec::new(),
        }
    }

    /// Takes the devices apart (each is driven on its own).
    pub fn into_parts(self) -> (Option<LinuxLed>, Option<EvdevButton>, Option<LinuxWatchdog>) {
        (self.led, self.button, self.watchdog)
    }
}

impl Board for LinuxBoard {
    type Led = LinuxLed;
    type Button = EvdevButton;
    fn name(&self) -> &str {
        &self.name
    }
    fn status_led(&mut self) -> Option<&mut LinuxLed> {
        self.led.as_mut()
    }
    fn reset_button(&mut self) -> Option<&mut EvdevButton> {
        self.button.as_mut()
    }
    fn watchdog(&mut self) -> Option<&mut dyn Watchdog> {
        self.watchdog.as_mut().map(|w| w as &mut dyn Watchdog)
    }
    fn console(&mut self) -> &mut dyn Write {
        &mut self.console
    }
}
