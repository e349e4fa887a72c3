//! The image build is reproducible: two builds of the same inputs, into different
//! output (and so work) directories, run from different current directories, give
//! the same bytes for every output file (raw disk, qcow2, manifest.json,
//! sbom.spdx.json) and the same symlink. On a difference the test names the file
//! and the first differing offset (for the raw disk, the partition it falls in;
//! for JSON, the line) and keeps both trees for inspection.
//!
//! Cheap by design: both builds share the .deb cache (`$PALISADE_DEB_CACHE`, default
//! `out/debs`, the one tests/run.sh fills) and the node binaries. If
//! `target/<triple>/node/` already holds palisaded and palisade (tests/run.sh's image
//! build leaves them there) both builds take them with `--bin-dir`; otherwise the
//! first build compiles them and the second reuses them.
//! Run by tests/run.sh (tier 3, `--test 'image_*'`); alone:
//! `cargo test -p palisade-tests --locked --test image_repro -- --ignored --nocapture`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use palisade_tests::guest::{target_dir, workspace};

use anyhow::{bail, Context, Result};

/// The board built, and its node binaries' target.
const BOARD: &str = "qemu-x86_64";
const RUST_TARGET: &str = "x86_64-unknown-linux-gnu";



fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    c.current_dir(workspace());
    c
}

/// Builds the image into `out`, running the builder from `cwd`.
fn build(builder: &Path, out: &Path, cwd: &Path, cache: &Path, bins: Option<&Path>) -> Result<()> {
    let mut c = Command::new(builder);
    c.args(["build", "--board", BOARD, "--workspace"])
        .arg(workspace())
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .current_dir(cwd);
    if let Some(b) = bins {
        c.arg("--bin-dir").arg(b);
    }
    let t = Instant::now();
    let st = c.status().with_context(|| format!("{c:?}"))?;
    if !st.success() {
        bail!("image build into {} failed: {st}", out.display());
    }
    eprintln!(
        "image_repro: built {} in {:.1} s",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Name -> regular file or symlink in an output directory (the work dir is gone).
fn listing(dir: &Path) -> Result<Vec<(String, Option<PathBuf>)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type()?;
        if ft.is_symlink() {
            v.push((name, Some(fs::read_link(e.path())?)));
        } else if ft.is_file() {
            v.push((name, None));
        } else {
            bail!("unexpected {} in {}", name, dir.display());
        }
    }
    v.sort();
    Ok(v)
}

/// The first offset at which two files differ (a length difference counts at the
/// shorter length), or None if they are equal.
fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(off + i as u64));
        }
        if na != nb {
            return Ok(Some(off + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += na as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Where in the disk an offset is, from the manifest's partition table.
fn partition_at(manifest: &Path, off: u64) -> String {
    let parts = fs::read(manifest)
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v["partitions"].as_array().cloned())
        .unwrap_or_default();
    for p in parts {
        let (o, s) = (
            p["offset"].as_u64().unwrap_or(0),
            p["size"].as_u64().unwrap_or(0),
        );
        if off >= o && off < o + s {
            return format!(
                "partition `{}` at +{}",
                p["name"].as_str().unwrap_or("?"),
                off - o
            );
        }
    }
    "outside the partitions (GPT headers or padding)".into()
}

/// A readable account of where two files differ.
fn describe(name: &str, a: &Path, b: &Path, off: u64, manifest: &Path) -> String {
    let mut s = format!("{name} differs at byte {off} (0x{off:x})");
    if name.ends_with(".raw") {
        s.push_str(&format!(": {}", partition_at(manifest, off)));
    } else if name.ends_with(".json") {
        let (ta, tb) = (
            fs::read_to_string(a).unwrap_or_default(),
            fs::read_to_string(b).unwrap_or_default(),
        );
        if let Some((i, (la, lb))) = ta
            .lines()
            .zip(tb.lines())
            .enumerate()
            .find(|(_, (x, y))| x != y)
        {
            s.push_str(&format!(
                ":\n  line {}: {la}\n  line {}: {lb}",
                i + 1,
                i + 1
            ));
        }
    }
    s
}

#[test]
#[ignore = "root: run by tests/run.sh"]
fn two_builds_of_the_same_inputs_are_identical() -> Result<()> {
    let t0 = Instant::now();
    let st = cargo()
        .args(["build", "-q", "--locked", "-p", "palisade-image"])
        .status()?;
    if !st.success() {
        bail!("cargo build -p palisade-image failed");
    }
    let builder = target_dir().join("debug/palisade-image");
    let cache = std::env::var_os("PALISADE_DEB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("out/debs"));
    fs::create_dir_all(&cache)?;
    let node = target_dir().join(RUST_TARGET).join("node");
    let prebuilt = ["palisaded", "palisade"]
        .iter()
        .all(|b| node.join(b).is_file());

    // Both trees under target/ (same filesystem as the build, kept on failure).
    fs::create_dir_all(target_dir())?;
    let tmp = tempfile::Builder::new()
        .prefix("image-repro-")
        .tempdir_in(target_dir())?;
    let (a, b) = (tmp.path().join("a/out"), tmp.path().join("b/elsewhere/out"));
    let (cwd_a, cwd_b) = (tmp.path().join("a"), tmp.path().join("b/elsewhere"));
    fs::create_dir_all(&cwd_a)?;
    fs::create_dir_all(&cwd_b)?;

    build(
        &builder,
        &a,
        &cwd_a,
        &cache,
        prebuilt.then_some(node.as_path()),
    )?;
    build(&builder, &b, &cwd_b, &cache, Some(&node))?;

    let (la, lb) = (listing(&a)?, listing(&b)?);
    let mut problems = Vec::new();
    if la != lb {
        problems.push(format!(
            "the output directories differ:\n  {la:?}\n  {lb:?}"
        ));
    }
    for required in [
        format!("palisade-{BOARD}.raw"),
        "manifest.json".into(),
        "sbom.spdx.json".into(),
    ] {
        if !la.iter().any(|(n, _)| *n == required) {
            problems.push(format!("{required} missing from {}", a.display()));
        }
    }
    let mut compared = Vec::new();
    for (name, link) in &la {
        if link.is_some() || !lb.iter().any(|(n, l)| n == name && l.is_none()) {
            continue;
        }
        if let Some(off) = first_difference(&a.join(name), &b.join(name))? {
            problems.push(describe(
                name,
                &a.join(name),
                &b.join(name),
                off,
                &a.join("manifest.json"),
            ));
        }
        compared.push(name.clone());
    }
    if !problems.is_empty() {
        let kept = tmp.keep();
        bail!(
            "the image build is not reproducible (trees kept in {}):\n{}",
            kept.display(),
            problems.join("\n")
        );
    }
    eprintln!(
        "image_repro: identical: {} ({:.1} s in all)",
        compared.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The comparison helpers themselves (no build, runs in tier 1).
#[test]
fn differences_are_located() -> Result<()> {
    let d = tempfile::tempdir()?;
    let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
    let mut data = vec![0u8; 3 << 20];
    fs::write(&a, &data)?;
    fs::write(&b, &data)?;
    assert_eq!(first_difference(&a, &b)?, None);
    data[(2 << 20) + 5] = 1;
    fs::write(&b, &data)?;
    assert_eq!(first_difference(&a, &b)?, Some((2 << 20) + 5));
    fs::write(&b, &data[..100])?;
    assert_eq!(first_difference(&a, &b)?, Some(100));

    let manifest = d.path().join("manifest.json");
    fs::write(
        &manifest,
        r#"{"partitions": [{"name": "esp", "offset": 1048576, "size": 1048576}]}"#,
    )?;
    let s = describe("x.raw", &a, &b, 1048576 + 7, &manifest);
    assert!(s.contains("partition `esp` at +7"), "{s}");
    assert!(describe("x.raw", &a, &b, 3, &manifest).contains("outside the partitions"));

    let (ja, jb) = (d.path().join("a.json"), d.path().join("b.json"));
    fs::write(&ja, "{\n  \"a\": 1\n}\n")?;
    fs::write(&jb, "{\n  \"a\": 2\n}\n")?;
    let off = first_difference(&ja, &jb)?.unwrap();
    let s = describe("manifest.json", &ja, &jb, off, &manifest);
    assert!(
        s.contains("line 2:   \"a\": 1") && s.contains("line 2:   \"a\": 2"),
        "{s}"
    );
    Ok(())
}
