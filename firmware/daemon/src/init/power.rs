//! Shutting the node down.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{console, is_pid1, mounts};


/// Shuts the node down. In PID 1: sync, unmount the state partition (and the ESP),
/// then reboot(2) — never returns. Elsewhere (the supervisor child): asks PID 1 to
/// do it (SIGUSR1 reboot / SIGUSR2 power off) and exits; PID 1 stops the rest.
pub fn power_off(reboot: bool) -> ! {
    if !is_pid1() {
        // An orderly reboot: the watchdog is magic-closed, not left to fire.
        crate::board::release_watchdog();
        let _ = kill(
            Pid::from_raw(1),
            if reboot {
                Signal::SIGUSR1
            } else {
                Signal::SIGUSR2
            },
        );
        crate::flush_logs();
        std::process::exit(0);
    }
    nix::unistd::sync();
    mounts::unmount_all();
    nix::unistd::sync();
    console(if reboot { "rebooting" } else { "power off" });
    let mode = if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    let _ = nix::sys::reboot::reboot(mode);
    // reboot(2) does not return on success; if it failed there is nothing left to do.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
