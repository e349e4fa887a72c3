//! The node's client of the signed update repository (TUF, verified by tough).
//!
//! Layout (written by `palisade-fleet`, docs/updates.md "The repository"): a
//! node is configured with one base URL `B` and reads
//!
//! - metadata from `B/metadata/` (`1.root.json`, `N.root.json`, `timestamp.json`,
//!   `N.snapshot.json`, `N.targets.json`: consistent snapshots),
//! - targets from `B/targets/` (`<sha256>.<target name>`, content addressed,
//!   e.g. `targets/<sha256>.images/qemu-x86_64/1.2.0.img`).
//!
//! Trust starts from the node's `trusted_root` (the fleet's `1.root.json`,
//! given at enrolment) and the last metadata it verified, kept in `datastore`
//! (on the state partition): that is what lets a node notice a mirror serving
//! older metadata after a reboot. Every refusal is a [`RepoError`] whose
//! [`RepoError::kind`] is a stable string (the update journal's refusal kinds).
//!
//! Every target is read from the one delegated role that owns its path
//! ([`crate::fleet::ROLES`]): images and `rollout.json` from `images`, a
//! node's config from `configs`, and so on ([`Repo::role_target`]). A target
//! listed by another role, or by the top-level targets, is refused
//! (`wrong-role`) even though tough would serve it: the top-level targets
//! role only delegates, and a key that may revoke cannot ship an image. A
//! repository that does not delegate a role has nothing from it (the old
//! layout, images in the top-level targets, is not read).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use semver::Version;
use tough::error::Error as ToughError;
use tough::{RepositoryLoader, TargetName, TransportError, TransportErrorKind};
use url::Url;

use crate::fleet::{self, Role};
use crate::slot::{Expected, VerifiedImage};
use crate::rollout::{RolloutPolicy, ROLLOUT_TARGET};
use crate::transport::NodeTransport;

/// Largest `rollout.json` accepted (checked against the signed length before
/// any byte is fetched).
pub const MAX_ROLLOUT: u64 = 64 * 1024;

/// Where a repository's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSource {
    /// Base URL of the metadata (`.../metadata/`).
    pub metadata_url: Url,
    /// Base URL of the targets (`.../targets/`).
    pub targets_url: Url,
}

impl RepoSource {
    /// The standard layout under one base URL: `base/metadata/` and
    /// `base/targets/` (a trailing slash on `base` is optional).
    pub fn from_base(base: &Url) -> Result<RepoSource, RepoError> {
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let join = |p: &str| {
            base.join(p).map_err(|e| RepoError::Config {
                detail: format!("repository URL {base}: {e}"),
            })
        };
        Ok(RepoSource {
            metadata_url: join("metadata/")?,
            targets_url: join("targets/")?,
        })
    }
}

/// What the node needs to reach and trust the repository.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The fleet's root metadata the node was enrolled with.
    pub trusted_root: PathBuf,
    /// Directory keeping the last verified metadata (created if missing).
    pub datastore: PathBuf,
    /// PEM CA bundle for an https repository; `None`: the public roots.
    pub ca_file: Option<PathBuf>,
    /// Connect / response / idle-read timeout of each fetch.
    pub timeout: Duration,
}

/// An image listed in the signed targets: `images/<board>/<version>.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    /// The target name.
    pub name: String,
    /// Board the image is for.
    pub board: String,
    /// Its version.
    pub version: Version,
    /// Signed length in bytes.
    pub length: u64,
    /// Signed SHA-256.
    pub sha256: [u8; 32],
}

/// A target as its delegated role signs it (nothing downloaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleEntry {
    /// The target name.
    pub name: String,
    /// Signed length in bytes.
    pub length: u64,
    /// Signed SHA-256.
    pub sha256: [u8; 32],
    /// Version of the role's metadata that lists it.
    pub role_version: u64,
}

/// A target read from its delegated role, verified (length and SHA-256).
#[derive(Clone, PartialEq, Eq)]
pub struct RoleTarget {
    /// The target name.
    pub name: String,
    /// Its content.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes` (equal to the signed one).
    pub sha256: [u8; 32],
    /// Version of the role's metadata that lists it.
    pub role_version: u64,
}

impl std::fmt::Debug for RoleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleTarget")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .field("sha256", &hex(&self.sha256))
            .field("role_version", &self.role_version)
            .finish()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why the repository (or one of its targets) was refused. The node keeps
/// running its current version in every case.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository could not be reached or a file was missing on it.
    #[error("repository unreachable: {detail}; check the uplink and the repository URL, and for https the server's certificate against [update] ca_file (the node retries on its next poll)")]
    Unreachable { detail: String },
    /// Metadata not signed by the threshold of keys the trusted root names.
    #[error("bad signature: {detail}; the repository is not signed by this fleet's keys (wrong repository, or tampered metadata)")]
    BadSignature { detail: String },
    /// Some role's metadata has expired.
    #[error("expired metadata: {detail}; the publisher must run `palisade-fleet refresh` (timestamp) or `sign`, or the mirror is frozen")]
    Expired { detail: String },
    /// The repository serves metadata older than what this node has already
    /// verified.
    #[error("rollback refused: {detail}; the mirror serves older metadata than this node has already seen")]
    Rollback { detail: String },
    /// Metadata files from different publishes (versions or hashes do not
    /// agree).
    #[error("inconsistent metadata (mix-and-match): {detail}; the mirror is mid-sync or tampered, republish or resync it")]
    MixAndMatch { detail: String },
    /// A target larger than the node accepts.
    #[error("target {name} is {length} bytes, more than the {cap} allowed; publish a smaller image or raise the cap")]
    TooLarge { name: String, length: u64, cap: u64 },
    /// A target shorter than its signed length.
    #[error(
        "target {name} truncated: got {got} of {expected} bytes; the mirror's copy is incomplete"
    )]
    Truncated {
        name: String,
        got: u64,
        expected: u64,
    },
    /// A target whose bytes differ from the signed hash.
    #[error("target {name} does not match its signed hash: {detail}; the mirror's copy is corrupt or tampered")]
    HashMismatch { name: String, detail: String },
    /// A name the signed targets do not list.
    #[error("{name} is not a target of the signed repository")]
    NotATarget { name: String },
    /// A target signed by a role that may not sign its path (another
    /// delegated role, or the top-level targets, which only delegates).
    #[error("{name} is signed by the role `{signer}`, which may not sign it (see fleet::ROLES); the node does not take it. Publish it with palisade-fleet under the role that owns its path")]
    WrongRole { name: String, signer: String },
    /// A signed target whose content is malformed (e.g. `rollout.json`).
    #[error("{what} is invalid: {detail}; fix it with palisade-fleet and republish")]
    Invalid { what: String, detail: String },
    /// The node's own configuration (trusted root, CA file, URL) is unusable.
    #[error("update client configuration: {detail}")]
    Config { detail: String },
    /// The system clock is earlier than a time already recorded.
    #[error("clock: {detail}; fix the node's clock (NTP)")]
    Clock { detail: String },
    /// A local file operation failed (datastore, staging file).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RepoError {
    /// Stable kebab-case name of the refusal ([`RefusalKind::as_str`] of
    /// [`refusal_kind`](Self::refusal_kind)).
    ///
    /// [`RefusalKind::as_str`]: crate::refusal::RefusalKind::as_str
    pub fn kind(&self) -> &'static str {
        self.refusal_kind().as_str()
    }

    /// The refusal kind this error is reported as.
    pub fn refusal_kind(&self) -> crate::refusal::RefusalKind {
        use crate::refusal::RefusalKind as K;
        match self {
            RepoError::Unreachable { .. } => K::Unreachable,
            RepoError::BadSignature { .. } => K::BadSignature,
            RepoError::Expired { .. } => K::Expired,
            RepoError::Rollback { .. } => K::Rollback,
            RepoError::MixAndMatch { .. } => K::MixAndMatch,
            RepoError::TooLarge { .. } => K::TooLarge,
            RepoError::Truncated { .. } => K::Truncated,
            RepoError::HashMismatch { .. } => K::HashMismatch,
            RepoError::NotATarget { .. } => K::NotATarget,
            RepoError::WrongRole { .. } => K::WrongRole,
            RepoError::Invalid { .. } => K::Invalid,
            RepoError::Config { .. } => K::Config,
            RepoError::Clock { .. } => K::Clock,
            RepoError::Io { .. } => K::Io,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> RepoError {
        RepoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The whole error chain as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The innermost tough error in a chain (a tough error carried inside a
/// `TransportError`, as the hash and size adapters do, wins).
fn innermost_tough<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ToughError> {
    let mut found = None;
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<ToughError>() {
            found = Some(t);
        }
        cur = c.source();
    }
    found
}

fn transport_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a TransportError> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<TransportError>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// Classify a tough error. `target`: the target being read, if any (so that
/// hash and size failures name it and are not taken for metadata ones).
fn classify(e: &ToughError, target: Option<&str>) -> RepoError {
    let detail = chain(e);
    let inner = innermost_tough(e).unwrap_or(e);
    match inner {
        ToughError::ExpiredMetadata { .. } => RepoError::Expired { detail },
        ToughError::VerifyMetadata { .. }
        | ToughError::VerifyRoleMetadata { .. }
        | ToughError::VerifyTrustedMetadata { .. } => RepoError::BadSignature { detail },
        ToughError::OlderMetadata { .. }
        | ToughError::OlderSnapshotInTimestamp { .. }
        | ToughError::SnapshotRoleRollback { .. } => RepoError::Rollback { detail },
        ToughError::VersionMismatch { .. }
        | ToughError::TimestampMetaLength { .. }
        | ToughError::MissingSnapshotMeta { .. }
        | ToughError::MetaMissing { .. }
        | ToughError::SnapshotTargetsMetaMissing { .. }
        | ToughError::SnapshotRoleMissing { .. } => RepoError::MixAndMatch { detail },
        ToughError::HashMismatch { .. } => match target {
            Some(name) => RepoError::HashMismatch {
                name: name.to_string(),
                detail,
            },
            None => RepoError::MixAndMatch { detail },
        },
        ToughError::MaxSizeExceeded { max_size, .. } => match target {
            Some(name) => RepoError::HashMismatch {
                name: name.to_string(),
                detail: format!("more bytes than the signed {max_size}"),
            },
            None => RepoError::MixAndMatch { detail },
        },
        ToughError::SystemTimeSteppedBackward { .. } => RepoError::Clock { detail },
        ToughError::ParseTrustedMetadata { .. } | ToughError::ParseUrl { .. } => {
            RepoError::Config { detail }
        }
        ToughError::ParseMetadata { .. } | ToughError::MaxUpdatesExceeded { .. } => {
            RepoError::Invalid {
                what: "repository metadata".into(),
                detail,
            }
        }
        ToughError::DatastoreInit { .. }
        | ToughError::DatastoreCreate { .. }
        | ToughError::DatastoreOpen { .. }
        | ToughError::DatastoreRemove { .. }
        | ToughError::DatastoreSerialize { .. } => RepoError::Io {
            path: PathBuf::from("datastore"),
            source: std::io::Error::other(detail),
        },
        _ => match transport_in(e) {
            Some(t) if t.kind() == TransportErrorKind::UnsupportedUrlScheme => {
                RepoError::Config { detail }
            }
            Some(_) => RepoError::Unreachable { detail },
            None => RepoError::Invalid {
                what: "repository".into(),
                detail,
            },
        },
    }
}

/// A verified view of the repository (one poll).
#[derive(Debug)]
pub struct Repo {
    inner: tough::Repository,
}

impl Repo {
    /// Fetch and verify the metadata (root chain, timestamp, snapshot,
    /// targets), against the trusted root and the datastore.
    pub async fn load(src: &RepoSource, cfg: &ClientConfig) -> Result<Repo, RepoError> {
        let root = tokio::fs::read(&cfg.trusted_root)
            .await
            .map_err(|e| RepoError::Config {
                detail: format!("trusted root {}: {e}", cfg.trusted_root.display()),
            })?;
        tokio::fs::create_dir_all(&cfg.datastore)
            .await
            .map_err(|e| RepoError::io(&cfg.datastore, e))?;
        let transport = NodeTransport::new(cfg.ca_file.as_deref(), cfg.timeout).map_err(|e| {
            RepoError::Config {
                detail: e.to_string(),
            }
        })?;
        let inner = RepositoryLoader::new(&root, src.metadata_url.clone(), src.targets_url.clone())
            .transport(transport)
            .datastore(&cfg.datastore)
            .load()
            .await
            .map_err(|e| classify(&e, None))?;
        Ok(Repo { inner })
    }

    /// The signed rollout policy (`rollout.json` of the `images` role);
    /// `None` when the repository has none.
    pub async fn rollout(&self) -> Result<Option<RolloutPolicy>, RepoError> {
        let Some(t) = self.role_target(fleet::IMAGES, ROLLOUT_TARGET, MAX_ROLLOUT).await? else {
            return Ok(None);
        };
        let policy = serde_json::from_slice(&t.bytes).map_err(|e| RepoError::Invalid {
            what: ROLLOUT_TARGET.into(),
            detail: e.to_string(),
        })?;
        Ok(Some(policy))
    }

    /// Every image for `board` signed by the `images` role, ordered by
    /// version. Targets that are not `images/<board>/<semver>.img`
    /// (canonical semver) are ignored.
    pub fn images(&self, board: &str) -> Vec<ImageTarget> {
        let mut v: Vec<ImageTarget> = self
            .role_targets(fleet::IMAGES)
            .into_iter()
            .filter_map(|e| parse_image(&e.name, e.length, e.sha256))
            .filter(|i| i.board == board)
            .collect();
        v.sort_by(|a, b| a.version.cmp(&b.version));
        v
    }

    /// The image of `board` whose signed SHA-256 is `sha256`.
    pub fn image_by_hash(&self, board: &str, sha256: &[u8; 32]) -> Option<ImageTarget> {
        self.images(board).into_iter().find(|i| &i.sha256 == sha256)
    }

    /// Download `target` into memory, verified (length and hash, by tough as
    /// it streams and again here over exactly the bytes kept): the
    /// [`VerifiedImage`] that `slot::write_slot` writes. Refused before any
    /// byte is fetched if its signed length exceeds `cap` (the slot's size)
    /// or the `images` role does not sign exactly this target.
    /// `progress(done, total)` is called after each chunk.
    pub async fn fetch_image(
        &self,
        target: &ImageTarget,
        cap: u64,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<VerifiedImage, RepoError> {
        if target.length > cap {
            return Err(RepoError::TooLarge {
                name: target.name.clone(),
                length: target.length,
                cap,
            });
        }
        let not_a_target = || RepoError::NotATarget {
            name: target.name.clone(),
        };
        if !fleet::IMAGES.owns(&target.name) {
            return Err(not_a_target());
        }
        let entry = self.role_entry(fleet::IMAGES, &target.name)?.ok_or_else(not_a_target)?;
        if parse_image(&entry.name, entry.length, entry.sha256).as_ref() != Some(target) {
            return Err(not_a_target());
        }
        let (bytes, ctx) = self.download(&entry, progress).await?;
        let expected = Expected { length: target.length, sha256: target.sha256 };
        VerifiedImage::hashed(bytes, ctx, &expected).map_err(|e| RepoError::HashMismatch {
            name: target.name.clone(),
            detail: e.to_string(),
        })
    }

    /// The delegation of `role` by the top-level targets (nested
    /// delegations are not ours and are never consulted).
    fn delegation(&self, role: Role) -> Option<&tough::schema::DelegatedRole> {
        self.inner
            .targets()
            .signed
            .delegations
            .as_ref()?
            .roles
            .iter()
            .find(|r| r.name == role.name)
    }

    /// The role's own targets metadata (its signed list and version).
    fn role_meta(&self, role: Role) -> Option<&tough::schema::Targets> {
        self.delegation(role)?.targets.as_ref().map(|t| &t.signed)
    }

    /// Who lists `name` in this repository: `targets` (the top-level
    /// role), a delegated role, or a role delegated by one.
    fn signer_of(&self, name: &TargetName) -> Option<String> {
        fn walk(t: &tough::schema::Targets, name: &TargetName) -> Option<String> {
            for r in t.delegations.as_ref().map(|d| d.roles.as_slice()).unwrap_or_default() {
                if let Some(rt) = &r.targets {
                    if rt.signed.targets.contains_key(name) {
                        return Some(r.name.clone());
                    }
                    if let Some(s) = walk(&rt.signed, name) {
                        return Some(s);
                    }
                }
            }
            None
        }
        let top = &self.inner.targets().signed;
        if top.targets.contains_key(name) {
            return Some("targets".into());
        }
        walk(top, name)
    }

    /// Roles other than `role` (or the top-level targets) that also list
    /// `name`: a key signing outside its paths. Its listings are never
    /// read (reads take `role`'s), but the fleet should hear of it.
    pub fn other_signers(&self, role: Role, name: &str) -> Vec<String> {
        let Ok(tn) = TargetName::new(name) else { return Vec::new() };
        fn walk(t: &tough::schema::Targets, name: &TargetName, out: &mut Vec<String>) {
            for r in t.delegations.as_ref().map(|d| d.roles.as_slice()).unwrap_or_default() {
                if let Some(rt) = &r.targets {
                    if rt.signed.targets.contains_key(name) {
                        out.push(r.name.clone());
                    }
                    walk(&rt.signed, name, out);
                }
            }
        }
        let mut out = Vec::new();
        let top = &self.inner.targets().signed;
        if top.targets.contains_key(&tn) {
            out.push("targets".into());
        }
        walk(top, &tn, &mut out);
        out.retain(|r| r != role.name);
        out.sort();
        out.dedup();
        out
    }

    /// Every target `role` signs within its paths (a target outside them
    /// is never listed, whatever the delegation in the metadata says),
    /// ordered by name. Empty when the repository does not delegate `role`.
    pub fn role_targets(&self, role: Role) -> Vec<RoleEntry> {
        let Some(meta) = self.role_meta(role) else {
            return Vec::new();
        };
        let version = meta.version.get();
        let mut v: Vec<RoleEntry> = meta
            .targets
            .iter()
            .filter(|(n, _)| role.owns(n.raw()))
            .filter_map(|(n, t)| entry(n.raw(), t, version).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The entry of `name` as `role` signs it, nothing downloaded.
    /// `Ok(None)`: no role lists it (or the repository does not delegate
    /// `role`). [`RepoError::WrongRole`]: `role` may not sign `name`, or
    /// `name` is listed only by another role or the top-level targets.
    pub fn role_entry(&self, role: Role, name: &str) -> Result<Option<RoleEntry>, RepoError> {
        let tn = tname(name)?;
        let Some(meta) = self.role_meta(role) else {
            return Ok(None);
        };
        if !role.owns(name) {
            // Asking a role for a path it cannot own: whatever lists it.
            return match self.signer_of(&tn) {
                Some(signer) => Err(RepoError::WrongRole { name: name.into(), signer }),
                None => Ok(None),
            };
        }
        if let Some(t) = meta.targets.get(&tn) {
            return entry(name, t, meta.version.get()).map(Some);
        }
        match self.signer_of(&tn) {
            Some(signer) => Err(RepoError::WrongRole { name: name.into(), signer }),
            None => Ok(None),
        }
    }

    /// Read `name` from the delegated role `role` only, verified. Refused
    /// before any byte is fetched when its signed length exceeds `cap`;
    /// see [`Repo::role_entry`] for `None` and `wrong-role`.
    pub async fn role_target(&self, role: Role, name: &str, cap: u64) -> Result<Option<RoleTarget>, RepoError> {
        let Some(e) = self.role_entry(role, name)? else {
            return Ok(None);
        };
        self.read_entry(&e, cap).await.map(Some)
    }

    /// Download an entry from [`Repo::role_entry`] or
    /// [`Repo::role_targets`], verified; refused before any byte is fetched
    /// when its signed length exceeds `cap`.
    pub async fn read_entry(&self, e: &RoleEntry, cap: u64) -> Result<RoleTarget, RepoError> {
        if e.length > cap {
            return Err(RepoError::TooLarge { name: e.name.clone(), length: e.length, cap });
        }
        let (bytes, ctx) = self.download(e, &mut |_, _| {}).await?;
        let got: [u8; 32] = ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes");
        if got != e.sha256 {
            return Err(RepoError::HashMismatch {
                name: e.name.clone(),
                detail: format!("got sha256 {}, signed {}", hex(&got), hex(&e.sha256)),
            });
        }
        Ok(RoleTarget { name: e.name.clone(), bytes, sha256: got, role_version: e.role_version })
    }

    /// Stream `e` through tough (which checks the length and the hash of
    /// the entry *it* finds) and hash the bytes kept here.
    async fn download(
        &self,
        e: &RoleEntry,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(Vec<u8>, ring::digest::Context), RepoError> {
        let tn = tname(&e.name)?;
        // tough reads the first entry of its own search (top-level targets
        // first, then any delegation whose signed paths match): it must be
        // this role's entry, or the bytes would be checked against another
        // role's hash.
        let theirs = self.inner.targets().signed.find_target(&tn, false).ok();
        let same = theirs.is_some_and(|t| t.length == e.length && t.hashes.sha256.as_ref() == e.sha256.as_slice());
        if !same {
            let signer = self.signer_of(&tn).unwrap_or_else(|| "targets".into());
            return Err(RepoError::WrongRole { name: e.name.clone(), signer });
        }
        let stream = self
            .inner
            .read_target(&tn)
            .await
            .map_err(|err| classify(&err, Some(&e.name)))?
            .ok_or_else(|| RepoError::NotATarget { name: e.name.clone() })?;
        stream_into(stream, &e.name, e.length, progress).await
    }
}

fn entry(name: &str, t: &tough::schema::Target, role_version: u64) -> Result<RoleEntry, RepoError> {
    let sha256: [u8; 32] = t.hashes.sha256.as_ref().try_into().map_err(|_| RepoError::Invalid {
        what: format!("the signed entry of {name}"),
        detail: "its sha256 is not 32 bytes".into(),
    })?;
    Ok(RoleEntry { name: name.to_string(), length: t.length, sha256, role_version })
}

async fn stream_into<S>(
    mut stream: S,
    name: &str,
    length: u64,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(Vec<u8>, ring::digest::Context), RepoError>
where
    S: futures_core::Stream<Item = Result<tough::Bytes, ToughError>> + Unpin,
{
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    // The signed length was checked against the cap before the first byte.
    let mut bytes = Vec::with_capacity(length as usize);
    let mut done: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| target_error(&e, name, done, length))?;
        done += chunk.len() as u64;
        if done > length {
            return Err(RepoError::HashMismatch {
                name: name.to_string(),
                detail: format!("more bytes than the signed {length}"),
            });
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
        progress(done, length);
    }
    if done < length {
        return Err(RepoError::Truncated {
            name: name.to_string(),
            got: done,
            expected: length,
        });
    }
    Ok((bytes, hasher))
}

/// An error in the middle of a target's stream: short streams are
/// `truncated` (tough only sees a hash mismatch at the end).
fn target_error(e: &ToughError, name: &str, got: u64, expected: u64) -> RepoError {
    let short_stream = matches!(innermost_tough(e), Some(ToughError::HashMismatch { .. }));
    match classify(e, Some(name)) {
        RepoError::HashMismatch { .. } if short_stream && got < expected => RepoError::Truncated {
            name: name.to_string(),
            got,
            expected,
        },
        other => other,
    }
}

fn tname(name: &str) -> Result<TargetName, RepoError> {
    TargetName::new(name).map_err(|e| RepoError::NotATarget {
        name: format!("{name} ({e})"),
    })
}

fn parse_image(name: &str, length: u64, sha256: [u8; 32]) -> Option<ImageTarget> {
    let rest = name.strip_prefix("images/")?;
    let (board, file) = rest.split_once('/')?;
    let v = file.strip_suffix(".img")?;
    if board.is_empty() || v.contains('/') {
        return None;
    }
    let version = Version::parse(v).ok()?;
    if version.to_string() != v {
        return None;
    }
    Some(ImageTarget {
        name: name.to_string(),
        board: board.to_string(),
        version,
        length,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_base_layout() {
        for b in [
            "http://127.0.0.1:8000/fleet",
            "http://127.0.0.1:8000/fleet/",
        ] {
            let s = RepoSource::from_base(&Url::parse(b).unwrap()).unwrap();
            assert_eq!(
                s.metadata_url.as_str(),
                "http://127.0.0.1:8000/fleet/metadata/"
            );
            assert_eq!(
                s.targets_url.as_str(),
                "http://127.0.0.1:8000/fleet/targets/"
            );
        }
    }

    #[test]
    fn image_names() {
        let i = parse_image("images/qemu-x86_64/1.2.0.img", 3, [0; 32]).unwrap();
        assert_eq!(
            (i.board.as_str(), i.version.to_string()),
            ("qemu-x86_64", "1.2.0".into())
        );
        for bad in [
            "images/b/1.2.img",
            "images/b/01.2.0.img",
            "images/b/x/1.2.0.img",
            "images//1.2.0.img",
            "rollout.json",
            "images/b/1.2.0.bin",
        ] {
            assert!(parse_image(bad, 3, [0; 32]).is_none(), "{bad}");
        }
    }
}
