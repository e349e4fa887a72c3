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
