//! The repository client against real signed repositories in temp dirs,
//! read over file:// and over http:// from a loopback server. Each refusal
//! asserts its stable kind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use palisade_update::fleet;
use palisade_update::repo::{ClientConfig, ImageTarget, Repo, RepoError, RepoSource};
use tempfile::TempDir;
use url::Url;

const BOARD: &str = "qemu-x86_64";
const IMG: &str = "images/qemu-x86_64/1.0.0.img";

struct Fx {
    _tmp: TempDir,
    repo: std::path::PathBuf,
    keys: std::path::PathBuf,
    base: std::path::PathBuf,
}

impl Fx {
    async fn new() -> Fx {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let repo = base.join("repo");
        let keys = base.join("keys");
        gen_keys(&keys);
        init(&repo, &keys).await;
        Fx {
            _tmp: tmp,
            repo,
            keys,
            base,
        }
    }

    /// file:// and http:// sources for the repository.
    fn sources(&self) -> Vec<RepoSource> {
        let file = Url::from_directory_path(&self.repo).unwrap();
        vec![
            RepoSource::from_base(&file).unwrap(),
            RepoSource::from_base(&serve(&self.repo)).unwrap(),
        ]
    }

    /// A node config with a fresh datastore named `ds`.
    fn cfg(&self, ds: &str) -> ClientConfig {
        ClientConfig {
            trusted_root: self.repo.join("metadata/1.root.json"),
            datastore: self.base.join("ds").join(ds),
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }
}

fn image_bytes() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

async fn load_err(src: &RepoSource, cfg: &ClientConfig) -> RepoError {
    Repo::load(src, cfg)
        .await
        .expect_err("load must be refused")
}

async fn fetch(repo: &Repo, t: &ImageTarget, cap: u64) -> Result<(), RepoError> {
    let mut p = |_d: u64, _t: u64| {};
    repo.fetch_image(t, cap, &mut p).await.map(|_| ())
}

#[tokio::test]
async fn fetch_ok_and_rollout_over_file_and_http() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let policy = br#"{"version":"1.0.0","start":"2030-01-01T00:00:00Z","waves":3,"soak_minutes":60,"window":{"start":"02:00","minutes":120}}"#;
    publish(
        &fx.repo,
        &fx.keys,
        &[
            (IMG, &img),
            ("rollout.json", policy),
            ("other/file.txt", b"x"),
        ],
        1,
        hours(24),
    )
    .await;
    for (i, src) in fx.sources().iter().enumerate() {
        let repo = Repo::load(src, &fx.cfg(&format!("ok{i}"))).await.unwrap();
        let images = repo.images(BOARD);
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, IMG);
        assert_eq!(images[0].version.to_string(), "1.0.0");
        assert_eq!(images[0].length, img.len() as u64);
        assert!(repo.images("other-board").is_empty());
        assert_eq!(
            repo.image_by_hash(BOARD, &sha256(&img)),
            Some(images[0].clone())
        );
        assert_eq!(repo.image_by_hash(BOARD, &[0; 32]), None);

        let p = repo.rollout().await.unwrap().unwrap();
        assert_eq!((p.waves, p.soak_minutes), (3, 60));

        let mut last = (0, 0);
        let mut progress = |d: u64, t: u64| last = (d, t);
        let got = repo
            .fetch_image(&images[0], 1 << 20, &mut progress)
            .await
            .unwrap();
        assert_eq!(got.sha256(), sha256(&img));
        assert_eq!(got.len(), img.len() as u64);
        assert_eq!(last, (img.len() as u64, img.len() as u64));
        assert_eq!(got.as_bytes(), &img[..]);
    }
}

#[tokio::test]
async fn no_rollout_is_none_and_bad_rollout_is_invalid() {
    let fx = Fx::new().await;
    publish(&fx.repo, &fx.keys, &[], 1, hours(24)).await;
    let src = &fx.sources()[0];
    let repo = Repo::load(src, &fx.cfg("a")).await.unwrap();
    assert!(repo.rollout().await.unwrap().is_none());
    publish(
        &fx.repo,
        &fx.keys,
        &[("rollout.json", br#"{"version":"1.0.0","bogus":1}"#)],
        2,
        hours(24),
    )
    .await;
    let repo = Repo::load(src, &fx.cfg("a")).await.unwrap();
    assert_eq!(repo.rollout().await.unwrap_err().kind(), "invalid");
}

#[tokio::test]
async fn unsigned_targets_are_bad_signature() {
    // Whoever holds only the online snapshot/timestamp keys edits targets.json
    // (adds a target) and re-signs snapshot and timestamp, but cannot sign
    // targets.
    let fx = Fx::new().await;
    let img = image_bytes();
    publish(&fx.repo, &fx.keys, &[(IMG, &img)], 1, hours(24)).await;
    let meta = fx.repo.join("metadata");
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(meta.join("1.targets.json")).unwrap()).unwrap();
    t["signed"]["version"] = 2.into();
    t["signed"]["targets"]["images/qemu-x86_64/6.6.6.img"] = serde_json::json!({
        "length": img.len(),
        "hashes": {"sha256": hex(&sha256(&img))},
    });
    let tbytes = serde_json::to_vec_pretty(&t).unwrap();
    std::fs::write(meta.join("2.targets.json"), &tbytes).unwrap();
    resign_snapshot_timestamp(&fx, 2, &tbytes).await;
    for (i, src) in fx.sources().iter().enumerate() {
        let e = load_err(src, &fx.cfg(&format!("u{i}"))).await;
        assert_eq!(e.kind(), "bad-signature", "{e}");
    }
}

/// Snapshot and timestamp version `v` over the given targets.json bytes,
/// signed with the real snapshot and timestamp keys only.
async fn resign_snapshot_timestamp(fx: &Fx, v: u64, targets_json: &[u8]) {
    use std::collections::HashMap;
    use std::num::NonZeroU64;
    use tough::editor::signed::SignedRole;
    use tough::schema::{Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Timestamp};
    let meta = fx.repo.join("metadata");
    let root: Signed<Root> =
        serde_json::from_slice(&std::fs::read(meta.join("root.json")).unwrap()).unwrap();
    let holder = KeyHolder::Root(root.signed);
    let keys = key_sources(&fx.keys);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let nz = NonZeroU64::new(v).unwrap();
    let mf = |bytes: &[u8], version| Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: sha256(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    };
    let mut snap = Snapshot::new("1.0.0".into(), nz, hours(24));
    snap.meta
        .insert("targets.json".into(), mf(targets_json, nz));
    let snap = SignedRole::new(snap, &holder, &keys, &rng).await.unwrap();
    std::fs::write(meta.join(format!("{v}.snapshot.json")), snap.buffer()).unwrap();
    let mut ts = Timestamp::new("1.0.0".into(), nz, hours(24));
    ts.meta
        .insert("snapshot.json".into(), mf(snap.buffer(), nz));
    let ts = SignedRole::new(ts, &holder, &keys, &rng).await.unwrap();
    std::fs::write(meta.join("timestamp.json"), ts.buffer()).unwrap();
}

#[tokio::test]
async fn other_fleet_root_is_bad_signature() {
    let fx = Fx::new().await;
    publish(&fx.repo, &fx.keys, &[], 1, hours(24)).await;
    // The node was enrolled in another fleet.
    let other = Fx::new().await;
    for (i, src) in fx.sources().iter().enumerate() {
        let e = load_err(src, &other.cfg(&format!("w{i}"))).await;
        assert_eq!(e.kind(), "bad-signature", "{e}");
    }
}

#[tokio::test]
async fn expired_timestamp() {
    let fx = Fx::new().await;
    publish(&fx.repo, &fx.keys, &[], 1, hours(-1)).await;
    for (i, src) in fx.sources().iter().enumerate() {
        let e = load_err(src, &fx.cfg(&format!("e{i}"))).await;
        assert_eq!(e.kind(), "expired", "{e}");
    }
}

#[tokio::test]
async fn mix_and_match() {
    // Publish A and publish B both reach version 2 from the same version 1;
    // a mirror serves A's timestamp and snapshot with B's targets.json.
    let a = Fx::new().await;
    publish(&a.repo, &a.keys, &[], 1, hours(24)).await;
    let b_repo = a.base.join("repo-b");
    copy_dir(&a.repo, &b_repo);
    publish(&a.repo, &a.keys, &[(IMG, b"image A")], 2, hours(24)).await;
    publish(
        &b_repo,
        &a.keys,
        &[(IMG, b"image B, other bytes")],
        2,
        hours(24),
    )
    .await;
    std::fs::copy(
        b_repo.join("metadata/2.targets.json"),
        a.repo.join("metadata/2.targets.json"),
    )
    .unwrap();
    for (i, src) in a.sources().iter().enumerate() {
        let e = load_err(src, &a.cfg(&format!("m{i}"))).await;
        assert_eq!(e.kind(), "mix-and-match", "{e}");
    }
}

#[tokio::test]
async fn version_mismatch_is_mix_and_match() {
    // snapshot names targets version 2, the file holds version 1's content.
    let fx = Fx::new().await;
    publish(&fx.repo, &fx.keys, &[], 1, hours(24)).await;
    let t1 = std::fs::read(fx.repo.join("metadata/1.targets.json")).unwrap();
    std::fs::write(fx.repo.join("metadata/2.targets.json"), &t1).unwrap();
    resign_snapshot_timestamp(&fx, 2, &t1).await;
    let e = load_err(&fx.sources()[0], &fx.cfg("vm")).await;
    assert_eq!(e.kind(), "mix-and-match", "{e}");
}

#[tokio::test]
async fn metadata_rollback() {
    let fx = Fx::new().await;
    let meta = fx.repo.join("metadata");
    publish(&fx.repo, &fx.keys, &[], 1, hours(24)).await;
    publish(&fx.repo, &fx.keys, &[], 2, hours(24)).await;
    let ts2 = std::fs::read(meta.join("timestamp.json")).unwrap();
    publish(&fx.repo, &fx.keys, &[], 3, hours(24)).await;
    let ts3 = std::fs::read(meta.join("timestamp.json")).unwrap();
    for (i, src) in fx.sources().iter().enumerate() {
        let cfg = fx.cfg(&format!("r{i}"));
        // The node sees version 3 ...
        std::fs::write(meta.join("timestamp.json"), &ts3).unwrap();
        Repo::load(src, &cfg).await.unwrap();
        // ... then the mirror serves version 2 (validly signed, older).
        std::fs::write(meta.join("timestamp.json"), &ts2).unwrap();
        let e = load_err(src, &cfg).await;
        assert_eq!(e.kind(), "rollback", "{e}");
        // A node without that datastore accepts version 2: the datastore is
        // what carries the knowledge across polls and reboots.
        Repo::load(src, &fx.cfg(&format!("fresh{i}")))
            .await
            .unwrap();
    }
}

async fn published_image(fx: &Fx, img: &[u8]) -> (Vec<RepoSource>, ImageTarget) {
    publish(&fx.repo, &fx.keys, &[(IMG, img)], 1, hours(24)).await;
    let srcs = fx.sources();
    let r = Repo::load(&srcs[0], &fx.cfg("probe")).await.unwrap();
    let t = r.images(BOARD).remove(0);
    (srcs, t)
}

#[tokio::test]
async fn too_large_refused_before_download() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let (srcs, t) = published_image(&fx, &img).await;
    // Remove the file: a refusal that downloaded would say "unreachable".
    std::fs::remove_file(target_file(&fx.repo, IMG, &img)).unwrap();
    for (i, src) in srcs.iter().enumerate() {
        let repo = Repo::load(src, &fx.cfg(&format!("l{i}"))).await.unwrap();
        let e = fetch(&repo, &t, 1000).await.unwrap_err();
        assert_eq!(e.kind(), "too-large", "{e}");
    }
}

#[tokio::test]
async fn truncated_target() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let (srcs, t) = published_image(&fx, &img).await;
    std::fs::write(target_file(&fx.repo, IMG, &img), &img[..img.len() / 2]).unwrap();
    for (i, src) in srcs.iter().enumerate() {
        let repo = Repo::load(src, &fx.cfg(&format!("t{i}"))).await.unwrap();
        let e = fetch(&repo, &t, 1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), "truncated", "{e}");
    }
}

#[tokio::test]
async fn corrupted_target_same_length() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let (srcs, t) = published_image(&fx, &img).await;
    let mut bad = img.clone();
    bad[12345] ^= 0xff;
    std::fs::write(target_file(&fx.repo, IMG, &img), &bad).unwrap();
    for (i, src) in srcs.iter().enumerate() {
        let repo = Repo::load(src, &fx.cfg(&format!("h{i}"))).await.unwrap();
        let e = fetch(&repo, &t, 1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), "hash-mismatch", "{e}");
    }
}

#[tokio::test]
async fn longer_target_is_refused() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let (srcs, t) = published_image(&fx, &img).await;
    let mut long = img.clone();
    long.extend_from_slice(b"trailing junk");
    std::fs::write(target_file(&fx.repo, IMG, &img), &long).unwrap();
    let repo = Repo::load(&srcs[1], &fx.cfg("long")).await.unwrap();
    let e = fetch(&repo, &t, 1 << 20).await.unwrap_err();
    assert_eq!(e.kind(), "hash-mismatch", "{e}");
}

#[tokio::test]
async fn unlisted_name_is_not_a_target() {
    let fx = Fx::new().await;
    let img = image_bytes();
    let (srcs, mut t) = published_image(&fx, &img).await;
    let repo = Repo::load(&srcs[0], &fx.cfg("n")).await.unwrap();
    t.name = "images/qemu-x86_64/9.9.9.img".into();
    t.version = semver::Version::new(9, 9, 9);
    let e = fetch(&repo, &t, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "not-a-target", "{e}");
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let fx = Fx::new().await;
    publish(&fx.repo, &fx.keys, &[], 1, hours(24)).await;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let src = RepoSource::from_base(&Url::parse(&format!("http://{addr}/")).unwrap()).unwrap();
    let e = load_err(&src, &fx.cfg("x")).await;
    assert_eq!(e.kind(), "unreachable", "{e}");
    // And a repository without metadata at that URL (404).
    let empty = TempDir::new().unwrap();
    let src = RepoSource::from_base(&serve(empty.path())).unwrap();
    let e = load_err(&src, &fx.cfg("y")).await;
    assert_eq!(e.kind(), "unreachable", "{e}");
}

const NODE: &str = "0123456789abcdef";
const POLICY: &[u8] = br#"{"version":"1.0.0","start":"2030-01-01T00:00:00Z","waves":3,"soak_minutes":60,"window":{"start":"02:00","minutes":120}}"#;

fn wrong_role(e: &RepoError, signer: &str) {
    assert_eq!(e.kind(), "wrong-role", "{e}");
    assert!(matches!(e, RepoError::WrongRole { signer: s, .. } if s == signer), "{e:?}");
}

#[tokio::test]
async fn role_targets_come_from_their_role() {
    let fx = Fx::new().await;
    let config = fleet::config_target(NODE);
    publish(
        &fx.repo,
        &fx.keys,
        &[(&config, b"[node]\n"), ("jwks.json", b"{}"), ("lists/ads.txt", b"ads.test\n"), ("lists/x.txt", b"x\n")],
        3,
        hours(24),
    )
    .await;
    let repo = Repo::load(&fx.sources()[0], &fx.cfg("rt")).await.unwrap();
    let t = repo.role_target(fleet::CONFIGS, &config, 1024).await.unwrap().unwrap();
    assert_eq!((t.name.as_str(), &t.bytes[..], t.role_version), (config.as_str(), &b"[node]\n"[..], 3));
    assert_eq!(t.sha256, sha256(b"[node]\n"));
    // Absent everywhere: None, not an error.
    assert!(repo.role_target(fleet::CONFIGS, &fleet::grants_target(NODE), 1024).await.unwrap().is_none());
    assert!(repo.role_target(fleet::REVOCATIONS, "revoked.json", 1024).await.unwrap().is_none());
    let lists: Vec<String> = repo.role_targets(fleet::LISTS).into_iter().map(|e| e.name).collect();
    assert_eq!(lists, ["lists/ads.txt", "lists/x.txt"]);
    // The cap is checked against the signed length first.
    let e = repo.role_target(fleet::CONFIGS, &config, 3).await.unwrap_err();
    assert_eq!(e.kind(), "too-large", "{e}");
    // Tampered bytes of the same length.
    std::fs::write(target_file(&fx.repo, &config, b"[node]\n"), b"[evil]\n").unwrap();
    let e = repo.role_target(fleet::CONFIGS, &config, 1024).await.unwrap_err();
    assert_eq!(e.kind(), "hash-mismatch", "{e}");
}

#[tokio::test]
async fn target_signed_by_the_wrong_role_is_refused() {
    // The top-level targets delegate `*` to `images` (a mistake, or a
    // compromised targets key): tough would load and serve a config that
    // `images` signs, the node does not.
    let fx = Fx::new().await;
    let config = fleet::config_target(NODE);
    let img = image_bytes();
    Publish {
        targets: vec![
            ("images", &config, b"[node]\n"),
            ("images", IMG, &img),
            ("targets", "revoked.json", b"{}"),
        ],
        paths: vec![("images", vec!["*"])],
        ..Publish::default()
    }
    .run(&fx.repo, &fx.keys)
    .await;
    for (i, src) in fx.sources().iter().enumerate() {
        let repo = Repo::load(src, &fx.cfg(&format!("wr{i}"))).await.unwrap();
        let e = repo.role_target(fleet::CONFIGS, &config, 1024).await.unwrap_err();
        wrong_role(&e, "images");
        assert!(e.to_string().contains(&config), "{e}");
        // Asking `images` for it does not help either.
        wrong_role(&repo.role_target(fleet::IMAGES, &config, 1024).await.unwrap_err(), "images");
        // Signed by the top-level role, which only delegates.
        wrong_role(&repo.role_target(fleet::REVOCATIONS, "revoked.json", 1024).await.unwrap_err(), "targets");
        // `images` still lists only what it may sign.
        let names: Vec<String> = repo.role_targets(fleet::IMAGES).into_iter().map(|e| e.name).collect();
        assert_eq!(names, [IMG]);
        assert_eq!(repo.images(BOARD).len(), 1);
    }
}

#[tokio::test]
async fn a_role_cannot_sign_outside_its_paths() {
    // `configs` is delegated everything and signs the issuer keys, the
    // rollout policy and an image besides its config: tough loads all of it.
    let fx = Fx::new().await;
    let config = fleet::config_target(NODE);
    Publish {
        targets: vec![
            ("configs", &config, b"[node]\n"),
            ("configs", "jwks.json", b"{\"keys\":[]}"),
            ("configs", "rollout.json", POLICY),
            ("configs", IMG, b"evil image"),
        ],
        paths: vec![("configs", vec!["*"])],
        ..Publish::default()
    }
    .run(&fx.repo, &fx.keys)
    .await;
    let repo = Repo::load(&fx.sources()[0], &fx.cfg("out")).await.unwrap();
    wrong_role(&repo.role_target(fleet::GRANTS, "jwks.json", 1024).await.unwrap_err(), "configs");
    wrong_role(&repo.rollout().await.unwrap_err(), "configs");
    assert!(repo.images(BOARD).is_empty());
    let names: Vec<String> = repo.role_targets(fleet::CONFIGS).into_iter().map(|e| e.name).collect();
    assert_eq!(names, std::slice::from_ref(&config));
    let t = repo.role_target(fleet::CONFIGS, &config, 1024).await.unwrap().unwrap();
    assert_eq!(&t.bytes[..], b"[node]\n");
    // An image target made up from the entry `configs` signed is refused.
    let fake = ImageTarget {
        name: IMG.into(),
        board: BOARD.into(),
        version: semver::Version::new(1, 0, 0),
        length: 10,
        sha256: sha256(b"evil image"),
    };
    wrong_role(&fetch(&repo, &fake, 1 << 20).await.unwrap_err(), "configs");
}

#[tokio::test]
async fn an_image_shadowed_by_the_top_level_targets_is_refused() {
    // `images` signs the image; the top-level targets list the same name
    // with other bytes (tough would fetch those): refused, not fetched.
    let fx = Fx::new().await;
    let img = image_bytes();
    Publish {
        targets: vec![("images", IMG, &img), ("targets", IMG, b"other bytes")],
        ..Publish::default()
    }
    .run(&fx.repo, &fx.keys)
    .await;
    let repo = Repo::load(&fx.sources()[0], &fx.cfg("sh")).await.unwrap();
    let images = repo.images(BOARD);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].sha256, sha256(&img));
    wrong_role(&fetch(&repo, &images[0], 1 << 20).await.unwrap_err(), "targets");
}

#[tokio::test]
async fn the_old_layout_has_no_images() {
    let fx = Fx::new().await;
    let img = image_bytes();
    Publish {
        targets: vec![("targets", IMG, &img), ("targets", "rollout.json", POLICY)],
        delegate: false,
        ..Publish::default()
    }
    .run(&fx.repo, &fx.keys)
    .await;
    let repo = Repo::load(&fx.sources()[0], &fx.cfg("old")).await.unwrap();
    assert!(repo.images(BOARD).is_empty());
    assert!(repo.rollout().await.unwrap().is_none());
    assert!(repo.role_targets(fleet::IMAGES).is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), &p).unwrap();
        }
    }
}
