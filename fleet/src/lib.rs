//! `palisade-fleet`: publishes the signed update repository (see
//! docs/updates.md and docs/fleet.md). The binary is a thin clap front end; every command is a
//! function here returning a [`Report`] (human text and one JSON object) or a
//! [`FleetError`] (with its exit code).
//!
//! Layout: `<repo>/metadata/` (`1.root.json`, `root.json`, `timestamp.json`,
//! `N.snapshot.json`, `N.targets.json`, `N.<role>.json` per delegated role;
//! consistent snapshots) and `<repo>/targets/<sha256>.<target name>`. Keys:
//! `<keys>/<role>.pk8` for root, targets, snapshot, timestamp and each
//! delegated role, ed25519 PKCS#8 DER, mode 0600; `issuer.p8` (P-384) for
//! grants. The top-level targets only delegates; every publish signs the
//! changed role, the snapshot and the timestamp directly with
//! [`SignedRole`] (tough's `RepositoryEditor::sign` always re-signs the
//! top-level targets, which would put `targets.pk8` in every key set).

pub mod enrol;
pub mod mesh;
pub mod nodelist;
pub mod trust;

pub use trust::new_grant_id;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use palisade_update::fleet::{IMAGES, ROLES as DELEGATED};
use palisade_update::rollout::{image_target, RolloutPolicy, Window, ROLLOUT_TARGET};
use semver::Version;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{
    DelegatedRole, DelegatedTargets, Delegations, Hashes, KeyHolder, Metafile, PathPattern,
    PathSet, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets, Timestamp,
};
use tough::sign::{parse_keypair, Sign};
use tough::TargetName;

/// The top-level role key files in the keys directory (the delegated roles'
/// keys are `<role>.pk8` too, roles from [`palisade_update::fleet::ROLES`]).
pub const ROLES: [(&str, RoleType); 4] = [
    ("root", RoleType::Root),
    ("targets", RoleType::Targets),
    ("snapshot", RoleType::Snapshot),
    ("timestamp", RoleType::Timestamp),
];

/// A command's failure; [`FleetError::exit_code`] is what the binary exits with.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad arguments or input files (exit 2).
    #[error("{0}")]
    Input(String),
    /// The repository or the keys are missing, inconsistent or refuse the
    /// operation (exit 3).
    #[error("{0}")]
    Repo(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl FleetError {
    /// 2 input, 3 repository/keys, 1 other.
    pub fn exit_code(&self) -> i32 {
        match self {
            FleetError::Input(_) => 2,
            FleetError::Repo(_) => 3,
            FleetError::Other(_) => 1,
        }
    }
    /// Stable name for `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetError::Input(_) => "input",
            FleetError::Repo(_) => "repository",
            FleetError::Other(_) => "other",
        }
    }
}

pub(crate) fn repo_err(what: impl std::fmt::Display) -> FleetError {
    FleetError::Repo(what.to_string())
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Report {
    /// One or more lines for a person.
    pub text: String,
    /// The same as one JSON object.
    pub json: Value,
}

/// How long newly signed metadata stays valid.
#[derive(Debug, Clone, Copy)]
pub struct Expiries {
    pub targets: jiff::Timestamp,
    pub snapshot: jiff::Timestamp,
    pub timestamp: jiff::Timestamp,
}

impl Expiries {
    /// From now: days for targets and snapshot, hours for the timestamp; an
    /// absolute timestamp expiry wins over the hours.
    pub fn from_now(
        targets_days: i64,
        snapshot_days: i64,
        timestamp_hours: i64,
        timestamp_at: Option<jiff::Timestamp>,
    ) -> Expiries {
        let now = jiff::Timestamp::now();
        Expiries {
            targets: now + jiff::SignedDuration::from_hours(targets_days * 24),
            snapshot: now + jiff::SignedDuration::from_hours(snapshot_days * 24),
            timestamp: timestamp_at
                .unwrap_or(now + jiff::SignedDuration::from_hours(timestamp_hours)),
        }
    }
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries::from_now(90, 7, 24, None)
    }
}

/// The repository and its keys.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub repo: PathBuf,
    pub keys: PathBuf,
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|e| repo_err(format!("{}: {e}", path.display())))
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FleetError> {
    serde_json::from_slice(&read(path)?).map_err(|e| repo_err(format!("{}: {e}", path.display())))
}

/// Write `bytes` to `path` through a temp file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    let tmp = path.with_extension("tmp-palisade-fleet");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| FleetError::Other(format!("writing {}: {e}", path.display())))
}

/// The current metadata as published (read from disk, not verified: the
/// publisher trusts its own repository directory).
#[derive(Debug)]
pub struct Current {
    pub root: Signed<Root>,
    pub timestamp: Signed<Timestamp>,
    pub snapshot: Signed<Snapshot>,
    /// The top-level targets: delegations only, no targets of its own.
    pub targets: Signed<Targets>,
    /// Each delegated role's metadata, by role name.
    pub roles: BTreeMap<String, Signed<Targets>>,
    /// `N.snapshot.json` as bytes (the timestamp signs these).
    pub snapshot_bytes: Vec<u8>,
}

impl Current {
    /// The targets of a delegated role (empty if the role is unknown).
    pub fn role_targets(&self, role: &str) -> Vec<(String, &Target)> {
        let mut v: Vec<(String, &Target)> = self
            .roles
            .get(role)
            .map(|r| {
                r.signed
                    .targets
                    .iter()
                    .map(|(n, t)| (n.raw().to_string(), t))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `name` as signed by `role`.
    pub fn find(&self, role: &str, name: &str) -> Option<&Target> {
        self.roles
            .get(role)?
            .signed
            .targets
            .iter()
            .find(|(n, _)| n.raw() == name)
            .map(|(_, t)| t)
    }
}

fn meta_version(m: &HashMap<String, Metafile>, name: &str, file: &str) -> Result<u64, FleetError> {
    m.get(name)
        .map(|m| m.version.get())
        .ok_or_else(|| repo_err(format!("{file} does not list {name}")))
}

fn nz(v: u64) -> Result<NonZeroU64, FleetError> {
    NonZeroU64::new(v).ok_or_else(|| repo_err("version 0"))
}

fn metafile(buffer: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        length: Some(buffer.len() as u64),
        hashes: Some(Hashes {
            sha256: Sha256::digest(buffer).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// Sign `role` with whichever of `keys` the holder lists for it; a key file
/// that is not the role's trusted key is an error naming the role.
async fn sign_with<T: tough::schema::Role + serde::Serialize>(
    role: T,
    holder: &KeyHolder,
    keys: &[Box<dyn KeySource>],
    what: &str,
) -> Result<SignedRole<T>, FleetError> {
    SignedRole::new(role, holder, keys, &SystemRandom::new())
        .await
        .map_err(|e| {
            repo_err(format!(
                "signing {what}: {e} (is the key file the {what} key this repository trusts?)"
            ))
        })
}

/// The key id of a PKCS#8 key file.
fn key_of(
    path: &Path,
) -> Result<
    (
        tough::schema::decoded::Decoded<tough::schema::decoded::Hex>,
        tough::schema::key::Key,
    ),
    FleetError,
> {
    let k =
        parse_keypair(&read(path)?).map_err(|e| repo_err(format!("{}: {e}", path.display())))?;
    let key = k.tuf_key();
    let id = key.key_id().map_err(|e| FleetError::Other(e.to_string()))?;
    Ok((id, key))
}

/// Create a new ed25519 PKCS#8 key file (0600); refuses to overwrite.
fn new_key_file(path: &Path) -> Result<(), FleetError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| FleetError::Other(format!("key generation: {e}")))?;
    write_private(path, doc.as_ref(), false)
}

/// Write a private file with mode 0600: through a temp file and a rename
/// when `replace`, else `create_new`.
pub(crate) fn write_private(path: &Path, bytes: &[u8], replace: bool) -> Result<(), FleetError> {
    let target = if replace {
        path.with_extension("tmp-palisade-fleet")
    } else {
        path.to_path_buf()
    };
    let r = (|| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).mode(0o600);
        if replace {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let mut f = o.open(&target)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if replace {
            std::fs::rename(&target, path)?;
        }
        Ok::<(), std::io::Error>(())
    })();
    r.map_err(|e| repo_err(format!("{}: {e}", path.display())))
}

/// A change to publish: new content for delegated roles and, when the
/// delegations change, a new top-level targets.
#[derive(Default)]
struct Change {
    top: Option<Targets>,
    roles: Vec<(String, Targets)>,
}

impl Fleet {
    fn meta(&self) -> PathBuf {
        self.repo.join("metadata")
    }

    /// Whether `repo init` has run.
    pub fn exists(&self) -> bool {
        self.meta().join("root.json").exists()
    }

    /// The path of a role's key file.
    pub fn key_path(&self, role: &str) -> PathBuf {
        self.keys.join(format!("{role}.pk8"))
    }

    fn key(&self, role: &str) -> Result<Box<dyn KeySource>, FleetError> {
        let path = self.key_path(role);
        if !path.exists() {
            return Err(repo_err(format!(
                "key {} missing: this command needs the {role} key (give the keys directory `repo init` created)",
                path.display()
            )));
        }
        Ok(Box::new(LocalKeySource { path }))
    }

    fn keys_of(&self, roles: &[&str]) -> Result<Vec<Box<dyn KeySource>>, FleetError> {
        roles.iter().map(|r| self.key(r)).collect()
    }

    /// Read the published metadata.
    pub fn current(&self) -> Result<Current, FleetError> {
        if !self.exists() {
            return Err(repo_err(format!(
                "no repository at {} (run `palisade-fleet repo init`)",
                self.repo.display()
            )));
        }
        let m = self.meta();
        let root: Signed<Root> = parse(&m.join("root.json"))?;
        let timestamp: Signed<Timestamp> = parse(&m.join("timestamp.json"))?;
        let sv = meta_version(&timestamp.signed.meta, "snapshot.json", "timestamp.json")?;
        let sp = m.join(format!("{sv}.snapshot.json"));
        let snapshot_bytes = read(&sp)?;
        let snapshot: Signed<Snapshot> = serde_json::from_slice(&snapshot_bytes)
            .map_err(|e| repo_err(format!("{}: {e}", sp.display())))?;
        let tv = meta_version(&snapshot.signed.meta, "targets.json", "snapshot.json")?;
        let targets: Signed<Targets> = parse(&m.join(format!("{tv}.targets.json")))?;
        let mut roles = BTreeMap::new();
        if let Some(d) = &targets.signed.delegations {
            for r in &d.roles {
                let file = format!("{}.json", r.name);
                let v = meta_version(&snapshot.signed.meta, &file, "snapshot.json")?;
                let t: Signed<Targets> = parse(&m.join(format!("{v}.{}.json", r.name)))?;
                roles.insert(r.name.clone(), t);
            }
        }
        Ok(Current {
            root,
            timestamp,
            snapshot,
            targets,
            roles,
            snapshot_bytes,
        })
    }

    /// Current metadata of a repository with the delegated roles.
    pub(crate) fn current_delegated(&self) -> Result<Current, FleetError> {
        let c = self.current()?;
        if c.roles.is_empty() {
            return Err(repo_err(format!(
                "repository {} has no delegated roles (made by an older palisade-fleet); make a new one with `repo init`",
                self.repo.display()
            )));
        }
        Ok(c)
    }

    /// Sign and write `change` (new versions of the changed roles, then the
    /// snapshot, then the timestamp last: readers see all or nothing). Needs
    /// the keys of the changed roles, snapshot and timestamp only.
    async fn commit(
        &self,
        cur: &Current,
        change: Change,
        exp: Expiries,
    ) -> Result<Current, FleetError> {
        let m = self.meta();
        let root_holder = KeyHolder::Root(cur.root.signed.clone());
        // Every key first: a missing key fails before anything is written.
        let top_keys = match change.top {
            Some(_) => Some(self.keys_of(&["targets"])?),
            None => None,
        };
        let mut role_keys = Vec::new();
        for (name, _) in &change.roles {
            role_keys.push(self.keys_of(&[name])?);
        }
        let snap_keys = self.keys_of(&["snapshot"])?;
        let ts_keys = self.keys_of(&["timestamp"])?;

        let mut meta = cur.snapshot.signed.meta.clone();
        let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let top = match change.top {
            Some(mut t) => {
                t.version = nz(cur.targets.signed.version.get() + 1)?;
                t.expires = exp.targets;
                let s = sign_with(
                    t,
                    &root_holder,
                    top_keys.as_deref().unwrap_or(&[]),
                    "targets",
                )
                .await?;
                meta.insert(
                    "targets.json".into(),
                    metafile(s.buffer(), s.signed().signed.version),
                );
                files.push((
                    m.join(format!("{}.targets.json", s.signed().signed.version)),
                    s.buffer().clone(),
                ));
                s.signed().clone()
            }
            None => cur.targets.clone(),
        };
        let delegations = top
            .signed
            .delegations
            .clone()
            .ok_or_else(|| repo_err("targets.json has no delegations"))?;
        let holder = KeyHolder::Delegations(delegations);
        for ((name, mut t), keys) in change.roles.into_iter().zip(role_keys) {
            let v = cur.roles.get(&name).map_or(0, |r| r.signed.version.get()) + 1;
            t.version = nz(v)?;
            t.expires = exp.targets;
            t.delegations = None;
            let s = sign_with(
                DelegatedTargets {
                    name: name.clone(),
                    targets: t,
                },
                &holder,
                &keys,
                &name,
            )
            .await?;
            meta.insert(format!("{name}.json"), metafile(s.buffer(), nz(v)?));
            files.push((m.join(format!("{v}.{name}.json")), s.buffer().clone()));
        }
        let mv = nz(cur
            .snapshot
            .signed
            .version
            .get()
            .max(cur.timestamp.signed.version.get())
            + 1)?;
        let mut snap = Snapshot::new("1.0.0".into(), mv, exp.snapshot);
        snap.meta = meta;
        let snap = sign_with(snap, &root_holder, &snap_keys, "snapshot").await?;
        let mut ts = Timestamp::new("1.0.0".into(), mv, exp.timestamp);
        ts.meta
            .insert("snapshot.json".into(), metafile(snap.buffer(), mv));
        let ts = sign_with(ts, &root_holder, &ts_keys, "timestamp").await?;
        files.push((m.join(format!("{mv}.snapshot.json")), snap.buffer().clone()));
        for (p, b) in &files {
            write_atomic(p, b)?;
        }
        write_atomic(&m.join("timestamp.json"), ts.buffer())?;
        self.current()
    }

    /// Put and remove targets of one delegated role and publish; `None` if
    /// nothing would change (same bytes already published).
    pub(crate) async fn put_targets(
        &self,
        role: &str,
        puts: Vec<(String, Vec<u8>)>,
        removes: &[String],
        exp: Expiries,
    ) -> Result<Option<Current>, FleetError> {
        let cur = self.current_delegated()?;
        let Some(signed) = cur.roles.get(role) else {
            return Err(repo_err(format!(
                "no delegated role {role:?} in this repository"
            )));
        };
        let mut t = signed.signed.clone();
        let mut changed = false;
        // A repository made before a role gained a path (`mesh/*` for
        // configs): widen its delegation to the role's paths now (this
        // signs the top-level targets too).
        let top = self.widened_delegation(&cur, role, &puts)?;
        // The keys first: without them nothing is written, not even targets.
        if top.is_some() {
            self.keys_of(&[role, "targets", "snapshot", "timestamp"])?;
        }
        self.keys_of(&[role, "snapshot", "timestamp"])?;
        for (name, bytes) in &puts {
            let sha: [u8; 32] = Sha256::digest(bytes).into();
            if cur.find(role, name).is_some_and(|x| {
                x.hashes.sha256.as_ref() == sha.as_slice() && x.length == bytes.len() as u64
            }) {
                continue;
            }
            let target = self.store_target(name, bytes)?;
            let tn = TargetName::new(name.as_str())
                .map_err(|e| FleetError::Input(format!("target name {name:?}: {e}")))?;
            t.targets.insert(tn, target);
            changed = true;
        }
        for name in removes {
            let before = t.targets.len();
            t.targets.retain(|n, _| n.raw() != name);
            changed |= t.targets.len() != before;
        }
        if !changed {
            return Ok(None);
        }
        let change = Change {
            top,
            roles: vec![(role.to_string(), t)],
        };
        Ok(Some(self.commit(&cur, change, exp).await?))
    }

    /// The top-level targets with `role`'s delegation widened by those of
    /// its own paths ([`palisade_update::fleet::Role`]) that `puts` need
    /// and the delegation lacks; `None` when nothing is missing.
    fn widened_delegation(&self, cur: &Current, role: &str, puts: &[(String, Vec<u8>)]) -> Result<Option<Targets>, FleetError> {
        let Some(r) = palisade_update::fleet::Role::by_name(role) else {
            return Ok(None);
        };
        let mut top = cur.targets.signed.clone();
        let mut widened = false;
        if let Some(d) = top.delegations.as_mut() {
            for dr in d.roles.iter_mut().filter(|x| x.name == role) {
                if let PathSet::Paths(p) = &mut dr.paths {
                    for pat in r.paths {
                        let one = palisade_update::fleet::Role { name: r.name, paths: std::slice::from_ref(pat) };
                        if puts.iter().any(|(n, _)| one.owns(n)) && !p.iter().any(|x| x.value() == *pat) {
                            p.push(PathPattern::new(*pat).map_err(|e| FleetError::Other(format!("path {pat}: {e}")))?);
                            widened = true;
                        }
                    }
                }
            }
        }
        Ok(widened.then_some(top))
    }

    /// The bytes of a published target (from `<repo>/targets/`), checked
    /// against its hash.
    pub fn target_bytes(&self, t: &Target, name: &str) -> Result<Vec<u8>, FleetError> {
        let path = self
            .repo
            .join("targets")
            .join(format!("{}.{name}", hex(t.hashes.sha256.as_ref())));
        let b = read(&path)?;
        if Sha256::digest(&b).as_slice() != t.hashes.sha256.as_ref() {
            return Err(repo_err(format!(
                "{}: contents do not match the signed hash",
                path.display()
            )));
        }
        Ok(b)
    }

    /// The file that serves `name` (`<repo>/targets/<sha256>.<name>`, the
    /// name tough fetches with consistent snapshots) as signed by the role
    /// that owns the path (`None`: not published by its owner).
    pub fn published_target_path(&self, name: &str) -> Result<Option<PathBuf>, FleetError> {
        let cur = self.current()?;
        let Some(owner) = palisade_update::fleet::owner(name) else {
            return Ok(None);
        };
        Ok(cur.find(owner.name, name).map(|t| {
            self.repo
                .join("targets")
                .join(format!("{}.{name}", hex(t.hashes.sha256.as_ref())))
        }))
    }

    /// A delegated role's target, if published.
    pub fn read_role_target(
        &self,
        cur: &Current,
        role: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        match cur.find(role, name) {
            Some(t) => self.target_bytes(t, name).map(Some),
            None => Ok(None),
        }
    }

    /// `repo init`: keys (kept if present) and a signed repository whose
    /// top-level targets delegates each path to its role
    /// ([`palisade_update::fleet::ROLES`]), every role empty. An existing
    /// repository is left untouched ("exists").
    pub async fn init(&self, root_expires_days: i64, exp: Expiries) -> Result<Report, FleetError> {
        if self.exists() {
            return Ok(Report {
                text: format!("repository {} exists; nothing changed", self.repo.display()),
                json: json!({"ok": true, "result": "exists", "repo": self.repo}),
            });
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.keys)
            .map_err(|e| repo_err(format!("{}: {e}", self.keys.display())))?;
        let mut made = Vec::new();
        let all: Vec<&str> = ROLES
            .iter()
            .map(|(r, _)| *r)
            .chain(DELEGATED.iter().map(|r| r.name))
            .collect();
        for r in &all {
            let path = self.key_path(r);
            if path.exists() {
                continue;
            }
            new_key_file(&path)?;
            made.push(*r);
        }
        let mut root = Root {
            spec_version: "1.0.0".into(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: jiff::Timestamp::now()
                + jiff::SignedDuration::from_hours(root_expires_days * 24),
            keys: HashMap::new(),
            roles: HashMap::new(),
            _extra: HashMap::new(),
        };
        for (r, rt) in ROLES {
            let (id, key) = key_of(&self.key_path(r))?;
            root.keys.insert(id.clone(), key);
            root.roles.insert(
                rt,
                RoleKeys {
                    keyids: vec![id],
                    threshold: NonZeroU64::MIN,
                    _extra: HashMap::new(),
                },
            );
        }
        let signed = sign_with(
            root.clone(),
            &KeyHolder::Root(root),
            &self.keys_of(&["root"])?,
            "root",
        )
        .await?;
        let m = self.meta();
        for d in [m.clone(), self.repo.join("targets")] {
            std::fs::create_dir_all(&d).map_err(|e| repo_err(format!("{}: {e}", d.display())))?;
        }
        write_atomic(&m.join("1.root.json"), signed.buffer())?;
        // Version 1 of everything, then root.json last, so a half-done init is
        // re-run from scratch.
        let mut top = Targets::new("1.0.0".into(), NonZeroU64::MIN, exp.targets);
        let mut d = Delegations::new();
        for r in DELEGATED {
            let (id, key) = key_of(&self.key_path(r.name))?;
            d.keys.insert(id.clone(), key);
            d.roles.push(delegated_role(&r, vec![id])?);
        }
        top.delegations = Some(d);
        let root_holder = KeyHolder::Root(signed.signed().signed.clone());
        let top = sign_with(top, &root_holder, &self.keys_of(&["targets"])?, "targets").await?;
        let holder =
            KeyHolder::Delegations(top.signed().signed.delegations.clone().unwrap_or_default());
        let mut meta = HashMap::new();
        meta.insert(
            "targets.json".to_string(),
            metafile(top.buffer(), NonZeroU64::MIN),
        );
        write_atomic(&m.join("1.targets.json"), top.buffer())?;
        for r in DELEGATED {
            let mut t = Targets::new("1.0.0".into(), NonZeroU64::MIN, exp.targets);
            t.delegations = None;
            let s = sign_with(
                DelegatedTargets {
                    name: r.name.to_string(),
                    targets: t,
                },
                &holder,
                &self.keys_of(&[r.name])?,
                r.name,
            )
            .await?;
            meta.insert(
                format!("{}.json", r.name),
                metafile(s.buffer(), NonZeroU64::MIN),
            );
            write_atomic(&m.join(format!("1.{}.json", r.name)), s.buffer())?;
        }
        let mut snap = Snapshot::new("1.0.0".into(), NonZeroU64::MIN, exp.snapshot);
        snap.meta = meta;
        let snap = sign_with(
            snap,
            &root_holder,
            &self.keys_of(&["snapshot"])?,
            "snapshot",
        )
        .await?;
        write_atomic(&m.join("1.snapshot.json"), snap.buffer())?;
        let mut ts = Timestamp::new("1.0.0".into(), NonZeroU64::MIN, exp.timestamp);
        ts.meta.insert(
            "snapshot.json".into(),
            metafile(snap.buffer(), NonZeroU64::MIN),
        );
        let ts = sign_with(
            ts,
            &root_holder,
            &self.keys_of(&["timestamp"])?,
            "timestamp",
        )
        .await?;
        write_atomic(&m.join("timestamp.json"), ts.buffer())?;
        write_atomic(&m.join("root.json"), signed.buffer())?;
        Ok(Report {
            text: format!(
                "created repository {} (keys {}{})",
                self.repo.display(),
                self.keys.display(),
                if made.is_empty() {
                    ", existing keys reused"
                } else {
                    ""
                }
            ),
            json: json!({"ok": true, "result": "created", "repo": self.repo, "keys_generated": made,
                "roles": DELEGATED.iter().map(|r| r.name).collect::<Vec<_>>()}),
        })
    }

    /// Copy `bytes` to the content-addressed target file.
    fn store_target(&self, name: &str, bytes: &[u8]) -> Result<Target, FleetError> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let path = self
            .repo
            .join("targets")
            .join(format!("{}.{name}", hex(&sha)));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| repo_err(format!("{}: {e}", p.display())))?;
        }
        write_atomic(&path, bytes)?;
        Ok(Target {
            length: bytes.len() as u64,
            hashes: Hashes {
                sha256: sha.to_vec().into(),
                _extra: HashMap::new(),
            },
            custom: HashMap::new(),
            _extra: HashMap::new(),
        })
    }

    /// `image add`: `images/<board>/<version>.img`, signed by `images`.
    pub async fn add_image(
        &self,
        file: &Path,
        board: &str,
        version: &str,
        manifest: Option<&Path>,
        replace: bool,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if board.is_empty()
            || !board
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(FleetError::Input(format!(
                "board {board:?}: use letters, digits, '-' and '_'"
            )));
        }
        let version = parse_version(version)?;
        let bytes = std::fs::read(file)
            .map_err(|e| FleetError::Input(format!("image {}: {e}", file.display())))?;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(m) = manifest {
            let v: Value = serde_json::from_slice(
                &std::fs::read(m)
                    .map_err(|e| FleetError::Input(format!("manifest {}: {e}", m.display())))?,
            )
            .map_err(|e| FleetError::Input(format!("manifest {}: {e}", m.display())))?;
            if !manifest_has_sha(&v, &hex(&sha)) {
                return Err(FleetError::Input(format!(
                    "manifest {} lists no file with sha256 {} ({}): not the image this build produced",
                    m.display(),
                    hex(&sha),
                    file.display()
                )));
            }
        }
        let name = image_target(board, &version);
        let cur = self.current_delegated()?;
        if let Some(t) = cur.find(IMAGES.name, &name) {
            if t.hashes.sha256.as_ref() == sha.as_slice() && t.length == bytes.len() as u64 {
                return Ok(Report {
                    text: format!("{name} already published with these bytes; nothing changed"),
                    json: json!({"ok": true, "result": "unchanged", "target": name, "sha256": hex(&sha)}),
                });
            }
            if !replace {
                return Err(repo_err(format!(
                    "{name} is already published with other bytes (sha256 {}); use a new version, or --replace",
                    hex(t.hashes.sha256.as_ref())
                )));
            }
        }
        let len = bytes.len();
        let after = self
            .put_targets(IMAGES.name, vec![(name.clone(), bytes)], &[], exp)
            .await?
            .ok_or_else(|| FleetError::Other("nothing published".into()))?;
        Ok(Report {
            text: format!(
                "published {name} ({len} bytes, sha256 {}); images version {}",
                hex(&sha),
                after.roles[IMAGES.name].signed.version
            ),
            json: json!({"ok": true, "result": "added", "target": name, "length": len,
                "sha256": hex(&sha), "images_version": after.roles[IMAGES.name].signed.version.get(),
                "targets_version": after.targets.signed.version.get()}),
        })
    }

    /// `rollout set`: `rollout.json`, signed by `images`.
    pub async fn set_rollout(
        &self,
        policy: &RolloutPolicy,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if policy.waves == 0 {
            return Err(FleetError::Input("--waves must be at least 1".into()));
        }
        let cur = self.current_delegated()?;
        let boards: Vec<String> = images(&cur)
            .into_iter()
            .filter(|(_, v, _)| v == &policy.version)
            .map(|(b, _, _)| b)
            .collect();
        if boards.is_empty() {
            return Err(FleetError::Input(format!(
                "no image of version {} is published for any board; run `image add` first",
                policy.version
            )));
        }
        let mut bytes =
            serde_json::to_vec_pretty(policy).map_err(|e| FleetError::Other(e.to_string()))?;
        bytes.push(b'\n');
        match self
            .put_targets(
                IMAGES.name,
                vec![(ROLLOUT_TARGET.to_string(), bytes)],
                &[],
                exp,
            )
            .await?
        {
            None => Ok(Report {
                text: "rollout.json unchanged".into(),
                json: json!({"ok": true, "result": "unchanged", "rollout": policy}),
            }),
            Some(_) => Ok(Report {
                text: format!(
                    "rollout to {} in {} wave(s), {} min soak (boards: {})",
                    policy.version,
                    policy.waves,
                    policy.soak_minutes,
                    boards.join(", ")
                ),
                json: json!({"ok": true, "result": "set", "rollout": policy, "boards": boards}),
            }),
        }
    }

    /// `sign`: re-sign everything below root (targets, every delegated role,
    /// snapshot, timestamp; each one version up). Needs all those keys.
    pub async fn sign(&self, exp: Expiries) -> Result<Report, FleetError> {
        let cur = self.current()?;
        let change = Change {
            top: Some(cur.targets.signed.clone()),
            roles: cur
                .roles
                .iter()
                .map(|(n, t)| (n.clone(), t.signed.clone()))
                .collect(),
        };
        let c = self.commit(&cur, change, exp).await?;
        Ok(Report {
            text: format!(
                "signed: targets {}, snapshot {}, timestamp {}",
                c.targets.signed.version, c.snapshot.signed.version, c.timestamp.signed.version
            ),
            json: json!({"ok": true, "result": "signed", "versions": versions(&c)}),
        })
    }

    /// `refresh`: a new timestamp over the current snapshot (nothing else).
    pub async fn refresh(&self, expires: jiff::Timestamp) -> Result<Report, FleetError> {
        let cur = self.current()?;
        let version = cur
            .timestamp
            .signed
            .version
            .checked_add(1)
            .ok_or_else(|| repo_err("timestamp version overflow"))?;
        let mut ts = Timestamp::new("1.0.0".into(), version, expires);
        ts.meta.insert(
            "snapshot.json".into(),
            metafile(&cur.snapshot_bytes, cur.snapshot.signed.version),
        );
        let signed = sign_with(
            ts,
            &KeyHolder::Root(cur.root.signed.clone()),
            &self.keys_of(&["timestamp"])?,
            "timestamp",
        )
        .await?;
        write_atomic(&self.meta().join("timestamp.json"), signed.buffer())?;
        Ok(Report {
            text: format!("timestamp version {version}, expires {expires}"),
            json: json!({"ok": true, "result": "refreshed", "timestamp_version": version.get(),
                "expires": expires.to_string()}),
        })
    }

    /// `keys rotate ROLE`. A delegated role: a new key, the delegation in the
    /// top-level targets updated (needs targets.pk8) and the role re-signed.
    /// `targets`, `snapshot` or `timestamp`: a new key in a new root version
    /// (`N+1.root.json`, signed by root.pk8; nodes follow the root chain),
    /// then targets (for `targets`), snapshot and timestamp re-signed. The old
    /// key file is kept as `<role>.pk8.old-<keyid8>`.
    pub async fn rotate_key(&self, role: &str, exp: Expiries) -> Result<Report, FleetError> {
        let delegated = palisade_update::fleet::Role::by_name(role).is_some();
        let top = match role {
            "targets" => Some(RoleType::Targets),
            "snapshot" => Some(RoleType::Snapshot),
            "timestamp" => Some(RoleType::Timestamp),
            _ => None,
        };
        if !delegated && top.is_none() {
            return Err(FleetError::Input(format!(
                "role {role:?}: give a delegated role ({}) or targets, snapshot, timestamp (root is rotated offline)",
                DELEGATED.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut cur = self.current_delegated()?;
        // Every key the rotation signs with must be here before anything changes.
        let mut need = vec!["snapshot", "timestamp"];
        need.push(if delegated { "targets" } else { "root" });
        if role == "targets" {
            need.push("targets");
        }
        self.keys_of(&need)?;
        let path = self.key_path(role);
        let (old_id, _) = key_of(&path)?;
        let old_path = self
            .keys
            .join(format!("{role}.pk8.old-{}", &hex(old_id.as_ref())[..8]));
        std::fs::copy(&path, &old_path)
            .map_err(|e| repo_err(format!("{}: {e}", old_path.display())))?;
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| FleetError::Other(format!("key generation: {e}")))?;
        write_private(&path, doc.as_ref(), true)?;
        let restore = |e: FleetError| {
            let _ = std::fs::rename(&old_path, &path);
            e
        };
        let (new_id, new_key) = key_of(&path).map_err(restore)?;
        let mut change = Change::default();
        if delegated {
            let mut t = cur.targets.signed.clone();
            let d = t
                .delegations
                .as_mut()
                .ok_or_else(|| repo_err("targets.json has no delegations"))?;
            for r in d.roles.iter_mut().filter(|r| r.name == role) {
                r.keyids = vec![new_id.clone()];
            }
            let used: Vec<_> = d.roles.iter().flat_map(|r| r.keyids.clone()).collect();
            d.keys.retain(|id, _| used.contains(id));
            d.keys.insert(new_id.clone(), new_key);
            change.top = Some(t);
            let rt = cur
                .roles
                .get(role)
                .ok_or_else(|| repo_err(format!("no delegated role {role} in this repository")))?;
            change.roles.push((role.to_string(), rt.signed.clone()));
        } else {
            let mut root = cur.root.signed.clone();
            root.version = nz(root.version.get() + 1)?;
            if let Some(rk) = root.roles.get_mut(&top.unwrap_or(RoleType::Targets)) {
                rk.keyids = vec![new_id.clone()];
            }
            let used: Vec<_> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
            root.keys.retain(|id, _| used.contains(id));
            root.keys.insert(new_id.clone(), new_key);
            let signed = sign_with(
                root.clone(),
                &KeyHolder::Root(root),
                &self.keys_of(&["root"])?,
                "root",
            )
            .await
            .map_err(restore)?;
            let m = self.meta();
            write_atomic(
                &m.join(format!("{}.root.json", signed.signed().signed.version)),
                signed.buffer(),
            )
            .map_err(restore)?;
            write_atomic(&m.join("root.json"), signed.buffer())?;
            cur.root = signed.signed().clone();
            if role == "targets" {
                change.top = Some(cur.targets.signed.clone());
            }
        }
        let after = self.commit(&cur, change, exp).await?;
        Ok(Report {
            text: format!(
                "{role}: new key {} (old key kept as {}); root version {}",
                &hex(new_id.as_ref())[..8],
                old_path.display(),
                after.root.signed.version
            ),
            json: json!({"ok": true, "result": "rotated", "role": role, "keyid": hex(new_id.as_ref()),
                "old_keyid": hex(old_id.as_ref()), "old_key_file": old_path,
                "root_version": after.root.signed.version.get()}),
        })
    }

    /// `status`.
    pub async fn status(&self) -> Result<Report, FleetError> {
        let c = self.current()?;
        let mut by_board: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (b, v, t) in images(&c) {
            by_board.entry(b).or_default().push(json!({
                "version": v.to_string(), "length": t.length, "sha256": hex(t.hashes.sha256.as_ref())}));
        }
        let rollout = c.find(IMAGES.name, ROLLOUT_TARGET).and_then(|t| {
            serde_json::from_slice::<Value>(&self.target_bytes(t, ROLLOUT_TARGET).ok()?).ok()
        });
        let v = versions(&c);
        let mut text = String::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            text.push_str(&format!(
                "{role:<12} version {:<4} expires {}\n",
                v[role]["version"].as_u64().unwrap_or(0),
                v[role]["expires"].as_str().unwrap_or("")
            ));
        }
        let mut delegated = serde_json::Map::new();
        for (name, t) in &c.roles {
            text.push_str(&format!(
                "{name:<12} version {:<4} expires {} targets {}\n",
                t.signed.version,
                t.signed.expires,
                t.signed.targets.len()
            ));
            delegated.insert(
                name.clone(),
                json!({"version": t.signed.version.get(), "expires": t.signed.expires.to_string(),
                    "targets": t.signed.targets.len()}),
            );
        }
        for (b, imgs) in &by_board {
            let vs: Vec<&str> = imgs.iter().filter_map(|i| i["version"].as_str()).collect();
            text.push_str(&format!("images {b}: {}\n", vs.join(", ")));
        }
        match &rollout {
            Some(r) => text.push_str(&format!("rollout: {r}\n")),
            None => text.push_str("rollout: none\n"),
        }
        Ok(Report {
            text: text.trim_end().to_string(),
            json: json!({"ok": true, "roles": v, "delegated": delegated, "images": by_board, "rollout": rollout}),
        })
    }
}

/// The delegation of `r` (threshold 1, terminating: its paths belong to it
/// alone).
fn delegated_role(
    r: &palisade_update::fleet::Role,
    keyids: Vec<tough::schema::decoded::Decoded<tough::schema::decoded::Hex>>,
) -> Result<DelegatedRole, FleetError> {
    let paths = r
        .paths
        .iter()
        .map(|p| PathPattern::new(*p).map_err(|e| FleetError::Other(format!("path {p}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DelegatedRole {
        name: r.name.to_string(),
        keyids,
        threshold: NonZeroU64::MIN,
        paths: PathSet::Paths(paths),
        terminating: true,
        targets: None,
    })
}

fn versions(c: &Current) -> Value {
    json!({
        "root": {"version": c.root.signed.version.get(), "expires": c.root.signed.expires.to_string()},
        "targets": {"version": c.targets.signed.version.get(), "expires": c.targets.signed.expires.to_string()},
        "snapshot": {"version": c.snapshot.signed.version.get(), "expires": c.snapshot.signed.expires.to_string()},
        "timestamp": {"version": c.timestamp.signed.version.get(), "expires": c.timestamp.signed.expires.to_string()},
    })
}

/// `(board, version, target)` of every `images/<board>/<version>.img`.
fn images(c: &Current) -> Vec<(String, Version, &Target)> {
    let mut v: Vec<_> = c
        .role_targets(IMAGES.name)
        .into_iter()
        .filter_map(|(n, t)| {
            let rest = n.strip_prefix("images/")?;
            let (b, f) = rest.split_once('/')?;
            let ver = Version::parse(f.strip_suffix(".img")?).ok()?;
            Some((b.to_string(), ver, t))
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

/// Any object in the manifest with a `sha256` field equal to `sha`.
fn manifest_has_sha(v: &Value, sha: &str) -> bool {
    match v {
        Value::Object(m) => {
            m.get("sha256")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case(sha))
                || m.values().any(|x| manifest_has_sha(x, sha))
        }
        Value::Array(a) => a.iter().any(|x| manifest_has_sha(x, sha)),
        _ => false,
    }
}

/// A canonical semantic version (`1.2.0`, not `v1.2` or `01.2.0`).
pub fn parse_version(s: &str) -> Result<Version, FleetError> {
    let v = Version::parse(s)
        .map_err(|e| FleetError::Input(format!("version {s:?}: {e} (use semver, e.g. 1.2.0)")))?;
    if v.to_string() != s {
        return Err(FleetError::Input(format!("version {s:?}: write it as {v}")));
    }
    Ok(v)
}

/// `HH:MM/MINUTES` (UTC).
pub fn parse_window(s: &str) -> Result<Window, FleetError> {
    let bad = || {
        FleetError::Input(format!(
            "window {s:?}: use HH:MM/MINUTES in UTC, e.g. 02:00/120"
        ))
    };
    let (start, minutes) = s.split_once('/').ok_or_else(bad)?;
    let (h, m) = start.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let minutes: u32 = minutes.parse().map_err(|_| bad())?;
    if start.len() != 5 || h > 23 || m > 59 || !(1..=1440).contains(&minutes) {
        return Err(bad());
    }
    Ok(Window {
        start: start.to_string(),
        minutes,
    })
}

/// `NAME=id1,id2,...`.
pub fn parse_region(s: &str) -> Result<(String, Vec<String>), FleetError> {
    let bad = || FleetError::Input(format!("region {s:?}: use NAME=node1,node2,..."));
    let (name, ids) = s.split_once('=').ok_or_else(bad)?;
    let ids: Vec<String> = ids.split(',').map(str::trim).map(String::from).collect();
    if name.is_empty() || ids.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok((name.to_string(), ids))
}

/// `now` or an RFC 3339 time.
pub fn parse_start(s: &str) -> Result<chrono::DateTime<chrono::Utc>, FleetError> {
    if s == "now" {
        return Ok(chrono::Utc::now());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| FleetError::Input(format!("start {s:?}: {e} (RFC 3339 or `now`)")))
}

/// An RFC 3339 expiry.
pub fn parse_expiry(s: &str) -> Result<jiff::Timestamp, FleetError> {
    s.parse()
        .map_err(|e| FleetError::Input(format!("expiry {s:?}: {e} (RFC 3339)")))
}

/// Load the repository in `repo_dir` as a node would (tough's client over
/// file://, trusting `trusted_root`, following the root chain), for tests
/// and checks. `datastore` is tough's cache directory.
pub async fn verify_load(
    repo_dir: &Path,
    trusted_root: &Path,
    datastore: &Path,
) -> Result<tough::Repository, FleetError> {
    let base = url::Url::from_directory_path(repo_dir)
        .map_err(|_| FleetError::Input(format!("{}: not an absolute path", repo_dir.display())))?;
    let meta = base
        .join("metadata/")
        .map_err(|e| FleetError::Other(e.to_string()))?;
    let targets = base
        .join("targets/")
        .map_err(|e| FleetError::Other(e.to_string()))?;
    let root = read(trusted_root)?;
    std::fs::create_dir_all(datastore)
        .map_err(|e| repo_err(format!("{}: {e}", datastore.display())))?;
    tough::RepositoryLoader::new(&root, meta, targets)
        .datastore(datastore)
        .load()
        .await
        .map_err(|e| repo_err(format!("verification failed: {e}")))
}

/// A verified target's bytes (`None`: not listed).
pub async fn verified_target(
    repo: &tough::Repository,
    name: &str,
) -> Result<Option<Vec<u8>>, FleetError> {
    use tough::IntoVec;
    let tn = TargetName::new(name).map_err(|e| FleetError::Input(format!("{name:?}: {e}")))?;
    match repo.read_target(&tn).await.map_err(repo_err)? {
        None => Ok(None),
        Some(s) => s.into_vec().await.map(Some).map_err(repo_err),
    }
}

/// The target names a delegated role lists, as the verified client sees them.
pub fn verified_role_targets(repo: &tough::Repository, role: &str) -> Option<Vec<String>> {
    let t = repo.delegated_role(role)?.targets.as_ref()?;
    let mut v: Vec<String> = t
        .signed
        .targets
        .keys()
        .map(|n| n.raw().to_string())
        .collect();
    v.sort();
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs() {
        assert!(parse_version("1.2.0").is_ok());
        for v in ["1.2", "v1.2.0", "01.2.0", ""] {
            assert_eq!(parse_version(v).unwrap_err().exit_code(), 2, "{v}");
        }
        assert_eq!(parse_window("02:00/120").unwrap().minutes, 120);
        for w in ["2:00/120", "24:00/10", "02:00/0", "02:00/1441", "02:00"] {
            assert!(parse_window(w).is_err(), "{w}");
        }
        assert_eq!(parse_region("eu=a,b").unwrap().1, vec!["a", "b"]);
        assert!(parse_region("eu=").is_err());
        assert!(parse_start("now").is_ok());
        assert!(parse_start("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_start("tomorrow").is_err());
    }

    #[test]
    fn manifest_search() {
        let m = json!({"files": [{"path": "slot.img", "sha256": "ABcd"}], "sha256": "00"});
        assert!(manifest_has_sha(&m, "abcd"));
        assert!(manifest_has_sha(&m, "00"));
        assert!(!manifest_has_sha(&m, "ff"));
    }
}
