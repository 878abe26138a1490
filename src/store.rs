//! Durable configuration: resources with revisions and a change stream.
//!
//! The shape follows etcd, APISIX's own store, so that a shared backend can
//! take sled's place later: keys are `/apisix/<kind>/<id>`, every committed
//! write bumps one store-wide revision, each entry remembers the revision
//! that created it and the one that last modified it, and watchers receive
//! every change in revision order.
//!
//! A write is an [`Store::update`]: a closure that reads the current state
//! and stages puts and deletes. Writers are serialised, the staged changes
//! are applied as one atomic sled batch together with the new revision, and
//! the call returns only after the batch is flushed to disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use portcullis_migrations as migrations;

const REVISION_KEY: &[u8] = b"#revision";
const CONFIG_TREE: &str = "config";
/// How many changes a slow watcher may fall behind before it must reload
/// everything (it is told it lagged).
const EVENT_BACKLOG: usize = 4096;

/// A stored resource with its revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Value,
    #[serde(rename = "createdIndex")]
    pub created_index: u64,
    #[serde(rename = "modifiedIndex")]
    pub modified_index: u64,
}

/// One committed change, as watchers see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: u64,
    pub key: String,
    /// The new entry, or `None` when the key was deleted.
    pub entry: Option<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {0} is in use by another Portcullis process \
         (only one process may open it at a time)"
    )]
    Locked(String),
    #[error("cannot open the data directory {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot write the store to disk: {0}")]
    Flush(String),
    #[error("stored entry {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Makes writes durable with one thread calling sled's blocking `flush`.
///
/// sled 0.34 can deadlock when several `flush_async` calls run at once, so
/// no caller flushes itself: each hands a waiter to this thread and awaits
/// it. A flush covers every write committed before it began, so the
/// waiters that queued up during one flush share the next.
pub struct Flusher {
    /// Waiters for the flusher thread; `None` once shutting down.
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushWaiter>>>,
    /// The thread, joined on drop so the database closes with the store.
    thread: Option<std::thread::JoinHandle<()>>,
}

type FlushWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

impl Flusher {
    pub fn start(db: sled::Db) -> Result<Flusher, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushWaiter>();
        let thread = std::thread::Builder::new()
            .name("portcullis-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = db.flush().map(drop).map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Flush(e.to_string()))?;
        Ok(Flusher {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    /// Returns once everything written before the call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let gone = || StoreError::Flush("the flusher thread is gone".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|q| q.send(tx).ok())
            .ok_or_else(gone)?;
        rx.await.map_err(|_| gone())?.map_err(StoreError::Flush)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Store {
    db: sled::Db,
    /// The one place durable writes are flushed from.
    flusher: std::sync::Arc<Flusher>,
    /// Resources under their keys, plus the revision counter.
    tree: sled::Tree,
    /// Serialises writers so revisions are handed out in commit order and a
    /// writer's reads are not invalidated before it commits.
    write_lock: Mutex<()>,
    /// Last committed revision; written only under `write_lock`.
    revision: AtomicU64,
    /// Committed changes, for the reloader.
    events: broadcast::Sender<Event>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and brings it to the current
    /// format.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            source: e.into(),
        })?;
        let db = sled::Config::new().path(dir).open().map_err(|e| match &e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::Locked(dir.display().to_string())
            }
            _ => StoreError::Open {
                path: dir.display().to_string(),
                source: e,
            },
        })?;
        migrations::migrate(&db)?;
        let tree = db.open_tree(CONFIG_TREE)?;
        let revision = match tree.get(REVISION_KEY)? {
            Some(raw) => {
                u64::from_be_bytes(raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: "#revision".into(),
                    reason: "not 8 bytes".into(),
                })?)
            }
            None => 0,
        };
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Ok(Store {
            flusher: std::sync::Arc::new(Flusher::start(db.clone())?),
            db,
            tree,
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(revision),
            events,
        })
    }

    /// The last committed revision.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.tree.get(key)?.map(|raw| decode(key, &raw)).transpose()
    }

    /// Every entry under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let entry = decode(&key, &v)?;
                Ok((key, entry))
            })
            .collect()
    }

    /// Subscribes to committed changes. Call before reading a snapshot to
    /// miss nothing; events at or below the snapshot's revision can be
    /// skipped.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The flusher, for other trees of the same database.
    pub fn flusher(&self) -> std::sync::Arc<Flusher> {
        self.flusher.clone()
    }

    /// Another tree of the same database, for data that is not
    /// configuration (browser sessions).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// A small metadata value (not a resource), e.g. the admin key hash.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(format!("meta/{key}"))?.map(|v| v.to_vec()))
    }

    pub async fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(format!("meta/{key}"), value)?;
        self.flusher.flush().await?;
        Ok(())
    }

    /// Runs `stage` against the current state and commits what it staged as
    /// one revision, durably. Nothing is written when `stage` fails or
    /// stages nothing.
    pub async fn update<T, E>(
        &self,
        stage: impl FnOnce(&mut Batch<'_>) -> Result<T, E>,
    ) -> Result<Committed<T>, E>
    where
        E: From<StoreError>,
    {
        let (out, revision) = {
            let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let revision = self.revision() + 1;
            let mut batch = Batch {
                store: self,
                revision,
                staged: BTreeMap::new(),
            };
            let out = stage(&mut batch)?;
            if batch.staged.is_empty() {
                return Ok(Committed {
                    value: out,
                    revision: None,
                });
            }

            // Apply every staged change and the new revision atomically.
            let mut sled_batch = sled::Batch::default();
            for (key, entry) in &batch.staged {
                match entry {
                    Some(e) => sled_batch.insert(
                        key.as_bytes(),
                        serde_json::to_vec(e).map_err(|e| StoreError::Corrupt {
                            key: key.clone(),
                            reason: e.to_string(),
                        })?,
                    ),
                    None => sled_batch.remove(key.as_bytes()),
                }
            }
            sled_batch.insert(REVISION_KEY, &revision.to_be_bytes());
            self.tree
                .apply_batch(sled_batch)
                .map_err(StoreError::from)?;
            self.revision.store(revision, Ordering::Release);

            // Publish in commit order, while still holding the lock.
            for (key, entry) in batch.staged {
                // No receiver is fine: nothing is watching yet.
                let _ = self.events.send(Event {
                    revision,
                    key,
                    entry,
                });
            }
            (out, revision)
        };

        // Durable before the caller answers; concurrent flushes coalesce.
        self.flusher.flush().await?;
        Ok(Committed {
            value: out,
            revision: Some(revision),
        })
    }
}

/// What an [`Store::update`] returned, and the revision it committed
/// (`None` when it staged nothing).
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub revision: Option<u64>,
}

/// The staging area of one write: reads see staged changes.
pub struct Batch<'a> {
    store: &'a Store,
    revision: u64,
    staged: BTreeMap<String, Option<Entry>>,
}

impl Batch<'_> {
    /// The revision this write will commit as.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.staged.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.store.get(key),
        }
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let mut all: BTreeMap<String, Entry> = self.store.list(prefix)?.into_iter().collect();
        for (k, v) in self.staged.range(prefix.to_owned()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(e) => all.insert(k.clone(), e.clone()),
                None => all.remove(k),
            };
        }
        Ok(all.into_iter().collect())
    }

    /// Stages `value` under `key`, keeping the creation revision of an
    /// existing entry. Returns the staged entry and whether it is new.
    pub fn put(&mut self, key: &str, value: Value) -> Result<(Entry, bool), StoreError> {
        let previous = self.get(key)?;
        let entry = Entry {
            value,
            created_index: previous.as_ref().map_or(self.revision, |p| p.created_index),
            modified_index: self.revision,
        };
        self.staged.insert(key.to_owned(), Some(entry.clone()));
        Ok((entry, previous.is_none()))
    }

    /// Stages the removal of `key`; returns whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let existed = self.get(key)?.is_some();
        if existed {
            self.staged.insert(key.to_owned(), None);
        }
        Ok(existed)
    }
}

fn decode(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pc-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn revisions_and_persistence() {
        let dir = temp_dir("rev");
        {
            let store = Store::open(&dir).unwrap();
            let mut events = store.subscribe();
            let c = store
                .update(|b| b.put("/apisix/routes/1", json!({"uri":"/a"})))
                .await
                .unwrap();
            assert_eq!(c.revision, Some(1));
            assert!(c.value.1, "new");
            store
                .update(|b| b.put("/apisix/routes/1", json!({"uri":"/b"})))
                .await
                .unwrap();
            let e = store.get("/apisix/routes/1").unwrap().unwrap();
            assert_eq!((e.created_index, e.modified_index), (1, 2));
            assert_eq!(events.recv().await.unwrap().revision, 1);
            assert_eq!(events.recv().await.unwrap().revision, 2);
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.revision(), 2);
        assert_eq!(store.list("/apisix/routes/").unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_become_durable() {
        let dir = temp_dir("concurrent");
        let store = std::sync::Arc::new(Store::open(&dir).unwrap());
        let writers: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    for j in 0..10 {
                        store
                            .update(|b| {
                                b.put(&format!("/apisix/routes/{i}-{j}"), json!({"uri": "/x"}))
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            tokio::time::timeout(std::time::Duration::from_secs(30), w)
                .await
                .expect("writes finish")
                .unwrap();
        }
        assert_eq!(store.revision(), 320);
        assert_eq!(store.list("/apisix/routes/").unwrap().len(), 320);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn failed_stage_writes_nothing() {
        let dir = temp_dir("fail");
        let store = Store::open(&dir).unwrap();
        let r: Result<Committed<()>, StoreError> = store
            .update(|b| {
                b.put("/apisix/routes/1", json!({}))?;
                Err(StoreError::Corrupt {
                    key: "x".into(),
                    reason: "refused".into(),
                })
            })
            .await;
        assert!(r.is_err());
        assert!(store.get("/apisix/routes/1").unwrap().is_none());
        assert_eq!(store.revision(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
