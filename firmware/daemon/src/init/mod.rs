//! PID 1 duties (issue 4): what palisaded does before the supervisor when it is
//! the first process of the node.
//!
//! Boot order ([`boot`]): mount /proc, /sys, /dev (devtmpfs), /run, /tmp, /var
//! (tmpfs); core dumps off; load the board's kernel modules (finit_module, order from
//! /etc/palisade/modules + modules.dep); mount the `state` partition on
//! /var/lib/palisade; pick the node config (config drive > state > image seed); load
//! the drop-everything fallback nft table; bring up lo and the uplinks (static or DHCP); print a one-line banner on the console
//! (version, node name, slot; never client data).
//!
//! Process model ([`spawn_reaper`]): PID 1 stays a small reaper and runs the supervisor
//! as its child (`palisaded --state-dir .. --config .. --run-dir ..`). A reaper that
//! called waitpid(-1) inside the supervisor would steal the exit status of the
//! supervisor's own children (nft, wireguard-go); as a separate process it reaps
//! orphans only, restarts the supervisor if it dies, and shuts the node down cleanly.
//!
//! Signals to PID 1: SIGTERM and SIGUSR2 power off; SIGUSR1 and SIGINT
//! (ctrl-alt-del, e.g. QEMU `sendkey ctrl-alt-delete`) reboot.
//!
//! Everything that does not touch the kernel is a pure function with unit tests.

pub mod bless;
mod cmdline;
mod modules;
mod mounts;
mod net;
mod seed;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use bless::bless_boot_entry;
pub use cmdline::Cmdline;

/// Where the supervisor finds its state, config and runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

/// Fixed paths on the node.
pub const STATE_DIR: &str = "/var/lib/palisade";
pub const RUN_DIR: &str = "/run/palisade";
pub const SEED_CONFIG: &str = "/etc/palisade/seed/node.toml";
pub const MODULE_LIST: &str = "/etc/palisade/modules";

static BOOT_ENV: OnceLock<BootEnv> = OnceLock::new();

/// True when this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

fn console(msg: &str) {
    // PID 1's stderr is /dev/console; the banner and boot errors go there.
    eprintln!("palisade-init: {msg}");
}

/// Brings the system up. Non-fatal problems (a module that fails, a state partition
/// that does not mount) are reported on the console and booting continues in a
/// degraded but isolated state: the supervisor's firewall still loads.
pub fn boot() -> anyhow::Result<BootEnv> {
    let t0 = Instant::now();
    // The kernel starts init without PATH; children (nft, ip) are found through it.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin");
    mounts::early().context("mounting /proc, /sys, /dev, /run, /tmp, /var")?;
    core_dumps_off();
    let cmd = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());

    match modules::load_listed(Path::new(MODULE_LIST)) {
        Ok(n) => tracing_free_note(&format!("{n} kernel modules loaded")),
        Err(e) => console(&format!("module loading: {e:#}")),
    }

    let state_dir = PathBuf::from(STATE_DIR);
    std::fs::create_dir_all(&state_dir)?;
    let state_persistent = match mounts::mount_state(&state_dir) {
        Ok(()) => true,
        Err(e) => {
            console(&format!(
                "state partition not mounted ({e:#}); state is NOT persistent this boot"
            ));
            false
        }
    };
    let run_dir = PathBuf::from(RUN_DIR);
    std::fs::create_dir_all(&run_dir)?;

    let config = state_dir.join("node.toml");
    let source = seed::provide_config(&config, Path::new(SEED_CONFIG));
    let parsed = palisade_core::config::read(&config);
    let (node_name, uplinks) = match &parsed {
        Ok((c, _)) => (c.node.name.clone(), c.uplinks.clone()),
        Err(e) => {
            console(&format!("node config {}: {e}", config.display()));
            ("(unconfigured)".to_string(), Vec::new())
        }
    };
    if let Ok((c, _)) = &parsed {
        let _ = nix::unistd::sethostname(&c.node.name);
    }
    // No boot window: before any uplink is up, the drop-everything table is
    // in place (the supervisor replaces it atomically with the real one; if
    // it cannot, this one stays and forwarding stays off).
    use palisade_core::firewall::{fallback, Firewall, NftCli};
    if let Err(e) = NftCli::default().apply(&fallback()) {
        console(&format!("fallback firewall table: {e}"));
    }
    if let Err(e) = net::bring_up(&uplinks) {
        console(&format!("network: {e:#}"));
    }
    console(&format!(
        "Palisade {} | node {} | slot {} | config from {} | state {} | boot {} ms",
        env!("CARGO_PKG_VERSION"),
        node_name,
        cmd.slot().unwrap_or("?"),
        source.describe(),
        if state_persistent {
            "persistent"
        } else {
            "volatile"
        },
        t0.elapsed().as_millis()
    ));
    let env = BootEnv {
        state_dir,
        config,
        run_dir,
    };
    let _ = BOOT_ENV.set(env.clone());
    Ok(env)
}

fn tracing_free_note(msg: &str) {
    if std::env::var_os("PALISADE_INIT_VERBOSE").is_some() {
        console(msg);
    }
}

/// RLIMIT_CORE = 0 for every process (inherited) and no core pattern: a crash must
/// never write process memory (which may hold client addresses) anywhere.
fn core_dumps_off() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = std::fs::write("/proc/sys/kernel/core_pattern", "|/bin/false");
    let _ = std::fs::write("/proc/sys/fs/suid_dumpable", "0");
    // ctrl-alt-del sends SIGINT to PID 1 (a clean reboot) instead of an immediate reset.
    let _ = std::fs::write("/proc/sys/kernel/ctrl-alt-del", "0");
    // The kernel's WireGuard debug output prints peer endpoints: keep it off.
    let _ = std::fs::write("/proc/sys/kernel/printk", "4 4 1 7");
}

/// In PID 1: runs the supervisor as a child process and never returns (reaps orphans,
/// restarts the supervisor with backoff, handles shutdown signals, then
/// [`power_off`]). Outside PID 1 this does nothing and returns: the process is the
/// supervisor and reaps its own children.
pub fn spawn_reaper() {
    if !is_pid1() {
        return;
    }
    let env = BOOT_ENV.get().cloned().unwrap_or_else(|| BootEnv {
        state_dir: STATE_DIR.into(),
        config: PathBuf::from(STATE_DIR).join("node.toml"),
        run_dir: RUN_DIR.into(),
    });
    let reboot = reaper_loop(&env);
    power_off(reboot)
}

fn supervisor_command(env: &BootEnv) -> std::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/palisaded"));
    let mut c = std::process::Command::new(exe);
    c.arg("--state-dir").arg(&env.state_dir);
    c.arg("--config").arg(&env.config);
    c.arg("--run-dir").arg(&env.run_dir);
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
    // Blocked here, consumed with sigwait; std's spawn resets the mask in children.
    let _ = set.thread_block();
    let mut backoff = Backoff::default();
    let mut child = spawn_supervisor(env);
    let sock = env.run_dir.join("palisaded.sock");
    std::thread::spawn(move || health_watch(&sock));
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

/// Health as the supervisor reports it over the control socket: WireGuard up, the
/// firewall table loaded and verified, and the DNS resolver answering its canary
/// query on the tunnel side (or disabled in the node config). (Pure: takes the
/// `status` response.)
pub fn healthy(status: &serde_json::Value) -> bool {
    health_problems(status).is_empty()
}

/// What keeps the node from being healthy, for the console (no client data: the
/// status holds none).
pub fn health_problems(status: &serde_json::Value) -> Vec<String> {
    let mut p = Vec::new();
    if status["wireguard"]["up"] != true {
        p.push("wireguard not up".to_string());
    }
    if status["firewall"]["loaded"] != true {
        p.push("firewall table not loaded".to_string());
    } else if status["firewall"]["verified"] != true {
        p.push("firewall table not verified".to_string());
    }
    let dns = &status["dns"];
    match dns["state"].as_str() {
        Some("disabled") => {}
        Some("running") if dns["answering"] == true => {}
        Some("running") => p.push(match dns["canary"]["error"].as_str() {
            Some(e) => format!("dns not answering its canary query ({e})"),
            None => "dns canary pending".to_string(),
        }),
        Some("failed") => p.push(format!(
            "dns failed: {} (restarting in {} s)",
            dns["reason"].as_str().unwrap_or("?"),
            dns["retry_in_s"]
        )),
        Some(other) => p.push(format!(
            "dns {other}: {}",
            dns["reason"].as_str().unwrap_or("?")
        )),
        None => p.push("dns state unknown".to_string()),
    }
    p
}

/// Polls the supervisor until the node is healthy, prints `ready` on the console, then
/// blesses the booted boot entry (A/B: the slot is good, stop counting tries).
/// Runs in PID 1 beside the reaper; it spawns no processes (the reaper would steal
/// their exit status).
fn health_watch(sock: &Path) {
    let t0 = Instant::now();
    let cmd = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let limit = health_timeout(&cmd);
    let mut timed_out = false;
    loop {
        let st = palisade_core::control::call(
            sock,
            &palisade_core::control::Request::Status,
            Duration::from_secs(2),
        );
        if st.as_ref().is_ok_and(healthy) {
            break;
        }
        if !timed_out && t0.elapsed() > limit {
            timed_out = true;
            let problems = match &st {
                Ok(s) => health_problems(s),
                Err(e) => vec![format!("control socket: {e}")],
            };
            console(&format!("not healthy: {}", problems.join("; ")));
            // A/B safety net: on a boot-counted (untested) entry, an unhealthy node
            // reboots so systemd-boot spends a try and eventually boots the other slot.
            // On a blessed entry there is nothing to fall back to: stay up, keep polling.
            if bless::booted_entry_is_counted().unwrap_or(false) {
                console(&format!(
                    "not healthy {} s after start on an untested boot entry; rebooting so the boot loader can fall back",
                    limit.as_secs()
                ));
                let _ = kill(Pid::from_raw(1), Signal::SIGUSR1);
                return;
            }
            console(&format!(
                "not healthy {} s after start; still trying",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    console(&format!(
        "ready: wireguard up, firewall verified, dns answering ({} ms after start)",
        uptime_ms().unwrap_or(t0.elapsed().as_millis() as u64)
    ));
    match bless_boot_entry() {
        Ok(bless::BlessAction::Rename { from, to }) => {
            console(&format!("boot entry blessed: {from} -> {to}"))
        }
        Ok(bless::BlessAction::AlreadyBlessed) => console("boot entry already blessed"),
        Err(e) => console(&format!("cannot bless the boot entry: {e:#}")),
    }
}

/// How long a boot may take to become healthy: `palisade.health_timeout=SECS`
/// on the kernel command line, default 300 s.
fn health_timeout(cmd: &Cmdline) -> Duration {
    Duration::from_secs(
        cmd.get("palisade.health_timeout")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s >= 10)
            .unwrap_or(300),
    )
}

fn uptime_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

fn spawn_supervisor(env: &BootEnv) -> Option<std::process::Child> {
    match supervisor_command(env).spawn() {
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

/// Shuts the node down. In PID 1: sync, unmount the state partition (and the ESP),
/// then reboot(2) — never returns. Elsewhere (the supervisor child): asks PID 1 to
/// do it (SIGUSR1 reboot / SIGUSR2 power off) and exits; PID 1 stops the rest.
pub fn power_off(reboot: bool) -> ! {
    if !is_pid1() {
        let _ = kill(
            Pid::from_raw(1),
            if reboot {
                Signal::SIGUSR1
            } else {
                Signal::SIGUSR2
            },
        );
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
    fn health_needs_wg_and_verified_firewall() {
        let ok = serde_json::json!({"wireguard": {"up": true}, "firewall": {"loaded": true, "verified": true},
            "dns": {"state": "running", "answering": true}});
        assert!(healthy(&ok));
        for (k1, k2) in [
            ("wireguard", "up"),
            ("firewall", "loaded"),
            ("firewall", "verified"),
        ] {
            let mut bad = ok.clone();
            bad[k1][k2] = serde_json::Value::Bool(false);
            assert!(!healthy(&bad), "{k1}.{k2}");
        }
        assert!(!healthy(&serde_json::json!({"wireguard": null})));
    }

    #[test]
    fn health_needs_dns_answering_or_disabled() {
        let base = serde_json::json!({"wireguard": {"up": true}, "firewall": {"loaded": true, "verified": true}});
        let with = |dns: serde_json::Value| {
            let mut s = base.clone();
            s["dns"] = dns;
            s
        };
        assert!(healthy(&with(serde_json::json!({"state": "running", "answering": true}))));
        assert!(healthy(&with(serde_json::json!({"state": "disabled", "answering": false}))));
        // A status without DNS (an older supervisor) is not healthy.
        assert_eq!(health_problems(&base), ["dns state unknown"]);
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "running", "answering": false, "canary": null}))),
            ["dns canary pending"]
        );
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "running", "answering": false,
                "canary": {"ok": false, "error": "no answer on the tunnel IPv4 address within 1000 ms"}}))),
            ["dns not answering its canary query (no answer on the tunnel IPv4 address within 1000 ms)"]
        );
        let failed = with(serde_json::json!({"state": "failed", "reason": "dns: cannot load the [dns] policy: list",
            "retry_in_s": 4, "answering": false}));
        assert!(!healthy(&failed));
        assert_eq!(
            health_problems(&failed),
            ["dns failed: dns: cannot load the [dns] policy: list (restarting in 4 s)"]
        );
        assert_eq!(
            health_problems(&with(serde_json::json!({"state": "stopped", "reason": "no node config loaded"}))),
            ["dns stopped: no node config loaded"]
        );
    }

    #[test]
    fn health_timeout_from_cmdline() {
        assert_eq!(
            health_timeout(&Cmdline::parse("quiet")),
            Duration::from_secs(300)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=60")),
            Duration::from_secs(60)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=1")),
            Duration::from_secs(300)
        );
        assert_eq!(
            health_timeout(&Cmdline::parse("palisade.health_timeout=x")),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn supervisor_gets_boot_paths() {
        let env = BootEnv {
            state_dir: "/s".into(),
            config: "/s/node.toml".into(),
            run_dir: "/r".into(),
        };
        let c = supervisor_command(&env);
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
                "/r"
            ]
        );
    }
}
