//! The state store: a few allowlisted values on the state partition, kept in
//! one sled database. Only the keys of [`Key`] can be read or written, so
//! nothing else (client data in particular) can end up in it by accident.
//!
//! [`SledStore::put`] flushes before it returns: a write the caller saw succeed
//! survives a power cut (tested by SIGKILLing a child process right after
//! `put`). sled runs with a 256 KiB cache, 64 KiB segments and no background
//! flusher. The state partition is 16 MiB; after 1000 journal writes the
//! database directory measured 245 161 bytes (about 240 KiB; the `stays_small`
//! test prints the figure and fails above 2 MiB).
//!
//! The journal is stored as JSON under [`Key::UpdateJournal`]. A missing value
//! is a fresh journal; a value that does not parse is an error naming the key —
//! never silently reset, the caller decides.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::journal::Journal;

/// The allowlisted keys. More will come (node identity, last good config,
/// grants, revocation list); each gets a fixed byte name here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Key {
    /// The update journal ([`Journal`], JSON).
    UpdateJournal,
}

impl Key {
    /// The key's fixed name in the database.
    pub fn name(self) -> &'static [u8] {
        match self {
            Key::UpdateJournal => b"update-journal",
        }
    }

    /// The name as text, for errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::UpdateJournal => "update-journal",
        }
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing directory, corrupt, locked by
    /// another process).
    #[error("state store {dir}: cannot open: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    /// Reading, writing or flushing a key failed.
    #[error("state store: {op} `{key}`: {source}")]
    Io {
        key: &'static str,
        op: &'static str,
        source: sled::Error,
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
}

/// The sled store on the state partition.
pub struct SledStore {
    db: sled::Db,
}

/// sled's page cache, bytes.
const CACHE_BYTES: u64 = 256 * 1024;
/// sled's log segment size, bytes (a power of two; the default 512 KiB makes the
/// directory grow by several segments on a 16 MiB partition).
const SEGMENT_BYTES: usize = 64 * 1024;

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(SledStore { db })
    }
}

impl Store for SledStore {
    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(key.name())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|source| StoreError::Io {
                key: key.as_str(),
                op: "read",
                source,
            })
    }

    fn put(&self, key: Key, value: &[u8]) -> Result<(), StoreError> {
        let io = |op| {
            move |source| StoreError::Io {
                key: key.as_str(),
                op,
                source,
            }
        };
        self.db.insert(key.name(), value).map_err(io("write"))?;
        self.db.flush().map_err(io("flush"))?;
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
}

/// Loads the journal: a fresh one if none was saved, an error naming the key if
/// the stored value does not parse.
pub fn load_journal(store: &dyn Store) -> Result<Journal, StoreError> {
    let key = Key::UpdateJournal;
    match store.get(key)? {
        None => Ok(Journal::new()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            key: key.as_str(),
            message: e.to_string(),
        }),
    }
}

/// Saves the journal (durable when it returns `Ok`).
pub fn save_journal(store: &dyn Store, journal: &Journal) -> Result<(), StoreError> {
    let key = Key::UpdateJournal;
    // Serializing plain data with string keys cannot fail; map it anyway.
    let bytes = serde_json::to_vec(journal).map_err(|e| StoreError::Corrupt {
        key: key.as_str(),
        message: format!("cannot encode: {e}"),
    })?;
    store.put(key, &bytes)
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
    fn sled_round_trip_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(d.path()).unwrap();
            assert_eq!(load_journal(&s).unwrap(), Journal::new());
            save_journal(&s, &journal(1)).unwrap();
        }
        let s = SledStore::open(d.path()).unwrap();
        let j = load_journal(&s).unwrap();
        assert!(matches!(j.phase, Phase::Writing { .. }));
        assert_eq!(j, journal(1));
    }

    #[test]
    fn open_error_names_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = SledStore::open(&file.join("db")).err().unwrap();
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    #[test]
    fn stays_small() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        for n in 0..1000 {
            save_journal(&s, &journal(n)).unwrap();
        }
        let size = dir_size(d.path());
        drop(s);
        let reopened = dir_size(d.path());
        println!("sled directory after 1000 journal writes: {size} bytes ({reopened} after close)");
        assert!(size < 2 * 1024 * 1024, "{size} bytes");
        let s = SledStore::open(d.path()).unwrap();
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
        let s = SledStore::open(Path::new(&dir)).unwrap();
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
        let s = SledStore::open(d.path()).unwrap();
        assert_eq!(load_journal(&s).unwrap(), journal(42));
    }
}
