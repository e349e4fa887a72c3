//! The state store: a few allowlisted values on the state partition, one file
//! per key. Only the keys of [`Key`] can be read or written, so nothing else
//! (client data in particular) can end up in it by accident.
//!
//! [`FileStore::put`] writes `<key>.json.new`, fsyncs it, renames it over
//! `<key>.json` and fsyncs the directory before it returns: a write the caller
//! saw succeed survives a power cut, and a cut mid-write leaves the previous
//! value (rename is atomic). A sled database was used first, as DESIGN.md
//! planned; the QEMU power-cut test (`e2e_update`) showed it losing a
//! committed write: the journal's "blessed" record, flushed with
//! `Db::flush()` (fsync) and logged as done, was gone after QEMU was killed
//! a few seconds later, and the next boot read the phase before it
//! (`trial boot of 0.2.0 in slot b`). Atomic files have no such recovery
//! step to get wrong, and one small file per key is all this needs.
//!
//! The journal is stored as JSON under [`Key::UpdateJournal`]. A missing value
//! is a fresh journal; a value that does not parse is an error naming the key —
//! never silently reset, the caller decides.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::journal::Journal;

/// The allowlisted keys; each has a fixed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Key {
    /// The update journal ([`Journal`], JSON).
    UpdateJournal,
    /// The node's identity key (ed25519, PKCS#8), made on the node at first
    /// boot; it never leaves the node.
    Identity,
    /// The enrolment bundle the node accepted (fleet root, repositories,
    /// name, region, mesh).
    Enrolment,
    /// The last verified fleet state (config, grants, issuer keys,
    /// revocations, list digests) and the metadata versions they came with.
    FleetState,
    /// Set when this node was revoked: it stays stopped across reboots
    /// until it is enrolled again.
    Revoked,
    /// Boots counted so far and the kernel boot id of the last one
    /// ([`BootCount`]); exported as a metric.
    BootCount,
}

impl Key {
    /// The key's fixed name (its file is `<name>.json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Key::UpdateJournal => "update-journal",
            Key::Identity => "identity",
            Key::Enrolment => "enrolment",
            Key::FleetState => "fleet-state",
            Key::Revoked => "revoked",
            Key::BootCount => "boot-count",
        }
    }

    fn file(self) -> String {
        format!("{}.json", self.as_str())
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory could not be created or used.
    #[error("state store {dir}: cannot open: {source}")]
    Open { dir: PathBuf, source: std::io::Error },
    /// Reading or writing a key failed.
    #[error("state store: {op} `{key}`: {source}")]
    Io {
        key: &'static str,
        op: &'static str,
        source: std::io::Error,
    },
    /// The stored value does not parse. Not reset: the caller decides (e.g.
    /// report it and start a fresh journal explicitly).
    #[error("state store: value of `{key}` is corrupt: {message}")]
    Corrupt { key: &'static str, message: String },
}

/// A key-value store restricted to [`Key`].
pub trait Store {
    /// The value of `key`, `None` if never written.
    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `value` under `key`; durable when it returns `Ok`.
    fn put(&self, key: Key, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` (nothing to do if it is not set); durable when it
    /// returns `Ok`.
    fn remove(&self, key: Key) -> Result<(), StoreError>;
}

/// The store on the state partition: one file per key in one directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// One writer at a time (the temporary file name is per key).
    write: Mutex<()>,
}

impl FileStore {
    /// Opens (or creates, mode 0700) the store directory `dir`.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let open = |source| StoreError::Open { dir: dir.to_path_buf(), source };
        if !dir.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(open)?;
        }
        File::open(dir).map_err(open)?;
        Ok(FileStore { dir: dir.to_path_buf(), write: Mutex::new(()) })
    }
}

impl Store for FileStore {
    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(self.dir.join(key.file())) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { key: key.as_str(), op: "read", source }),
        }
    }

    fn put(&self, key: Key, value: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |op| move |source| StoreError::Io { key: key.as_str(), op, source };
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(key.file());
        let tmp = self.dir.join(format!("{}.new", key.file()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create"))?;
        f.write_all(value).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename"))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("fsync the directory of"))?;
        Ok(())
    }

    fn remove(&self, key: Key) -> Result<(), StoreError> {
        let io = |op| move |source| StoreError::Io { key: key.as_str(), op, source };
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        match fs::remove_file(self.dir.join(key.file())) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("remove")(e)),
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("fsync the directory of"))?;
        Ok(())
    }
}

/// An in-memory store for unit tests of callers.
#[derive(Debug, Default)]
pub struct MemStore {
    values: Mutex<std::collections::BTreeMap<Key, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn values(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Key, Vec<u8>>> {
        // A panic while holding the lock leaves a consistent map (single
        // insert/get), so a poisoned lock is still usable.
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.values().get(&key).cloned())
    }

    fn put(&self, key: Key, value: &[u8]) -> Result<(), StoreError> {
        self.values().insert(key, value.to_vec());
        Ok(())
    }

    fn remove(&self, key: Key) -> Result<(), StoreError> {
        self.values().remove(&key);
        Ok(())
    }
}

/// The JSON value under `key`, `None` if never written; a value that does
/// not parse is an error naming the key (never silently reset).
/// The boot counter ([`Key::BootCount`]): incremented once per kernel boot
/// (the kernel's random boot id changes), not when palisaded restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootCount {
    pub count: u64,
    pub boot_id: String,
}

impl BootCount {
    /// Count this boot (`boot_id`: `/proc/sys/kernel/random/boot_id`) if it
    /// was not counted yet; returns the count. Durable when it returns.
    pub fn record(store: &dyn Store, boot_id: &str) -> Result<u64, StoreError> {
        let mut c: BootCount = get_json(store, Key::BootCount)?.unwrap_or_default();
        if c.boot_id != boot_id {
            c.count += 1;
            c.boot_id = boot_id.to_string();
            put_json(store, Key::BootCount, &c)?;
        }
        Ok(c.count)
    }
}

pub fn get_json<T: serde::de::DeserializeOwned>(store: &dyn Store, key: Key) -> Result<Option<T>, StoreError> {
    match store.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { key: key.as_str(), message: e.to_string() }),
    }
}

/// Stores `value` as JSON under `key` (durable when it returns `Ok`).
pub fn put_json<T: serde::Serialize>(store: &dyn Store, key: Key, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt { key: key.as_str(), message: format!("cannot encode: {e}") })?;
    store.put(key, &bytes)
}

/// Loads the journal: a fresh one if none was saved, an error naming the key if
/// the stored value does not parse.
pub fn load_journal(store: &dyn Store) -> Result<Journal, StoreError> {
    get_json(store, Key::UpdateJournal).map(Option::unwrap_or_default)
}

/// Saves the journal (durable when it returns `Ok`).
pub fn save_journal(store: &dyn Store, journal: &Journal) -> Result<(), StoreError> {
    put_json(store, Key::UpdateJournal, journal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, Phase};
    use crate::refusal::{Refusal, RefusalKind};
    use chrono::{TimeZone, Utc};
    use palisade_board::entries::Slot;
    use semver::Version;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn boot_count_counts_boots_not_restarts() {
        let s = MemStore::default();
        assert_eq!(BootCount::record(&s, "a").unwrap(), 1);
        // palisaded restarted within the same boot: not counted again.
        assert_eq!(BootCount::record(&s, "a").unwrap(), 1);
        assert_eq!(BootCount::record(&s, "b").unwrap(), 2);
        assert_eq!(get_json::<BootCount>(&s, Key::BootCount).unwrap().unwrap().boot_id, "b");
    }

    fn journal(n: u64) -> Journal {
        let now = Utc.with_ymd_and_hms(2025, 3, 1, 2, 0, 0).unwrap();
        let v = Version::new(1, 0, n);
        Journal::new()
            .handle(
                Event::Refused(
                    Refusal::new(RefusalKind::Unreachable, format!("attempt {n}")),
                    Some(v.clone()),
                ),
                now,
            )
            .and_then(|j| j.handle(Event::StageStarted { version: v.clone() }, now))
            .and_then(|j| {
                j.handle(
                    Event::WriteStarted {
                        version: v,
                        slot: Slot::B,
                    },
                    now,
                )
            })
            .unwrap()
    }

    fn dir_size(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    dir_size(&e.path())
                } else {
                    md.len()
                }
            })
            .sum()
    }

    #[test]
    fn mem_store_round_trip_and_missing_is_fresh() {
        let s = MemStore::new();
        assert_eq!(load_journal(&s).unwrap(), Journal::new());
        save_journal(&s, &journal(3)).unwrap();
        assert_eq!(load_journal(&s).unwrap(), journal(3));
    }

    #[test]
    fn corrupt_journal_is_an_error_naming_the_key() {
        let s = MemStore::new();
        s.put(Key::UpdateJournal, b"{\"phase\":").unwrap();
        let e = load_journal(&s).unwrap_err();
        assert!(matches!(
            e,
            StoreError::Corrupt {
                key: "update-journal",
                ..
            }
        ));
        assert!(e.to_string().contains("`update-journal` is corrupt"), "{e}");
        // Still there: not reset.
        assert_eq!(
            s.get(Key::UpdateJournal).unwrap().unwrap(),
            b"{\"phase\":".to_vec()
        );
    }

    #[test]
    fn file_round_trip_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = FileStore::open(d.path()).unwrap();
            assert_eq!(load_journal(&s).unwrap(), Journal::new());
            save_journal(&s, &journal(1)).unwrap();
        }
        let s = FileStore::open(d.path()).unwrap();
        let j = load_journal(&s).unwrap();
        assert!(matches!(j.phase, Phase::Writing { .. }));
        assert_eq!(j, journal(1));
        // Only the key's file is left (no temporary).
        let names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["update-journal.json"]);
    }

    #[test]
    fn remove_deletes_the_key_only() {
        let d = tempfile::tempdir().unwrap();
        let fs = FileStore::open(d.path()).unwrap();
        let mem = MemStore::new();
        for s in [&fs as &dyn Store, &mem] {
            s.put(Key::Enrolment, b"e").unwrap();
            s.put(Key::Identity, b"i").unwrap();
            s.remove(Key::Enrolment).unwrap();
            // Removing what is not there is fine.
            s.remove(Key::Enrolment).unwrap();
            assert_eq!(s.get(Key::Enrolment).unwrap(), None);
            assert_eq!(s.get(Key::Identity).unwrap().unwrap(), b"i");
        }
        let names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["identity.json"]);
    }

    #[test]
    fn a_cut_before_the_rename_keeps_the_previous_value() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        save_journal(&s, &journal(1)).unwrap();
        // What a power cut between write and rename leaves: a temporary file.
        std::fs::write(d.path().join("update-journal.json.new"), b"{\"phase\":").unwrap();
        assert_eq!(load_journal(&FileStore::open(d.path()).unwrap()).unwrap(), journal(1));
        save_journal(&s, &journal(2)).unwrap();
        assert_eq!(load_journal(&s).unwrap(), journal(2));
    }

    #[test]
    fn open_error_names_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = FileStore::open(&file.join("db")).err().unwrap();
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    #[test]
    fn stays_small() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        for n in 0..1000 {
            save_journal(&s, &journal(n)).unwrap();
        }
        let size = dir_size(d.path());
        println!("store directory after 1000 journal writes: {size} bytes");
        assert!(size < 16 * 1024, "{size} bytes");
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(load_journal(&s).unwrap(), journal(999));
    }

    const CHILD_ENV: &str = "PALISADE_STORE_KILL_TEST_DIR";
    const PUT_DONE: &str = "PUT-RETURNED";

    /// The child half of `put_survives_sigkill`: does nothing unless started by it.
    #[test]
    fn sigkill_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let s = FileStore::open(Path::new(&dir)).unwrap();
        save_journal(&s, &journal(42)).unwrap();
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "{PUT_DONE}").unwrap();
        out.flush().unwrap();
        // Wait to be killed; never exit cleanly (which would flush anyway).
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::process::abort();
    }

    #[test]
    fn put_survives_sigkill() {
        let d = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::tests::sigkill_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let seen = lines.any(|l| l.is_ok_and(|l| l.ends_with(PUT_DONE)));
        // SIGKILL, right after put returned.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(seen, "child never reported its put ({status})");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(nix::libc::SIGKILL));
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(load_journal(&s).unwrap(), journal(42));
    }
}
