//! Stage `identity`: one SHA-256 over the build's inputs, from which every GUID
//! (disk, partitions, filesystems) and the FAT serial derive, and the partition
//! layout. Same inputs, same identity: two builds give the same bytes.

use std::fs;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::Build;
use crate::layout::Layout;
use crate::util::hex;

pub fn run(b: &mut Build) -> Result<()> {
    if b.debs.is_empty() || b.binaries.is_empty() {
        bail!("no packages or binaries recorded: the `fetch` and `rootfs` stages run first");
    }
    let seed =
        fs::read(&b.inp.seed).with_context(|| format!("seed config {}", b.inp.seed.display()))?;
    let d = input_digest(
        &b.inp.board_text,
        b.debs.iter().map(|d| d.sha256.as_str()),
        b.binaries.iter().map(|x| x.1.as_str()),
        &seed,
        b.inp.epoch,
        &Options {
            version: &b.inp.version,
            cmdline_extra: b.inp.cmdline_extra.trim(),
            fleet_root: b.inp.fleet_root.as_deref(),
        },
    );
    b.layout = Some(Layout::new(b.inp.board.partitions, &d));
    b.digest = Some(d);
    Ok(())
}

/// The build options that change the image's bytes besides the files.
pub struct Options<'a> {
    /// `--version`: os-release, entry titles.
    pub version: &'a str,
    /// `--cmdline`: entries, installed board.toml.
    pub cmdline_extra: &'a str,
    /// `--fleet-root`: installed in the root.
    pub fleet_root: Option<&'a [u8]>,
}

/// The input digest: the board file, each package's and each installed binary's
/// sha256 (hex, in build order), the seed config, the epoch, then the options
/// (tagged, NUL-separated: version, cmdline extra, sha256 of the fleet root or `-`).
///
/// Not covered (yet): the rootfs/ overlay and the lists. Changing only those keeps
/// the GUIDs, which is harmless (the content still differs) but worth knowing.
pub fn input_digest<'a>(
    board_text: &[u8],
    deb_hashes: impl IntoIterator<Item = &'a str>,
    binary_hashes: impl IntoIterator<Item = &'a str>,
    seed: &[u8],
    epoch: u64,
    opts: &Options,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(board_text);
    for d in deb_hashes {
        h.update(d.as_bytes());
    }
    for b in binary_hashes {
        h.update(b.as_bytes());
    }
    h.update(seed);
    h.update(epoch.to_le_bytes());
    h.update(b"\0version\0");
    h.update(opts.version.as_bytes());
    h.update(b"\0cmdline\0");
    h.update(opts.cmdline_extra.as_bytes());
    h.update(b"\0fleet-root\0");
    match opts.fleet_root {
        Some(fr) => h.update(hex(&Sha256::digest(fr)).as_bytes()),
        None => h.update(b"-"),
    }
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: Options = Options {
        version: "0.1.0",
        cmdline_extra: "",
        fleet_root: None,
    };

    fn digest(board: &[u8], deb: &str, bin: &str, seed: &[u8], epoch: u64) -> String {
        digest_with(board, deb, bin, seed, epoch, &OPTS)
    }

    fn digest_with(
        board: &[u8],
        deb: &str,
        bin: &str,
        seed: &[u8],
        epoch: u64,
        opts: &Options,
    ) -> String {
        hex(&input_digest(board, [deb], [bin], seed, epoch, opts))
    }

    #[test]
    fn digest_is_stable_and_covers_every_input() {
        let base = digest(b"board", "d1", "b1", b"seed", 1);
        // Golden value: changing it changes every GUID of every image.
        assert_eq!(
            base,
            hex(&Sha256::digest(
                [
                    &b"boardd1b1seed"[..],
                    &1u64.to_le_bytes(),
                    b"\0version\x000.1.0\0cmdline\0\0fleet-root\0-"
                ]
                .concat()
            ))
        );
        let fr = br#"{"signed":{},"signatures":[]}"#;
        for opts in [
            Options {
                version: "0.1.1",
                ..OPTS
            },
            Options {
                cmdline_extra: "palisade.health_timeout=10",
                ..OPTS
            },
            Options {
                fleet_root: Some(fr),
                ..OPTS
            },
            // No field bleeds into the next: the tags keep them apart.
            Options {
                version: "0.1.0palisade",
                cmdline_extra: "",
                ..OPTS
            },
        ] {
            assert_ne!(base, digest_with(b"board", "d1", "b1", b"seed", 1, &opts));
        }
        assert_ne!(
            digest_with(
                b"board",
                "d1",
                "b1",
                b"seed",
                1,
                &Options {
                    fleet_root: Some(fr),
                    ..OPTS
                }
            ),
            digest_with(
                b"board",
                "d1",
                "b1",
                b"seed",
                1,
                &Options {
                    fleet_root: Some(b"{}"),
                    ..OPTS
                }
            ),
        );
        for other in [
            digest(b"board2", "d1", "b1", b"seed", 1),
            digest(b"board", "d2", "b1", b"seed", 1),
            digest(b"board", "d1", "b2", b"seed", 1),
            digest(b"board", "d1", "b1", b"seed2", 1),
            digest(b"board", "d1", "b1", b"seed", 2),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn stage_needs_packages_and_binaries() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Build::new(super::super::testutil::inputs(d.path()));
        assert!(run(&mut b).is_err());
    }
}
