//! Updates through the real palisaded in the bed's node namespace: a
//! repository published with `palisade-fleet`, the node's slots as files and
//! its ESP as a directory (`--update-slots`, `--esp-dir`), `palisade update
//! apply` through the CLI. Every refusal of issue "signed A/B updates" is
//! provoked with a real repository and checked to have written nothing: the
//! inactive slot's bytes and the ESP tree hash the same before and after. The
//! same code paths write the real slot partitions under QEMU
//! (tests/tests/e2e_update.rs).

use palisade_tests::palisade::{NodeOptions, Palisade};
use palisade_tests::update::{booted_esp, fake_slot_image, file_digest, node_update_args, tree_digest, Fleet};
use palisade_tests::{Bins, TestBed};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn bins() -> Bins {
    Bins { testhost: env!("CARGO_BIN_EXE_pal-testhost").into() }
}

const BOARD: &str = "qemu-x86_64";
const SLOT_BYTES: u64 = 8 << 20;

/// The node's update layout on files: slot A (the running one), slot B, the
/// ESP, os-release (0.1.0) and the board file.
struct Layout {
    slot_a: PathBuf,
    slot_b: PathBuf,
    esp: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        let (slot_a, slot_b) = (dir.join("slot-a.img"), dir.join("slot-b.img"));
        for (p, byte) in [(&slot_a, 0xaa_u8), (&slot_b, 0xbb)] {
            std::fs::write(p, vec![byte; SLOT_BYTES as usize]).unwrap();
        }
        std::fs::write(dir.join("os-release"), "NAME=Palisade\nVERSION_ID=0.1.0\n").unwrap();
        let esp = booted_esp(dir).unwrap();
        Layout { slot_a, slot_b, esp }
    }

    fn args(&self, dir: &Path) -> Vec<String> {
        node_update_args(&self.slot_a, &self.slot_b, &self.esp, &dir.join("os-release"))
    }

    /// What must not change when an update is refused.
    fn fingerprint(&self) -> (String, String, String) {
        (file_digest(&self.slot_a).unwrap(), file_digest(&self.slot_b).unwrap(), tree_digest(&self.esp).unwrap())
    }
}

fn status(p: &Palisade, bed: &TestBed) -> Value {
    serde_json::from_str(&p.cli_ok(bed, &["update", "status", "--json"]).unwrap()).unwrap()
}

/// `palisade update apply SOURCE --no-reboot`: the exit code and the refusal kind.
fn apply(p: &Palisade, bed: &TestBed, source: &str) -> (Option<i32>, String, String) {
    let o = p.cli(bed, &["update", "apply", source, "--no-reboot"]).unwrap();
    let st = status(p, bed);
    let kind = st["journal"]["last_refusal"]["kind"].as_str().unwrap_or("").to_string();
    (o.status.code(), kind, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Rewrites a JSON file in place (metadata tampering without re-signing).
fn edit_json(p: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// The file under `dir` whose name ends with `suffix` (consistent snapshots
/// prefix target files with their hash, metadata with its version); of
/// several, the highest version.
fn find_file(dir: &Path, suffix: &str) -> PathBuf {
    let mut found = Vec::new();
    for e in walk(dir) {
        if e.to_string_lossy().ends_with(suffix) {
            found.push(e);
        }
    }
    let version = |p: &PathBuf| -> u64 {
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        name.split('.').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    found.into_iter().max_by_key(version).unwrap_or_else(|| panic!("no file ending {suffix} under {}", dir.display()))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn refused_updates_write_nothing_and_a_good_one_writes_slot_b_and_its_entry() {
    let mut bed = TestBed::new(1, bins()).expect("test bed");
    let dir = bed.dir.path().join("upd");
    std::fs::create_dir_all(&dir).unwrap();
    let layout = Layout::new(&dir);
    let fleet = Fleet::init(&dir.join("fleet")).expect("repo init");
    let good = fake_slot_image(&dir, "0.2.0", 1 << 20).unwrap();
    let old = fake_slot_image(&dir, "0.0.5", 1 << 20).unwrap();
    fleet.add_image(&good, BOARD, "0.2.0").unwrap();
    fleet.rollout_now("0.2.0").unwrap();

    // Variants of the repository, each wrong in one way.
    let variants = dir.join("variants");
    std::fs::create_dir_all(&variants).unwrap();
    let copy = |name: &str| fleet.snapshot(&variants.join(name)).unwrap();

    let wrong_key = {
        let other = Fleet::init(&dir.join("other-fleet")).unwrap();
        other.add_image(&good, BOARD, "0.2.0").unwrap();
        other.repo.clone()
    };
    let unsigned = copy("unsigned");
    // A target added to the images role's metadata without re-signing it.
    let targets = find_file(&unsigned.join("metadata"), ".images.json");
    edit_json(&targets, |v| {
        let t = v["signed"]["targets"].as_object_mut().unwrap();
        let (_, first) = t.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
        t.insert(format!("images/{BOARD}/9.9.9.img"), first);
    });
    let hash_mismatch = copy("hash-mismatch");
    let img = find_file(&hash_mismatch.join("targets"), "0.2.0.img");
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let truncated = copy("truncated");
    let img = find_file(&truncated.join("targets"), "0.2.0.img");
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(len / 2).unwrap();
    // A mirror whose timestamp was re-signed with an expiry in the past.
    let expired = {
        let f = Fleet { repo: variants.join("expired"), ..fleet.clone() };
        fleet.snapshot(&f.repo).unwrap();
        f.fleet(&["refresh", "--timestamp-expires-at", "2020-01-01T00:00:00Z"]).unwrap();
        f.repo.clone()
    };
    let too_large = {
        let f = Fleet { repo: variants.join("too-large"), ..fleet.clone() };
        fleet.snapshot(&f.repo).unwrap();
        let big = fake_slot_image(&dir, "0.3.0", (SLOT_BYTES + (1 << 20)) as usize).unwrap();
        f.add_image(&big, BOARD, "0.3.0").unwrap();
        f.repo.clone()
    };
    let downgrade = {
        let f = Fleet { repo: variants.join("downgrade"), ..fleet.clone() };
        fleet.snapshot(&f.repo).unwrap();
        // It also has 0.2.0: the test asks for 0.0.5 by version.
        f.add_image(&old, BOARD, "0.0.5").unwrap();
        f.repo.clone()
    };
    let stray = dir.join("not-a-target.img");
    std::fs::write(&stray, b"not an image of this fleet").unwrap();

    let config_extra = format!("\n[update]\nrepository = \"{}\"\nauto = false\npoll_secs = 3600\n", url(&fleet.repo));
    let opts = NodeOptions { extra_args: layout.args(&dir), extra_toml: config_extra, ..Default::default() };
    std::fs::create_dir_all(bed.dir.path().join("state")).unwrap();
    std::fs::copy(fleet.root(), bed.dir.path().join("state/fleet-root.json")).unwrap();
    let p = Palisade::start(&mut bed, &opts).expect("palisaded");

    let before = layout.fingerprint();
    let st = status(&p, &bed);
    assert_eq!(st["installed"], "0.1.0", "{st}");
    assert_eq!(st["booted_slot"], "a", "{st}");

    // In order of metadata version: the copies at the main repository's
    // version first, then the ones published one step further (rollback
    // protection remembers the highest version seen).
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong key", url(&wrong_key), "bad-signature"),
        ("images role metadata altered, not re-signed", url(&unsigned), "mix-and-match"),
        ("hash mismatch", url(&hash_mismatch), "hash-mismatch"),
        ("truncated", url(&truncated), "truncated"),
        ("not a signed target", stray.display().to_string(), "not-a-target"),
        ("expired timestamp", url(&expired), "expired"),
        ("too large for the slot", url(&too_large), "too-large"),
    ];
    for (what, source, kind) in &cases {
        let (code, got, err) = apply(&p, &bed, source);
        assert_eq!(code, Some(6), "{what}: exit code; stderr: {err}");
        assert_eq!(&got, kind, "{what}: refusal kind; stderr: {err}");
        assert!(err.contains("update refused"), "{what}: {err}");
        assert_eq!(layout.fingerprint(), before, "{what}: something was written");
        println!("refused as expected: {what}: {}", err.trim());
    }
    // A downgrade, asked for by version.
    let o = p.cli(&bed, &["update", "apply", &url(&downgrade), "--version", "0.0.5", "--no-reboot"]).unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status(&p, &bed)["journal"]["last_refusal"]["kind"], "downgrade");
    assert_eq!(layout.fingerprint(), before, "downgrade: something was written");


    // Metadata rollback: the node sees a newer publication (a check of its
    // configured repository stores that metadata), then is offered an old copy.
    let stale = copy("stale");
    let newer = fake_slot_image(&dir, "0.2.1", 1 << 20).unwrap();
    fleet.add_image(&newer, BOARD, "0.2.1").unwrap();
    // Past the versions the variants above were published at.
    fleet.fleet(&["sign"]).unwrap();
    p.cli_ok(&bed, &["update", "check"]).unwrap();
    palisade_tests::wait_until(Duration::from_secs(20), "a check of the newer repository", || {
        let st = status(&p, &bed);
        (st["last_check"]["ok"] == true && st["last_check"]["images"].to_string().contains("0.2.1")).then_some(())
    })
    .unwrap();
    let (code, kind, err) = apply(&p, &bed, &url(&stale));
    assert_eq!((code, kind.as_str()), (Some(6), "rollback"), "{err}");
    assert_eq!(layout.fingerprint(), before, "rollback: something was written");

    // The good one: slot B gets exactly the image, and an entry with boot counting.
    let o = p.cli(&bed, &["update", "apply", &url(&fleet.repo), "--version", "0.2.0", "--no-reboot"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = status(&p, &bed);
    let phase = &st["journal"]["phase"];
    assert_eq!((phase["state"].as_str(), phase["version"].as_str(), phase["slot"].as_str()), (Some("switched"), Some("0.2.0"), Some("b")), "{st}");
    let img = std::fs::read(&good).unwrap();
    let slot_b = std::fs::read(&layout.slot_b).unwrap();
    assert_eq!(&slot_b[..img.len()], &img[..], "slot B holds the image");
    assert_eq!(file_digest(&layout.slot_a).unwrap(), before.0, "slot A untouched");
    let entries: Vec<String> = std::fs::read_dir(layout.esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.contains(&"palisade-b+3.conf".to_string()), "{entries:?}");
    assert!(entries.contains(&"palisade-a.conf".to_string()), "{entries:?}");
    let entry = std::fs::read_to_string(layout.esp.join("loader/entries/palisade-b+3.conf")).unwrap();
    assert!(entry.contains("title Palisade 0.2.0 (slot B)") && entry.contains("version 3"), "{entry}");
    assert!(entry.contains("palisade.root=palisade-b palisade.slot=b"), "{entry}");
    let kdir = entry.lines().find_map(|l| l.strip_prefix("linux /")).unwrap().trim_end_matches("/vmlinuz").to_string();
    assert!(layout.esp.join(&kdir).join("vmlinuz").is_file() && layout.esp.join(&kdir).join("initrd.img").is_file());
    // A second apply while the first waits for its reboot is refused, not queued.
    let o = p.cli(&bed, &["update", "apply", &url(&fleet.repo), "--no-reboot"]).unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The repository cannot be reached (nothing listens on its port): the node
/// keeps serving its client, reports `unreachable`, and retries after 5, then
/// 10 s (the backoff), not at the poll interval and not in a tight loop.
#[test]
#[ignore = "root: run by tests/run.sh"]
fn unreachable_repository_is_retried_with_backoff_while_the_node_serves() {
    let mut bed = TestBed::new(1, bins()).expect("test bed");
    let dir = bed.dir.path().join("upd");
    std::fs::create_dir_all(&dir).unwrap();
    let layout = Layout::new(&dir);
    let fleet = Fleet::init(&dir.join("fleet")).expect("repo init");
    std::fs::create_dir_all(bed.dir.path().join("state")).unwrap();
    std::fs::copy(fleet.root(), bed.dir.path().join("state/fleet-root.json")).unwrap();
    // Port 9 of the web host: the host answers with a TCP reset.
    let config_extra = format!("\n[update]\nrepository = \"http://{}:9\"\npoll_secs = 300\n", palisade_tests::addr::WEB_V4);
    let opts = NodeOptions { extra_args: layout.args(&dir), extra_toml: config_extra, ..Default::default() };
    let p = Palisade::start(&mut bed, &opts).expect("palisaded");

    // Three failed checks, and the gaps between them.
    let mut seen: Vec<(String, String)> = Vec::new();
    palisade_tests::wait_until(Duration::from_secs(60), "three failed checks", || {
        let st = status(&p, &bed);
        let c = &st["last_check"];
        if c["ok"] == false {
            let at = c["at"].as_str().unwrap_or_default().to_string();
            if seen.last().map(|(a, _)| a != &at).unwrap_or(true) {
                seen.push((at, st["next_check"].as_str().unwrap_or_default().to_string()));
            }
        }
        (seen.len() >= 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {seen:?}"));
    let st = status(&p, &bed);
    assert_eq!(st["last_check"]["kind"], "unreachable", "{st}");
    assert_eq!(st["journal"]["last_refusal"]["kind"], "unreachable", "{st}");
    let ts = |s: &str| chrono_secs(s);
    let gaps: Vec<f64> = seen.windows(2).map(|w| ts(&w[1].0) - ts(&w[0].0)).collect();
    println!("failed checks at {seen:?}, gaps {gaps:?} s");
    assert!((4.0..8.0).contains(&gaps[0]), "first retry after about 5 s: {gaps:?}");
    assert!((9.0..14.0).contains(&gaps[1]), "second retry after about 10 s: {gaps:?}");
    // Meanwhile the client's traffic flows through the node.
    let c = &bed.clients[0];
    let o = c
        .ns
        .enter(|| palisade_tests::probe::udp_exchange(None, palisade_tests::sa(palisade_tests::addr::WEB_V4, palisade_tests::addr::ECHO_UDP), b"x", Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(o, palisade_tests::Outcome::Answered(_)), "{o:?}");
}

/// Seconds since the epoch of an RFC 3339 time as palisaded prints it.
fn chrono_secs(s: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_micros() as f64 / 1e6).unwrap_or_else(|e| panic!("{s}: {e}"))
}
