//! PID 1's process model: the supervisor runs as a child; PID 1 reaps
//! orphans, restarts the supervisor with backoff, and shuts down cleanly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::boot::{boot_env, BootEnv};
use super::{console, health, is_pid1, power_off};


/// In PID 1: runs the supervisor as a child process and never returns (reaps orphans,
/// restarts the supervisor with backoff, handles shutdown signals, then
/// [`power_off`]). Outside PID 1 this does nothing and returns: the process is the
/// supervisor and reaps its own children.
pub fn spawn_reaper() {
    if !is_pid1() {
        return;
    }
    let env = boot_env();
    let reboot = reaper_loop(&env);
    power_off(reboot)
}

/// The supervisor's arguments: the boot paths, the serial console for
/// enrolment, and the fleet poll interval when the command line sets one
/// (`palisade.fleet_poll=SECS`, a test hook: production polls every 60 s).
fn supervisor_command(env: &BootEnv, cmd: &super::Cmdline) -> std::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/palisaded"));
    let mut c = std::process::Command::new(exe);
    c.arg("--state-dir").arg(&env.state_dir);
    c.arg("--config").arg(&env.config);
    c.arg("--run-dir").arg(&env.run_dir);
    if let Some(dev) = crate::fleet::console_device(cmd) {
        c.arg("--enrol-console").arg(dev);
    }
    if let Some(secs) = cmd.get("palisade.fleet_poll").and_then(|v| v.parse::<u64>().ok()) {
        c.arg("--fleet-poll-secs").arg(secs.to_string());
    }
    c
}

/// Returns whether to reboot (true) or power off (false).
fn reaper_loop(env: &BootEnv) -> bool {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    // Blocked here, consumed with sigwait. Children inherit the mask: the
    // supervisor unblocks everything first thing (main.rs).
    let _ = set.thread_block();
    let mut backoff = Backoff::default();
    let mut child = spawn_supervisor(env);
    let supervisor_pid = Arc::new(AtomicI32::new(pid_of(&child)));
    let cmd = super::Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if cmd.get("palisade.test_hooks") == Some("1") {
        let pid = supervisor_pid.clone();
        std::thread::spawn(move || test_hooks(&pid));
    }
    let sock = env.run_dir.join("palisaded.sock");
    std::thread::spawn(move || health::health_watch(&sock));
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sig {
            Signal::SIGCHLD => {
                for (pid, status) in reap_all() {
                    if Some(pid) == child.as_ref().map(|c| Pid::from_raw(c.id() as i32)) {
                        let delay = backoff.next(Instant::now());
                        console(&format!(
                            "supervisor exited ({}); restarting in {} s",
                            describe(status),
                            delay.as_secs()
                        ));
                        std::thread::sleep(delay);
                        child = spawn_supervisor(env);
                        supervisor_pid.store(pid_of(&child), Ordering::SeqCst);
                    }
                }
            }
            Signal::SIGHUP => {
                if let Some(c) = &child {
                    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGHUP);
                }
            }
            Signal::SIGINT | Signal::SIGUSR1 => {
                stop_everything(child.take());
                return true;
            }
            _ => {
                stop_everything(child.take());
                return false;
            }
        }
    }
}

fn pid_of(child: &Option<std::process::Child>) -> i32 {
    child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
}

/// The virtio-serial port of the test hooks.
const TEST_PORT: &str = "palisade.test";

/// Test hooks, only with `palisade.test_hooks=1` on the kernel command line
/// (docs/testing.md): lines read from the virtio-serial port `palisade.test`,
/// which only the hypervisor's owner can write. `stop-supervisor`: SIGSTOP
/// the supervisor (a hung palisaded, for the watchdog test);
/// `kill-supervisor`: SIGKILL it (a crash: PID 1 restarts it, and the new
/// one must re-arm the watchdog before it fires).
fn test_hooks(supervisor: &AtomicI32) {
    use std::io::BufRead;
    // The port's name arrives from the host shortly after virtio_console loads.
    let mut found = None;
    for _ in 0..60 {
        found = palisade_board::linux::find_virtio_port(Path::new("/sys/class/virtio-ports"), Path::new("/dev"), TEST_PORT);
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some(dev) = found else {
        console(&format!("test hooks: no virtio-serial port {TEST_PORT}"));
        return;
    };
    console(&format!("test hooks on {}", dev.display()));
    loop {
        let f = match std::fs::File::open(&dev) {
            Ok(f) => f,
            Err(e) => {
                console(&format!("test hooks: {}: {e}", dev.display()));
                return;
            }
        };
        // Lines are short; a port without a host reads end-of-file: wait and reopen.
        for line in std::io::BufReader::new(f).take(1 << 16).lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "stop-supervisor" => {
                    let pid = supervisor.load(Ordering::SeqCst);
                    if pid > 0 && kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                        console("test hook: supervisor stopped");
                    }
                }
                "kill-supervisor" => {
                    let pid = supervisor.load(Ordering::SeqCst);
                    if pid > 0 && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                        console("test hook: supervisor killed");
                    }
                }
                "" => {}
                other => console(&format!("test hook: unknown command {:?}", other.chars().take(40).collect::<String>())),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn spawn_supervisor(env: &BootEnv) -> Option<std::process::Child> {
    let cmd = super::Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    match supervisor_command(env, &cmd).spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            console(&format!("cannot start the supervisor: {e}"));
            None
        }
    }
}

fn describe(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, c) => format!("exit code {c}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
        other => format!("{other:?}"),
    }
}

/// Reaps every exited child without blocking.
fn reap_all() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(s) => {
                if let Some(p) = s.pid() {
                    out.push((p, s));
                }
            }
        }
    }
    out
}

/// SIGTERM the supervisor (it exits cleanly, the firewall stays loaded), wait up to
/// 10 s, then SIGTERM and SIGKILL everything else.
fn stop_everything(child: Option<std::process::Child>) {
    console("shutting down");
    if let Some(c) = child {
        let pid = Pid::from_raw(c.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        'wait: while Instant::now() < deadline {
            for (p, _) in reap_all() {
                if p == pid {
                    break 'wait;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    reap_all();
}

/// Restart delays for a crashing supervisor: 1, 2, 4 .. 30 s; reset after 60 s of health.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Instant>,
    delay: u64,
}

impl Backoff {
    fn next(&mut self, now: Instant) -> Duration {
        let healthy_for = self
            .last
            .map(|l| now.duration_since(l))
            .unwrap_or(Duration::MAX);
        self.delay = if healthy_for > Duration::from_secs(60) {
            1
        } else {
            (self.delay * 2).clamp(1, 30)
        };
        self.last = Some(now);
        Duration::from_secs(self.delay)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert_eq!(b.next(t), Duration::from_secs(1));
        assert_eq!(b.next(t + Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(b.next(t + Duration::from_secs(4)), Duration::from_secs(4));
        for i in 0..10 {
            b.next(t + Duration::from_secs(5 + i));
        }
        assert_eq!(b.next(t + Duration::from_secs(20)), Duration::from_secs(30));
        assert_eq!(b.next(t + Duration::from_secs(200)), Duration::from_secs(1));
    }

    #[test]
    fn supervisor_gets_boot_paths() {
        let env = BootEnv {
            state_dir: "/s".into(),
            config: "/s/node.toml".into(),
            run_dir: "/r".into(),
        };
        let cmd = super::super::Cmdline::parse("console=ttyS0,115200 palisade.fleet_poll=3 quiet");
        let c = supervisor_command(&env, &cmd);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--state-dir",
                "/s",
                "--config",
                "/s/node.toml",
                "--run-dir",
                "/r",
                "--enrol-console",
                "/dev/ttyS0",
                "--fleet-poll-secs",
                "3"
            ]
        );
    }
}
