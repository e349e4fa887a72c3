//! `palisade-fleet`: publishes the signed update repository (see
//! docs/updates.md). The binary is a thin clap front end; every command is a
//! function here returning a [`Report`] (human text and one JSON object) or a
//! [`FleetError`] (with its exit code).
//!
//! Layout: `<repo>/metadata/` (`1.root.json`, `root.json`, `timestamp.json`,
//! `N.snapshot.json`, `N.targets.json`; consistent snapshots) and
//! `<repo>/targets/<sha256>.<target name>`. Keys: `<keys>/{root,targets,
//! snapshot,timestamp}.pk8`, ed25519 PKCS#8 DER, mode 0600.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use palisade_update::rollout::{image_target, RolloutPolicy, Window, ROLLOUT_TARGET};
use semver::Version;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::sign::{parse_keypair, Sign};

/// The role key files in the keys directory.
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

fn repo_err(what: impl std::fmt::Display) -> FleetError {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|e| repo_err(format!("{}: {e}", path.display())))
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FleetError> {
    serde_json::from_slice(&read(path)?).map_err(|e| repo_err(format!("{}: {e}", path.display())))
}

/// Write `bytes` to `path` through a temp file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
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
    pub targets: Signed<Targets>,
    /// `N.snapshot.json` as bytes (the timestamp signs these).
    pub snapshot_bytes: Vec<u8>,
}

fn meta_version(m: &HashMap<String, Metafile>, name: &str, file: &str) -> Result<u64, FleetError> {
    m.get(name)
        .map(|m| m.version.get())
        .ok_or_else(|| repo_err(format!("{file} does not list {name}")))
}

impl Fleet {
    fn meta(&self) -> PathBuf {
        self.repo.join("metadata")
    }

    /// Whether `repo init` has run.
    pub fn exists(&self) -> bool {
        self.meta().join("root.json").exists()
    }

    fn key_sources(&self) -> Result<Vec<Box<dyn KeySource>>, FleetError> {
        let mut v: Vec<Box<dyn KeySource>> = Vec::new();
        for (r, _) in ROLES {
            let path = self.keys.join(format!("{r}.pk8"));
            if !path.exists() {
                return Err(repo_err(format!(
                    "key {} missing; give the keys directory `repo init` created",
                    path.display()
                )));
            }
            v.push(Box::new(LocalKeySource { path }));
        }
        Ok(v)
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
        Ok(Current {
            root,
            timestamp,
            snapshot,
            targets,
            snapshot_bytes,
        })
    }

    /// `repo init`: keys (kept if present) and a signed, empty repository.
    /// An existing repository is left untouched ("exists").
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
        for (r, _) in ROLES {
            let path = self.keys.join(format!("{r}.pk8"));
            if path.exists() {
                continue;
            }
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|e| FleetError::Other(format!("key generation: {e}")))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| repo_err(format!("{}: {e}", path.display())))?;
            f.write_all(doc.as_ref())
                .and_then(|_| f.sync_all())
                .map_err(|e| repo_err(format!("{}: {e}", path.display())))?;
            made.push(r);
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
            let path = self.keys.join(format!("{r}.pk8"));
            let k = parse_keypair(&read(&path)?)
                .map_err(|e| repo_err(format!("{}: {e}", path.display())))?;
            let key = k.tuf_key();
            let id = key.key_id().map_err(|e| FleetError::Other(e.to_string()))?;
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
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &self.key_sources()?,
            &SystemRandom::new(),
        )
        .await
        .map_err(repo_err)?;
        let m = self.meta();
        for d in [m.clone(), self.repo.join("targets")] {
            std::fs::create_dir_all(&d).map_err(|e| repo_err(format!("{}: {e}", d.display())))?;
        }
        write_atomic(&m.join("1.root.json"), signed.buffer())?;
        // Targets, snapshot, timestamp version 1, empty; root.json last, so a
        // half-done init is re-run from scratch.
        let mut ed = RepositoryEditor::new(m.join("1.root.json"))
            .await
            .map_err(repo_err)?;
        self.sign_editor(&mut ed, 1, 1, exp)?;
        ed.sign(&self.key_sources()?)
            .await
            .map_err(repo_err)?
            .write(&m)
            .await
            .map_err(repo_err)?;
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
            json: json!({"ok": true, "result": "created", "repo": self.repo, "keys_generated": made}),
        })
    }

    fn sign_editor(
        &self,
        ed: &mut RepositoryEditor,
        targets_version: u64,
        meta_version: u64,
        exp: Expiries,
    ) -> Result<(), FleetError> {
        let nz = |v: u64| NonZeroU64::new(v).ok_or_else(|| repo_err("version 0"));
        ed.targets_version(nz(targets_version)?).map_err(repo_err)?;
        ed.targets_expires(exp.targets).map_err(repo_err)?;
        ed.snapshot_version(nz(meta_version)?);
        ed.snapshot_expires(exp.snapshot);
        ed.timestamp_version(nz(meta_version)?);
        ed.timestamp_expires(exp.timestamp);
        Ok(())
    }

    /// Re-sign targets, snapshot and timestamp (each one version up) with
    /// `changes` applied to the targets.
    async fn publish(
        &self,
        exp: Expiries,
        changes: impl FnOnce(&mut RepositoryEditor) -> Result<(), FleetError>,
    ) -> Result<Current, FleetError> {
        let cur = self.current()?;
        let mut ed = RepositoryEditor::new(self.meta().join("root.json"))
            .await
            .map_err(repo_err)?;
        ed.targets(cur.targets.clone()).map_err(repo_err)?;
        changes(&mut ed)?;
        let tv = cur.targets.signed.version.get() + 1;
        let mv = cur
            .snapshot
            .signed
            .version
            .get()
            .max(cur.timestamp.signed.version.get())
            + 1;
        self.sign_editor(&mut ed, tv, mv, exp)?;
        ed.sign(&self.key_sources()?)
            .await
            .map_err(repo_err)?
            .write(self.meta())
            .await
            .map_err(repo_err)?;
        self.current()
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

    fn find_target<'a>(cur: &'a Current, name: &str) -> Option<&'a Target> {
        cur.targets
            .signed
            .targets
            .iter()
            .find(|(n, _)| n.raw() == name)
            .map(|(_, t)| t)
    }

    /// `image add`.
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
        let cur = self.current()?;
        if let Some(t) = Self::find_target(&cur, &name) {
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
        let target = self.store_target(&name, &bytes)?;
        let n = name.clone();
        let after = self
            .publish(exp, move |ed| {
                ed.add_target(n.as_str(), target).map_err(repo_err)?;
                Ok(())
            })
            .await?;
        Ok(Report {
            text: format!(
                "published {name} ({} bytes, sha256 {}); targets version {}",
                bytes.len(),
                hex(&sha),
                after.targets.signed.version
            ),
            json: json!({"ok": true, "result": "added", "target": name, "length": bytes.len(),
                "sha256": hex(&sha), "targets_version": after.targets.signed.version.get()}),
        })
    }

    /// `rollout set`.
    pub async fn set_rollout(
        &self,
        policy: &RolloutPolicy,
        exp: Expiries,
    ) -> Result<Report, FleetError> {
        if policy.waves == 0 {
            return Err(FleetError::Input("--waves must be at least 1".into()));
        }
        let cur = self.current()?;
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
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(t) = Self::find_target(&cur, ROLLOUT_TARGET) {
            if t.hashes.sha256.as_ref() == sha.as_slice() {
                return Ok(Report {
                    text: "rollout.json unchanged".into(),
                    json: json!({"ok": true, "result": "unchanged", "rollout": policy}),
                });
            }
        }
        let target = self.store_target(ROLLOUT_TARGET, &bytes)?;
        self.publish(exp, move |ed| {
            ed.add_target(ROLLOUT_TARGET, target).map_err(repo_err)?;
            Ok(())
        })
        .await?;
        Ok(Report {
            text: format!(
                "rollout to {} in {} wave(s), {} min soak (boards: {})",
                policy.version,
                policy.waves,
                policy.soak_minutes,
                boards.join(", ")
            ),
            json: json!({"ok": true, "result": "set", "rollout": policy, "boards": boards}),
        })
    }

    /// `sign`: re-sign targets, snapshot and timestamp.
    pub async fn sign(&self, exp: Expiries) -> Result<Report, FleetError> {
        let c = self.publish(exp, |_| Ok(())).await?;
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
        let sha: [u8; 32] = Sha256::digest(&cur.snapshot_bytes).into();
        ts.meta.insert(
            "snapshot.json".into(),
            Metafile {
                length: Some(cur.snapshot_bytes.len() as u64),
                hashes: Some(Hashes {
                    sha256: sha.to_vec().into(),
                    _extra: HashMap::new(),
                }),
                version: cur.snapshot.signed.version,
                _extra: HashMap::new(),
            },
        );
        let signed = SignedRole::new(
            ts,
            &KeyHolder::Root(cur.root.signed.clone()),
            &self.key_sources()?,
            &SystemRandom::new(),
        )
        .await
        .map_err(repo_err)?;
        write_atomic(&self.meta().join("timestamp.json"), signed.buffer())?;
        Ok(Report {
            text: format!("timestamp version {version}, expires {expires}"),
            json: json!({"ok": true, "result": "refreshed", "timestamp_version": version.get(),
                "expires": expires.to_string()}),
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
        let rollout = Self::find_target(&c, ROLLOUT_TARGET).and_then(|t| {
            let path = self.repo.join("targets").join(format!(
                "{}.{ROLLOUT_TARGET}",
                hex(t.hashes.sha256.as_ref())
            ));
            serde_json::from_slice::<Value>(&std::fs::read(path).ok()?).ok()
        });
        let v = versions(&c);
        let mut text = String::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            text.push_str(&format!(
                "{role:<10} version {:<4} expires {}\n",
                v[role]["version"],
                v[role]["expires"].as_str().unwrap_or("")
            ));
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
            json: json!({"ok": true, "roles": v, "images": by_board, "rollout": rollout}),
        })
    }
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
        .targets
        .signed
        .targets
        .iter()
        .filter_map(|(n, t)| {
            let rest = n.raw().strip_prefix("images/")?;
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
