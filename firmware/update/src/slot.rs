//! Writing a verified, staged image into the inactive slot.
//!
//! [`write_slot`] checks sizes before writing anything (the staged file must
//! have the signed length, and the image must fit the device), then copies in
//! 1 MiB chunks, hashing exactly the buffers it passes to `write` (never a
//! second read of the staged file: a file swapped after verification is caught,
//! RAUC CVE-2020-25860). The first 4 KiB are written last, so a slot cut off
//! mid-write never carries a valid filesystem superblock. After `fdatasync`,
//! the written hash and length are compared with the expected ones; then the
//! page cache for the range is dropped (`posix_fadvise(DONTNEED)`) and the
//! device read back and hashed again.
//!
//! The boot entry of the slot must be removed before this runs (see
//! [`crate::esp::remove_slot_entries`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use sha2::{Digest, Sha256};

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
    /// Time taken, write and read-back.
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
    /// The staged file's length differs from the signed one (before writing, or
    /// because the file changed while it was being copied).
    #[error("staged image {path} is {actual} bytes, the signed length is {expected}")]
    LengthMismatch {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    /// The image does not fit the slot; nothing was written.
    #[error("image of {image} bytes does not fit the slot device of {device} bytes")]
    TooLarge { image: u64, device: u64 },
    /// The bytes written (`stage` "write") or read back (`stage` "read-back")
    /// do not hash to the signed digest.
    #[error("slot {stage} hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        stage: &'static str,
        expected: String,
        actual: String,
    },
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

/// Why [`copy_image`] stopped.
#[derive(Debug)]
enum CopyError {
    /// Reading the source failed; `UnexpectedEof` when it got shorter.
    Read(io::Error),
    /// The source has bytes past `length`.
    Longer,
    /// Seeking or writing the destination failed.
    Write(io::Error),
}

/// Copies `length` bytes from `src` into `dst` at offset 0: everything after
/// the first [`HEAD`] bytes first, then the head. Returns the SHA-256 of the
/// buffers written, in image order (the head is read and hashed first and kept
/// in memory until it is written).
fn copy_image<R: Read, W: Write + Seek>(
    src: &mut R,
    dst: &mut W,
    length: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<[u8; 32], CopyError> {
    let head_len = length.min(HEAD);
    let mut head = vec![0u8; head_len as usize];
    src.read_exact(&mut head).map_err(CopyError::Read)?;
    let mut hasher = Sha256::new();
    hasher.update(&head);
    dst.seek(SeekFrom::Start(head_len))
        .map_err(CopyError::Write)?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut left = length - head_len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n]).map_err(CopyError::Read)?;
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(CopyError::Write)?;
        left -= n as u64;
        done += n as u64;
        progress(done, length);
    }
    let mut extra = [0u8; 1];
    match src.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(CopyError::Longer),
        Err(e) => return Err(CopyError::Read(e)),
    }
    dst.seek(SeekFrom::Start(0)).map_err(CopyError::Write)?;
    dst.write_all(&head).map_err(CopyError::Write)?;
    dst.flush().map_err(CopyError::Write)?;
    done += head_len;
    progress(done, length);
    Ok(hasher.finalize().into())
}

/// Hashes the first `length` bytes of `dev` after dropping them from the page cache.
fn read_back(dev: &Path, length: u64) -> Result<[u8; 32], SlotError> {
    let mut f = File::open(dev).map_err(io_err(dev, "open for read-back"))?;
    let len = i64::try_from(length).map_err(|_| SlotError::TooLarge {
        image: length,
        device: i64::MAX as u64,
    })?;
    posix_fadvise(&f, 0, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .map_err(|e| io_err(dev, "drop page cache of")(io::Error::from(e)))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = length;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.read_exact(&mut buf[..n])
            .map_err(io_err(dev, "read back"))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// Writes the staged image into the slot device `dev` (see the module doc).
/// `progress(done, total)` is called after every chunk written.
pub fn write_slot(
    staged: &Path,
    dev: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteReport, SlotError> {
    let started = Instant::now();
    let mut src = File::open(staged).map_err(io_err(staged, "open"))?;
    let actual = src.metadata().map_err(io_err(staged, "stat"))?.len();
    if actual != expected.length {
        return Err(SlotError::LengthMismatch {
            path: staged.to_path_buf(),
            actual,
            expected: expected.length,
        });
    }
    let device = device_size(dev)?;
    if expected.length > device {
        return Err(SlotError::TooLarge {
            image: expected.length,
            device,
        });
    }
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(false)
        .create(false)
        .open(dev)
        .map_err(io_err(dev, "open for writing"))?;
    let digest = match copy_image(&mut src, &mut out, expected.length, progress) {
        Ok(d) => d,
        Err(CopyError::Read(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let now = src.metadata().map(|m| m.len()).unwrap_or(0);
            return Err(SlotError::LengthMismatch {
                path: staged.to_path_buf(),
                actual: now,
                expected: expected.length,
            });
        }
        Err(CopyError::Read(e)) => return Err(io_err(staged, "read")(e)),
        Err(CopyError::Longer) => {
            let now = src.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            return Err(SlotError::LengthMismatch {
                path: staged.to_path_buf(),
                actual: now,
                expected: expected.length,
            });
        }
        Err(CopyError::Write(e)) => return Err(io_err(dev, "write")(e)),
    };
    out.sync_data().map_err(io_err(dev, "fdatasync"))?;
    drop(out);
    if digest != expected.sha256 {
        return Err(SlotError::HashMismatch {
            stage: "write",
            expected: hex(&expected.sha256),
            actual: hex(&digest),
        });
    }
    let back = read_back(dev, expected.length)?;
    if back != expected.sha256 {
        return Err(SlotError::HashMismatch {
            stage: "read-back",
            expected: hex(&expected.sha256),
            actual: hex(&back),
        });
    }
    Ok(WriteReport {
        bytes: expected.length,
        seconds: started.elapsed().as_secs_f64(),
        sha256_hex: hex(&digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        Expected {
            length: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        staged: PathBuf,
        dev: PathBuf,
        img: Vec<u8>,
        old: Vec<u8>,
    }

    fn setup(img_len: usize, dev_len: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged.img");
        let dev = dir.path().join("slot-b");
        let img = image(img_len, 1);
        let old = image(dev_len, 2);
        std::fs::write(&staged, &img).unwrap();
        std::fs::write(&dev, &old).unwrap();
        Setup {
            _dir: dir,
            staged,
            dev,
            img,
            old,
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let s = setup(3 * CHUNK + 12345, 4 * CHUNK);
        let mut calls = Vec::new();
        let r = write_slot(&s.staged, &s.dev, &expected(&s.img), &mut |d, t| {
            calls.push((d, t))
        })
        .unwrap();
        assert_eq!(r.bytes, s.img.len() as u64);
        assert_eq!(r.sha256_hex, hex(&Sha256::digest(&s.img)));
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
        write_slot(&s.staged, &s.dev, &expected(&s.img), &mut |_, _| {}).unwrap();
        assert_eq!(&std::fs::read(&s.dev).unwrap()[..100], &s.img[..]);
    }

    #[test]
    fn altered_staged_file_is_a_hash_mismatch() {
        let s = setup(CHUNK + 5000, 2 * CHUNK);
        let exp = expected(&s.img);
        // Swapped after verification: same length, other bytes.
        std::fs::write(&s.staged, image(s.img.len(), 9)).unwrap();
        let e = write_slot(&s.staged, &s.dev, &exp, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(e, SlotError::HashMismatch { stage: "write", .. }),
            "{e}"
        );
        // Other length: refused before writing.
        std::fs::write(&s.staged, &s.img[..100]).unwrap();
        std::fs::write(&s.dev, &s.old).unwrap();
        let e = write_slot(&s.staged, &s.dev, &exp, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(e, SlotError::LengthMismatch { actual: 100, .. }),
            "{e}"
        );
        assert_eq!(std::fs::read(&s.dev).unwrap(), s.old);
    }

    #[test]
    fn too_large_is_refused_and_nothing_written() {
        let s = setup(2 * CHUNK + 1, 2 * CHUNK);
        let before = Sha256::digest(std::fs::read(&s.dev).unwrap());
        let e = write_slot(&s.staged, &s.dev, &expected(&s.img), &mut |_, _| {}).unwrap_err();
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
    fn read_back_mismatch_is_reported() {
        // Corrupting the device between write and read-back needs a fault
        // injector; check the read-back hash itself.
        let s = setup(5000, 8192);
        let exp = expected(&s.img);
        std::fs::write(&s.dev, image(8192, 7)).unwrap();
        assert_ne!(read_back(&s.dev, exp.length).unwrap(), exp.sha256);
        std::fs::write(&s.dev, &s.img).unwrap();
        assert_eq!(read_back(&s.dev, exp.length).unwrap(), exp.sha256);
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
        for limit in [
            0,
            1,
            HEAD as usize,
            CHUNK,
            3 * CHUNK - HEAD as usize,
            3 * CHUNK - HEAD as usize - 1,
        ] {
            let mut dev = Failing {
                inner: Cursor::new(old.clone()),
                limit,
                written: 0,
            };
            let r = copy_image(
                &mut Cursor::new(&img),
                &mut dev,
                img.len() as u64,
                &mut |_, _| {},
            );
            assert!(matches!(r, Err(CopyError::Write(_))), "limit {limit}");
            let got = dev.inner.into_inner();
            assert!(
                got[..HEAD as usize] == old[..HEAD as usize],
                "limit {limit}"
            );
            let end = HEAD as usize + limit.min(img.len() - HEAD as usize);
            assert!(
                got[HEAD as usize..end] == img[HEAD as usize..end],
                "limit {limit}"
            );
        }
        // Uncut: everything, head included.
        let mut dev = Failing {
            inner: Cursor::new(old.clone()),
            limit: usize::MAX,
            written: 0,
        };
        let d = copy_image(
            &mut Cursor::new(&img),
            &mut dev,
            img.len() as u64,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(d, <[u8; 32]>::from(Sha256::digest(&img)));
        assert!(dev.inner.into_inner() == img);
    }

    #[test]
    fn source_that_grows_or_shrinks_while_copying() {
        let img = image(10_000, 1);
        let mut dev = Cursor::new(vec![0u8; 20_000]);
        let r = copy_image(&mut Cursor::new(&img), &mut dev, 9_000, &mut |_, _| {});
        assert!(matches!(r, Err(CopyError::Longer)));
        let r = copy_image(&mut Cursor::new(&img), &mut dev, 11_000, &mut |_, _| {});
        assert!(matches!(r, Err(CopyError::Read(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }
}
