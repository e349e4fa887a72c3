//! The update subsystem (docs/updates.md): polls the node's signed repository,
//! asks the rollout schedule when to move, keeps the image in memory (verified by
//! TUF and hashed again by us), writes it into the inactive slot, installs that
//! slot's boot entry with boot counting and asks PID 1 to reboot at the node's
//! time. After the reboot the health gate in PID 1 blesses the entry, or the
//! boot loader falls back and the version is recorded as failed.
//!
//! Every step is an event of the journal (`palisade_update::journal`), saved in
//! the state store before the step's side effect starts, so a power cut at any
//! point leaves a journal that the next boot can finish: before the entry
//! switch the old slot simply keeps running (the inactive slot has no entry
//! while its bytes change); after it, the boot loader decides.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use palisade_board::entries::{Slot, BOOT_TRIES};
use palisade_core::config::UpdateSection;
use palisade_update::esp::{self, EntryState};
use palisade_update::journal::{Event, Journal, Phase};
use palisade_update::refusal::{Refusal, RefusalKind};
use palisade_update::repo::{ClientConfig, ImageTarget, Repo, RepoError, RepoSource};
use palisade_update::schedule::{self, NodeIdentity, Plan};
use palisade_update::slot::{self, Expected, VerifiedImage};
use palisade_update::store::{self, FileStore};
use semver::Version;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// The fleet's trusted TUF root on the state partition (from the config drive).
pub const STATE_FLEET_ROOT: &str = "fleet-root.json";
/// The fleet root baked into the image (`palisade-image --fleet-root`).
pub const IMAGE_FLEET_ROOT: &str = "/etc/palisade/fleet/root.json";

/// Where the ESP is: a partition mounted for each use (the node) or a
/// directory (namespace tests).
#[derive(Debug, Clone)]
pub enum EspAccess {
    Partition(PathBuf),
    Dir(PathBuf),
}

/// This machine's update layout, found once at start.
#[derive(Debug, Clone)]
pub struct Layout {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub booted: Slot,
    pub esp: EspAccess,
    pub board: String,
    pub installed: Version,
    /// Whether this process may ask PID 1 to reboot (it is palisaded's child).
    pub can_reboot: bool,
    /// Test hook for power-cut tests (`palisade.update_test_pause=` on the
    /// kernel command line): `download` or `write` stop the install half-way
    /// through that stage, `written` between the slot write and the entry
    /// switch, so the test can cut the power at a known point.
    pub test_pause: Option<String>,
    /// Benchmark hook (`palisade.bench_slot_write=ROUNDS` on the kernel
    /// command line, bench/update only): time writing the inactive slot with
    /// palisaded's verified writer against busybox `dd`, same bytes, same
    /// device, alternating; the inactive slot's entry is removed first.
    pub bench_rounds: Option<u32>,
}

impl Layout {
    fn slot_dev(&self, s: Slot) -> &Path {
        match s {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    fn fleet_root(&self) -> Option<PathBuf> {
        [self.state_dir.join(STATE_FLEET_ROOT), PathBuf::from(IMAGE_FLEET_ROOT)]
            .into_iter()
            .find(|p| p.is_file())
    }

    /// Runs `f` on the ESP's root directory (mounting the partition around it).
    fn with_esp<T>(&self, f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.esp {
            EspAccess::Dir(d) => f(d),
            EspAccess::Partition(dev) => {
                let mnt = self.run_dir.join("efi");
                std::fs::create_dir_all(&mnt)?;
                crate::init::mount_vfat(dev, &mnt)?;
                let r = f(&mnt);
                nix::unistd::sync();
                let u = crate::init::unmount(&mnt);
                let v = r?;
                u?;
                Ok(v)
            }
        }
    }
}

impl Layout {
    /// Finds the layout from the arguments, the kernel command line and the
    /// GPT partition names. `None` (with the reason) when this system cannot
    /// update itself: no slots, no ESP, no installed version.
    pub fn discover(args: &crate::Args) -> Result<Layout, String> {
        let (slot_a, slot_b) = match &args.update_slots {
            Some(v) if v.len() == 2 => (v[0].clone(), v[1].clone()),
            Some(_) => return Err("--update-slots needs two paths (A,B)".into()),
            None => (
                crate::init::find_partition("palisade-a").ok_or("no partition palisade-a")?,
                crate::init::find_partition("palisade-b").ok_or("no partition palisade-b")?,
            ),
        };
        let cmd = crate::init::Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        let booted = match &args.booted_slot {
            Some(s) => s.clone(),
            None => cmd.slot().ok_or("no palisade.slot= on the kernel command line")?.to_string(),
        };
        let test_pause = cmd.get("palisade.update_test_pause").map(str::to_string);
        let bench_rounds = cmd.get("palisade.bench_slot_write").and_then(|r| r.parse().ok());
        let booted = match booted.as_str() {
            "a" => Slot::A,
            "b" => Slot::B,
            other => return Err(format!("unknown slot `{other}`")),
        };
        let esp = match &args.esp_dir {
            Some(d) => EspAccess::Dir(d.clone()),
            None => EspAccess::Partition(crate::init::find_partition("esp").ok_or("no partition esp")?),
        };
        let os = std::fs::read_to_string(&args.os_release).map_err(|e| format!("{}: {e}", args.os_release.display()))?;
        let installed = os_release_version(&os).ok_or_else(|| format!("{}: no semver VERSION_ID", args.os_release.display()))?;
        let text = std::fs::read_to_string(&args.board_file).map_err(|e| format!("{}: {e}", args.board_file.display()))?;
        let board = palisade_board::BoardDef::from_str(&text, &args.board_file).map_err(|e| e.to_string())?.name;
        Ok(Layout {
            state_dir: args.state_dir.clone(),
            run_dir: args.run_dir.clone(),
            slot_a,
            slot_b,
            booted,
            esp,
            board,
            installed,
            can_reboot: std::os::unix::process::parent_id() == 1 && crate::init::pid1_is_palisaded(),
            test_pause,
            bench_rounds,
        })
    }
}

/// The `VERSION_ID` of an os-release file, as a semantic version.
pub fn os_release_version(text: &str) -> Option<Version> {
    esp::os_release_version(text).and_then(|v| Version::parse(&v).ok())
}

/// What a running install has done so far (for `palisade update status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

/// A manual install asked for over the control socket.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    pub source: String,
    pub version: Option<Version>,
    pub reboot: bool,
}

/// Where the node's config says to poll, and who the node is (from the engine).
#[derive(Debug, Clone)]
pub struct NodeView {
    pub update: UpdateSection,
    pub identity: NodeIdentity,
}

pub struct Updater {
    layout: Layout,
    store: FileStore,
    journal: Mutex<Journal>,
    progress: Mutex<Option<Progress>>,
    pending: Mutex<Option<ApplyRequest>>,
    last_check: Mutex<Option<serde_json::Value>>,
    next_check: Mutex<Option<DateTime<Utc>>>,
    wake: Notify,
}

/// Backoff after a failed poll: 5 s doubling, at most the poll interval.
pub fn retry_delay(failures: u32, poll: Duration) -> Duration {
    let d = Duration::from_secs(5u64.saturating_mul(1u64 << failures.min(12)));
    d.min(poll)
}

/// The poll interval plus a jitter of 0..20 % (so a fleet does not poll in step).
fn jittered(poll: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom_bytes(&mut b);
    let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    poll + poll.mul_f64(0.2 * frac)
}

fn getrandom_bytes(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

fn refusal(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal::new(kind, message)
}

fn slot_refusal(e: &slot::SlotError) -> Refusal {
    use slot::SlotError as E;
    let kind = match e {
        E::TooLarge { .. } => RefusalKind::TooLarge,
        E::HashMismatch { .. } | E::LengthMismatch { .. } => RefusalKind::HashMismatch,
        E::Io { .. } | E::ReadBack { .. } => RefusalKind::WriteFailed,
    };
    refusal(kind, e.to_string())
}

fn from_repo(e: &RepoError) -> Refusal {
    refusal(e.refusal_kind(), e.to_string())
}

impl Updater {
    pub fn open(layout: Layout) -> anyhow::Result<Arc<Updater>> {
        let store = FileStore::open(&layout.state_dir.join("store"))
            .context("opening the state store")?;
        let journal = store::load_journal(&store)?;
        Ok(Arc::new(Updater {
            layout,
            store,
            journal: Mutex::new(journal),
            progress: Mutex::new(None),
            pending: Mutex::new(None),
            last_check: Mutex::new(None),
            next_check: Mutex::new(None),
            wake: Notify::new(),
        }))
    }

    fn journal(&self) -> Journal {
        self.journal.lock().expect("journal poisoned").clone()
    }

    /// Applies `ev` to the journal and saves it (flushed) before returning.
    fn record(&self, ev: Event) -> anyhow::Result<()> {
        let mut j = self.journal.lock().expect("journal poisoned");
        let next = j.handle(ev, Utc::now())?;
        store::save_journal(&self.store, &next)?;
        *j = next;
        Ok(())
    }

    fn refuse(&self, r: Refusal, version: Option<Version>) {
        tracing::warn!("update: refused ({}): {}", r.kind.as_str(), r.message);
        if let Err(e) = self.record(Event::Refused(r, version)) {
            tracing::error!("update: journal: {e:#}");
        }
    }

    /// The power-cut test hook: stops this thread for good at `stage` once
    /// half of it is done (the test kills the machine meanwhile).
    fn maybe_pause(&self, stage: &str, done: u64, total: u64) {
        if self.layout.test_pause.as_deref() == Some(stage) && done * 2 >= total {
            tracing::warn!("update: test pause at {stage} ({done}/{total} bytes)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    fn set_progress(&self, stage: &str, done: u64, total: u64) {
        self.maybe_pause(stage, done, total);
        *self.progress.lock().expect("progress poisoned") =
            Some(Progress { stage: stage.into(), done, total });
    }

    /// `palisade update status`.
    pub fn status(&self) -> serde_json::Value {
        let j = self.journal();
        json!({
            "installed": self.layout.installed.to_string(),
            "booted_slot": self.layout.booted.letter(),
            "board": self.layout.board,
            "phase_text": j.phase.to_string(),
            "journal": j,
            "busy": self.progress.lock().expect("progress poisoned").is_some()
                || self.pending.lock().expect("pending poisoned").is_some(),
            "progress": *self.progress.lock().expect("progress poisoned"),
            "last_check": *self.last_check.lock().expect("check poisoned"),
            "next_check": *self.next_check.lock().expect("check poisoned"),
        })
    }

    /// Queues a manual install; the update task starts it at once.
    pub fn request_apply(&self, req: ApplyRequest) -> Result<(), String> {
        let mut p = self.pending.lock().expect("pending poisoned");
        if p.is_some() || self.progress.lock().expect("progress poisoned").is_some() {
            return Err("an install is already running".into());
        }
        match self.journal().phase {
            Phase::Idle => {}
            Phase::Trial { .. } => {
                return Err("this boot is on trial (not blessed yet); install after it is".into())
            }
            other => return Err(format!("an update is in progress: {}", other)),
        }
        *p = Some(req);
        drop(p);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether an update is under way (downloading, writing, or switched
    /// and waiting for its reboot time): the status LED's `updating`.
    pub fn updating(&self) -> bool {
        self.progress.lock().expect("progress poisoned").is_some()
            || self.pending.lock().expect("pending poisoned").is_some()
            || matches!(
                self.journal().phase,
                Phase::Staging { .. } | Phase::Writing { .. } | Phase::Written { .. } | Phase::Switched { reboot_at: Some(_), .. }
            )
    }

    pub fn check_now(&self) {
        self.wake.notify_one();
    }

    /// Once per boot: what the journal expected against the slot that booted.
    fn after_boot(&self) -> anyhow::Result<()> {
        let marker = self.layout.run_dir.join("update-boot-seen");
        if marker.exists() {
            return Ok(());
        }
        let blessed = self
            .layout
            .with_esp(|e| Ok(esp::entry_state(e, self.layout.booted)?))
            .map(|s| s == EntryState::Blessed)
            .unwrap_or(false);
        let before = self.journal().phase;
        self.record(Event::Booted { slot: self.layout.booted, blessed })?;
        let after = self.journal();
        // One line per boot for the operator (and the power-cut tests).
        tracing::info!(
            "update: journal after boot from slot {} ({}): {} -> {}, installed {}, failed [{}]",
            self.layout.booted.letter(),
            if blessed { "blessed" } else { "on trial" },
            before,
            after.phase,
            after.installed.as_ref().map(|v| v.to_string()).unwrap_or_else(|| self.layout.installed.to_string()),
            after.failed.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        );
        if let Some(r) = &after.last_refusal {
            if matches!(before, Phase::Switched { .. } | Phase::Trial { .. }) && r.kind == RefusalKind::FailedBefore {
                tracing::warn!("update: rolled back ({}): {}", r.kind.as_str(), r.message);
            }
        }
        std::fs::write(&marker, b"")?;
        Ok(())
    }

    /// The update task: never returns.
    pub async fn run(self: Arc<Self>, view: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<NodeView>> + Send>> + Send + Sync, hb: crate::board::Heartbeat) {
        if let Err(e) = tokio::task::block_in_place(|| self.after_boot()) {
            tracing::error!("update: after boot: {e:#}");
        }
        if let Some(rounds) = self.layout.bench_rounds {
            if let Err(e) = tokio::task::block_in_place(|| self.bench_slot_write(rounds)) {
                tracing::error!("bench: slot write: {e:#}");
            }
        }
        let mut failures = 0u32;
        loop {
            hb.tick();
            let v = view().await;
            let poll = Duration::from_secs(v.as_ref().map(|v| v.update.poll_secs).unwrap_or(300));
            let delay = match self.step(v.as_ref()).await {
                Step::Again(d) => {
                    failures = 0;
                    d.unwrap_or_else(|| jittered(poll))
                }
                Step::Failed => {
                    failures += 1;
                    retry_delay(failures - 1, poll)
                }
            };
            *self.next_check.lock().expect("check poisoned") =
                chrono::Duration::from_std(delay).ok().map(|d| Utc::now() + d);
            hb.park();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn step(&self, view: Option<&NodeView>) -> Step {
        let now = Utc::now();
        match self.journal().phase {
            Phase::Trial { slot, .. } => {
                let st = self.layout.with_esp(|e| Ok(esp::entry_state(e, slot)?));
                if matches!(st, Ok(EntryState::Blessed)) {
                    if let Err(e) = self.record(Event::Blessed { slot }) {
                        tracing::error!("update: journal: {e:#}");
                    }
                    tracing::info!("update: slot {} blessed; the update is complete", slot.letter());
                    return Step::Again(Some(Duration::from_secs(1)));
                }
                return Step::Again(Some(Duration::from_secs(5)));
            }
            Phase::Switched { slot, version, reboot_at } => {
                // None: installed with `--no-reboot`; the next reboot switches.
                let Some(at) = reboot_at else { return Step::Again(None) };
                if at <= now {
                    self.reboot_into(slot, &version);
                    return Step::Again(Some(Duration::from_secs(60)));
                }
                return Step::Again(Some((at - now).to_std().unwrap_or_default().min(Duration::from_secs(60))));
            }
            Phase::Staging { .. } | Phase::Writing { .. } | Phase::Written { .. } => {
                // The supervisor restarted in the middle of an install (same boot).
                let r = refusal(RefusalKind::WriteFailed, "the install was interrupted (supervisor restart); the inactive slot has no boot entry");
                if let Err(e) = self.record(Event::Failed(r)) {
                    tracing::error!("update: journal: {e:#}");
                }
            }
            Phase::Idle => {}
        }
        let req = self.pending.lock().expect("pending poisoned").clone();
        if let Some(req) = req {
            let ok = self.apply(view, &req).await;
            *self.pending.lock().expect("pending poisoned") = None;
            *self.progress.lock().expect("progress poisoned") = None;
            if ok && req.reboot {
                return Step::Again(Some(Duration::ZERO));
            }
            return Step::Again(None);
        }
        let Some(view) = view else { return Step::Again(None) };
        let Some(url) = view.update.repository.clone() else { return Step::Again(None) };
        let r = self.poll(view, &url).await;
        *self.progress.lock().expect("progress poisoned") = None;
        r
    }

    fn reboot_into(&self, slot: Slot, version: &Version) {
        if !self.layout.can_reboot {
            tracing::warn!("update: slot {} ({version}) is ready; not PID 1's child, so not rebooting", slot.letter());
            return;
        }
        tracing::warn!("update: rebooting into slot {} ({version})", slot.letter());
        crate::init::power_off(true);
    }

    fn client_config(&self) -> Result<ClientConfig, Refusal> {
        let root = self.layout.fleet_root().ok_or_else(|| {
            refusal(
                RefusalKind::Config,
                format!(
                    "no trusted fleet root: put {STATE_FLEET_ROOT} on the config drive (palisade/{STATE_FLEET_ROOT}) or build the image with --fleet-root"
                ),
            )
        })?;
        Ok(ClientConfig {
            trusted_root: root,
            datastore: self.layout.state_dir.join("tuf"),
            ca_file: None,
            timeout: Duration::from_secs(30),
        })
    }

    async fn load_repo(&self, url: &str, ca: Option<&Path>) -> Result<Repo, Refusal> {
        let mut cfg = self.client_config()?;
        cfg.ca_file = ca.map(Path::to_path_buf);
        let base = url::Url::parse(url).map_err(|e| refusal(RefusalKind::Config, format!("repository URL {url}: {e}")))?;
        let src = RepoSource::from_base(&base).map_err(|e| from_repo(&e))?;
        Repo::load(&src, &cfg).await.map_err(|e| from_repo(&e))
    }

    /// One scheduled poll of the configured repository.
    async fn poll(&self, view: &NodeView, url: &str) -> Step {
        let now = Utc::now();
        let repo = match self.load_repo(url, view.update.ca_file.as_deref()).await {
            Ok(r) => r,
            Err(r) => {
                *self.last_check.lock().expect("check poisoned") =
                    Some(json!({"at": now, "ok": false, "kind": r.kind.as_str(), "error": r.message}));
                self.refuse(r, None);
                return Step::Failed;
            }
        };
        let policy = match repo.rollout().await {
            Ok(p) => p,
            Err(e) => {
                self.refuse(from_repo(&e), None);
                return Step::Failed;
            }
        };
        let images = repo.images(&self.layout.board);
        *self.last_check.lock().expect("check poisoned") = Some(json!({
            "at": now, "ok": true,
            "rollout": policy.as_ref().map(|p| p.version.to_string()),
            "images": images.iter().map(|i| i.version.to_string()).collect::<Vec<_>>(),
        }));
        let Some(policy) = policy else { return Step::Again(None) };
        if !view.update.auto {
            return Step::Again(None);
        }
        let j = self.journal();
        match schedule::plan(&policy, &view.identity, &self.layout.installed, &j.failed, now) {
            Plan::UpToDate => Step::Again(None),
            Plan::Refused(r) => {
                // Refusals by policy are recorded once, not on every poll.
                if j.last_refusal.as_ref().is_none_or(|l| l.kind != r.kind) {
                    self.refuse(r, Some(policy.version.clone()));
                }
                Step::Again(None)
            }
            Plan::Install { version, wave, wave_opens, reboot_at } => {
                if now < wave_opens {
                    tracing::info!("update: {version} for wave {wave} opens at {wave_opens}");
                    let wait = (wave_opens - now).to_std().unwrap_or_default();
                    return Step::Again(Some(wait.min(jittered(Duration::from_secs(view.update.poll_secs)))));
                }
                let Some(target) = images.into_iter().find(|i| i.version == version) else {
                    self.refuse(refusal(RefusalKind::NotATarget, format!("the rollout names {version} but the repository has no image of it for board {}", self.layout.board)), Some(version));
                    return Step::Again(None);
                };
                tracing::info!("update: installing {version} (wave {wave}); reboot at {reboot_at}");
                if self.install(&repo, &target, Some(reboot_at)).await {
                    Step::Again(Some(Duration::ZERO))
                } else {
                    Step::Failed
                }
            }
        }
    }

    /// A manual install (`palisade update apply`).
    async fn apply(&self, view: Option<&NodeView>, req: &ApplyRequest) -> bool {
        let ca = view.and_then(|v| v.update.ca_file.clone());
        let src = req.source.trim();
        let local = Path::new(src);
        let (repo_url, file) = if src.contains("://") {
            (src.to_string(), None)
        } else if local.is_dir() {
            let abs = match std::fs::canonicalize(local) {
                Ok(a) => a,
                Err(e) => {
                    self.refuse(refusal(RefusalKind::NotATarget, format!("{src}: {e}")), None);
                    return false;
                }
            };
            match url::Url::from_directory_path(&abs) {
                Ok(u) => (u.to_string(), None),
                Err(()) => {
                    self.refuse(refusal(RefusalKind::Config, format!("{} is not an absolute directory", abs.display())), None);
                    return false;
                }
            }
        } else if local.is_file() {
            match view.and_then(|v| v.update.repository.clone()) {
                Some(u) => (u, Some(local.to_path_buf())),
                None => {
                    self.refuse(refusal(RefusalKind::NotATarget, "an image file is checked against the node's repository, and [update] repository is not set; give a repository URL or directory instead"), None);
                    return false;
                }
            }
        } else {
            self.refuse(refusal(RefusalKind::NotATarget, format!("{src} is neither a URL, a repository directory nor a file")), None);
            return false;
        };
        let repo = match self.load_repo(&repo_url, ca.as_deref()).await {
            Ok(r) => r,
            Err(r) => {
                self.refuse(r, None);
                return false;
            }
        };
        let images = repo.images(&self.layout.board);
        let target = if let Some(f) = &file {
            let digest = match hash_file(f) {
                Ok(d) => d,
                Err(e) => {
                    self.refuse(refusal(RefusalKind::NotATarget, format!("{}: {e}", f.display())), None);
                    return false;
                }
            };
            match repo.image_by_hash(&self.layout.board, &digest) {
                Some(t) => t,
                None => {
                    self.refuse(refusal(RefusalKind::NotATarget, format!("{} is not a signed image target of the repository for board {}", f.display(), self.layout.board)), None);
                    return false;
                }
            }
        } else {
            let pick = match &req.version {
                Some(v) => images.iter().find(|i| &i.version == v).cloned(),
                None => images.iter().max_by(|a, b| a.version.cmp(&b.version)).cloned(),
            };
            match pick {
                Some(t) => t,
                None => {
                    self.refuse(refusal(RefusalKind::NotATarget, format!("the repository has no image{} for board {}", req.version.as_ref().map(|v| format!(" {v}")).unwrap_or_default(), self.layout.board)), req.version.clone());
                    return false;
                }
            }
        };
        let policy = repo.rollout().await.ok().flatten();
        let j = self.journal();
        if let Err(r) = manual_allowed(&target.version, &self.layout.installed, &j.failed, policy.as_ref()) {
            self.refuse(r, Some(target.version.clone()));
            return false;
        }
        let reboot_at = req.reboot.then(Utc::now);
        let ok = match &file {
            Some(f) => self.install_from_file(f, &target, reboot_at).await,
            None => self.install(&repo, &target, reboot_at).await,
        };
        if ok && !req.reboot {
            tracing::info!("update: {} written to slot {}; it boots at the next reboot", target.version, self.layout.booted.other().letter());
        }
        ok
    }

    /// The inactive slot's size (the cap on what may be installed).
    fn slot_cap(&self, v: &Version) -> Option<u64> {
        let dev = self.layout.slot_dev(self.layout.booted.other());
        match slot::device_size(dev) {
            Ok(c) => Some(c),
            Err(e) => {
                self.refuse(refusal(RefusalKind::WriteFailed, format!("slot {}: {e}", dev.display())), Some(v.clone()));
                None
            }
        }
    }

    /// Download (into RAM, verified), then write. Returns whether the slot was switched.
    async fn install(&self, repo: &Repo, target: &ImageTarget, reboot_at: Option<DateTime<Utc>>) -> bool {
        let v = target.version.clone();
        let Some(cap) = self.slot_cap(&v) else { return false };
        if let Err(e) = self.record(Event::StageStarted { version: v.clone() }) {
            tracing::error!("update: journal: {e:#}");
            return false;
        }
        self.set_progress("download", 0, target.length);
        let mut prog = |d: u64, t: u64| self.set_progress("download", d, t);
        match repo.fetch_image(target, cap, &mut prog).await {
            Ok(img) => self.write_and_switch(&img, &v, reboot_at),
            Err(e) => {
                self.refuse(from_repo(&e), Some(v));
                false
            }
        }
    }

    /// A local file that matched a signed target: read into RAM and hashed
    /// again (it must still be the signed bytes), then written.
    async fn install_from_file(&self, file: &Path, target: &ImageTarget, reboot_at: Option<DateTime<Utc>>) -> bool {
        let v = target.version.clone();
        let Some(cap) = self.slot_cap(&v) else { return false };
        if let Err(e) = self.record(Event::StageStarted { version: v.clone() }) {
            tracing::error!("update: journal: {e:#}");
            return false;
        }
        let expected = Expected { length: target.length, sha256: target.sha256 };
        match tokio::task::block_in_place(|| VerifiedImage::read_file(file, &expected, cap)) {
            Ok(img) => self.write_and_switch(&img, &v, reboot_at),
            Err(e) => {
                self.refuse(slot_refusal(&e), Some(v));
                false
            }
        }
    }

    fn write_and_switch(&self, img: &VerifiedImage, v: &Version, reboot_at: Option<DateTime<Utc>>) -> bool {
        let slot = self.layout.booted.other();
        let dev = self.layout.slot_dev(slot).to_path_buf();
        let r = tokio::task::block_in_place(|| -> Result<(), Refusal> {
            let fail = |what: &str, e: &dyn std::fmt::Display| refusal(RefusalKind::WriteFailed, format!("{what}: {e:#}"));
            self.record(Event::WriteStarted { version: v.clone(), slot }).map_err(|e| fail("journal", &e))?;
            // The slot loses its entry before its bytes change: a power cut
            // from here on boots the running slot, never a half-written one.
            self.layout
                .with_esp(|e| Ok(esp::remove_slot_entries(e, slot)?))
                .map_err(|e| fail("removing the inactive slot's boot entry", &e))?;
            self.set_progress("write", 0, img.len());
            let mut prog = |d: u64, t: u64| self.set_progress("write", d, t);
            let rep = slot::write_slot(img, &dev, &mut prog).map_err(|e| slot_refusal(&e))?;
            tracing::info!(
                "update: wrote {} bytes (sha256 verified) to slot {} in {:.2} s ({:.1} MB/s), read back identical in {:.2} s",
                rep.bytes,
                slot.letter(),
                rep.write_seconds,
                rep.bytes as f64 / rep.write_seconds.max(1e-6) / 1e6,
                rep.seconds - rep.write_seconds
            );
            self.record(Event::Written { version: v.clone(), slot, sha256: rep.sha256_hex.clone() })
                .map_err(|e| fail("journal", &e))?;
            self.maybe_pause("written", 1, 1);
            self.set_progress("entry", 0, 0);
            let entry = self.with_new_root(&dev, |root| {
                self.layout.with_esp(|e| Ok(esp::install_entry(e, slot, root, BOOT_TRIES)?))
            })
            .map_err(|e| fail("installing the boot entry", &e))?;
            tracing::info!("update: boot entry {:?} installed", entry);
            self.record(Event::EntrySwitched { version: v.clone(), slot, reboot_at })
                .map_err(|e| fail("journal", &e))?;
            Ok(())
        });
        match r {
            Ok(()) => true,
            Err(r) => {
                tracing::error!("update: install of {v} failed ({}): {}", r.kind.as_str(), r.message);
                if let Err(e) = self.record(Event::Failed(r)) {
                    tracing::error!("update: journal: {e:#}");
                }
                false
            }
        }
    }

    /// The slot-write benchmark (see [`Layout::bench_rounds`]): the running
    /// slot's bytes (its first 32 MiB) staged in RAM, written to the inactive
    /// slot `rounds` times by `dd` (bs=1M, conv=fsync) and by
    /// [`slot::write_slot`] (hashing, fdatasync, read-back check), alternating.
    fn bench_slot_write(&self, rounds: u32) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let (from, to) = (self.layout.slot_dev(self.layout.booted), self.layout.slot_dev(self.layout.booted.other()));
        let len = (32u64 << 20).min(slot::device_size(from)?).min(slot::device_size(to)?);
        let staged = self.layout.run_dir.join("bench-slot.img");
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(from)?.read_exact(&mut buf)?;
        std::fs::File::create(&staged)?.write_all(&buf)?;
        let expected = Expected { length: len, sha256: Sha256::digest(&buf).into() };
        let img = VerifiedImage::check(buf, &expected)?;
        self.layout.with_esp(|e| Ok(esp::remove_slot_entries(e, self.layout.booted.other())?))?;
        let (mut dd, mut ours, mut verified) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            let t = std::time::Instant::now();
            let st = std::process::Command::new("busybox")
                .arg("dd")
                .arg(format!("if={}", staged.display()))
                .arg(format!("of={}", to.display()))
                .args(["bs=1M", "conv=fsync"])
                .stderr(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(st.success(), "dd: {st}");
            dd.push(len as f64 / t.elapsed().as_secs_f64() / 1e6);
            let rep = slot::write_slot(&img, to, &mut |_, _| {})?;
            ours.push(len as f64 / rep.write_seconds / 1e6);
            verified.push(len as f64 / rep.seconds / 1e6);
        }
        let _ = std::fs::remove_file(&staged);
        let fmt = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            format!("median {:.1} MB/s (min {:.1}, max {:.1})", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        tracing::warn!(
            "bench: slot write of {len} bytes, {rounds} rounds: dd {}; palisaded write {}; palisaded write + read-back check {}",
            fmt(&mut dd),
            fmt(&mut ours),
            fmt(&mut verified)
        );
        Ok(())
    }

    /// Mounts the freshly written slot read-only for `f` (its kernel, initramfs
    /// and board file go to the ESP).
    fn with_new_root<T>(&self, dev: &Path, f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mnt = self.layout.run_dir.join("update/newroot");
        std::fs::create_dir_all(&mnt)?;
        crate::init::mount_erofs_ro(dev, &mnt)?;
        let r = f(&mnt);
        let u = crate::init::unmount(&mnt);
        let v = r?;
        u?;
        Ok(v)
    }
}

enum Step {
    /// Poll again after this long (None: the interval with jitter).
    Again(Option<Duration>),
    /// The poll failed: back off.
    Failed,
}

/// Whether a manual install of `v` may go ahead (pure).
pub fn manual_allowed(
    v: &Version,
    installed: &Version,
    failed: &std::collections::BTreeSet<Version>,
    policy: Option<&palisade_update::rollout::RolloutPolicy>,
) -> Result<(), Refusal> {
    if failed.contains(v) {
        return Err(refusal(RefusalKind::FailedBefore, format!("{v} failed its health gate on this node before; publish a newer version")));
    }
    if v == installed {
        return Err(refusal(RefusalKind::Downgrade, format!("{v} is already installed")));
    }
    let downgrade_ok = policy.is_some_and(|p| p.allow_downgrade && &p.version == v);
    if v < installed && !downgrade_ok {
        return Err(refusal(RefusalKind::Downgrade, format!("{v} is older than the installed {installed} and the signed rollout policy does not allow this downgrade")));
    }
    if let Some(min) = policy.and_then(|p| p.min_version.as_ref()) {
        if v < min {
            return Err(refusal(RefusalKind::BelowMinimum, format!("{v} is below the fleet's minimum version {min}")));
        }
    }
    Ok(())
}

fn hash_file(p: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// The node's identity for the wave schedule: the first 16 hex digits of the
/// SHA-256 of its WireGuard public key (stable for the life of the node key).
pub fn node_id(public_key: &str) -> String {
    let d = Sha256::digest(public_key.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        assert_eq!(os_release_version("NAME=Palisade\nVERSION_ID=0.2.0\n"), Some(Version::new(0, 2, 0)));
        assert_eq!(os_release_version("VERSION_ID=\"1.2.3\""), Some(Version::new(1, 2, 3)));
        assert_eq!(os_release_version("NAME=x"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let poll = Duration::from_secs(300);
        let got: Vec<u64> = (0..8).map(|n| retry_delay(n, poll).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_delay(40, poll), poll);
    }

    #[test]
    fn manual_install_rules() {
        let v = |s: &str| Version::parse(s).unwrap();
        let none = std::collections::BTreeSet::new();
        assert!(manual_allowed(&v("0.2.0"), &v("0.1.0"), &none, None).is_ok());
        assert_eq!(manual_allowed(&v("0.1.0"), &v("0.2.0"), &none, None).unwrap_err().kind, RefusalKind::Downgrade);
        assert_eq!(manual_allowed(&v("0.2.0"), &v("0.2.0"), &none, None).unwrap_err().kind, RefusalKind::Downgrade);
        let failed: std::collections::BTreeSet<_> = [v("0.3.0")].into();
        assert_eq!(manual_allowed(&v("0.3.0"), &v("0.2.0"), &failed, None).unwrap_err().kind, RefusalKind::FailedBefore);
        assert!(manual_allowed(&v("0.3.1"), &v("0.2.0"), &failed, None).is_ok());
        let policy: palisade_update::rollout::RolloutPolicy = serde_json::from_value(json!({
            "version": "0.1.0", "start": "2026-01-01T00:00:00Z", "waves": 1, "soak_minutes": 0,
            "allow_downgrade": true, "min_version": "0.1.0"
        })).unwrap();
        assert!(manual_allowed(&v("0.1.0"), &v("0.2.0"), &none, Some(&policy)).is_ok());
        assert_eq!(manual_allowed(&v("0.0.9"), &v("0.2.0"), &none, Some(&policy)).unwrap_err().kind, RefusalKind::Downgrade);
        let mut p2 = policy.clone();
        p2.min_version = Some(v("0.5.0"));
        assert_eq!(manual_allowed(&v("0.3.0"), &v("0.2.0"), &none, Some(&p2)).unwrap_err().kind, RefusalKind::BelowMinimum);
    }

    #[test]
    fn node_id_is_stable_hex() {
        let a = node_id("abc");
        assert_eq!(a.len(), 16);
        assert_eq!(a, node_id("abc"));
        assert_ne!(a, node_id("abd"));
    }
}
