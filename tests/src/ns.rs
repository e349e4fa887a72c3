//! Network namespaces and the processes that run in them.
//!
//! Every namespace a test creates is a [`Netns`]; dropping it kills whatever is
//! still running inside (by pid, from `ip netns pids`) and deletes it. Every
//! long-running process is a [`Proc`]; dropping it sends SIGTERM, then SIGKILL
//! after a grace period. Both run on panic too, so a failed test leaves nothing
//! behind.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A network namespace owned by the test (deleted on drop).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `name` (must be unique: include the pid), bring `lo` up, make IPv6
    /// addresses usable at once (no DAD) and keep the defaults otherwise.
    pub fn create(name: &str) -> Result<Netns> {
        run_cmd(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("create netns {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            ns.sysctl(key, "0")?;
        }
        Ok(ns)
    }

    /// Take ownership of an existing namespace this process created (e.g. for
    /// cleanup from a signal handler thread): dropping it cleans it up.
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`, must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        run_cmd(&mut c)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// A command that runs `prog args` inside the namespace.
    pub fn command<S: AsRef<OsStr>>(&self, prog: S) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// Run a command inside the namespace; it must exit 0. Returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let mut c = self.command(prog);
        c.args(args);
        run_cmd(&mut c).with_context(|| format!("in netns {}", self.name))
    }

    /// Run a command inside the namespace and return its full output, whatever its
    /// exit status (for commands expected to fail).
    pub fn output(&self, argv: &[&str]) -> Result<Output> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let mut c = self.command(prog);
        c.args(args).stdin(Stdio::null());
        c.output()
            .with_context(|| format!("spawn {argv:?} in netns {}", self.name))
    }

    /// Run a shell snippet inside the namespace (`sh -c`); must exit 0.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run(&["sh", "-c", script])
    }

    /// Start a long-running process inside the namespace; stdout and stderr go to
    /// `<log_dir>/<label>.log`.
    pub fn spawn(&self, label: &str, log_dir: &Path, argv: &[&str]) -> Result<Proc> {
        self.spawn_env(label, log_dir, argv, &[])
    }

    pub fn spawn_env(
        &self,
        label: &str,
        log_dir: &Path,
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        // Append: a restarted process (same label) keeps its earlier log for scans.
        let log = log_dir.join(format!("{label}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut c = self.command(prog);
        c.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .with_context(|| format!("spawn {argv:?} in netns {}", self.name))?;
        Ok(Proc {
            label: label.to_string(),
            child: Some(child),
            log,
        })
    }

    /// Like [`Netns::spawn`] but waits (bounded) until the process prints a line
    /// containing `ready_marker` on stdout; stderr goes to the log file.
    pub fn spawn_ready(
        &self,
        label: &str,
        log_dir: &Path,
        argv: &[&str],
        ready_marker: &str,
        within: Duration,
    ) -> Result<Proc> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let log = log_dir.join(format!("{label}.log"));
        let err = File::create(&log)?;
        let mut c = self.command(prog);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = c
            .spawn()
            .with_context(|| format!("spawn {argv:?} in netns {}", self.name))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let marker = ready_marker.to_string();
        std::thread::spawn(move || {
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !ready && line.contains(&marker) {
                    ready = true;
                    let _ = tx.send(());
                }
            }
        });
        let mut p = Proc {
            label: label.to_string(),
            child: Some(child),
            log,
        };
        match rx.recv_timeout(within) {
            Ok(()) => Ok(p),
            Err(_) => {
                let tail = p.log_tail(20);
                p.kill();
                bail!(
                    "{label} in netns {} not ready within {within:?}; log:\n{tail}",
                    self.name
                )
            }
        }
    }

    /// Run `f` on a thread that has entered this namespace (sockets it creates
    /// live there). The calling thread is untouched.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let fd = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns {path}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("probe thread panicked"))?
        })
    }

    /// Pids of every process whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever is still inside was started by this test (the namespace name is
        // unique to this process): end it by pid, then delete the namespace.
        let pids = self.pids();
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in self.pids() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process the test started (SIGTERM, then SIGKILL, on drop).
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let t = self.log_text();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Still running (not exited)?
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send a signal to the process (by pid).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} already reaped", self.label))?;
        kill(Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("signal {sig} to {}", self.label))
    }

    /// SIGTERM and wait up to `grace`; SIGKILL after that. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} already stopped", self.label))?;
        if let Ok(Some(st)) = child.try_wait() {
            return Ok(st);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL at once (used on failure paths).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(2));
        }
    }
}

/// Run a command to completion; error (with its stderr) unless it exits 0.
pub fn run_cmd(c: &mut Command) -> Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            c,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll `f` every 50 ms until it returns `Some`, or fail after `within`.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Remove everything this process created under the `pal-<pid>-` prefix: every
/// namespace (and, by pid, every process inside it) and every temp directory.
pub fn cleanup_all_of_this_process() {
    let prefix = format!("pal-{}-", std::process::id());
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    for line in String::from_utf8_lossy(&list).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&prefix) {
            drop(Netns::adopt(name));
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // UAPI sockets a killed wireguard-go left behind: `pw<pid><bed><n|cN>.sock`.
    for e in std::fs::read_dir("/var/run/wireguard")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_our_socket(&name, std::process::id()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `pw<pid><one base36 char>(n|c<digits>).sock` for this pid exactly.
fn is_our_socket(name: &str, pid: u32) -> bool {
    let Some(rest) = name
        .strip_prefix(&format!("pw{pid}"))
        .and_then(|r| r.strip_suffix(".sock"))
    else {
        return false;
    };
    let mut chars = rest.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        return false;
    }
    let role: String = chars.collect();
    role == "n"
        || role
            .strip_prefix('c')
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
}

/// On SIGINT/SIGTERM (Ctrl-C during `cargo test` or the demo), clean up
/// everything of this process, then exit 130. Installed once per process.
pub fn cleanup_on_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if signals.forever().next().is_some() {
                        eprintln!("\ninterrupted: removing this run's namespaces and processes");
                        cleanup_all_of_this_process();
                        std::process::exit(130);
                    }
                });
            }
            Err(e) => eprintln!("warning: no cleanup on Ctrl-C ({e})"),
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn socket_names_match_only_this_pid() {
        use super::is_our_socket;
        assert!(is_our_socket("pw279230n.sock", 27923));
        assert!(is_our_socket("pw27923ac12.sock", 27923));
        assert!(!is_our_socket("pw279230n.sock", 2792));
        assert!(!is_our_socket("pw279230n.sock", 279230));
        assert!(!is_our_socket("wg0.sock", 27923));
        assert!(!is_our_socket("pw27923xx.sock", 27923));
    }
}
