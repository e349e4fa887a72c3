//! The palisade-fleet binary end to end, and a node-side `Repo` reading what
//! it published (file://, no network).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade_update::repo::{ClientConfig, Repo, RepoSource};
use serde_json::Value;

fn fleet(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-fleet"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout:?}"));
    (
        out.status.code().unwrap(),
        v,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        v.push((
            e.file_name().to_string_lossy().into(),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    v.sort();
    v
}

#[test]
fn publish_and_node_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let keys = t.path().join("keys");
    let (r, k) = (repo.to_str().unwrap(), keys.to_str().unwrap());
    let rk = ["--repo", r, "--keys", k];

    let (c, v, _) = fleet(&[&["repo", "init"][..], &rk].concat());
    assert_eq!((c, v["result"].as_str()), (0, Some("created")));
    use std::os::unix::fs::PermissionsExt;
    for role in [
        "root", "targets", "snapshot", "timestamp", "images", "configs", "grants", "revocations",
        "lists", "nodelists",
    ] {
        let m = std::fs::metadata(keys.join(format!("{role}.pk8"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let before = snapshot_dir(&repo.join("metadata"));
    let (c, v, _) = fleet(&[&["repo", "init"][..], &rk].concat());
    assert_eq!((c, v["result"].as_str()), (0, Some("exists")));
    assert_eq!(
        before,
        snapshot_dir(&repo.join("metadata")),
        "second init changes nothing"
    );

    let img = t.path().join("slot.img");
    std::fs::write(&img, vec![7u8; 50_000]).unwrap();
    let i = img.to_str().unwrap();
    let add = [
        &["image", "add", i][..],
        &rk,
        &["--board", "qemu-x86_64", "--version", "1.0.0"],
    ]
    .concat();
    let (c, v, _) = fleet(&add);
    assert_eq!((c, v["result"].as_str()), (0, Some("added")), "{v}");
    let before = snapshot_dir(&repo.join("metadata"));
    let (c, v, _) = fleet(&add);
    assert_eq!((c, v["result"].as_str()), (0, Some("unchanged")));
    assert_eq!(before, snapshot_dir(&repo.join("metadata")));

    // Other bytes for the same version: refused (3) unless --replace.
    let img2 = t.path().join("slot2.img");
    std::fs::write(&img2, vec![8u8; 50_000]).unwrap();
    let add2 = [
        &["image", "add", img2.to_str().unwrap()][..],
        &rk,
        &["--board", "qemu-x86_64", "--version", "1.0.0"],
    ]
    .concat();
    let (c, v, _) = fleet(&add2);
    assert_eq!(c, 3, "{v}");
    assert_eq!(v["ok"], false);

    let (c, v, _) = fleet(
        &[
            &["rollout", "set"][..],
            &rk,
            &[
                "--version",
                "1.0.0",
                "--waves",
                "2",
                "--soak-minutes",
                "30",
                "--window",
                "03:00/60",
                "--start",
                "2030-01-01T00:00:00Z",
                "--region",
                "eu=n1,n2",
            ],
        ]
        .concat(),
    );
    assert_eq!(c, 0, "{v}");

    // refresh bumps the timestamp only.
    let (_, s1, _) = fleet(&["status", "--repo", r]);
    let (c, _, _) = fleet(&[&["refresh"][..], &rk].concat());
    assert_eq!(c, 0);
    let (_, s2, _) = fleet(&["status", "--repo", r]);
    for role in ["root", "targets", "snapshot"] {
        assert_eq!(s1["roles"][role], s2["roles"][role], "{role}");
    }
    assert_eq!(
        s2["roles"]["timestamp"]["version"].as_u64().unwrap(),
        s1["roles"]["timestamp"]["version"].as_u64().unwrap() + 1
    );
    assert_eq!(s2["images"]["qemu-x86_64"][0]["version"], "1.0.0");

    // A node reads it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let src = RepoSource::from_base(&url::Url::from_directory_path(&repo).unwrap()).unwrap();
        let cfg = ClientConfig {
            trusted_root: repo.join("metadata/1.root.json"),
            datastore: t.path().join("ds"),
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let node = Repo::load(&src, &cfg).await.unwrap();
        let imgs = node.images("qemu-x86_64");
        assert_eq!(imgs.len(), 1);
        assert_eq!(imgs[0].length, 50_000);
        // rollout.json is signed by the `images` role (the top-level targets
        // only delegates); read it with tough's client.
        let tr = palisade_fleet::verify_load(&repo, &repo.join("metadata/1.root.json"), &t.path().join("ds2"))
            .await
            .unwrap();
        assert!(tr.targets().signed.targets.is_empty(), "top-level targets signs nothing");
        assert_eq!(
            palisade_fleet::verified_role_targets(&tr, "images").unwrap(),
            vec!["images/qemu-x86_64/1.0.0.img", "rollout.json"]
        );
        let p: palisade_update::rollout::RolloutPolicy = serde_json::from_slice(
            &palisade_fleet::verified_target(&tr, "rollout.json").await.unwrap().unwrap(),
        )
        .unwrap();
        assert_eq!((p.waves, p.soak_minutes), (2, 30));
        assert_eq!(p.regions["eu"], vec!["n1", "n2"]);
        let img_bytes = palisade_fleet::verified_target(&tr, "images/qemu-x86_64/1.0.0.img")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(img_bytes, vec![7u8; 50_000]);
        // The node's own client reads them from the images role too.
        let p = node.rollout().await.unwrap().unwrap();
        assert_eq!((p.waves, p.regions["eu"].len()), (2, 2));
        let mut prog = |_: u64, _: u64| {};
        let got = node.fetch_image(&imgs[0], 1 << 20, &mut prog).await.unwrap();
        assert_eq!(got.sha256(), imgs[0].sha256);

        // An already expired timestamp is refused by the node.
        let (c, _, _) = fleet(
            &[
                &["refresh"][..],
                &rk,
                &["--timestamp-expires-at", "2000-01-01T00:00:00Z"],
            ]
            .concat(),
        );
        assert_eq!(c, 0);
        let e = Repo::load(&src, &cfg).await.unwrap_err();
        assert_eq!(e.kind(), "expired");
        // sign restores it.
        let (c, _, _) = fleet(&[&["sign"][..], &rk].concat());
        assert_eq!(c, 0);
        Repo::load(&src, &cfg).await.unwrap();
    });
}

#[test]
fn exit_codes_for_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("repo");
    let k = t.path().join("keys");
    let (r, k) = (r.to_str().unwrap(), k.to_str().unwrap());
    let rk = ["--repo", r, "--keys", k];
    // No repository yet: 3.
    let (c, v, _) = fleet(&["status", "--repo", r]);
    assert_eq!((c, v["kind"].as_str()), (3, Some("repository")));
    assert_eq!(fleet(&[&["repo", "init"][..], &rk].concat()).0, 0);
    let img = t.path().join("x.img");
    std::fs::write(&img, b"x").unwrap();
    let i = img.to_str().unwrap();
    // Bad version, missing file, bad board, manifest without the hash: 2.
    for args in [
        vec!["image", "add", i, "--board", "b", "--version", "1.0"],
        vec![
            "image",
            "add",
            "/nonexistent/x.img",
            "--board",
            "b",
            "--version",
            "1.0.0",
        ],
        vec!["image", "add", i, "--board", "b/../c", "--version", "1.0.0"],
        vec![
            "rollout",
            "set",
            "--version",
            "9.9.9",
            "--waves",
            "1",
            "--soak-minutes",
            "1",
        ],
        vec![
            "rollout",
            "set",
            "--version",
            "1.0.0",
            "--waves",
            "1",
            "--soak-minutes",
            "1",
            "--window",
            "25:00/10",
        ],
    ] {
        let (c, v, _) = fleet(&[&args[..], &rk].concat());
        assert_eq!(c, 2, "{args:?}: {v}");
    }
    let man = t.path().join("manifest.json");
    std::fs::write(&man, r#"{"outputs":[{"path":"slot.img","sha256":"00"}]}"#).unwrap();
    let add_with_manifest = || {
        fleet(
            &[
                &["image", "add", i, "--board", "b", "--version", "1.0.0", "--manifest", man.to_str().unwrap()][..],
                &rk,
            ]
            .concat(),
        )
    };
    let (c, _, _) = add_with_manifest();
    assert_eq!(c, 2);
    let sha = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"; // sha256("x")
    std::fs::write(
        &man,
        format!(r#"{{"outputs":[{{"path":"slot.img","sha256":"{sha}"}}]}}"#),
    )
    .unwrap();
    let (c, v, _) = add_with_manifest();
    assert_eq!(c, 0, "{v}");
    // Unknown flag: usage, 2, still one JSON object.
    let (c, v, _) = fleet(&["status", "--repo", r, "--bogus"]);
    assert_eq!((c, v["kind"].as_str()), (2, Some("usage")));
    // Missing keys: 3.
    let (c, _, _) = fleet(&["sign", "--repo", r, "--keys", "/nonexistent"]);
    assert_eq!(c, 3);
}

struct T {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    repo: String,
    keys: String,
}

impl T {
    fn new() -> T {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().to_path_buf();
        let t = T {
            repo: path.join("repo").to_str().unwrap().into(),
            keys: path.join("keys").to_str().unwrap().into(),
            path,
            _dir: d,
        };
        let (c, v, _) = t.run(&["repo", "init"]);
        assert_eq!(c, 0, "{v}");
        t
    }
    /// ARGS --repo R --keys K --json
    fn run(&self, args: &[&str]) -> (i32, Value, String) {
        fleet(&[args, &["--repo", &self.repo, "--keys", &self.keys]].concat())
    }
    fn ok(&self, args: &[&str]) -> Value {
        let (c, v, e) = self.run(args);
        assert_eq!(c, 0, "{args:?}: {v} {e}");
        v
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().into()
    }
    fn load(&self, ds: &str) -> Result<tough::Repository, palisade_fleet::FleetError> {
        let repo = Path::new(&self.repo);
        rt().block_on(palisade_fleet::verify_load(
            repo,
            &repo.join("metadata/1.root.json"),
            &self.path.join(ds),
        ))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A node identity: (id, public key base64).
fn node_identity() -> (String, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let k = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let pk = k.public_key().as_ref().to_vec();
    use base64::Engine;
    (
        palisade_update::fleet::node_id(&pk),
        base64::engine::general_purpose::STANDARD.encode(&pk),
    )
}

const NODE_TOML: &str = include_str!("../../configs/node.toml");

#[test]
fn trust_content_is_published_by_its_role_and_verifies() {
    let t = T::new();
    let (id, pk) = node_identity();
    let r = t.repo.clone();
    // Inventory (no keys needed): add, idempotent, wrong id refused.
    let add = |i: &str, k: &str| {
        fleet(&["node", "add", "--id", i, "--public-key", k, "--name", "edge-1", "--region", "eu", "--repo", &r])
    };
    assert_eq!(add(&id, &pk).1["result"], "added");
    assert_eq!(add(&id, &pk).1["result"], "unchanged");
    let (other, _) = node_identity();
    let (c, v, _) = add(&other, &pk);
    assert_eq!(c, 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&id), "{v}");
    let (c, v, _) = fleet(&["node", "list", "--repo", &r]);
    assert_eq!((c, v["nodes"][0]["id"].as_str()), (0, Some(id.as_str())));
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);

    // Config: validated, published, idempotent; bad configs name file:line.
    let good = t.file("node.toml", NODE_TOML.as_bytes());
    assert_eq!(t.ok(&["config", "set", "--node", &id, &good])["result"], "set");
    assert_eq!(t.ok(&["config", "set", "--node", &id, &good])["result"], "unchanged");
    let bad = t.file("bad.toml", NODE_TOML.replace("listen_port = 51820", "listen_port = \"x\"").as_bytes());
    let (c, v, _) = t.run(&["config", "set", "--node", &id, &bad]);
    assert_eq!(c, 2, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("bad.toml:") && e.contains("listen_port"), "{e}");
    let (unknown, _) = node_identity();
    let (c, v, _) = t.run(&["config", "set", "--node", &unknown, &good]);
    assert_eq!(c, 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("inventory"), "{v}");
    t.ok(&["config", "set", "--node", &unknown, &good, "--force"]);

    // Issuer and grants.
    let kid = t.ok(&["issuer", "init"])["kid"].as_str().unwrap().to_string();
    assert_eq!(t.ok(&["issuer", "init"])["result"], "unchanged");
    use base64::Engine;
    let peer = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    let g = t.ok(&["grant", "issue", "--node", &id, "--peer", &peer, "--address", "10.66.0.9/32",
        "--tier", "basic", "--expires", "7d", "--id", "g-1"]);
    assert_eq!((g["jti"].as_str(), g["result"].as_str()), (Some("g-1"), Some("added")));
    // Same id again with a new token: refused.
    let (c, v, _) = t.run(&["grant", "issue", "--node", &id, "--peer", &peer, "--address", "10.66.0.9/32", "--id", "g-1"]);
    assert_eq!(c, 2, "{v}");
    // Issue-only prints a JWT and publishes nothing; `grant add` publishes it.
    let before = t.ok(&["grant", "list", "--node", &id])["grants"].as_array().unwrap().len();
    let j = t.ok(&["grant", "issue", "--node", &id, "--peer", &peer, "--address", "10.66.0.10/32", "--issue-only"]);
    assert_eq!(t.ok(&["grant", "list", "--node", &id])["grants"].as_array().unwrap().len(), before);
    let jwt = t.file("g.jwt", j["jwt"].as_str().unwrap().as_bytes());
    assert_eq!(t.ok(&["grant", "add", "--node", &id, "--jwt", &jwt])["result"], "added");
    assert_eq!(t.ok(&["grant", "add", "--node", &id, "--jwt", &jwt])["result"], "unchanged");
    let l = t.ok(&["grant", "list", "--node", &id]);
    let gs = l["grants"].as_array().unwrap();
    assert_eq!(gs.len(), 2);
    assert_eq!((gs[0]["jti"].as_str(), gs[0]["tier"].as_str(), gs[0]["sub"].as_str()), (Some("g-1"), Some("basic"), Some(peer.as_str())));
    // A tampered token is refused.
    let tampered = t.file("t.jwt", format!("{}x", j["jwt"].as_str().unwrap()).as_bytes());
    assert_eq!(t.run(&["grant", "add", "--node", &id, "--jwt", &tampered]).0, 2);
    assert_eq!(t.ok(&["grant", "remove", "--node", &id, "--id", "g-1"])["result"], "removed");
    assert_eq!(t.ok(&["grant", "remove", "--node", &id, "--id", "g-1"])["result"], "unchanged");
    // Bad grant input: 2.
    for bad in [
        vec!["--peer", "short", "--address", "10.0.0.1/32"],
        vec!["--peer", &peer, "--address", "10.0.0.1"],
        vec!["--peer", &peer, "--address", "10.0.0.1/32", "--expires", "soon"],
    ] {
        let (c, v, _) = t.run(&[&["grant", "issue", "--node", &id][..], &bad].concat());
        assert_eq!(c, 2, "{bad:?}: {v}");
    }

    // Lists.
    t.ok(&["list", "set", "ads", &t.file("ads.txt", b"ads.example\ntracker.example\n")]);
    for (name, bytes) in [("ads", &b""[..]), ("ads", &b"a\0b"[..]), ("Bad_Name", &b"x\n"[..])] {
        let f = t.file("l.txt", bytes);
        let (c, v, _) = t.run(&["list", "set", name, &f]);
        assert_eq!(c, 2, "{name} {bytes:?}: {v}");
    }
    t.ok(&["list", "set", "gone", &t.file("g.txt", b"x.example\n")]);
    assert_eq!(t.ok(&["list", "remove", "gone"])["result"], "removed");
    assert_eq!(t.ok(&["list", "remove", "gone"])["result"], "unchanged");

    // Revocations with an on-call key set: revocations, snapshot, timestamp only.
    let oncall = t.path.join("oncall");
    std::fs::create_dir(&oncall).unwrap();
    for k in ["revocations", "snapshot", "timestamp"] {
        std::fs::copy(Path::new(&t.keys).join(format!("{k}.pk8")), oncall.join(format!("{k}.pk8"))).unwrap();
    }
    let oc = oncall.to_str().unwrap();
    let rev = |args: &[&str]| fleet(&[args, &["--repo", &r, "--keys", oc]].concat());
    let client = base64::engine::general_purpose::STANDARD.encode([6u8; 32]);
    let (c, v, _) = rev(&["revoke", "--node", &unknown, "--client", &client, "--grant", "g-9"]);
    assert_eq!((c, v["result"].as_str()), (0, Some("revoked")), "{v}");
    assert_eq!(rev(&["revoke", "--grant", "g-9"]).1["result"], "unchanged");
    assert_eq!(rev(&["unrevoke", "--grant", "g-9"]).1["result"], "unrevoked");
    assert_eq!(rev(&["revoke", "--client", "nope"]).0, 2);
    assert_eq!(rev(&["revoke"]).0, 2);
    // ... but that key set cannot ship an image or a config.
    let img = t.file("slot.img", &[1u8; 100]);
    let meta_before = snapshot_dir(&Path::new(&r).join("metadata"));
    let targets_before: Vec<_> = std::fs::read_dir(Path::new(&r).join("targets")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let (c, v, _) = rev(&["image", "add", &img, "--board", "b", "--version", "1.0.0"]);
    assert_eq!(c, 3, "{v}");
    assert_eq!(meta_before, snapshot_dir(&Path::new(&r).join("metadata")), "nothing written");
    let targets_after: Vec<_> = std::fs::read_dir(Path::new(&r).join("targets")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(targets_before.len(), targets_after.len(), "no target stored");
    assert!(v["error"].as_str().unwrap().contains("images.pk8"), "{v}");
    let changed = t.file("c2.toml", NODE_TOML.replace("edge-1", "edge-2").as_bytes());
    assert_eq!(rev(&["config", "set", "--node", &id, &changed]).0, 3);

    // A tough client verifies it all, each target under its own role.
    let repo = t.load("ds").unwrap();
    assert!(repo.targets().signed.targets.is_empty());
    let role = |r: &str| palisade_fleet::verified_role_targets(&repo, r).unwrap();
    assert_eq!(role("configs"), vec![
        format!("nodes/{}/config.toml", std::cmp::min(&id, &unknown)),
        format!("nodes/{id}/grants.json"),
        format!("nodes/{}/config.toml", std::cmp::max(&id, &unknown)),
    ].into_iter().fold(Vec::<String>::new(), |mut a, x| { a.push(x); a.sort(); a }));
    assert_eq!(role("grants"), vec!["jwks.json"]);
    assert_eq!(role("revocations"), vec!["revoked.json"]);
    assert_eq!(role("lists"), vec!["lists/ads.txt"]);
    assert!(role("images").is_empty() && role("nodelists").is_empty());
    rt().block_on(async {
        let get = |n: String| {
            let repo = &repo;
            async move { palisade_fleet::verified_target(repo, &n).await.unwrap().unwrap() }
        };
        assert_eq!(get(format!("nodes/{id}/config.toml")).await, NODE_TOML.as_bytes());
        let rv: palisade_update::fleet::Revocations = serde_json::from_slice(&get("revoked.json".into()).await).unwrap();
        assert_eq!((rv.nodes, rv.clients, rv.grants), (vec![unknown.clone()], vec![client.clone()], vec![]));
        let jwks: Value = serde_json::from_slice(&get("jwks.json".into()).await).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        assert_eq!((jwks["keys"][0]["crv"].as_str(), jwks["keys"][0]["alg"].as_str()), (Some("P-384"), Some("ES384")));
        let gf: palisade_update::fleet::GrantsFile = serde_json::from_slice(&get(format!("nodes/{id}/grants.json")).await).unwrap();
        assert_eq!(gf.grants.len(), 1);
        let c = palisade_fleet::trust::verify_grant(&gf.grants[0], &jwks).unwrap();
        assert_eq!(c.addresses, vec!["10.66.0.10/32"]);
    });

    // Issuer rotation: both keys published, then the old one retired.
    let rot = t.ok(&["issuer", "rotate"]);
    assert_eq!(rot["old_kid"], kid.as_str());
    let new_kid = rot["kid"].as_str().unwrap().to_string();
    assert_eq!(t.ok(&["grant", "list", "--node", &id])["grants"][0]["valid"], true, "old grants still verify");
    assert_eq!(t.run(&["issuer", "retire", "--kid", &new_kid]).0, 2, "current key cannot be retired");
    assert_eq!(t.ok(&["issuer", "retire", "--kid", &kid])["result"], "retired");
    assert_eq!(t.ok(&["grant", "list", "--node", &id])["grants"][0]["valid"], false);

    // Status lists every role with its version and target count.
    let (_, s, _) = fleet(&["status", "--repo", &r]);
    assert_eq!(s["delegated"]["lists"]["targets"], 1);
    assert_eq!(s["delegated"]["revocations"]["version"], 3); // init, revoke, unrevoke
    assert_eq!(s["delegated"]["images"]["version"], 1);
}

#[test]
fn sign_as_is_confined_to_the_owning_role() {
    let t = T::new();
    let (id, pk) = node_identity();
    fleet(&["node", "add", "--id", &id, "--public-key", &pk, "--name", "n", "--region", "eu", "--repo", &t.repo]);
    let good = t.file("node.toml", NODE_TOML.as_bytes());
    t.ok(&["config", "set", "--node", &id, &good]);
    let evil = t.file("evil.toml", b"[node]\nname = \"evil\"\n");
    let target = format!("nodes/{id}/config.toml");
    let v = t.ok(&["sign-as", "--role", "images", &target, &evil]);
    assert_eq!((v["owner"].as_str(), v["role"].as_str()), (Some("configs"), Some("images")));
    assert_eq!(v["withdrawn_from"], serde_json::json!(["configs"]));
    // tough loads it (the images delegation was widened by exactly this
    // name): the configs role does not list it, the images role does; only
    // the node's own role check stands in the way.
    let repo = t.load("ds").unwrap();
    let configs = palisade_fleet::verified_role_targets(&repo, "configs").unwrap();
    let images = palisade_fleet::verified_role_targets(&repo, "images").unwrap();
    assert!(!configs.contains(&target), "{configs:?}");
    assert_eq!(images, vec![target.clone()]);
    assert_eq!(
        rt().block_on(palisade_fleet::verified_target(&repo, &target)).unwrap().unwrap(),
        b"[node]\nname = \"evil\"\n"
    );
    // The same again: unchanged. Unknown role: 2.
    assert_eq!(t.ok(&["sign-as", "images", &target, &evil])["result"], "unchanged");
    assert_eq!(t.run(&["sign-as", "bogus", &target, &evil]).0, 2);
    // --remove takes it off and narrows the delegation back (idempotent).
    assert_eq!(t.ok(&["sign-as", "images", &target, "--remove"])["result"], "removed");
    assert_eq!(t.ok(&["sign-as", "--role", "images", &target, "--remove"])["result"], "unchanged");
    let repo = t.load("ds2").unwrap();
    assert!(palisade_fleet::verified_role_targets(&repo, "images").unwrap().is_empty());
    let d = repo.targets().signed.delegations.as_ref().unwrap();
    let img = d.roles.iter().find(|r| r.name == "images").unwrap();
    let tough::schema::PathSet::Paths(p) = &img.paths else { panic!() };
    assert_eq!(p.iter().map(|x| x.value()).collect::<Vec<_>>(), vec!["images/*", "rollout.json"]);
    // The owner publishes again; a mirror serves it under tough's name.
    t.ok(&["config", "set", "--node", &id, &good]);
    let f = palisade_fleet::Fleet { repo: t.repo.clone().into(), keys: t.keys.clone().into() };
    let p = f.published_target_path(&target).unwrap().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), NODE_TOML.as_bytes());
    assert!(p.starts_with(Path::new(&t.repo).join("targets")));
    assert_eq!(f.published_target_path("nodes/0000000000000000/config.toml").unwrap(), None);
    // Grants need no inventory entry (a node enrolled from a config drive
    // bundle made without its key).
    let (other, _) = node_identity();
    t.ok(&["issuer", "init"]);
    use base64::Engine;
    let peer = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
    t.ok(&["grant", "issue", "--node", &other, "--peer", &peer, "--address", "10.66.0.5/32", "--expires", "25s"]);
    // Read-only commands accept --keys (test helpers always pass it).
    t.ok(&["status"]);
    t.ok(&["node", "list"]);
    t.ok(&["grant", "list", "--node", &other]);
}

#[test]
fn key_rotation_is_followed_from_the_first_root() {
    let t = T::new();
    let img = t.file("slot.img", &[3u8; 1000]);
    t.ok(&["image", "add", &img, "--board", "b", "--version", "1.0.0"]);
    let keys = Path::new(&t.keys);
    let old_ts = std::fs::read(keys.join("timestamp.pk8")).unwrap();
    let mut root_v = 1;
    for (i, role) in ["images", "timestamp", "snapshot", "targets", "configs"].iter().enumerate() {
        let before = std::fs::read(keys.join(format!("{role}.pk8"))).unwrap();
        let v = t.ok(&["keys", "rotate", role]);
        assert_eq!(v["result"], "rotated");
        let after = std::fs::read(keys.join(format!("{role}.pk8"))).unwrap();
        assert_ne!(before, after, "{role}");
        let kept = v["old_key_file"].as_str().unwrap();
        assert_eq!(std::fs::read(kept).unwrap(), before, "{role}: old key kept");
        if !["images", "configs"].contains(role) {
            root_v += 1;
        }
        assert_eq!(v["root_version"], root_v, "{role}");
        // A client holding only 1.root.json follows the chain and verifies.
        let repo = t.load(&format!("ds{i}")).unwrap();
        assert_eq!(repo.root().signed.version.get(), root_v);
        assert_eq!(
            rt().block_on(palisade_fleet::verified_target(&repo, "images/b/1.0.0.img")).unwrap().unwrap(),
            vec![3u8; 1000]
        );
    }
    // Publishing still works with the new keys.
    t.ok(&["image", "add", &t.file("s2.img", &[4u8; 10]), "--board", "b", "--version", "1.1.0"]);
    assert!(t.load("ds-new").is_ok());
    // The old images key no longer signs for images.
    let kept = keys.join("images.pk8.keep");
    std::fs::copy(keys.join("images.pk8"), &kept).unwrap();
    let olds: Vec<_> = std::fs::read_dir(keys).unwrap().filter_map(|e| {
        let n = e.unwrap().file_name().into_string().unwrap();
        n.starts_with("images.pk8.old-").then_some(n)
    }).collect();
    std::fs::copy(keys.join(&olds[0]), keys.join("images.pk8")).unwrap();
    let (c, v, _) = t.run(&["image", "add", &t.file("s3.img", &[5u8; 10]), "--board", "b", "--version", "1.2.0"]);
    assert_eq!(c, 3, "{v}");
    std::fs::copy(&kept, keys.join("images.pk8")).unwrap();
    // images metadata signed with the old images key (under the old
    // delegation), with a valid snapshot and timestamp over it: refused.
    rt().block_on(async {
        use sha2::Digest;
        use tough::editor::signed::SignedRole;
        use tough::key_source::{KeySource, LocalKeySource};
        use tough::schema::{
            DelegatedTargets, Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Targets,
            Timestamp,
        };
        let m = Path::new(&t.repo).join("metadata");
        let rd = |n: String| std::fs::read(m.join(n)).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = |p: std::path::PathBuf| -> Vec<Box<dyn KeySource>> { vec![Box::new(LocalKeySource { path: p })] };
        let meta = |b: &[u8], v| Metafile {
            length: Some(b.len() as u64),
            hashes: Some(Hashes { sha256: sha2::Sha256::digest(b).to_vec().into(), _extra: Default::default() }),
            version: v,
            _extra: Default::default(),
        };
        let old_top: Signed<Targets> = serde_json::from_slice(&rd("1.targets.json".into())).unwrap();
        let root: Signed<Root> = serde_json::from_slice(&rd("root.json".into())).unwrap();
        let ts: Signed<Timestamp> = serde_json::from_slice(&rd("timestamp.json".into())).unwrap();
        let sv = ts.signed.meta["snapshot.json"].version;
        let snap: Signed<Snapshot> = serde_json::from_slice(&rd(format!("{sv}.snapshot.json"))).unwrap();
        let iv = snap.signed.meta["images.json"].version;
        let imgs: Signed<Targets> = serde_json::from_slice(&rd(format!("{iv}.images.json"))).unwrap();
        let mut it = imgs.signed.clone();
        it.version = iv.checked_add(1).unwrap();
        let forged = SignedRole::new(
            DelegatedTargets { name: "images".into(), targets: it },
            &KeyHolder::Delegations(old_top.signed.delegations.clone().unwrap()),
            &key(keys.join(&olds[0])),
            &rng,
        )
        .await
        .unwrap();
        std::fs::write(m.join(format!("{}.images.json", iv.get() + 1)), forged.buffer()).unwrap();
        let mut sn = snap.signed.clone();
        sn.version = sn.version.checked_add(10).unwrap();
        sn.meta.insert("images.json".into(), meta(forged.buffer(), iv.checked_add(1).unwrap()));
        let holder = KeyHolder::Root(root.signed.clone());
        let sn = SignedRole::new(sn, &holder, &key(keys.join("snapshot.pk8")), &rng).await.unwrap();
        std::fs::write(m.join(format!("{}.snapshot.json", sn.signed().signed.version)), sn.buffer()).unwrap();
        let mut tt = ts.signed.clone();
        tt.version = sn.signed().signed.version;
        tt.meta.insert("snapshot.json".into(), meta(sn.buffer(), sn.signed().signed.version));
        let tt = SignedRole::new(tt, &holder, &key(keys.join("timestamp.pk8")), &rng).await.unwrap();
        std::fs::write(m.join("timestamp.json"), tt.buffer()).unwrap();
    });
    let e = t.load("ds-forged-images").unwrap_err();
    assert!(e.to_string().contains("Signature threshold"), "{e}");
    // `sign` re-signs it all with the current keys: valid again.
    t.ok(&["sign"]);
    t.load("ds-resigned").unwrap();
    // A timestamp signed with the old timestamp key is refused by a client.
    rt().block_on(async {
        use tough::editor::signed::SignedRole;
        use tough::key_source::LocalKeySource;
        use tough::schema::{KeyHolder, Root, Signed, Timestamp};
        let m = Path::new(&t.repo).join("metadata");
        let old_root: Signed<Root> = serde_json::from_slice(&std::fs::read(m.join("1.root.json")).unwrap()).unwrap();
        let cur: Signed<Timestamp> = serde_json::from_slice(&std::fs::read(m.join("timestamp.json")).unwrap()).unwrap();
        let mut ts = cur.signed.clone();
        ts.version = ts.version.checked_add(1).unwrap();
        let oldk = t.path.join("old-ts.pk8");
        std::fs::write(&oldk, &old_ts).unwrap();
        let ks: Vec<Box<dyn tough::key_source::KeySource>> = vec![Box::new(LocalKeySource { path: oldk })];
        let forged = SignedRole::new(ts, &KeyHolder::Root(old_root.signed), &ks, &aws_lc_rs::rand::SystemRandom::new())
            .await
            .unwrap();
        std::fs::write(m.join("timestamp.json"), forged.buffer()).unwrap();
    });
    let e = t.load("ds-forged").unwrap_err();
    assert!(e.to_string().contains("Signature threshold"), "{e}");
    // Unknown role: 2.
    assert_eq!(t.run(&["keys", "rotate", "root"]).0, 2);
}

#[test]
fn bulk_grants_for_load_tests() {
    let t = T::new();
    let (id, pk) = node_identity();
    fleet(&["node", "add", "--id", &id, "--public-key", &pk, "--name", "n", "--region", "eu", "--repo", &t.repo]);
    t.ok(&["issuer", "init"]);
    let out = t.path.join("clients.txt");
    let start = std::time::Instant::now();
    let v = t.ok(&["grant", "bulk", "--node", &id, "--count", "10000", "--prefix", "10.64.0.0/16",
        "--expires", "1d", "--out-keys", out.to_str().unwrap()]);
    let took = start.elapsed();
    assert_eq!(v["total"], 10000, "{v}");
    assert!(took < Duration::from_secs(120), "{took:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10000);
    // Each private key derives its public key; addresses are distinct.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut addrs = std::collections::BTreeSet::new();
    for l in lines.iter().step_by(997) {
        let f: Vec<&str> = l.split(' ').collect();
        let sk: [u8; 32] = b64.decode(f[1]).unwrap().try_into().unwrap();
        let pk = curve25519_dalek::MontgomeryPoint::mul_base_clamped(sk);
        assert_eq!(b64.encode(pk.as_bytes()), f[2]);
        assert!(addrs.insert(f[3].to_string()));
    }
    assert_eq!(lines[0].split(' ').nth(3), Some("10.64.0.2/32"));
    // Too many for the prefix: 2, nothing written.
    let (c, v, _) = t.run(&["grant", "bulk", "--node", &id, "--count", "10", "--prefix", "10.65.0.0/29",
        "--out-keys", t.path.join("x").to_str().unwrap()]);
    assert_eq!(c, 2, "{v}");
    assert!(!t.path.join("x").exists());
    eprintln!("10000 grants in {took:?}");
}

#[test]
fn enrol_bundle_for_a_config_drive() {
    let t = T::new();
    let (id, pk) = node_identity();
    let out = t.path.join("enrol.json");
    let o = out.to_str().unwrap();
    let base = [
        "enrol", "--node-name", "edge-3", "--region", "eu", "--repository", "https://u.example.org/r/",
        "--repository", "https://mirror.example.org/r/", "--mesh", "100.100.0.0/16", "--repo", &t.repo,
    ];
    let (c, v, _) = fleet(&[&base[..], &["--bundle-out", o, "--node-id", &id, "--public-key", &pk, "--keys", &t.keys]].concat());
    assert_eq!(c, 0, "{v}");
    let b: palisade_update::fleet::EnrolmentBundle = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(b.node_id, id);
    assert_eq!(b.repositories.len(), 2);
    let root: Value = serde_json::from_slice(&std::fs::read(Path::new(&t.repo).join("metadata/1.root.json")).unwrap()).unwrap();
    assert_eq!(b.fleet_root, root);
    let (_, l, _) = fleet(&["node", "list", "--repo", &t.repo]);
    assert_eq!(l["nodes"][0]["name"], "edge-3");
    // Bad input: 2, nothing written.
    std::fs::remove_file(&out).unwrap();
    for bad in [
        vec!["--node-id", "XYZ"],
        vec!["--node-id", &id, "--mesh", "not-a-cidr"],
        vec!["--node-id", &id, "--repository", "ftp://x/"],
        vec!["--node-id", &id, "--public-key", "AAAA"],
    ] {
        let (c, v, _) = fleet(&[&base[..], &["--bundle-out", o], &bad].concat());
        assert_eq!(c, 2, "{bad:?}: {v}");
        assert!(!out.exists(), "{bad:?}");
    }
    // A serial port that does not exist: 2, naming it.
    let (c, v, _) = fleet(&[&base[..], &["--serial", "/nonexistent/ttyS9"]].concat());
    assert_eq!(c, 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/ttyS9"), "{v}");
}

/// Mesh anchors (docs/metrics.md): init publishes the bundle under the
/// configs role, a second anchor joins it, retire takes one off and
/// destroys its key, the last one stays; certificates chain to their anchor.
#[test]
fn mesh_anchors_are_published_rotated_and_issue_certificates() {
    let t = T::new();
    assert_eq!(t.ok(&["mesh", "anchor", "init", "a1"])["anchors"], serde_json::json!(["a1"]));
    assert_eq!(t.ok(&["mesh", "anchor", "init", "a2"])["anchors"], serde_json::json!(["a1", "a2"]));
    // Again: nothing new to publish.
    assert_eq!(t.ok(&["mesh", "anchor", "init", "a2"])["configs_version"], Value::Null);
    assert_eq!(t.run(&["mesh", "anchor", "init", "Bad_Name"]).0, 2);
    let bundle = |ds: &str| {
        let repo = t.load(ds).unwrap();
        assert!(palisade_fleet::verified_role_targets(&repo, "configs").unwrap().contains(&"mesh/anchors.pem".to_string()));
        rt().block_on(palisade_fleet::verified_target(&repo, "mesh/anchors.pem")).unwrap().unwrap()
    };
    assert_eq!(palisade_update::mesh::parse_anchors(&bundle("ds1")).unwrap().len(), 2);

    // A certificate from a2: 1 h, client auth, chained to a2's certificate.
    let out = t.path.join("certs");
    let o = out.to_str().unwrap();
    let c = t.ok(&["mesh", "cert", "issue", "--anchor", "a2", "--name", "prom", "--expires", "1h", "--out", o]);
    assert_eq!(c["lifetime_secs"], 3600);
    let pem = std::fs::read(out.join("prom.crt.pem")).unwrap();
    let der = palisade_update::mesh::first_cert(&pem).unwrap();
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(rustls_roots(&bundle("ds2"))),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    v.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now()).expect("chains to a published anchor");
    assert_eq!(t.run(&["mesh", "cert", "issue", "--anchor", "nope", "--name", "x", "--out", o]).0, 2);
    assert_eq!(t.run(&["mesh", "cert", "issue", "--anchor", "a2", "--name", "x", "--expires", "soon", "--out", o]).0, 2);

    // Retire a1: off the bundle, key gone; a2 is the last and stays.
    assert_eq!(t.ok(&["mesh", "anchor", "retire", "a1"])["anchors"], serde_json::json!(["a2"]));
    assert!(!Path::new(&t.keys).join("mesh-anchor-a1.key.pem").exists());
    assert_eq!(palisade_update::mesh::parse_anchors(&bundle("ds3")).unwrap().len(), 1);
    let (c, v, _) = t.run(&["mesh", "anchor", "retire", "a2"]);
    assert_eq!(c, 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("only anchor"), "{v}");
    assert_eq!(t.run(&["mesh", "cert", "issue", "--anchor", "a1", "--name", "x", "--out", o]).0, 2, "retired anchors issue nothing");
    let l = t.ok(&["mesh", "anchor", "list"]);
    assert_eq!(l["anchors"].as_array().unwrap().len(), 1);
}

fn rustls_roots(pem: &[u8]) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in palisade_update::mesh::parse_anchors(pem).unwrap() {
        r.add(c).unwrap();
    }
    r
}
