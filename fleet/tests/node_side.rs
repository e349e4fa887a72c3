//! What palisade-fleet publishes, read by the node's own code
//! (palisade-update: the enrolment responder, `sync::fetch` and `evaluate`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade_fleet::enrol::{enrol_serial, EnrolRequest};
use palisade_fleet::{Expiries, Fleet};
use palisade_update::identity::Identity;
use palisade_update::repo::{ClientConfig, Repo, RepoSource};
use palisade_update::store::MemStore;
use serde_json::Value;
use serialport::{SerialPort, TTYPort};

fn cli(f: &Fleet, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-fleet"))
        .args(args)
        .arg("--repo")
        .arg(&f.repo)
        .arg("--keys")
        .arg(&f.keys)
        .arg("--json")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{args:?}: {v}");
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The node's responder on one end of a pty until the host closes it.
fn responder(mut port: TTYPort, store: std::sync::Arc<MemStore>, id: std::sync::Arc<Identity>) {
    port.set_timeout(Duration::from_millis(50)).unwrap();
    let mut r = palisade_update::enrol::Responder::new();
    // Ends with an error when the host closes its end.
    let _ = palisade_update::enrol::serve_lines(&mut port, |line| {
        let reply = r.handle_line(line, store.as_ref(), &id).map(|(reply, _)| reply).unwrap_or_default();
        Some(format!("[  1.0] palisaded: log line\r\n{reply}"))
    });
}

#[test]
fn enrols_a_real_responder_then_refuses_to_enrol_it_again() {
    let t = tempfile::tempdir().unwrap();
    let f = Fleet {
        repo: t.path().join("repo"),
        keys: t.path().join("keys"),
    };
    rt().block_on(f.init(365, Expiries::default())).unwrap();
    let store = std::sync::Arc::new(MemStore::new());
    let (id, _) = Identity::load_or_create(store.as_ref()).unwrap();
    let id = std::sync::Arc::new(id);
    let req = EnrolRequest {
        name: "edge-1".into(),
        region: "eu".into(),
        repositories: vec!["http://127.0.0.1:8000/".into()],
        ca_pem: None,
        mesh: vec![],
    };
    for round in 0..2 {
        let (mut host, node) = TTYPort::pair().unwrap();
        host.set_timeout(Duration::from_millis(100)).unwrap();
        let (s, i) = (store.clone(), id.clone());
        let th = std::thread::spawn(move || responder(node, s, i));
        let r = enrol_serial(&f, &req, &mut host, Duration::from_secs(10));
        drop(host);
        th.join().unwrap();
        if round == 0 {
            let r = r.unwrap();
            assert_eq!(r.json["node_id"], id.node_id().as_str());
            assert_eq!(
                palisade_update::enrol::enrolment(store.as_ref())
                    .unwrap()
                    .unwrap()
                    .name,
                "edge-1"
            );
            assert_eq!(f.inventory().unwrap().nodes[0].id, id.node_id());
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.exit_code(), 3);
            assert!(e.to_string().contains("factory-reset"), "{e}");
        }
    }
}

#[test]
fn node_sync_takes_config_grants_revocations_and_lists() {
    let t = tempfile::tempdir().unwrap();
    let f = Fleet {
        repo: t.path().join("repo"),
        keys: t.path().join("keys"),
    };
    cli(&f, &["repo", "init"]);
    let node = palisade_update::fleet::node_id(&[7u8; 32]);
    let cfg = t.path().join("node.toml");
    let text = include_str!("../../configs/node.toml");
    std::fs::write(&cfg, text).unwrap();
    cli(
        &f,
        &[
            "config",
            "set",
            "--node",
            &node,
            cfg.to_str().unwrap(),
            "--force",
        ],
    );
    cli(&f, &["issuer", "init"]);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (k1, k2) = (b64.encode([1u8; 32]), b64.encode([2u8; 32]));
    let g1 = cli(
        &f,
        &[
            "grant",
            "issue",
            "--node",
            &node,
            "--peer",
            &k1,
            "--address",
            "10.66.0.2/32",
            "--expires",
            "1h",
        ],
    );
    cli(
        &f,
        &[
            "grant",
            "issue",
            "--node",
            &node,
            "--peer",
            &k2,
            "--address",
            "10.66.0.3/32",
            "--tier",
            "family",
            "--expires",
            "1h",
        ],
    );
    cli(&f, &["revoke", "--grant", g1["jti"].as_str().unwrap()]);
    let list = t.path().join("ads.txt");
    std::fs::write(&list, "ads.example\n").unwrap();
    cli(&f, &["list", "set", "ads", list.to_str().unwrap()]);

    let eval = |ds: &str| {
        rt().block_on(async {
            let src =
                RepoSource::from_base(&url::Url::from_directory_path(&f.repo).unwrap()).unwrap();
            let cfg = ClientConfig {
                trusted_root: f.repo.join("metadata/1.root.json"),
                datastore: t.path().join(ds),
                ca_file: None,
                timeout: Duration::from_secs(5),
            };
            let repo = Repo::load(&src, &cfg).await.unwrap();
            let now = jiff::Timestamp::now().as_second();
            let st = palisade_update::sync::fetch(&repo, &node, None, now)
                .await
                .unwrap();
            palisade_update::sync::evaluate(&st, &node, now)
        })
    };
    let e = eval("ds1");
    assert!(!e.revoked_self);
    assert_eq!(e.config_text.as_deref(), Some(text));
    assert_eq!(e.peers.len(), 1, "{e:?}");
    assert_eq!(
        (e.peers[0].public_key_b64(), e.peers[0].tier.as_deref()),
        (k2.clone(), Some("family"))
    );
    assert_eq!(e.rejected_counts().get("revoked"), Some(&1), "{e:?}");
    assert_eq!(e.lists["ads"].as_ref(), b"ads.example\n");

    // A config signed by the images role (sign-as): the node refuses it
    // as wrong-role; withdrawn and published again by configs, it is taken.
    let evil = t.path().join("evil.toml");
    std::fs::write(&evil, "[node]\nname = \"evil\"\n").unwrap();
    let target = palisade_update::fleet::config_target(&node);
    cli(&f, &["sign-as", "images", &target, evil.to_str().unwrap()]);
    let err = rt().block_on(async {
        let src = RepoSource::from_base(&url::Url::from_directory_path(&f.repo).unwrap()).unwrap();
        let cfg = ClientConfig {
            trusted_root: f.repo.join("metadata/1.root.json"),
            datastore: t.path().join("ds-wrong"),
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let repo = Repo::load(&src, &cfg).await.unwrap();
        let now = jiff::Timestamp::now().as_second();
        palisade_update::sync::fetch(&repo, &node, None, now)
            .await
            .unwrap_err()
    });
    assert_eq!(err.kind(), "wrong-role", "{err}");
    cli(&f, &["sign-as", "images", &target, "--remove"]);
    cli(
        &f,
        &[
            "config",
            "set",
            "--node",
            &node,
            cfg.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(eval("ds1").config_text.as_deref(), Some(text));

    // Key rotation of the roles involved, then the node itself revoked.
    cli(&f, &["keys", "rotate", "configs"]);
    cli(&f, &["keys", "rotate", "timestamp"]);
    cli(&f, &["revoke", "--node", &node]);
    let e = eval("ds1");
    assert!(e.revoked_self);
    assert!(Path::new(&f.repo).join("metadata/2.root.json").exists());
}
