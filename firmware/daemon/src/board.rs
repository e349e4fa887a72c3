//! The board (docs/board.md): palisaded drives the devices the installed board
//! definition names (`--board`, default `/usr/share/palisade/board.toml`,
//! `[devices]`): the hardware watchdog, the status LED and the reset button.
//!
//! - Watchdog: fed from a dedicated OS thread (the board thread) only while
//!   every subsystem's heartbeat ([`Heartbeats`]) is fresh: the reconcile
//!   loop, the async runtime, the DNS task, the fleet and update tasks. A
//!   stale heartbeat stops the feeding (the board resets `timeout_secs`
//!   later); a stopped supervisor (SIGSTOP) feeds nothing at all. An orderly
//!   stop or reboot by palisaded magic-closes it ([`release_watchdog`]).
//! - Status LED: one [`LedState`] chosen by [`select`] (pure) from health,
//!   updates, revocation and the button, shown as a pattern ([`level`]);
//!   a virtio-serial LED also gets the state's name as a line.
//! - Reset button ([`ButtonTracker`], pure): a short press reboots cleanly;
//!   held 10 s the LED shows `factory-reset`, and on release the state
//!   partition is emptied ([`wipe_state`]) and the node reboots; the next
//!   boot seeds it again (config drive or image seed, a new identity).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use palisade_board::linux::{LinuxBoard, LinuxLed, LinuxWatchdog, StatusLed};
use palisade_board::{Board, BoardDef, DevicesDef, Watchdog};
use palisade_board::{InputPin, OutputPin};

/// Held this long, the reset button means factory reset.
pub const LONG_PRESS: Duration = Duration::from_secs(10);
/// The board thread's period (LED patterns, button polling).
const TICK: Duration = Duration::from_millis(50);
/// Feed period (every timeout the board definition allows is at least 2 s).
const FEED_EVERY: Duration = Duration::from_millis(1000);
/// `bootstatus` bit: the last reset was the watchdog's.
const WDIOF_CARDRESET: u32 = 0x20;

// ---------------------------------------------------------------------------
// Heartbeats

#[derive(Debug, Clone, Copy)]
struct Beat {
    last: Instant,
    max_age: Duration,
    /// Waiting on a timer or a wake-up, not working: fresh while the
    /// runtime is (which the runtime's own heartbeat covers).
    parked: bool,
}

/// The subsystems' heartbeats: name -> last tick and how old it may get.
#[derive(Debug, Default)]
pub struct Heartbeats {
    beats: Mutex<BTreeMap<&'static str, Beat>>,
}

/// One subsystem's heartbeat.
#[derive(Clone)]
pub struct Heartbeat {
    all: Arc<Heartbeats>,
    name: &'static str,
}

impl Heartbeat {
    /// The subsystem is alive and working (a fresh tick; not parked).
    pub fn tick(&self) {
        self.set(Instant::now(), false);
    }

    /// The subsystem is waiting for its timer or a wake-up; the next
    /// [`Heartbeat::tick`] starts counting again.
    pub fn park(&self) {
        self.set(Instant::now(), true);
    }

    fn set(&self, now: Instant, parked: bool) {
        if let Some(b) = self
            .all
            .beats
            .lock()
            .expect("heartbeats poisoned")
            .get_mut(self.name)
        {
            b.last = now;
            b.parked = parked;
        }
    }
}

impl Heartbeats {
    pub fn new() -> Arc<Heartbeats> {
        Arc::new(Heartbeats::default())
    }

    /// Registers `name` (fresh as of now) that must tick at least every `max_age`.
    pub fn register(self: &Arc<Self>, name: &'static str, max_age: Duration) -> Heartbeat {
        self.register_at(name, max_age, Instant::now())
    }

    fn register_at(
        self: &Arc<Self>,
        name: &'static str,
        max_age: Duration,
        now: Instant,
    ) -> Heartbeat {
        self.beats.lock().expect("heartbeats poisoned").insert(
            name,
            Beat {
                last: now,
                max_age,
                parked: false,
            },
        );
        Heartbeat {
            all: self.clone(),
            name,
        }
    }

    /// The first subsystem (by name) whose heartbeat is older than its
    /// limit at `now`, with its age; None when all are fresh.
    pub fn stale(&self, now: Instant) -> Option<(&'static str, Duration)> {
        self.beats
            .lock()
            .expect("heartbeats poisoned")
            .iter()
            .find_map(|(name, b)| {
                let age = now.saturating_duration_since(b.last);
                (!b.parked && age > b.max_age).then_some((*name, age))
            })
    }
}

// ---------------------------------------------------------------------------
// LED states and patterns

/// What the status LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedState {
    /// Until the node first passes the health gate (slow blink).
    Booting,
    /// Healthy (on).
    Healthy,
    /// Health lost after the gate had passed (fast blink; reason on the console).
    Degraded,
    /// An update is downloading, writing or rebooting (double blink).
    Updating,
    /// The fleet revoked this node (off).
    Revoked,
    /// The reset button was held 10 s: factory reset (very fast blink).
    FactoryReset,
}

impl LedState {
    pub fn name(self) -> &'static str {
        match self {
            LedState::Booting => "booting",
            LedState::Healthy => "healthy",
            LedState::Degraded => "degraded",
            LedState::Updating => "updating",
            LedState::Revoked => "revoked",
            LedState::FactoryReset => "factory-reset",
        }
    }
}

/// What the LED state is chosen from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The button asked for a factory reset.
    pub factory_reset: bool,
    pub revoked: bool,
    pub updating: bool,
    /// Why the node is not healthy (empty: healthy).
    pub problems: Vec<String>,
    /// The node has been healthy once since this supervisor started.
    pub gate_passed: bool,
}

/// The state the LED shows (pure). Precedence: factory reset, revoked,
/// updating, booting, degraded, healthy.
pub fn select(i: &Inputs) -> LedState {
    if i.factory_reset {
        LedState::FactoryReset
    } else if i.revoked {
        LedState::Revoked
    } else if i.updating {
        LedState::Updating
    } else if !i.gate_passed {
        LedState::Booting
    } else if !i.problems.is_empty() {
        LedState::Degraded
    } else {
        LedState::Healthy
    }
}

/// The LED's level in `state`, `t` into the state (pure).
pub fn level(state: LedState, t: Duration) -> bool {
    let ms = t.as_millis() as u64;
    match state {
        LedState::Healthy => true,
        LedState::Revoked => false,
        // 1 s on, 1 s off.
        LedState::Booting => ms % 2000 < 1000,
        // 4 Hz.
        LedState::Degraded => ms % 250 < 125,
        // Two 150 ms flashes every 1.5 s.
        LedState::Updating => matches!(ms % 1500, 0..=149 | 300..=449),
        // 10 Hz.
        LedState::FactoryReset => ms % 100 < 50,
    }
}

/// Follows the inputs over time: latches the health gate and says, once per
/// change, what the console should print.
#[derive(Debug, Default)]
pub struct StateTracker {
    gate_passed: bool,
    shown: Option<LedState>,
    problems: Vec<String>,
}

impl StateTracker {
    /// The state for `i` (its `gate_passed` is this tracker's latch) and the
    /// console line for a change, if any.
    pub fn update(&mut self, mut i: Inputs) -> (LedState, Option<String>) {
        if i.problems.is_empty() && !i.updating && !i.revoked {
            self.gate_passed = true;
        }
        i.gate_passed = self.gate_passed;
        let s = select(&i);
        let msg = match s {
            LedState::Degraded if self.shown != Some(s) || self.problems != i.problems => {
                Some(format!("board: status degraded: {}", i.problems.join("; ")))
            }
            _ if self.shown == Some(s) => None,
            LedState::Healthy if self.shown == Some(LedState::Degraded) => {
                Some("board: status healthy again".to_string())
            }
            _ => Some(format!("board: status {}", s.name())),
        };
        self.shown = Some(s);
        self.problems = if s == LedState::Degraded {
            i.problems
        } else {
            Vec::new()
        };
        (s, msg)
    }
}

// ---------------------------------------------------------------------------
// Button

/// What the reset button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    /// Held [`LONG_PRESS`] and still held: the LED confirms.
    LongHeld,
    /// Released before [`LONG_PRESS`]: reboot.
    Short,
    /// Released after [`LONG_PRESS`]: factory reset.
    Long,
}

/// Press and release timing (pure: takes the level and `now`).
#[derive(Debug, Default)]
pub struct ButtonTracker {
    since: Option<Instant>,
    long_announced: bool,
}

impl ButtonTracker {
    pub fn poll(&mut self, pressed: bool, now: Instant) -> Option<ButtonEvent> {
        match (self.since, pressed) {
            (None, true) => {
                self.since = Some(now);
                self.long_announced = false;
                None
            }
            (Some(t), true)
                if !self.long_announced && now.saturating_duration_since(t) >= LONG_PRESS =>
            {
                self.long_announced = true;
                Some(ButtonEvent::LongHeld)
            }
            (Some(t), false) => {
                self.since = None;
                Some(if now.saturating_duration_since(t) >= LONG_PRESS {
                    ButtonEvent::Long
                } else {
                    ButtonEvent::Short
                })
            }
            _ => None,
        }
    }
}

/// Empties the state partition mounted at `dir` (factory reset): every file
/// and directory on it except `lost+found`, each file removed on its own,
/// then the directory synced. Returns how many entries were removed.
pub fn wipe_state(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == "lost+found" {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        n += 1;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(n)
}

// ---------------------------------------------------------------------------
// The board thread

/// Requests to the board thread.
enum Cmd {
    /// Magic-close the watchdog (orderly stop or reboot), then answer.
    ReleaseWatchdog(mpsc::Sender<()>),
}

/// What the rest of palisaded holds of the board.
#[derive(Clone)]
pub struct BoardHandle {
    cmds: mpsc::Sender<Cmd>,
    /// The state the supervisor's status task chose.
    state: Arc<Mutex<LedState>>,
    /// Whether the board has an LED (the status task runs only then).
    pub has_led: bool,
}

static HANDLE: OnceLock<BoardHandle> = OnceLock::new();
/// Set once the watchdog has been magic-closed (nothing feeds it after).
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Magic-closes the watchdog before an orderly stop or reboot by this
/// process (waits up to 2 s for the board thread). Nothing without a board.
pub fn release_watchdog() {
    if RELEASED.load(Ordering::SeqCst) {
        return;
    }
    if let Some(h) = HANDLE.get() {
        let (tx, rx) = mpsc::channel();
        if h.cmds.send(Cmd::ReleaseWatchdog(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

impl BoardHandle {
    pub fn set_state(&self, s: LedState) {
        *self.state.lock().expect("led state poisoned") = s;
    }
}

/// Reads the board definition's devices. `Ok(None)`: no file (no devices).
pub fn load_devices(path: &Path) -> Result<Option<(String, DevicesDef)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let def = BoardDef::from_str(&text, path).map_err(|e| e.to_string())?;
    Ok(Some((def.name, def.devices)))
}

/// What the reset button may do: reboot and wipe only as PID 1's child on
/// the node (never a host's init or a test's directory by accident).
struct Actions {
    state_dir: PathBuf,
    can_reboot: bool,
}

impl Actions {
    fn reboot(&self, wd: &mut Option<LinuxWatchdog>) {
        if !self.can_reboot {
            tracing::warn!("board: not PID 1's child, so not rebooting");
            return;
        }
        // On the board thread itself: release_watchdog() would wait on it.
        magic_close(wd);
        crate::init::power_off(true);
    }
}

/// Magic-closes the watchdog (an orderly stop or reboot); nothing feeds it
/// after. Only on the board thread, which owns the device.
fn magic_close(wd: &mut Option<LinuxWatchdog>) {
    if let Some(w) = wd.as_mut() {
        match w.stop() {
            Ok(()) => tracing::info!("board: watchdog released (magic close)"),
            Err(e) => tracing::warn!("board: watchdog magic close: {e}"),
        }
    }
    RELEASED.store(true, Ordering::SeqCst);
}

/// Starts the board from the definition at `board_file`: opens the devices,
/// arms the watchdog and runs the board thread. Returns None when the board
/// has no devices.
pub fn start(
    board_file: &Path,
    state_dir: &Path,
    heartbeats: Arc<Heartbeats>,
) -> Option<BoardHandle> {
    let (name, devices) = match load_devices(board_file) {
        Ok(Some(d)) => d,
        Ok(None) => {
            tracing::info!("board: no devices ({} not found)", board_file.display());
            return None;
        }
        Err(e) => {
            tracing::error!("board: no devices: {e}");
            return None;
        }
    };
    if devices == DevicesDef::default() {
        tracing::info!("board: {name}: no [devices] in {}", board_file.display());
        return None;
    }
    let mut board = LinuxBoard::open(&name, &devices);
    // A virtio-serial port's name arrives from the host shortly after its
    // driver loads: the board thread tries a missing LED again for 10 s.
    let led_retry = devices.led.clone().filter(|_| board.status_led().is_none());
    for m in &board.missing {
        if led_retry.is_none() || !m.starts_with("board device led") {
            tracing::warn!("board: {m}; running without it");
        }
    }
    let (led, button, mut watchdog) = board.into_parts();
    if let Some(w) = &watchdog {
        // Never arm a real watchdog unless this is the node: a supervisor run
        // by hand (or a test) on a host with a board file must not reset it.
        if w.is_char_device() && !crate::init::pid1_is_palisaded() {
            tracing::warn!("board: {} is a watchdog device and this is not the node (PID 1 is not palisaded); not opening it", w.path().display());
            watchdog = None;
        } else if w.is_char_device() {
            report_bootstatus(w.path());
        }
    }
    let (tx, rx) = mpsc::channel();
    let handle = BoardHandle {
        cmds: tx,
        state: Arc::new(Mutex::new(LedState::Booting)),
        has_led: devices.led.is_some(),
    };
    let _ = HANDLE.set(handle.clone());
    let actions = Actions {
        state_dir: state_dir.to_path_buf(),
        can_reboot: std::os::unix::process::parent_id() == 1 && crate::init::pid1_is_palisaded(),
    };
    let state = handle.state.clone();
    let spawned = std::thread::Builder::new()
        .name("board".into())
        .spawn(move || {
            board_thread(
                led, led_retry, button, watchdog, heartbeats, state, rx, actions,
            )
        });
    if let Err(e) = spawned {
        tracing::error!("board: cannot start the board thread: {e}");
        return None;
    }
    Some(handle)
}

/// Says whether the last reset was the watchdog's (`bootstatus` of the
/// device's sysfs node, falling back to watchdog0).
fn report_bootstatus(dev: &Path) {
    use std::os::unix::fs::MetadataExt;
    let by_rdev = std::fs::metadata(dev).ok().map(|m| {
        let r = m.rdev();
        PathBuf::from(format!(
            "/sys/dev/char/{}:{}/bootstatus",
            nix::sys::stat::major(r),
            nix::sys::stat::minor(r)
        ))
    });
    let status = by_rdev
        .into_iter()
        .chain([PathBuf::from("/sys/class/watchdog/watchdog0/bootstatus")])
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok());
    if status.is_some_and(|s| s & WDIOF_CARDRESET != 0) {
        tracing::warn!("board: the previous boot ended in a watchdog reset");
    }
}

#[allow(clippy::too_many_arguments)]
fn board_thread(
    mut led: Option<LinuxLed>,
    mut led_retry: Option<palisade_board::LedDef>,
    mut button: Option<palisade_board::linux::EvdevButton>,
    mut watchdog: Option<LinuxWatchdog>,
    heartbeats: Arc<Heartbeats>,
    state: Arc<Mutex<LedState>>,
    cmds: mpsc::Receiver<Cmd>,
    actions: Actions,
) {
    let mut armed = false;
    let mut open_error_logged = false;
    let mut stale_logged: Option<&'static str> = None;
    let mut last_feed: Option<Instant> = None;
    let mut shown: Option<(LedState, Instant)> = None;
    let mut level_now: Option<bool> = None;
    let mut tracker = ButtonTracker::default();
    let mut factory = false;
    let mut tick_no: u64 = 0;
    loop {
        let now = Instant::now();
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::ReleaseWatchdog(ack) => {
                    magic_close(&mut watchdog);
                    let _ = ack.send(());
                }
            }
        }
        // Watchdog.
        if let Some(w) = watchdog.as_mut().filter(|_| !RELEASED.load(Ordering::SeqCst)) {
            if !armed {
                // A restarted supervisor reopens it quickly: the old one's
                // descriptor may take a moment to close (EBUSY meanwhile).
                match w.start() {
                    Ok(()) => {
                        armed = true;
                        last_feed = Some(now);
                        let t = w
                            .effective_timeout
                            .map(|t| format!("{t} s"))
                            .unwrap_or_else(|| "not settable (not a watchdog device)".into());
                        tracing::info!("board: watchdog {} armed, timeout {t}", w.path().display());
                    }
                    Err(e) if !open_error_logged => {
                        open_error_logged = true;
                        tracing::error!("board: cannot arm the watchdog: {e}; retrying");
                    }
                    Err(_) => {}
                }
            } else if last_feed.is_none_or(|t| now.duration_since(t) >= FEED_EVERY) {
                match heartbeats.stale(now) {
                    None => {
                        if let Err(e) = w.feed() {
                            tracing::warn!("board: watchdog feed: {e}");
                        }
                        last_feed = Some(now);
                        if let Some(s) = stale_logged.take() {
                            tracing::warn!("board: watchdog fed again ({s} is back)");
                        }
                    }
                    Some((name, age)) => {
                        if stale_logged != Some(name) {
                            stale_logged = Some(name);
                            tracing::error!(
                                "board: watchdog not fed: {name} silent for {} s",
                                age.as_secs()
                            );
                        }
                        // Not fed: the board resets when the timeout runs out.
                        last_feed = Some(now);
                    }
                }
            }
        }
        // Button.
        if let Some(b) = button.as_mut() {
            let pressed = b.is_high().unwrap_or(false);
            match tracker.poll(pressed, now) {
                Some(ButtonEvent::LongHeld) => {
                    factory = true;
                    tracing::warn!("board: reset button held 10 s: factory reset on release");
                }
                Some(ButtonEvent::Short) => {
                    tracing::warn!("board: reset button: reboot");
                    actions.reboot(&mut watchdog);
                }
                Some(ButtonEvent::Long) => {
                    tracing::warn!("board: reset button held 10 s: factory reset");
                    if actions.can_reboot {
                        match wipe_state(&actions.state_dir) {
                            Ok(n) => tracing::warn!(
                                "board: factory reset: {n} entries removed from {}",
                                actions.state_dir.display()
                            ),
                            Err(e) => tracing::error!(
                                "board: factory reset: {}: {e}",
                                actions.state_dir.display()
                            ),
                        }
                        nix::unistd::sync();
                    } else {
                        tracing::warn!("board: not PID 1's child, so the state is kept");
                    }
                    actions.reboot(&mut watchdog);
                    factory = false;
                }
                None => {}
            }
        }
        // LED (a port that was not there at start: again every 500 ms for 10 s).
        if let Some(def) = led_retry
            .as_ref()
            .filter(|_| led.is_none() && tick_no.is_multiple_of(10))
        {
            match LinuxLed::open(def) {
                Ok(l) => {
                    led = Some(l);
                    led_retry = None;
                }
                Err(e) if tick_no >= 200 => {
                    tracing::warn!("board: {e}; running without it");
                    led_retry = None;
                }
                Err(_) => {}
            }
        }
        tick_no += 1;
        if let Some(l) = led.as_mut() {
            let want = if factory {
                LedState::FactoryReset
            } else {
                *state.lock().expect("led state poisoned")
            };
            if shown.is_none_or(|(s, _)| s != want) {
                shown = Some((want, now));
                l.show_state(want.name());
            }
            let (s, since) = shown.expect("set above");
            let on = level(s, now.duration_since(since));
            if level_now != Some(on) {
                level_now = Some(on);
                let _ = if on { l.set_high() } else { l.set_low() };
            }
        }
        std::thread::sleep(TICK);
    }
}

/// The status task: every 2 s, the LED state from the node's health,
/// updates and revocation; a console line per change.
pub async fn status_task(
    handle: BoardHandle,
    engine: crate::supervisor::Shared,
    dns: crate::supervisor::Dns,
    updates: Option<Arc<crate::update::Updater>>,
    fleet: Option<Arc<crate::fleet::Fleet>>,
) {
    let mut tracker = StateTracker::default();
    let mut t = tokio::time::interval(Duration::from_secs(2));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        let (mut status, uplinks) = crate::supervisor::blocking(&engine, |e| {
            let up: Vec<String> = e
                .spec()
                .map(|s| s.uplinks.iter().map(|u| u.interface.clone()).collect())
                .unwrap_or_default();
            (e.status(), up)
        })
        .await;
        status["dns"] = dns.status();
        let mut problems = crate::init::health_problems(&status);
        problems.extend(uplink_problems(Path::new("/sys/class/net"), &uplinks));
        let inputs = Inputs {
            factory_reset: false,
            revoked: status["revoked"] == true || fleet.as_ref().is_some_and(|f| f.is_revoked()),
            updating: updates.as_ref().is_some_and(|u| u.updating()),
            problems,
            gate_passed: false,
        };
        let (s, msg) = tracker.update(inputs);
        match msg {
            Some(m) if s == LedState::Degraded => tracing::warn!("{m}"),
            Some(m) => tracing::info!("{m}"),
            None => {}
        }
        handle.set_state(s);
    }
}

/// Uplinks without carrier (`<net>/<if>/carrier` is 0; an interface that
/// does not exist or is down reads as an error, also reported).
pub fn uplink_problems(net: &Path, uplinks: &[String]) -> Vec<String> {
    uplinks
        .iter()
        .filter_map(
            |u| match std::fs::read_to_string(net.join(u).join("carrier")) {
                Ok(s) if s.trim() == "1" => None,
                Ok(_) => Some(format!("uplink {u} has no carrier")),
                Err(_) => Some(format!("uplink {u} is down or missing")),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_stale_names_the_first_silent_subsystem() {
        let hb = Heartbeats::new();
        let t0 = Instant::now();
        let r = hb.register_at("reconcile", Duration::from_secs(30), t0);
        let d = hb.register_at("dns", Duration::from_secs(10), t0);
        assert_eq!(hb.stale(t0 + Duration::from_secs(10)), None);
        assert_eq!(
            hb.stale(t0 + Duration::from_secs(11)),
            Some(("dns", Duration::from_secs(11)))
        );
        // Parked (waiting on a timer): never stale on its own.
        d.park();
        let now = Instant::now();
        assert_eq!(hb.stale(now + Duration::from_secs(29)), None);
        assert_eq!(
            hb.stale(now + Duration::from_secs(40)).map(|s| s.0),
            Some("reconcile")
        );
        r.tick();
        d.tick();
        let now = Instant::now();
        assert_eq!(hb.stale(now + Duration::from_secs(5)), None);
        assert_eq!(
            hb.stale(now + Duration::from_secs(20)).map(|s| s.0),
            Some("dns")
        );
    }

    fn inputs(problems: &[&str]) -> Inputs {
        Inputs {
            problems: problems.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn selection_precedence() {
        let mut i = Inputs {
            gate_passed: true,
            ..Default::default()
        };
        assert_eq!(select(&i), LedState::Healthy);
        i.problems = vec!["dns".into()];
        assert_eq!(select(&i), LedState::Degraded);
        i.gate_passed = false;
        assert_eq!(select(&i), LedState::Booting);
        i.updating = true;
        assert_eq!(select(&i), LedState::Updating);
        i.revoked = true;
        assert_eq!(select(&i), LedState::Revoked);
        i.factory_reset = true;
        assert_eq!(select(&i), LedState::FactoryReset);
    }

    #[test]
    fn tracker_boots_then_degrades_and_recovers_with_one_line_per_change() {
        let mut t = StateTracker::default();
        assert_eq!(
            t.update(inputs(&["wireguard not up"])),
            (LedState::Booting, Some("board: status booting".into()))
        );
        assert_eq!(
            t.update(inputs(&["dns canary pending"])),
            (LedState::Booting, None)
        );
        assert_eq!(
            t.update(inputs(&[])),
            (LedState::Healthy, Some("board: status healthy".into()))
        );
        assert_eq!(t.update(inputs(&[])), (LedState::Healthy, None));
        let (s, m) = t.update(inputs(&["uplink eth0 has no carrier"]));
        assert_eq!(
            (s, m.as_deref()),
            (
                LedState::Degraded,
                Some("board: status degraded: uplink eth0 has no carrier")
            )
        );
        assert_eq!(
            t.update(inputs(&["uplink eth0 has no carrier"])),
            (LedState::Degraded, None)
        );
        // A different reason is printed again.
        let (_, m) = t.update(inputs(&[
            "uplink eth0 has no carrier",
            "dns canary pending",
        ]));
        assert_eq!(
            m.as_deref(),
            Some("board: status degraded: uplink eth0 has no carrier; dns canary pending")
        );
        assert_eq!(
            t.update(inputs(&[])),
            (
                LedState::Healthy,
                Some("board: status healthy again".into())
            )
        );
        // An update while healthy, then back.
        let (s, _) = t.update(Inputs {
            updating: true,
            ..Default::default()
        });
        assert_eq!(s, LedState::Updating);
        assert_eq!(t.update(inputs(&[])).0, LedState::Healthy);
        // Being revoked does not pass the gate.
        let mut t = StateTracker::default();
        assert_eq!(
            t.update(Inputs {
                revoked: true,
                ..Default::default()
            })
            .0,
            LedState::Revoked
        );
        assert_eq!(t.update(inputs(&["x"])).0, LedState::Booting);
    }

    #[test]
    fn patterns() {
        let ms = |m| Duration::from_millis(m);
        assert!((0..5000)
            .step_by(50)
            .all(|m| level(LedState::Healthy, ms(m))));
        assert!((0..5000)
            .step_by(50)
            .all(|m| !level(LedState::Revoked, ms(m))));
        assert!(level(LedState::Booting, ms(500)) && !level(LedState::Booting, ms(1500)));
        assert!(level(LedState::Degraded, ms(100)) && !level(LedState::Degraded, ms(200)));
        let on = |s, period: u64| (0..period).filter(|m| level(s, ms(*m))).count() as u64;
        // Duty and rate: very fast (factory reset) > fast (degraded) > slow (booting).
        assert_eq!(on(LedState::FactoryReset, 1000), 500);
        assert_eq!(on(LedState::Degraded, 1000), 500);
        assert_eq!(on(LedState::Booting, 2000), 1000);
        // Updating: two flashes per 1.5 s.
        let edges = (1..1500)
            .filter(|m| level(LedState::Updating, ms(*m)) && !level(LedState::Updating, ms(*m - 1)))
            .count();
        assert_eq!(edges + usize::from(level(LedState::Updating, ms(0))), 2);
    }

    #[test]
    fn button_short_long_and_the_confirmation() {
        let t0 = Instant::now();
        let s = |x| t0 + Duration::from_millis(x);
        let mut b = ButtonTracker::default();
        assert_eq!(b.poll(false, s(0)), None);
        assert_eq!(b.poll(true, s(100)), None);
        assert_eq!(b.poll(true, s(5000)), None);
        assert_eq!(b.poll(false, s(9000)), Some(ButtonEvent::Short));
        assert_eq!(b.poll(false, s(9100)), None);
        assert_eq!(b.poll(true, s(10_000)), None);
        assert_eq!(b.poll(true, s(19_999)), None);
        assert_eq!(b.poll(true, s(20_000)), Some(ButtonEvent::LongHeld));
        assert_eq!(b.poll(true, s(25_000)), None);
        assert_eq!(b.poll(false, s(26_000)), Some(ButtonEvent::Long));
    }

    #[test]
    fn wipe_removes_everything_but_lost_and_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("node.toml"), "x").unwrap();
        std::fs::write(d.path().join("wg0.key"), "k").unwrap();
        std::fs::create_dir_all(d.path().join("store/deep")).unwrap();
        std::fs::write(d.path().join("store/identity.json"), "{}").unwrap();
        std::fs::create_dir(d.path().join("lost+found")).unwrap();
        assert_eq!(wipe_state(d.path()).unwrap(), 3);
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
    }

    #[test]
    fn uplinks_without_carrier_are_problems() {
        let d = tempfile::tempdir().unwrap();
        for (i, c) in [("eth0", "1\n"), ("eth1", "0\n")] {
            std::fs::create_dir(d.path().join(i)).unwrap();
            std::fs::write(d.path().join(i).join("carrier"), c).unwrap();
        }
        assert!(uplink_problems(d.path(), &["eth0".into()]).is_empty());
        assert_eq!(
            uplink_problems(d.path(), &["eth0".into(), "eth1".into(), "eth2".into()]),
            [
                "uplink eth1 has no carrier",
                "uplink eth2 is down or missing"
            ]
        );
    }

    #[test]
    fn devices_from_the_board_file() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../board/boards/qemu-x86_64.toml");
        let (name, d) = load_devices(&ws).unwrap().unwrap();
        assert_eq!(name, "qemu-x86_64");
        assert!(d.watchdog.is_some() && d.led.is_some() && d.button.is_some());
        assert_eq!(load_devices(Path::new("/nonexistent/board.toml")), Ok(None));
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("board.toml");
        std::fs::write(&bad, "name = 3\n").unwrap();
        assert!(load_devices(&bad).unwrap_err().contains("board.toml"));
    }
}
