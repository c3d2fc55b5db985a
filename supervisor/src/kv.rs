//! The plugins' key-value store: one SQLite database (WAL, `synchronous=FULL`) in the state dir,
//! one namespace per plugin, JSON values. A write is on disk before `kv.set` is answered.
//!
//! Inspect it with `sqlite3 STATE_DIR/kv.sqlite 'SELECT plugin, key, value FROM kv'`.
//!
//! Each plugin's namespace has a quota ([`MAX_KEYS`] keys, [`MAX_BYTES`] of keys and values):
//! the database is plugind's, on plugind's disk, and a `kv.list` of every key must fit in one
//! answer. What a plugin holds is counted once, at its first write after plugind starts, then
//! kept up to date by each write.
//!
//! Each plugin's operations run one at a time (its lane, a semaphore of one): a plugin that
//! sends `kv.list` after `kv.list` without waiting had each run on a blocking thread of its own
//! (up to 512), each building a 10 MB answer, and plugind grew to the OOM killer while every
//! other plugin's `kv.get` queued behind them for tens of seconds. Its requests now wait in its
//! own lane, as futures that cost nothing and go away when it stops; the database sees at most
//! one operation per plugin.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Longest key accepted.
pub const MAX_KEY: usize = 1024;

/// Most keys one plugin may keep. Its `kv.list` of them all (at most 10 MiB of keys) stays
/// inside the 16 MiB frame.
pub const MAX_KEYS: u64 = 10_000;

/// Most bytes one plugin's keys and values may take, as stored (the JSON text as it came).
pub const MAX_BYTES: u64 = 64 << 20;

/// What one plugin's namespace holds.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    keys: u64,
    bytes: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Opening or checking the database failed (fatal at startup).
    #[error("kv store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the database file or making it private failed (fatal at startup).
    #[error("kv store {path}: {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed its integrity check (fatal at startup).
    #[error("kv store {path} is corrupt ({detail}); move it away to start with an empty store")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What `quick_check` said.
        detail: String,
    },
    /// A query failed.
    #[error("kv store: {0}")]
    Query(#[from] rusqlite::Error),
    /// A bad key.
    #[error("invalid key: {0}")]
    BadKey(&'static str),
    /// The write would take the plugin's namespace past its quota.
    #[error("kv quota: {0}")]
    Quota(String),
}

/// The store.
pub struct KvStore {
    /// The connection, taken in turn (tokio's mutex is first come, first served, and is waited
    /// for by a task, not by a blocking thread) and used on a blocking thread.
    db: Arc<tokio::sync::Mutex<Db>>,
    /// Each plugin's quota ([`MAX_KEYS`], [`MAX_BYTES`]).
    quota: Usage,
    /// Each plugin's lane: its operations run one at a time.
    lanes: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// The connection, and what each plugin's namespace holds (counted at its first write).
struct Db {
    conn: Connection,
    usage: std::collections::HashMap<String, Usage>,
}

/// Creates `path` with mode 0600 if missing, and sets 0600 on an existing file.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl KvStore {
    /// Opens (creating if needed) `path`, checks it, and prepares the schema.
    pub fn open(path: &Path) -> Result<Arc<Self>, KvError> {
        let open_err = |source| KvError::Open { path: path.to_path_buf(), source };
        // Private to plugind (mode 0600, also for a file an older run made): SQLite gives its
        // -wal and -shm files the database's mode.
        make_private(path).map_err(|source| KvError::Create { path: path.to_path_buf(), source })?;
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "kv store is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL;").map_err(open_err)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|source| match source {
            rusqlite::Error::SqliteFailure(ref e, _) if e.code == rusqlite::ErrorCode::NotADatabase => {
                KvError::Corrupt { path: path.to_path_buf(), detail: "not a database".into() }
            }
            other => open_err(other),
        })?;
        if check != "ok" {
            return Err(KvError::Corrupt { path: path.to_path_buf(), detail: check });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                plugin TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                PRIMARY KEY (plugin, key)
            ) WITHOUT ROWID;",
        )
        .map_err(open_err)?;
        let quota = Usage { keys: MAX_KEYS, bytes: MAX_BYTES };
        Ok(Arc::new(KvStore {
            db: Arc::new(tokio::sync::Mutex::new(Db { conn, usage: Default::default() })),
            quota,
            lanes: Mutex::default(),
        }))
    }

    fn check_key(key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::BadKey("empty"));
        }
        if key.len() > MAX_KEY {
            return Err(KvError::BadKey("longer than 1024 bytes"));
        }
        Ok(())
    }

    /// Runs `f` on the database off the async threads, in `plugin`'s lane (after its operations
    /// before it have ended, even those whose callers went away).
    async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        plugin: &str,
        f: impl FnOnce(&mut Db) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let turn = self.turn(plugin).await;
        self.run(turn, f).await
    }

    /// Waits for `plugin`'s turn in its lane.
    async fn turn(&self, plugin: &str) -> tokio::sync::OwnedSemaphorePermit {
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            lanes.entry(plugin.to_owned()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1))).clone()
        };
        lane.acquire_owned().await.expect("UNWRAP: a lane is never closed")
    }

    /// Runs `f` on the database off the async threads, holding `turn` until it has run.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        turn: tokio::sync::OwnedSemaphorePermit,
        f: impl FnOnce(&mut Db) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        self.run_then(turn, f, Ok).await
    }

    /// [`KvStore::run`], then `after` on what `f` returned, on the same blocking thread and in
    /// the same turn of the plugin's lane, but with the database free for others: work on a
    /// value (checking a 14 MiB one's text) kept every plugin's `kv.get` waiting 1.5 s.
    async fn run_then<T: Send + 'static, U: Send + 'static>(
        self: &Arc<Self>,
        turn: tokio::sync::OwnedSemaphorePermit,
        f: impl FnOnce(&mut Db) -> Result<T, KvError> + Send + 'static,
        after: impl FnOnce(T) -> Result<U, KvError> + Send + 'static,
    ) -> Result<U, KvError> {
        // Plugins take the database in the order they asked for it, and each has at most one
        // operation asking (its lane): another plugin's call waits for one operation of a
        // flooding plugin's, not for the flood. (`std`'s mutex let a plugin's next operation
        // take the lock ahead of a waiting one: a `kv.set` of another plugin's waited 1.7 s.)
        let mut db = self.db.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            // Both held until the operation ends, not until its caller stops waiting for it.
            let _turn = turn;
            let done = f(&mut db);
            drop(db);
            after(done?)
        })
        .await
        .unwrap_or_else(|e| Err(KvError::BadKey(if e.is_panic() { "store panicked" } else { "store cancelled" })))
    }

    /// The value of `key`, if set, as its JSON text (never parsed into a tree: a 14 MiB array of
    /// small numbers is 500 MB as one). A text that is not JSON (an edited database) reads as
    /// unset.
    pub async fn get(self: &Arc<Self>, plugin: &str, key: &str) -> Result<Option<Box<RawValue>>, KvError> {
        Self::check_key(key)?;
        let turn = self.turn(plugin).await;
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        let query = move |db: &mut Db| {
            let text: Option<String> = db
                .conn
                .query_row("SELECT value FROM kv WHERE plugin = ?1 AND key = ?2", params![plugin, key], |r| r.get(0))
                .optional()?;
            Ok(text)
        };
        self.run_then(turn, query, |text| Ok(text.and_then(|t| RawValue::from_string(t).ok()))).await
    }

    /// Sets `key`; durable when this returns. Refused past the plugin's quota (a write that
    /// shrinks what it holds is always taken).
    pub async fn set(self: &Arc<Self>, plugin: &str, key: &str, value: &RawValue) -> Result<(), KvError> {
        Self::check_key(key)?;
        // The value's text is copied once it is this plugin's turn: a plugin's queued writes
        // hold only their params (counted in its request budget), not a copy of each. It is
        // kept as it came (checked JSON, never parsed into a tree).
        let turn = self.turn(plugin).await;
        let (plugin, key, text) = (plugin.to_owned(), key.to_owned(), value.get().to_owned());
        let quota = self.quota;
        self.run(turn, move |db| {
            let held = db.usage_of(&plugin)?;
            let old: Option<u64> = db
                .conn
                .query_row(
                    "SELECT length(CAST(value AS BLOB)) FROM kv WHERE plugin = ?1 AND key = ?2",
                    params![plugin, key],
                    |r| r.get(0),
                )
                .optional()?;
            let entry = (key.len() + text.len()) as u64;
            let after = match old {
                Some(old) => Usage { keys: held.keys, bytes: held.bytes - (key.len() as u64 + old).min(held.bytes) + entry },
                None => Usage { keys: held.keys + 1, bytes: held.bytes + entry },
            };
            if after.keys > quota.keys {
                return Err(KvError::Quota(format!(
                    "plugin {plugin} keeps {} keys, the most a plugin may keep; delete some first",
                    held.keys
                )));
            }
            if after.bytes > quota.bytes && after.bytes > held.bytes {
                return Err(KvError::Quota(format!(
                    "plugin {plugin}'s keys and values would take {} bytes, over the {} bytes a plugin may keep; delete some first (its data dir is for larger data)",
                    after.bytes, quota.bytes
                )));
            }
            db.conn.execute(
                "INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                params![plugin, key, text],
            )?;
            db.usage.insert(plugin, after);
            Ok(())
        })
        .await
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(self: &Arc<Self>, plugin: &str, key: &str) -> Result<bool, KvError> {
        Self::check_key(key)?;
        let (lane, plugin, key) = (plugin, plugin.to_owned(), key.to_owned());
        self.with_db(lane, move |db| {
            let freed: Option<u64> = db
                .conn
                .query_row(
                    "DELETE FROM kv WHERE plugin = ?1 AND key = ?2
                     RETURNING length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))",
                    params![plugin, key],
                    |r| r.get(0),
                )
                .optional()?;
            if let (Some(freed), Some(u)) = (freed, db.usage.get_mut(&plugin)) {
                u.keys = u.keys.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(freed);
            }
            Ok(freed.is_some())
        })
        .await
    }

    /// Keys starting with `prefix`, sorted.
    /// Keys starting with `prefix`, sorted, as the answer's JSON (`{"keys": [...]}`), written
    /// on the blocking thread once the database is free: up to 10 MiB of keys, whose text took
    /// plugind's async worker tens of milliseconds per `kv.list` in a flood.
    pub async fn list(self: &Arc<Self>, plugin: &str, prefix: Option<&str>) -> Result<Box<RawValue>, KvError> {
        let turn = self.turn(plugin).await;
        let (plugin, prefix) = (plugin.to_owned(), prefix.unwrap_or("").to_owned());
        let query = move |db: &mut Db| {
            let mut stmt = db.conn.prepare_cached(
                "SELECT key FROM kv WHERE plugin = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            )?;
            let keys =
                stmt.query_map(params![plugin, prefix], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        };
        #[derive(serde::Serialize)]
        struct Listed {
            keys: Vec<String>,
        }
        self.run_then(turn, query, |keys| {
            Ok(serde_json::value::to_raw_value(&Listed { keys }).expect("UNWRAP: strings serialize"))
        })
        .await
    }
}

impl Db {
    /// What `plugin`'s namespace holds: counted once, then kept by the writes.
    fn usage_of(&mut self, plugin: &str) -> Result<Usage, KvError> {
        if let Some(u) = self.usage.get(plugin) {
            return Ok(*u);
        }
        let (keys, bytes): (u64, u64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
             FROM kv WHERE plugin = ?1",
            params![plugin],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let u = Usage { keys, bytes };
        self.usage.insert(plugin.to_owned(), u);
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).expect("serializes")
    }

    fn parsed(v: &RawValue) -> Value {
        serde_json::from_str(v.get()).expect("JSON")
    }

    #[tokio::test]
    async fn namespaces_persistence_and_prefixes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.sqlite");
        let kv = KvStore::open(&path).expect("open");
        kv.set("a", "user/1", &raw(json!({"n": 1}))).await.expect("set");
        kv.set("a", "user/2", &raw(json!([2]))).await.expect("set");
        kv.set("a", "other", &raw(json!("x"))).await.expect("set");
        kv.set("b", "user/1", &raw(json!("b's"))).await.expect("set");
        assert_eq!(kv.get("a", "user/1").await.expect("get").map(|v| parsed(&v)), Some(json!({"n": 1})));
        assert_eq!(kv.get("b", "user/1").await.expect("get").map(|v| parsed(&v)), Some(json!("b's")));
        assert_eq!(parsed(&kv.list("a", Some("user/")).await.expect("list")), json!({"keys": ["user/1", "user/2"]}));
        assert!(kv.delete("a", "user/2").await.expect("delete"));
        assert!(!kv.delete("a", "user/2").await.expect("delete"));
        drop(kv);
        let kv = KvStore::open(&path).expect("reopen");
        assert_eq!(kv.get("a", "user/1").await.expect("get").map(|v| parsed(&v)), Some(json!({"n": 1})));
        assert_eq!(kv.get("a", "user/2").await.expect("get").map(|v| parsed(&v)), None);
        assert!(kv.get("a", "").await.is_err());
    }

    #[tokio::test]
    async fn each_namespace_is_held_to_its_quota_across_replaces_deletes_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.sqlite");
        let small = |kv: Arc<KvStore>| {
            let mut kv = Arc::into_inner(kv).expect("only owner");
            kv.quota = Usage { keys: 3, bytes: 100 };
            Arc::new(kv)
        };
        let kv = small(KvStore::open(&path).expect("open"));
        // 3 keys of 1 byte with values of 10 bytes ("\"12345678\""): 33 bytes.
        for k in ["a", "b", "c"] {
            kv.set("p", k, &raw(json!("12345678"))).await.expect("within quota");
        }
        let err = kv.set("p", "d", &raw(json!(1))).await.expect_err("a 4th key");
        assert!(err.to_string().contains("keeps 3 keys"), "{err}");
        kv.set("q", "d", &raw(json!(1))).await.expect("another plugin has its own quota");
        // Replacing a value counts only the difference.
        kv.set("p", "a", &raw(json!("x".repeat(60)))).await.expect("33 - 10 + 62 = 85 bytes");
        let err = kv.set("p", "b", &raw(json!("x".repeat(30)))).await.expect_err("85 - 10 + 32 = 107 bytes");
        assert!(err.to_string().contains("107 bytes"), "{err}");
        kv.set("p", "b", &raw(json!(1))).await.expect("a write that shrinks is taken");
        assert!(kv.delete("p", "c").await.expect("delete"));
        kv.set("p", "d", &raw(json!(1))).await.expect("a key freed by a delete");
        // After a restart what is held is counted again from the database.
        drop(kv);
        let kv = small(KvStore::open(&path).expect("reopen"));
        let err = kv.set("p", "e", &raw(json!(1))).await.expect_err("still 3 keys");
        assert!(err.to_string().contains("keeps 3 keys"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.sqlite");
        std::fs::write(&path, vec![b'x'; 8192]).expect("write");
        let err = KvStore::open(&path).err().expect("refused").to_string();
        assert!(err.contains("kv.sqlite") && (err.contains("corrupt") || err.contains("not a database")), "{err}");
    }
}
