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

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use semver::Version;
use tough::error::Error as ToughError;
use tough::{RepositoryLoader, TargetName, TransportError, TransportErrorKind};
use url::Url;

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

    /// The signed rollout policy; `None` when the repository has none.
    pub async fn rollout(&self) -> Result<Option<RolloutPolicy>, RepoError> {
        let name = tname(ROLLOUT_TARGET)?;
        let Some(t) = self.inner.targets().signed.targets.get(&name) else {
            return Ok(None);
        };
        if t.length > MAX_ROLLOUT {
            return Err(RepoError::TooLarge {
                name: ROLLOUT_TARGET.into(),
                length: t.length,
                cap: MAX_ROLLOUT,
            });
        }
        let expected = t.length;
        let Some(mut stream) = self
            .inner
            .read_target(&name)
            .await
            .map_err(|e| classify(&e, Some(ROLLOUT_TARGET)))?
        else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => buf.extend_from_slice(&b),
                Err(e) => return Err(target_error(&e, ROLLOUT_TARGET, buf.len() as u64, expected)),
            }
        }
        let policy = serde_json::from_slice(&buf).map_err(|e| RepoError::Invalid {
            what: ROLLOUT_TARGET.into(),
            detail: e.to_string(),
        })?;
        Ok(Some(policy))
    }

    /// Every image for `board`, ordered by version. Targets that are not
    /// `images/<board>/<semver>.img` (canonical semver) are ignored.
    pub fn images(&self, board: &str) -> Vec<ImageTarget> {
        let mut v: Vec<ImageTarget> = self
            .inner
            .all_targets()
            .filter_map(|(name, t)| parse_image(name.raw(), t))
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
    /// byte is fetched if its signed length exceeds `cap` (the slot's size).
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
        let name = tname(&target.name)?;
        let signed = self
            .inner
            .targets()
            .signed
            .targets
            .get(&name)
            .and_then(|t| parse_image(&target.name, t));
        if signed.as_ref() != Some(target) {
            return Err(RepoError::NotATarget {
                name: target.name.clone(),
            });
        }
        let stream = self
            .inner
            .read_target(&name)
            .await
            .map_err(|e| classify(&e, Some(&target.name)))?
            .ok_or_else(|| RepoError::NotATarget {
                name: target.name.clone(),
            })?;
        stream_into(stream, target, progress).await
    }
}

async fn stream_into<S>(
    mut stream: S,
    target: &ImageTarget,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<VerifiedImage, RepoError>
where
    S: futures_core::Stream<Item = Result<tough::Bytes, ToughError>> + Unpin,
{
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    // The signed length was checked against the cap before the first byte.
    let mut bytes = Vec::with_capacity(target.length as usize);
    let mut done: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| target_error(&e, &target.name, done, target.length))?;
        done += chunk.len() as u64;
        if done > target.length {
            return Err(RepoError::HashMismatch {
                name: target.name.clone(),
                detail: format!("more bytes than the signed {}", target.length),
            });
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
        progress(done, target.length);
    }
    if done < target.length {
        return Err(RepoError::Truncated {
            name: target.name.clone(),
            got: done,
            expected: target.length,
        });
    }
    let expected = Expected { length: target.length, sha256: target.sha256 };
    VerifiedImage::hashed(bytes, hasher, &expected).map_err(|e| RepoError::HashMismatch {
        name: target.name.clone(),
        detail: e.to_string(),
    })
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

fn parse_image(name: &str, t: &tough::schema::Target) -> Option<ImageTarget> {
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
    let sha256: [u8; 32] = t.hashes.sha256.as_ref().try_into().ok()?;
    Some(ImageTarget {
        name: name.to_string(),
        board: board.to_string(),
        version,
        length: t.length,
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
        let t: tough::schema::Target = serde_json::from_value(serde_json::json!({
            "length": 3,
            "hashes": {"sha256": "00".repeat(32)},
        }))
        .unwrap();
        let i = parse_image("images/qemu-x86_64/1.2.0.img", &t).unwrap();
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
            assert!(parse_image(bad, &t).is_none(), "{bad}");
        }
    }
}
