//! Supervision of the DNS resolver: a resolver that cannot start
//! (a list file missing, port 53 taken) or that stops answering is retried
//! with exponential backoff (1, 2, 4 .. 30 s; back to 1 s once it has run
//! for 60 s), and its state is in `palisade status` and in the boot health
//! gate.
//!
//! [`Supervision`] is the pure state machine (`handle(event, now)`; time is
//! passed in); [`DnsSupervisor`] drives it: it starts, reloads and stops the
//! [`DnsService`], runs the canary (`dns::canary`) and restarts when due.
//!
//! Locks: `op` (async) serialises start / reload / stop / canary; `inner`
//! (sync) is held only to copy or record state, never across an await or a
//! list compile, so `palisade status` and `dns stats` never wait for a
//! reload, and queries (which take neither) never do.

use crate::dns::{canary, listen_addrs, CanaryError, DnsService};
use palisade_core::config::NodeSpec;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Delay before the first retry.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// A resolver that ran this long before failing starts the backoff afresh.
pub const RESET_AFTER: Duration = Duration::from_secs(60);
/// Canary period while the last canary was answered.
pub const CANARY_EVERY: Duration = Duration::from_secs(10);
/// Canary period before the first answer and after a failure.
pub const CANARY_RETRY: Duration = Duration::from_secs(2);
/// Time one canary query gets.
pub const CANARY_TIMEOUT: Duration = Duration::from_secs(1);
/// Canary queries in a row the resolver must miss (while the tunnel address
/// exists) before it is restarted.
pub const CANARY_FAULTS_TO_RESTART: u32 = 3;

/// Delay before retry number `failures + 1`.
pub fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_RETRY)
}

/// The last canary round.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryResult {
    pub at: Instant,
    /// Round trip, or why it failed.
    pub outcome: Result<Duration, String>,
}

/// What the resolver is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// No node config has loaded yet.
    NotConfigured,
    /// `[dns] enabled = false` in the node config.
    Disabled,
    /// Listening since `since`.
    Running {
        since: Instant,
        canary: Option<CanaryResult>,
        /// Canary rounds in a row the resolver itself failed.
        canary_faults: u32,
    },
    /// Not running because of `reason`; the next start is tried at `retry_at`.
    Failed {
        reason: String,
        since: Instant,
        retry_at: Instant,
    },
}

/// What happened to the resolver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    NoConfig,
    Disabled,
    Started,
    StartFailed(String),
    Canary(Result<Duration, CanaryError>),
    ReloadOk,
    /// A reload was refused; the running policy stays.
    ReloadFailed(String),
}

/// What the driver must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Stop the running resolver (it is not answering); a restart follows
    /// when [`Supervision::retry_due`].
    Stop,
}

/// The resolver's supervision state machine. Pure: every transition takes
/// the time.
#[derive(Debug, Clone)]
pub struct Supervision {
    state: State,
    /// Failures since the resolver last ran for [`RESET_AFTER`].
    failures: u32,
    reload_error: Option<String>,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            state: State::NotConfigured,
            failures: 0,
            reload_error: None,
        }
    }
}

impl Supervision {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Failures counted towards the backoff.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn handle(&mut self, ev: Event, now: Instant) -> Action {
        match ev {
            Event::NoConfig => {
                self.state = State::NotConfigured;
                Action::Nothing
            }
            Event::Disabled => {
                self.state = State::Disabled;
                self.failures = 0;
                self.reload_error = None;
                Action::Nothing
            }
            Event::Started => {
                self.state = State::Running {
                    since: now,
                    canary: None,
                    canary_faults: 0,
                };
                self.reload_error = None;
                Action::Nothing
            }
            Event::StartFailed(reason) => {
                self.fail(reason, now);
                Action::Nothing
            }
            Event::Canary(r) => {
                let State::Running {
                    canary,
                    canary_faults,
                    ..
                } = &mut self.state
                else {
                    return Action::Nothing; // a round that outlived its resolver
                };
                match r {
                    Ok(rtt) => {
                        *canary_faults = 0;
                        *canary = Some(CanaryResult {
                            at: now,
                            outcome: Ok(rtt),
                        });
                        Action::Nothing
                    }
                    Err(e) => {
                        // A tunnel address missing is WireGuard's business,
                        // not a reason to restart the resolver.
                        *canary_faults = if e.resolver_fault() {
                            *canary_faults + 1
                        } else {
                            0
                        };
                        *canary = Some(CanaryResult {
                            at: now,
                            outcome: Err(e.to_string()),
                        });
                        if *canary_faults >= CANARY_FAULTS_TO_RESTART {
                            self.fail(
                                format!(
                                    "dns: the resolver stopped answering its canary query ({e}, {CANARY_FAULTS_TO_RESTART} times in a row)"
                                ),
                                now,
                            );
                            Action::Stop
                        } else {
                            Action::Nothing
                        }
                    }
                }
            }
            Event::ReloadOk => {
                self.reload_error = None;
                Action::Nothing
            }
            Event::ReloadFailed(e) => {
                self.reload_error = Some(e);
                Action::Nothing
            }
        }
    }

    fn fail(&mut self, reason: String, now: Instant) {
        if let State::Running { since, .. } = self.state {
            if now.saturating_duration_since(since) >= RESET_AFTER {
                self.failures = 0;
            }
        }
        let delay = retry_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.state = State::Failed {
            reason,
            since: now,
            retry_at: now + delay,
        };
    }

    /// Is a start attempt due?
    pub fn retry_due(&self, now: Instant) -> bool {
        matches!(&self.state, State::Failed { retry_at, .. } if now >= *retry_at)
    }

    /// Is a canary round due?
    pub fn canary_due(&self, now: Instant) -> bool {
        match &self.state {
            State::Running { canary: None, .. } => true,
            State::Running {
                canary: Some(c), ..
            } => {
                let every = if c.outcome.is_ok() {
                    CANARY_EVERY
                } else {
                    CANARY_RETRY
                };
                now.saturating_duration_since(c.at) >= every
            }
            _ => false,
        }
    }

    /// The `dns` object of `palisade status`. `answering` is what the health
    /// gate reads: true only when the last canary round was answered.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let mut v = match &self.state {
            State::NotConfigured => serde_json::json!({
                "state": "stopped",
                "reason": "no node config loaded",
                "answering": false,
            }),
            State::Disabled => serde_json::json!({ "state": "disabled", "answering": false }),
            State::Running { since, canary, .. } => serde_json::json!({
                "state": "running",
                "running_s": now.saturating_duration_since(*since).as_secs(),
                "answering": canary.as_ref().is_some_and(|c| c.outcome.is_ok()),
                "canary": canary.as_ref().map(|c| serde_json::json!({
                    "ok": c.outcome.is_ok(),
                    "age_s": now.saturating_duration_since(c.at).as_secs(),
                    "rtt_us": c.outcome.as_ref().ok().map(|d| d.as_micros() as u64),
                    "error": c.outcome.as_ref().err(),
                })),
            }),
            State::Failed {
                reason, retry_at, ..
            } => serde_json::json!({
                "state": "failed",
                "reason": reason,
                // Rounded up: "restarting in 0 s" only once it is due.
                "retry_in_s": retry_at.saturating_duration_since(now).as_millis().div_ceil(1000) as u64,
                "failures": self.failures,
                "answering": false,
            }),
        };
        v["reload_error"] = serde_json::json!(self.reload_error);
        v
    }
}

/// `e` and its causes joined by ": ", leaving out a cause whose text the
/// message before it already ends with (some errors print their source).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if out.ends_with(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}

struct Inner {
    service: Option<Arc<DnsService>>,
    sup: Supervision,
    /// Where the running resolver listens (the canary's targets and sources).
    listen: Vec<SocketAddr>,
}

/// The resolver as a supervised subsystem of palisaded.
pub struct DnsSupervisor {
    op: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

impl Default for DnsSupervisor {
    fn default() -> Self {
        DnsSupervisor {
            op: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                service: None,
                sup: Supervision::default(),
                listen: Vec::new(),
            }),
        }
    }
}

impl DnsSupervisor {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bring the resolver in line with `spec` (`None`: no config has loaded):
    /// reload it, start it (at once, whatever the backoff: a config change
    /// is worth a try), restart it (enabled or cache size changed) or stop
    /// it (disabled). A refused reload keeps the running policy.
    pub async fn apply(&self, spec: Option<&NodeSpec>) -> Result<(), String> {
        let _op = self.op.lock().await;
        let Some(spec) = spec else {
            let mut i = self.inner();
            if i.service.is_none() && !matches!(i.sup.state(), State::Failed { .. }) {
                i.sup.handle(Event::NoConfig, Instant::now());
            }
            return Ok(());
        };
        if !spec.dns.enabled {
            let was = self.stop_service().await;
            self.inner().sup.handle(Event::Disabled, Instant::now());
            if was {
                tracing::info!("dns: disabled in the node config; resolver stopped");
            }
            return Ok(());
        }
        let running = self.inner().service.clone();
        if let Some(svc) = running {
            if !svc.needs_restart(spec) {
                let s = svc.clone();
                let spec2 = spec.clone();
                // Compiling lists blocks: off the runtime, under no lock that
                // status, stats or queries take.
                let r = match tokio::task::spawn_blocking(move || s.reload(&spec2)).await {
                    Ok(r) => r.map_err(|e| error_text(&e)),
                    Err(e) => Err(format!("dns: reload failed: {e}")),
                };
                let mut i = self.inner();
                return match r {
                    Ok(()) => {
                        i.listen = listen_addrs(spec);
                        i.sup.handle(Event::ReloadOk, Instant::now());
                        Ok(())
                    }
                    Err(e) => {
                        i.sup.handle(Event::ReloadFailed(e.clone()), Instant::now());
                        Err(e)
                    }
                };
            }
            tracing::info!("dns: restarting the resolver (cache size changed)");
            self.stop_service().await;
        }
        self.start(spec).await
    }

    /// Start the resolver (the caller holds `op`).
    async fn start(&self, spec: &NodeSpec) -> Result<(), String> {
        match DnsService::start(spec).await {
            Ok(svc) => {
                let mut i = self.inner();
                let retried = i.sup.failures() > 0;
                i.service = Some(Arc::new(svc));
                i.listen = listen_addrs(spec);
                i.sup.handle(Event::Started, Instant::now());
                if retried {
                    tracing::info!(
                        "dns: resolver started after {} failed attempt(s)",
                        i.sup.failures()
                    );
                }
                Ok(())
            }
            Err(e) => {
                let reason = error_text(&e);
                let mut i = self.inner();
                let now = Instant::now();
                i.sup.handle(Event::StartFailed(reason.clone()), now);
                if let State::Failed { retry_at, .. } = i.sup.state() {
                    tracing::error!(
                        "{reason}; retrying in {} s",
                        retry_at.saturating_duration_since(now).as_secs_f32().ceil()
                    );
                }
                Err(reason)
            }
        }
    }

    /// Stop the running resolver, if any (the caller holds `op`). Returns
    /// whether one was running.
    async fn stop_service(&self) -> bool {
        let svc = self.inner().service.take();
        match svc {
            Some(s) => {
                s.stop().await;
                true
            }
            None => false,
        }
    }

    /// One supervision step (palisaded calls it every second): start the
    /// resolver when a retry is due (`current_spec` is asked only then), or
    /// run a canary round when one is due. Skipped while another operation
    /// (a reload) is in progress.
    pub async fn tick<F, Fut>(&self, current_spec: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<NodeSpec>>,
    {
        let Ok(_op) = self.op.try_lock() else {
            return;
        };
        let now = Instant::now();
        let (retry, canary_due, running, listen) = {
            let i = self.inner();
            (
                i.sup.retry_due(now),
                i.sup.canary_due(now),
                i.service.is_some(),
                i.listen.clone(),
            )
        };
        if retry {
            match current_spec().await {
                Some(spec) if spec.dns.enabled => {
                    let _ = self.start(&spec).await;
                }
                Some(_) => {
                    self.inner().sup.handle(Event::Disabled, Instant::now());
                }
                None => {}
            }
            return;
        }
        if !(canary_due && running) {
            return;
        }
        let r = canary(&listen, CANARY_TIMEOUT).await;
        if let Err(e) = &r {
            if e.resolver_fault() {
                tracing::warn!("dns: canary: {e}");
            } else {
                tracing::debug!("dns: canary: {e}");
            }
        }
        let action = self.inner().sup.handle(Event::Canary(r), Instant::now());
        if action == Action::Stop {
            if let State::Failed {
                reason, retry_at, ..
            } = self.inner().sup.state()
            {
                tracing::error!(
                    "{reason}; restarting in {} s",
                    retry_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f32()
                        .ceil()
                );
            }
            self.stop_service().await;
        }
    }

    /// The `dns` object of `palisade status`.
    pub fn status(&self) -> serde_json::Value {
        self.inner().sup.to_json(Instant::now())
    }

    /// Aggregate counters of the running resolver.
    pub fn stats(&self) -> Result<serde_json::Value, String> {
        let i = self.inner();
        match (&i.service, i.sup.state()) {
            (Some(s), _) => Ok(s.stats()),
            (None, State::Disabled) => Ok(serde_json::json!({ "enabled": false })),
            (None, State::Failed { reason, .. }) => {
                Err(format!("the DNS resolver is not running: {reason}"))
            }
            (None, _) => Err("the DNS resolver is not running (no node config loaded)".into()),
        }
    }

    /// The running resolver's query latency histogram.
    pub fn latency(&self) -> Option<palisade_dns::engine::LatencySnapshot> {
        self.inner().service.as_ref().and_then(|s| s.latency())
    }

    /// Stop the resolver for good (palisaded is stopping).
    pub async fn shutdown(&self) {
        let _op = self.op.lock().await;
        self.stop_service().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn retry_in(s: &Supervision, now: Instant) -> Duration {
        match s.state() {
            State::Failed { retry_at, .. } => retry_at.saturating_duration_since(now),
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn error_text_says_each_cause_once() {
        #[derive(Debug)]
        struct Read(std::io::Error);
        impl std::fmt::Display for Read {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot read list /x/ads.txt: {}", self.0)
            }
        }
        impl std::error::Error for Read {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Read(io)).context("dns: cannot load the [dns] policy");
        assert_eq!(
            error_text(&e),
            "dns: cannot load the [dns] policy: cannot read list /x/ads.txt: entity not found"
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let d: Vec<u64> = (0..8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn failed_start_is_retried_with_backoff_and_reported() {
        let t = Instant::now();
        let mut s = Supervision::default();
        assert_eq!(s.to_json(t)["state"], "stopped");
        s.handle(Event::StartFailed("dns: list missing".into()), t);
        assert_eq!(retry_in(&s, t), secs(1));
        assert!(!s.retry_due(t + Duration::from_millis(999)));
        assert!(s.retry_due(t + secs(1)));
        let j = s.to_json(t + Duration::from_millis(200));
        assert_eq!(j["state"], "failed");
        assert_eq!(j["reason"], "dns: list missing");
        assert_eq!(j["retry_in_s"], 1);
        assert_eq!(j["answering"], false);
        // Each failed retry doubles the wait.
        let mut now = t;
        for want in [2, 4, 8, 16, 30, 30] {
            now += retry_in(&s, now);
            s.handle(Event::StartFailed("dns: list missing".into()), now);
            assert_eq!(retry_in(&s, now), secs(want));
        }
        // It comes up: running, not yet answering until a canary says so.
        s.handle(Event::Started, now);
        let j = s.to_json(now);
        assert_eq!(
            (j["state"].as_str(), j["answering"].as_bool()),
            (Some("running"), Some(false))
        );
        assert!(s.canary_due(now));
        s.handle(Event::Canary(Ok(Duration::from_micros(300))), now);
        let j = s.to_json(now + secs(3));
        assert_eq!(j["answering"], true);
        assert_eq!(j["canary"]["age_s"], 3);
        assert!(!s.canary_due(now + secs(9)));
        assert!(s.canary_due(now + CANARY_EVERY));
        // Failing again soon after: the backoff continues.
        s.handle(Event::StartFailed("x".into()), now + secs(5));
        assert_eq!(retry_in(&s, now + secs(5)), MAX_RETRY);
    }

    #[test]
    fn backoff_resets_after_a_healthy_period() {
        let t = Instant::now();
        let mut s = Supervision::default();
        for i in 0..5 {
            s.handle(Event::StartFailed("x".into()), t + secs(i));
        }
        s.handle(Event::Started, t + secs(10));
        let later = t + secs(10) + RESET_AFTER;
        for _ in 0..CANARY_FAULTS_TO_RESTART {
            s.handle(
                Event::Canary(Err(CanaryError::NoAnswer("timeout".into()))),
                later,
            );
        }
        assert_eq!(retry_in(&s, later), FIRST_RETRY);
        assert_eq!(s.failures(), 1);
    }

    #[test]
    fn silent_resolver_is_stopped_after_three_missed_canaries() {
        let t = Instant::now();
        let mut s = Supervision::default();
        s.handle(Event::Started, t);
        let miss = || Event::Canary(Err(CanaryError::NoAnswer("no answer".into())));
        let no_addr = || Event::Canary(Err(CanaryError::NoSource("no address".into())));
        assert_eq!(s.handle(miss(), t), Action::Nothing);
        assert!(
            s.canary_due(t + CANARY_RETRY),
            "retried sooner after a miss"
        );
        assert_eq!(s.handle(miss(), t), Action::Nothing);
        // A missing tunnel address is not the resolver's fault: count restarts.
        assert_eq!(s.handle(no_addr(), t), Action::Nothing);
        assert_eq!(s.handle(miss(), t), Action::Nothing);
        assert_eq!(s.handle(miss(), t), Action::Nothing);
        let j = s.to_json(t);
        assert_eq!(
            (j["state"].as_str(), j["answering"].as_bool()),
            (Some("running"), Some(false))
        );
        assert_eq!(j["canary"]["error"], "no answer");
        assert_eq!(s.handle(miss(), t), Action::Stop);
        let j = s.to_json(t);
        assert_eq!(j["state"], "failed");
        assert!(j["reason"].as_str().unwrap().contains("canary"), "{j}");
        // A late canary result for the stopped resolver changes nothing.
        assert_eq!(
            s.handle(Event::Canary(Ok(Duration::ZERO)), t),
            Action::Nothing
        );
        assert_eq!(s.to_json(t)["state"], "failed");
    }

    #[test]
    fn disabled_and_reload_errors_are_reported() {
        let t = Instant::now();
        let mut s = Supervision::default();
        s.handle(Event::Started, t);
        s.handle(
            Event::ReloadFailed("dns: reload rejected: list x".into()),
            t,
        );
        let j = s.to_json(t);
        assert_eq!(
            (j["state"].as_str(), j["reload_error"].as_str()),
            (Some("running"), Some("dns: reload rejected: list x"))
        );
        s.handle(Event::ReloadOk, t);
        assert!(s.to_json(t)["reload_error"].is_null());
        s.handle(Event::StartFailed("x".into()), t);
        s.handle(Event::Disabled, t);
        assert_eq!(s.to_json(t)["state"], "disabled");
        assert!(!s.retry_due(t + secs(100)) && !s.canary_due(t + secs(100)));
        assert_eq!(s.failures(), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Started,
        StartFailed,
        CanaryOk,
        CanaryMiss,
        CanaryNoSource,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..200).prop_map(Step::Wait),
            Just(Step::Started),
            Just(Step::StartFailed),
            Just(Step::CanaryOk),
            Just(Step::CanaryMiss),
            Just(Step::CanaryNoSource),
        ]
    }

    proptest! {
        /// Against a small reference model: the delay after a failure is
        /// 1 s doubled per failure since the last run of >= 60 s, capped at
        /// 30 s; only a third consecutive resolver-fault canary stops it.
        #[test]
        fn backoff_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = Supervision::default();
            // Model: failures since the last long run; running since; misses in a row.
            let mut failures = 0u32;
            let mut running: Option<Instant> = None;
            let mut misses = 0u32;
            let model_fail = |failures: &mut u32, running: &mut Option<Instant>, now: Instant| {
                if running.is_some_and(|r| now - r >= RESET_AFTER) {
                    *failures = 0;
                }
                let d = Duration::from_secs((1u64 << (*failures).min(10)).min(30));
                *failures += 1;
                *running = None;
                d
            };
            for st in steps {
                match st {
                    Step::Wait(ms) => now += Duration::from_millis(ms * 500),
                    Step::Started => {
                        s.handle(Event::Started, now);
                        running = Some(now);
                        misses = 0;
                    }
                    Step::StartFailed => {
                        s.handle(Event::StartFailed("x".into()), now);
                        let want = model_fail(&mut failures, &mut running, now);
                        prop_assert_eq!(retry_in(&s, now), want);
                        prop_assert!(want >= FIRST_RETRY && want <= MAX_RETRY);
                    }
                    Step::CanaryOk | Step::CanaryMiss | Step::CanaryNoSource => {
                        let ev = match st {
                            Step::CanaryOk => Ok(Duration::ZERO),
                            Step::CanaryMiss => Err(CanaryError::NoAnswer("m".into())),
                            _ => Err(CanaryError::NoSource("n".into())),
                        };
                        let a = s.handle(Event::Canary(ev), now);
                        let mut want = Action::Nothing;
                        if running.is_some() {
                            misses = if matches!(st, Step::CanaryMiss) { misses + 1 } else { 0 };
                            if misses >= CANARY_FAULTS_TO_RESTART {
                                let d = model_fail(&mut failures, &mut running, now);
                                prop_assert_eq!(retry_in(&s, now), d);
                                want = Action::Stop;
                                misses = 0;
                            }
                        }
                        prop_assert_eq!(a, want);
                    }
                }
                prop_assert_eq!(s.failures(), failures);
                let st = s.to_json(now)["state"].as_str().unwrap().to_string();
                prop_assert_eq!(st == "running", running.is_some());
            }
        }
    }
}
