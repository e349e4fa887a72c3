//! Test repositories (tough's editor, consistent snapshots, one ed25519 key
//! per role, the delegated roles of `fleet::ROLES`) and a loopback-only
//! static file server. palisade-fleet does the same for real;
//! palisade-update cannot depend on it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use palisade_update::fleet;
use tough::schema::{KeyHolder, PathPattern, PathSet, RoleKeys, RoleType, Root, Target};
use tough::sign::{parse_keypair, Sign};

pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

pub fn hours(h: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h)
}

pub fn gen_keys(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for r in ROLES.into_iter().chain(fleet::ROLES.iter().map(|r| r.name)) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        std::fs::write(dir.join(format!("{r}.pk8")), doc.as_ref()).unwrap();
    }
}

pub fn key_sources(keys: &Path) -> Vec<Box<dyn KeySource>> {
    ROLES
        .iter()
        .map(|r| {
            Box::new(LocalKeySource {
                path: keys.join(format!("{r}.pk8")),
            }) as Box<dyn KeySource>
        })
        .collect()
}

/// The key of one role (top-level or delegated).
pub fn role_key(keys: &Path, role: &str) -> Vec<Box<dyn KeySource>> {
    vec![Box::new(LocalKeySource {
        path: keys.join(format!("{role}.pk8")),
    })]
}

/// Signed `metadata/1.root.json` (+ `root.json`) for the keys in `keys`.
pub async fn init(repo: &Path, keys: &Path) {
    let meta = repo.join("metadata");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(repo.join("targets")).unwrap();
    let mut root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::new(1).unwrap(),
        expires: hours(24 * 365),
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for (r, rt) in ROLES.iter().zip([
        RoleType::Root,
        RoleType::Targets,
        RoleType::Snapshot,
        RoleType::Timestamp,
    ]) {
        let k = parse_keypair(&std::fs::read(keys.join(format!("{r}.pk8"))).unwrap()).unwrap();
        let key = k.tuf_key();
        let id = key.key_id().unwrap();
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            rt,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::new(1).unwrap(),
                _extra: HashMap::new(),
            },
        );
    }
    let signed = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root),
        &key_sources(keys),
        &SystemRandom::new(),
    )
    .await
    .unwrap();
    std::fs::write(meta.join("1.root.json"), signed.buffer()).unwrap();
    std::fs::write(meta.join("root.json"), signed.buffer()).unwrap();
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Path of a target's content-addressed file.
pub fn target_file(repo: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    repo.join("targets")
        .join(format!("{}.{name}", hex(&sha256(bytes))))
}

/// Publish exactly `targets` as version `version` of every role: each
/// target under the delegated role that owns its path (`fleet::owner`), a
/// path no role owns in the top-level targets.
pub async fn publish(
    repo: &Path,
    keys: &Path,
    targets: &[(&str, &[u8])],
    version: u64,
    ts_expires: jiff::Timestamp,
) {
    let signed: Vec<(&str, &str, &[u8])> = targets
        .iter()
        .map(|(n, b)| (fleet::owner(n).map(|r| r.name).unwrap_or("targets"), *n, *b))
        .collect();
    Publish { targets: signed, version, ts_expires, ..Publish::default() }
        .run(repo, keys)
        .await;
}

/// A publish with full control: who signs what, and how roles are delegated.
pub struct Publish<'a> {
    /// (signer, name, bytes); signer `targets` is the top-level role.
    pub targets: Vec<(&'a str, &'a str, &'a [u8])>,
    pub version: u64,
    pub ts_expires: jiff::Timestamp,
    /// Delegate the roles of `fleet::ROLES` (false: the old layout).
    pub delegate: bool,
    /// Delegation paths replacing a role's `fleet` paths: (role, patterns).
    pub paths: Vec<(&'a str, Vec<&'a str>)>,
}

impl Default for Publish<'_> {
    fn default() -> Self {
        Publish { targets: Vec::new(), version: 1, ts_expires: hours(24), delegate: true, paths: Vec::new() }
    }
}

impl Publish<'_> {
    pub async fn run(&self, repo: &Path, keys: &Path) {
        let mut ed = RepositoryEditor::new(repo.join("metadata/root.json")).await.unwrap();
        let v = NonZeroU64::new(self.version).unwrap();
        ed.targets_version(v).unwrap();
        ed.targets_expires(hours(24 * 90)).unwrap();
        let delegated: Vec<&str> = if self.delegate { fleet::ROLES.iter().map(|r| r.name).collect() } else { Vec::new() };
        for role in fleet::ROLES.iter().filter(|r| delegated.contains(&r.name)) {
            let paths: Vec<&str> = match self.paths.iter().find(|(n, _)| *n == role.name) {
                Some((_, p)) => p.clone(),
                None => role.paths.to_vec(),
            };
            let paths = PathSet::Paths(paths.iter().map(|p| PathPattern::new(*p).unwrap()).collect());
            ed.delegate_role(role.name, &role_key(keys, role.name), paths, false, NonZeroU64::new(1).unwrap(), hours(24 * 90), v)
                .await
                .unwrap();
        }
        for (signer, name, bytes) in self.targets.iter().filter(|t| t.0 == "targets") {
            let _ = signer;
            ed.add_target(*name, write_target(repo, name, bytes).await).unwrap();
        }
        ed.sign_targets_editor(&role_key(keys, "targets")).await.unwrap();
        for role in &delegated {
            let mine: Vec<_> = self.targets.iter().filter(|t| t.0 == *role).collect();
            if mine.is_empty() {
                continue;
            }
            ed.change_delegated_targets(role).unwrap();
            ed.targets_version(v).unwrap();
            ed.targets_expires(hours(24 * 90)).unwrap();
            for (_, name, bytes) in mine {
                ed.add_target(*name, write_target(repo, name, bytes).await).unwrap();
            }
            ed.sign_targets_editor(&role_key(keys, role)).await.unwrap();
        }
        ed.snapshot_version(v);
        ed.snapshot_expires(hours(24 * 7));
        ed.timestamp_version(v);
        ed.timestamp_expires(self.ts_expires);
        let signed = ed.sign(&key_sources(keys)).await.unwrap();
        signed.write(repo.join("metadata")).await.unwrap();
    }
}

async fn write_target(repo: &Path, name: &str, bytes: &[u8]) -> Target {
    let f = target_file(repo, name, bytes);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, bytes).unwrap();
    Target::from_path(&f).await.unwrap()
}

/// A static file server for `dir` on 127.0.0.1 (port chosen by the kernel);
/// returns its base URL. Loopback only.
pub fn serve(dir: &Path) -> url::Url {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                let body = if path.split('/').any(|c| c == "..") {
                    None
                } else {
                    std::fs::read(dir.join(path)).ok()
                };
                let _ = match body {
                    Some(b) => s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())
                                .as_bytes(),
                        )
                        .and_then(|_| s.write_all(&b)),
                    None => s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            });
        }
    });
    url::Url::parse(&format!("http://{addr}/")).unwrap()
}
