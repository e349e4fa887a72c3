//! Fleet sync against real delegated repositories in temp dirs (file:// and
//! a loopback http server): every target from its role, refusals with their
//! stable kinds, reuse of unchanged targets, replay of older role versions,
//! and the fetched state evaluated end to end.

mod common;

use std::time::Duration;

use common::*;
use palisade_update::fleet::{self, GrantClaims, GrantsFile, Revocations};
use palisade_update::grant::{generate_issuer_key, jwks_for, sign_grant};
use palisade_update::repo::{ClientConfig, Repo, RepoSource};
use palisade_update::sync::{evaluate, fetch, FleetState};
use tempfile::TempDir;
use url::Url;

const NODE: &str = "0123456789abcdef";
const NOW: i64 = 1_900_000_000;

struct Fx {
    _tmp: TempDir,
    base: std::path::PathBuf,
    repo: std::path::PathBuf,
    keys: std::path::PathBuf,
}

impl Fx {
    async fn new() -> Fx {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let (repo, keys) = (base.join("repo"), base.join("keys"));
        gen_keys(&keys);
        init(&repo, &keys).await;
        Fx {
            _tmp: tmp,
            base,
            repo,
            keys,
        }
    }

    async fn load(&self, ds: &str) -> Repo {
        let src = RepoSource::from_base(&Url::from_directory_path(&self.repo).unwrap()).unwrap();
        Repo::load(&src, &self.cfg(ds)).await.unwrap()
    }

    async fn load_http(&self, ds: &str) -> Repo {
        Repo::load(
            &RepoSource::from_base(&serve(&self.repo)).unwrap(),
            &self.cfg(ds),
        )
        .await
        .unwrap()
    }

    fn cfg(&self, ds: &str) -> ClientConfig {
        ClientConfig {
            trusted_root: self.repo.join("metadata/1.root.json"),
            datastore: self.base.join("ds").join(ds),
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }
}

fn claims(n: u8, exp: i64) -> GrantClaims {
    GrantClaims {
        jti: format!("g-{n}"),
        sub: base64_key(n),
        addresses: vec![format!("10.8.0.{}/32", n + 2)],
        tier: None,
        iat: NOW - 10,
        exp,
    }
}

fn base64_key(n: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// The content of a fleet: config, grants (one expired), issuer keys,
/// revocations (client 3), two lists.
struct Content {
    config: Vec<u8>,
    grants: Vec<u8>,
    jwks: Vec<u8>,
    revoked: Vec<u8>,
}

fn content() -> Content {
    let k = generate_issuer_key().unwrap();
    let (kid, jwks) = jwks_for(&k).unwrap();
    let grants: Vec<String> = [
        claims(1, NOW + 3600),
        claims(2, NOW - 1),
        claims(3, NOW + 3600),
    ]
    .iter()
    .map(|c| sign_grant(&k, &kid, c).unwrap())
    .collect();
    Content {
        config: b"[node]\nname = \"exit-1\"\n".to_vec(),
        grants: serde_json::to_vec(&GrantsFile { grants }).unwrap(),
        jwks: jwks.into_bytes(),
        revoked: serde_json::to_vec(&Revocations {
            clients: vec![base64_key(3)],
            ..Default::default()
        })
        .unwrap(),
    }
}

async fn publish_content(fx: &Fx, c: &Content, version: u64) {
    let (config, grants) = (fleet::config_target(NODE), fleet::grants_target(NODE));
    publish(
        &fx.repo,
        &fx.keys,
        &[
            (&config, &c.config),
            (&grants, &c.grants),
            (fleet::JWKS_TARGET, &c.jwks),
            (fleet::REVOKED_TARGET, &c.revoked),
            ("lists/ads.txt", b"ads.test\n"),
            ("lists/malware.txt", b"bad.test\n"),
            ("lists/Not-A-Name.txt", b"x\n"),
        ],
        version,
        hours(24),
    )
    .await;
}

#[tokio::test]
async fn fetch_takes_each_target_from_its_role_and_evaluates() {
    let fx = Fx::new().await;
    let c = content();
    publish_content(&fx, &c, 1).await;
    for repo in [fx.load("a").await, fx.load_http("b").await] {
        let s = fetch(&repo, NODE, None, NOW).await.unwrap();
        assert_eq!(&s.config.as_ref().unwrap().bytes[..], &c.config[..]);
        assert_eq!(&s.grants.as_ref().unwrap().bytes[..], &c.grants[..]);
        assert_eq!(&s.jwks.as_ref().unwrap().bytes[..], &c.jwks[..]);
        assert_eq!(&s.revocations.as_ref().unwrap().bytes[..], &c.revoked[..]);
        assert_eq!(s.lists.keys().collect::<Vec<_>>(), ["ads", "malware"]);
        assert_eq!(s.config.as_ref().unwrap().role_version, 1);
        assert_eq!(s.fetched_at, NOW);
        let e = evaluate(&s, NODE, NOW);
        assert!(!e.revoked_self);
        assert_eq!(
            e.config_text.as_deref(),
            Some("[node]\nname = \"exit-1\"\n")
        );
        let jtis: Vec<&str> = e.peers.iter().map(|p| p.jti.as_str()).collect();
        assert_eq!(jtis, ["g-1"]);
        assert_eq!(
            e.rejected_counts().into_iter().collect::<Vec<_>>(),
            [("expired", 1), ("revoked", 1)]
        );
        assert_eq!(&e.lists["malware"][..], b"bad.test\n");
    }
    // Another node has nothing of its own, but the fleet-wide parts.
    let s = fetch(&fx.load("c").await, "1111111111111111", None, NOW)
        .await
        .unwrap();
    assert!(s.config.is_none() && s.grants.is_none() && s.jwks.is_some());
}

#[tokio::test]
async fn unchanged_targets_are_not_downloaded_again() {
    let fx = Fx::new().await;
    let c = content();
    publish_content(&fx, &c, 1).await;
    let first = fetch(&fx.load("a").await, NODE, None, NOW).await.unwrap();
    // Version 2 changes only the config; the other files vanish from the
    // mirror: a download would fail.
    let mut c2 = content();
    c2.grants = c.grants.clone();
    c2.jwks = c.jwks.clone();
    c2.revoked = c.revoked.clone();
    c2.config = b"[node]\nname = \"exit-2\"\n".to_vec();
    publish_content(&fx, &c2, 2).await;
    for (name, bytes) in [
        (fleet::grants_target(NODE), &c.grants),
        (fleet::JWKS_TARGET.to_string(), &c.jwks),
        (fleet::REVOKED_TARGET.to_string(), &c.revoked),
    ] {
        std::fs::remove_file(target_file(&fx.repo, &name, bytes)).unwrap();
    }
    std::fs::remove_file(target_file(&fx.repo, "lists/ads.txt", b"ads.test\n")).unwrap();
    let repo = fx.load("a").await;
    let second = fetch(&repo, NODE, Some(&first), NOW + 60).await.unwrap();
    assert_eq!(&second.config.as_ref().unwrap().bytes[..], &c2.config[..]);
    assert_eq!(
        second.grants.as_ref().unwrap().bytes,
        first.grants.as_ref().unwrap().bytes
    );
    assert_eq!(second.grants.as_ref().unwrap().role_version, 2);
    assert_eq!(second.lists["ads"].bytes, first.lists["ads"].bytes);
    // Without the previous state it has to download, and cannot.
    let e = fetch(&repo, NODE, None, NOW).await.unwrap_err();
    assert_eq!(e.kind(), "unreachable", "{e}");
}

#[tokio::test]
async fn older_role_version_than_seen_is_rollback() {
    let fx = Fx::new().await;
    let c = content();
    publish_content(&fx, &c, 1).await;
    let repo = fx.load("a").await;
    let mut seen = fetch(&repo, NODE, None, NOW).await.unwrap();
    // What a node that had taken version 5 (then lost its metadata store,
    // or was pointed at a reset repository) holds.
    seen.revocations.as_mut().unwrap().role_version = 5;
    let e = fetch(&repo, NODE, Some(&seen), NOW).await.unwrap_err();
    assert_eq!(e.kind(), "rollback", "{e}");
    assert!(e.to_string().contains("revoked.json"), "{e}");
}

#[tokio::test]
async fn config_signed_by_the_wrong_role_is_refused() {
    let fx = Fx::new().await;
    let c = content();
    let config = fleet::config_target(NODE);
    Publish {
        targets: vec![
            ("lists", &config, &c.config),
            ("grants", fleet::JWKS_TARGET, &c.jwks),
        ],
        paths: vec![("lists", vec!["*"])],
        ..Publish::default()
    }
    .run(&fx.repo, &fx.keys)
    .await;
    let e = fetch(&fx.load("a").await, NODE, None, NOW)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "wrong-role", "{e}");
    assert!(e.to_string().contains("lists"), "{e}");
}

#[tokio::test]
async fn tampered_config_is_hash_mismatch() {
    let fx = Fx::new().await;
    let c = content();
    publish_content(&fx, &c, 1).await;
    let name = fleet::config_target(NODE);
    let mut bad = c.config.clone();
    bad[3] ^= 0x20;
    std::fs::write(target_file(&fx.repo, &name, &c.config), &bad).unwrap();
    let e = fetch(&fx.load("a").await, NODE, None, NOW)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "hash-mismatch", "{e}");
}

#[tokio::test]
async fn malformed_content_is_invalid_and_nothing_taken() {
    let fx = Fx::new().await;
    let c = content();
    for (i, (name, bytes)) in [
        (fleet::REVOKED_TARGET.to_string(), b"{\"nodes\":1}".to_vec()),
        (
            fleet::JWKS_TARGET.to_string(),
            b"{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\",\"kid\":\"x\",\"alg\":\"HS384\"}]}".to_vec(),
        ),
        (fleet::grants_target(NODE), b"[]".to_vec()),
        (fleet::config_target(NODE), vec![0xff, 0xfe]),
    ]
    .into_iter()
    .enumerate()
    {
        publish(
            &fx.repo,
            &fx.keys,
            &[(&name, &bytes), ("nodes/x/other", &c.config)],
            i as u64 + 1,
            hours(24),
        )
        .await;
        let e = fetch(&fx.load(&format!("m{i}")).await, NODE, None, NOW)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "invalid", "{name}: {e}");
        assert!(e.to_string().contains(&name), "{e}");
    }
}

#[tokio::test]
async fn over_the_cap_is_too_large() {
    let fx = Fx::new().await;
    let big = vec![b'#'; (palisade_update::sync::MAX_CONFIG + 1) as usize];
    publish(
        &fx.repo,
        &fx.keys,
        &[(&fleet::config_target(NODE), &big)],
        1,
        hours(24),
    )
    .await;
    std::fs::remove_file(target_file(&fx.repo, &fleet::config_target(NODE), &big)).unwrap();
    let e = fetch(&fx.load("a").await, NODE, None, NOW)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "too-large", "{e}");
}

#[tokio::test]
async fn revoked_node_sees_it_after_a_fetch() {
    let fx = Fx::new().await;
    let mut c = content();
    c.revoked = serde_json::to_vec(&Revocations {
        nodes: vec![NODE.into()],
        ..Default::default()
    })
    .unwrap();
    publish_content(&fx, &c, 1).await;
    let s = fetch(&fx.load("a").await, NODE, None, NOW).await.unwrap();
    let store = palisade_update::store::MemStore::new();
    s.save(&store).unwrap();
    let s = FleetState::load(&store).unwrap().unwrap();
    let e = evaluate(&s, NODE, NOW);
    assert!(e.revoked_self);
    assert!(e.peers.is_empty());
}
