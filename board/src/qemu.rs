//! The `qemu-x86_64` board: a virtual machine with no GPIO.
//!
//! - Status LED: a software pin whose state is mirrored to a file (default
//!   `/run/palisade/status-led`, `on`/`off`) so tests and operators can read it.
//! - Reset button: pressed while a file exists (default `/run/palisade/reset-button`);
//!   nothing presses it unless a test creates that file.
//! - Watchdog: the Linux watchdog device `/dev/watchdog` (softdog on this board: the
//!   cloud kernel has no emulated-hardware watchdog driver).
//! - Console: `/dev/console` (the serial line given by `console=` on the kernel command line),
//!   falling back to stderr when it cannot be opened.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use crate::{Board, BoardError, Watchdog};

/// A software LED mirrored to a file.
#[derive(Debug)]
pub struct FileLed {
    path: Option<PathBuf>,
    on: bool,
}

impl FileLed {
    pub fn new(path: Option<PathBuf>) -> Self {
        FileLed { path, on: false }
    }
    /// Current state.
    pub fn is_on(&self) -> bool {
        self.on
    }
    fn mirror(&self) {
        if let Some(p) = &self.path {
            // Best effort: an LED that cannot be mirrored must not stop the node.
            let _ = std::fs::write(p, if self.on { "on\n" } else { "off\n" });
        }
    }
}

impl ErrorType for FileLed {
    type Error = Infallible;
}

impl OutputPin for FileLed {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.on = false;
        self.mirror();
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.on = true;
        self.mirror();
        Ok(())
    }
}

/// A button that reads as pressed while a file exists.
#[derive(Debug)]
pub struct FileButton {
    path: PathBuf,
}

impl FileButton {
    pub fn new(path: PathBuf) -> Self {
        FileButton { path }
    }
}

impl ErrorType for FileButton {
    type Error = Infallible;
}

impl InputPin for FileButton {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.path.exists())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.path.exists())
    }
}

/// The Linux watchdog character device.
#[derive(Debug)]
pub struct LinuxWatchdog {
    path: PathBuf,
    dev: Option<File>,
}

impl LinuxWatchdog {
    pub fn new(path: PathBuf) -> Self {
        LinuxWatchdog { path, dev: None }
    }
}

impl Watchdog for LinuxWatchdog {
    fn start(&mut self) -> Result<(), BoardError> {
        if self.dev.is_none() {
            let f = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|source| BoardError::Device {
                    device: "watchdog",
                    source,
                })?;
            self.dev = Some(f);
        }
        Ok(())
    }
    fn feed(&mut self) -> Result<(), BoardError> {
        match &mut self.dev {
            Some(f) => f.write_all(b"\0").map_err(|source| BoardError::Device {
                device: "watchdog",
                source,
            }),
            None => Err(BoardError::Device {
                device: "watchdog",
                source: std::io::Error::other("not started"),
            }),
        }
    }
    fn stop(&mut self) -> Result<(), BoardError> {
        if let Some(mut f) = self.dev.take() {
            // 'V' is the magic close: the driver disarms instead of resetting.
            f.write_all(b"V").map_err(|source| BoardError::Device {
                device: "watchdog",
                source,
            })?;
        }
        Ok(())
    }
}

/// The QEMU x86_64 board.
pub struct QemuX86_64 {
    led: FileLed,
    button: FileButton,
    watchdog: Option<LinuxWatchdog>,
    console: Box<dyn Write + Send>,
}

impl QemuX86_64 {
    /// The board with its default device paths under `run_dir` (normally /run/palisade).
    pub fn new(run_dir: &std::path::Path) -> Self {
        let console: Box<dyn Write + Send> =
            match OpenOptions::new().write(true).open("/dev/console") {
                Ok(f) => Box::new(f),
                Err(_) => Box::new(std::io::stderr()),
            };
        let wd = PathBuf::from("/dev/watchdog");
        QemuX86_64 {
            led: FileLed::new(Some(run_dir.join("status-led"))),
            button: FileButton::new(run_dir.join("reset-button")),
            watchdog: wd.exists().then(|| LinuxWatchdog::new(wd)),
            console,
        }
    }

    /// A board with explicit devices (tests).
    pub fn with_devices(
        led: FileLed,
        button: FileButton,
        watchdog: Option<LinuxWatchdog>,
        console: Box<dyn Write + Send>,
    ) -> Self {
        QemuX86_64 {
            led,
            button,
            watchdog,
            console,
        }
    }
}

impl Board for QemuX86_64 {
    type Led = FileLed;
    type Button = FileButton;
    fn name(&self) -> &str {
        "qemu-x86_64"
    }
    fn status_led(&mut self) -> &mut FileLed {
        &mut self.led
    }
    fn reset_button(&mut self) -> &mut FileButton {
        &mut self.button
    }
    fn watchdog(&mut self) -> Option<&mut dyn Watchdog> {
        self.watchdog.as_mut().map(|w| w as &mut dyn Watchdog)
    }
    fn console(&mut self) -> &mut dyn Write {
        &mut self.console
    }
}
