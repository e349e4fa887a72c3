//! Writing a verified image into the inactive slot.
//!
//! The image is a [`VerifiedImage`]: bytes in memory whose SHA-256 was computed
//! over exactly those bytes (while they were downloaded, or read from a file)
//! and matched the signed length and hash. [`write_slot`] writes those same
//! immutable bytes, so what is written is what was hashed (never a second
//! read of a file that could have been swapped after verification, RAUC
//! CVE-2020-25860), without paying for a second SHA-256 pass. It checks the
//! size against the device before writing anything, writes in 1 MiB chunks
//! everything but the first 4 KiB, then the first 4 KiB (so a slot cut off
//! mid-write never carries a valid filesystem superblock), `fdatasync`s, drops
//! the page cache for the range (`posix_fadvise(DONTNEED)`) and reads the
//! device back, comparing it byte for byte with the verified bytes.
//!
//! The boot entry of the slot must be removed before this runs (see
//! [`crate::esp::remove_slot_entries`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use ring::digest::{Context, SHA256};

/// Size of the chunks written and read back.
pub const CHUNK: usize = 1024 * 1024;
/// The head written last (covers the superblocks of erofs, ext4 and FAT).
pub const HEAD: u64 = 4096;

/// What the staged image must be (from the signed target metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub length: u64,
    pub sha256: [u8; 32],
}

/// A completed slot write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReport {
    /// Bytes written (the image length).
    pub bytes: u64,
    /// Time taken to write and fdatasync.
    pub write_seconds: f64,
    /// Time taken in all, write and read-back.
    pub seconds: f64,
    /// SHA-256 of the slot's bytes, lowercase hex.
    pub sha256_hex: String,
}

/// Errors of slot writing. Nothing is written when the size checks fail.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The image's length differs from the signed one.
    #[error("image {path} is {actual} bytes, the signed length is {expected}")]
    LengthMismatch {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    /// The image does not fit the slot; nothing was written.
    #[error("image of {image} bytes does not fit the slot device of {device} bytes")]
    TooLarge { image: u64, device: u64 },
    /// The image's bytes do not hash to the signed digest (`stage` "verify").
    #[error("image {stage} hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        stage: &'static str,
        expected: String,
        actual: String,
    },
    /// The slot read back after the write differs from the verified image.
    #[error("slot {path} read back differs from the image at byte {offset}: the storage did not keep what was written")]
    ReadBack { path: PathBuf, offset: u64 },
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io { path, op, source }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size of a block device or regular file, by seeking to its end.
pub fn device_size(path: &Path) -> Result<u64, SlotError> {
    let mut f = File::open(path).map_err(io_err(path, "open"))?;
    f.seek(SeekFrom::End(0)).map_err(io_err(path, "seek"))
}

/// Image bytes in memory whose SHA-256 was computed over exactly these bytes
/// and matched the signed length and digest. Only this module builds one, so
/// holding one is the proof; [`write_slot`] writes these same bytes.
#[derive(Clone)]
pub struct VerifiedImage {
    bytes: Vec<u8>,
    sha256: [u8; 32],
}

impl std::fmt::Debug for VerifiedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedImage({} bytes, sha256 {})", self.bytes.len(), hex(&self.sha256))
    }
}

impl VerifiedImage {
    /// Hashes `bytes` and checks them against `expected`.
    pub fn check(bytes: Vec<u8>, expected: &Expected) -> Result<VerifiedImage, SlotError> {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&bytes);
        VerifiedImage::hashed(bytes, ctx, expected)
    }

    /// `bytes` with the SHA-256 context that has seen exactly them, in order
    /// (a download hashed chunk by chunk as it was appended).
    pub fn hashed(bytes: Vec<u8>, ctx: Context, expected: &Expected) -> Result<VerifiedImage, SlotError> {
        let sha256 = digest32(ctx);
        if bytes.len() as u64 != expected.length {
            return Err(SlotError::LengthMismatch {
                path: PathBuf::from("(image in memory)"),
                actual: bytes.len() as u64,
                expected: expected.length,
            });
        }
        if sha256 != expected.sha256 {
            return Err(SlotError::HashMismatch {
                stage: "verify",
                expected: hex(&expected.sha256),
                actual: hex(&sha256),
            });
        }
        Ok(VerifiedImage { bytes, sha256 })
    }

    /// Reads the file `path` (refused before reading when it is not exactly
    /// `expected.length` bytes, or larger than `cap`), hashing as it reads.
    pub fn read_file(path: &Path, expected: &Expected, cap: u64) -> Result<VerifiedImage, SlotError> {
        let mut f = File::open(path).map_err(io_err(path, "open"))?;
        let actual = f.metadata().map_err(io_err(path, "stat"))?.len();
        if actual > cap {
            return Err(SlotError::TooLarge { image: actual, device: cap });
        }
        if actual != expected.length {
            return Err(SlotError::LengthMismatch { path: path.to_path_buf(), actual, expected: expected.length });
        }
        let mut bytes = Vec::with_capacity(actual as usize);
        // One byte more than expected shows a file that grew meanwhile.
        (&mut f).take(expected.length + 1).read_to_end(&mut bytes).map_err(io_err(path, "read"))?;
        if bytes.len() as u64 != expected.length {
            return Err(SlotError::LengthMismatch { path: path.to_path_buf(), actual: bytes.len() as u64, expected: expected.length });
        }
        VerifiedImage::check(bytes, expected)
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The 32 bytes of a finished SHA-256 context.
fn digest32(ctx: Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Writes `img` into `dst` at offset 0: everything after the first [`HEAD`]
/// bytes first (in [`CHUNK`]s, `progress` after each), then the head.
fn write_image<W: Write + Seek>(img: &[u8], dst: &mut W, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
    let total = img.len() as u64;
    let head = img.len().min(HEAD as usize);
    dst.seek(SeekFrom::Start(head as u64))?;
    let mut done = 0u64;
    for chunk in img[head..].chunks(CHUNK) {
        dst.write_all(chunk)?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    dst.seek(SeekFrom::Start(0))?;
    dst.write_all(&img[..head])?;
    dst.flush()?;
    progress(total, total);
    Ok(())
}

/// The first offset where `dev` (read from its start, after dropping its page
/// cache) differs from `img`; `None` when it holds exactly `img`.
fn read_back(dev: &Path, img: &[u8]) -> Result<Option<u64>, SlotError> {
    let mut f = File::open(dev).map_err(io_err(dev, "open for read-back"))?;
    let len = i64::try_from(img.len()).map_err(|_| SlotError::TooLarge { image: img.len() as u64, device: i64::MAX as u64 })?;
    posix_fadvise(&f, 0, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .map_err(|e| io_err(dev, "drop page cache of")(io::Error::from(e)))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0usize;
    for want in img.chunks(CHUNK) {
        let got = &mut buf[..want.len()];
        f.read_exact(got).map_err(io_err(dev, "read back"))?;
        if got != want {
            let off = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Ok(Some((at + off) as u64));
        }
        at += want.len();
    }
    Ok(None)
}

/// Writes the verified image into the slot device `dev` (see the module doc).
/// `progress(done, total)` is called after every chunk written.
pub fn write_slot(img: &VerifiedImage, dev: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<WriteReport, SlotError> {
    let started = Instant::now();
    let device = device_size(dev)?;
    if img.len() > device {
        return Err(SlotError::TooLarge { image: img.len(), device });
    }
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(false)
        .create(false)
        .open(dev)
        .map_err(io_err(dev, "open for writing"))?;
    write_image(img.as_bytes(), &mut out, progress).map_err(io_err(dev, "write"))?;
    out.sync_data().map_err(io_err(dev, "fdatasync"))?;
    drop(out);
    let written = started.elapsed().as_secs_f64();
    if let Some(off) = read_back(dev, img.as_bytes())? {
        return Err(SlotError::ReadBack { path: dev.to_path_buf(), offset: off });
    }
    Ok(WriteReport {
        bytes: img.len(),
        write_seconds: written,
        seconds: started.elapsed().as_secs_f64(),
        sha256_hex: hex(&img.sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Cursor;

    /// Deterministic, non-repeating test bytes.
    fn image(len: usize, seed: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut block = Sha256::digest([seed]).to_vec();
        while out.len() < len {
            block = Sha256::digest(&block).to_vec();
            out.extend_from_slice(&block);
        }
        out.truncate(len);
        out
    }

    fn expected(bytes: &[u8]) -> Expected {
        Expected { length: bytes.len() as u64, sha256: Sha256::digest(bytes).into() }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        dev: PathBuf,
        img: Vec<u8>,
        old: Vec<u8>,
    }

    fn setup(img_len: usize, dev_len: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("slot-b");
        let img = image(img_len, 1);
        let old = image(dev_len, 2);
        std::fs::write(&dev, &old).unwrap();
        Setup { _dir: dir, dev, img, old }
    }

    fn verified(bytes: &[u8]) -> VerifiedImage {
        VerifiedImage::check(bytes.to_vec(), &expected(bytes)).unwrap()
    }

    #[test]
    fn writes_and_reads_back() {
        let s = setup(3 * CHUNK + 12345, 4 * CHUNK);
        let mut calls = Vec::new();
        let r = write_slot(&verified(&s.img), &s.dev, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(r.bytes, s.img.len() as u64);
        assert_eq!(r.sha256_hex, hex(&Sha256::digest(&s.img)));
        assert!(r.write_seconds <= r.seconds);
        let dev = std::fs::read(&s.dev).unwrap();
        assert_eq!(dev.len(), 4 * CHUNK, "the device is not truncated");
        assert_eq!(&dev[..s.img.len()], &s.img[..]);
        assert_eq!(&dev[s.img.len()..], &s.old[s.img.len()..]);
        // Increasing, ending at the total.
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
        assert_eq!(calls.last(), Some(&(r.bytes, r.bytes)));
        assert!(calls.iter().all(|&(_, t)| t == r.bytes));
        assert_eq!(device_size(&s.dev).unwrap(), 4 * CHUNK as u64);
    }

    #[test]
    fn small_image_below_head() {
        let s = setup(100, 8192);
        write_slot(&verified(&s.img), &s.dev, &mut |_, _| {}).unwrap();
        assert_eq!(&std::fs::read(&s.dev).unwrap()[..100], &s.img[..]);
    }

    #[test]
    fn only_bytes_matching_the_signed_digest_become_a_verified_image() {
        let img = image(CHUNK + 5000, 1);
        let exp = expected(&img);
        let e = VerifiedImage::check(image(img.len(), 9), &exp).unwrap_err();
        assert!(matches!(e, SlotError::HashMismatch { stage: "verify", .. }), "{e}");
        let e = VerifiedImage::check(img[..100].to_vec(), &exp).unwrap_err();
        assert!(matches!(e, SlotError::LengthMismatch { actual: 100, .. }), "{e}");
        // Hashed as it arrived, chunk by chunk.
        let mut ctx = Context::new(&SHA256);
        let mut bytes = Vec::new();
        for c in img.chunks(777) {
            ctx.update(c);
            bytes.extend_from_slice(c);
        }
        assert_eq!(VerifiedImage::hashed(bytes, ctx, &exp).unwrap().sha256(), exp.sha256);
    }

    #[test]
    fn read_file_checks_length_cap_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(3000, 1);
        let p = dir.path().join("img");
        std::fs::write(&p, &img).unwrap();
        let exp = expected(&img);
        assert_eq!(VerifiedImage::read_file(&p, &exp, 4096).unwrap().as_bytes(), &img[..]);
        assert!(matches!(VerifiedImage::read_file(&p, &exp, 2999), Err(SlotError::TooLarge { .. })));
        std::fs::write(&p, &img[..2999]).unwrap();
        assert!(matches!(VerifiedImage::read_file(&p, &exp, 4096), Err(SlotError::LengthMismatch { .. })));
        std::fs::write(&p, image(3000, 5)).unwrap();
        assert!(matches!(VerifiedImage::read_file(&p, &exp, 4096), Err(SlotError::HashMismatch { .. })));
    }

    #[test]
    fn too_large_is_refused_and_nothing_written() {
        let s = setup(2 * CHUNK + 1, 2 * CHUNK);
        let before = Sha256::digest(std::fs::read(&s.dev).unwrap());
        let e = write_slot(&verified(&s.img), &s.dev, &mut |_, _| {}).unwrap_err();
        match &e {
            SlotError::TooLarge { image, device } => {
                assert_eq!((*image, *device), (2 * CHUNK as u64 + 1, 2 * CHUNK as u64))
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("2097153") && e.to_string().contains("2097152"));
        assert_eq!(Sha256::digest(std::fs::read(&s.dev).unwrap()), before);
    }

    #[test]
    fn read_back_finds_the_first_differing_byte() {
        let s = setup(3 * CHUNK, 3 * CHUNK);
        std::fs::write(&s.dev, &s.img).unwrap();
        assert_eq!(read_back(&s.dev, &s.img).unwrap(), None);
        let mut bad = s.img.clone();
        bad[CHUNK + 17] ^= 1;
        std::fs::write(&s.dev, &bad).unwrap();
        assert_eq!(read_back(&s.dev, &s.img).unwrap(), Some(CHUNK as u64 + 17));
    }

    /// A device that fails after `limit` bytes were written.
    struct Failing {
        inner: Cursor<Vec<u8>>,
        limit: usize,
        written: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.limit {
                return Err(io::Error::other("power cut"));
            }
            let n = buf.len().min(self.limit - self.written);
            self.written += n;
            self.inner.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Failing {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn head_is_written_last() {
        let img = image(3 * CHUNK, 1);
        let old = image(3 * CHUNK, 2);
        // Cut anywhere before the head's own write: the head is still the old one.
        for limit in [0, 1, HEAD as usize, CHUNK, 3 * CHUNK - HEAD as usize, 3 * CHUNK - HEAD as usize - 1] {
            let mut dev = Failing { inner: Cursor::new(old.clone()), limit, written: 0 };
            assert!(write_image(&img, &mut dev, &mut |_, _| {}).is_err(), "limit {limit}");
            let got = dev.inner.into_inner();
            assert!(got[..HEAD as usize] == old[..HEAD as usize], "limit {limit}");
            let end = HEAD as usize + limit.min(img.len() - HEAD as usize);
            assert!(got[HEAD as usize..end] == img[HEAD as usize..end], "limit {limit}");
        }
        // Uncut: everything, head included.
        let mut dev = Failing { inner: Cursor::new(old.clone()), limit: usize::MAX, written: 0 };
        write_image(&img, &mut dev, &mut |_, _| {}).unwrap();
        assert!(dev.inner.into_inner() == img);
    }
}
