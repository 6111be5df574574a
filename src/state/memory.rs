//! The store in memory: for tests, and for an actor whose state need not
//! outlive the process. Every operation is atomic under one mutex, never
//! held across an await; nothing is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{
    check_claim, check_reminder, check_save, check_size, BoxFuture, ReminderRow, StateKey,
    StateStore, StoreError, Stored,
};
use crate::util::lock;

/// One row: version, fence, bytes.
type Row = (u64, u64, Option<Vec<u8>>);

/// The rows by (kind, id).
type Rows = HashMap<(Arc<str>, Arc<str>), Row>;

/// The reminders by (kind, id, name), each with its fence and whether it
/// is live (`false`: a deleted one's tombstone).
type Reminders = BTreeMap<(Arc<str>, Arc<str>, Arc<str>), (ReminderRow, u64, bool)>;

/// A [`StateStore`] in memory (nothing survives the process). Clones
/// share the rows.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    rows: Arc<Mutex<Rows>>,
    reminders: Arc<Mutex<Reminders>>,
    limit: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_limit(super::DEFAULT_MAX_ROW)
    }
}

impl MemoryStore {
    /// An empty store, rows up to [`super::DEFAULT_MAX_ROW`].
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store whose rows may hold up to `limit` bytes.
    pub fn with_limit(limit: usize) -> MemoryStore {
        MemoryStore {
            rows: Arc::default(),
            reminders: Arc::default(),
            limit,
        }
    }

    /// How many rows it holds (cleared ones included).
    pub fn len(&self) -> usize {
        lock(&self.rows).len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        let out = (|| {
            let mut rows = lock(&self.rows);
            let k = (key.kind.clone(), key.id.clone());
            let row = rows.get(&k).map(|(v, f, _)| (*v, *f));
            if let Some(token) = claim {
                check_claim(row, token)?;
                let r = rows.entry(k.clone()).or_insert((0, 0, None));
                r.1 = token;
            }
            let (version, _, bytes) = rows.get(&k).cloned().unwrap_or_default();
            Ok(Stored { version, bytes })
        })();
        Box::pin(std::future::ready(out))
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let out = (|| {
            check_size(bytes, self.limit)?;
            let mut rows = lock(&self.rows);
            let k = (key.kind.clone(), key.id.clone());
            let r = rows.get(&k).map(|(v, f, _)| (*v, *f));
            check_save(r, expected, token)?;
            let fence = token.unwrap_or_else(|| r.map_or(0, |(_, f)| f));
            rows.insert(k, (expected + 1, fence, bytes.map(<[u8]>::to_vec)));
            Ok(expected + 1)
        })();
        Box::pin(std::future::ready(out))
    }

    fn put_reminder<'a>(
        &'a self,
        row: &'a ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let out = (|| {
            check_size(Some(&row.payload), self.limit)?;
            let mut all = lock(&self.reminders);
            let k = (row.key.kind.clone(), row.key.id.clone(), row.name.clone());
            let r = all.get(&k).map(|(r, f, live)| (r.version, *f, *live));
            let version = check_reminder(r, expected, token)?;
            let fence = token.unwrap_or_else(|| r.map_or(0, |(_, f, _)| f));
            let stored = ReminderRow {
                version,
                ..row.clone()
            };
            all.insert(k, (stored, fence, true));
            Ok(version)
        })();
        Box::pin(std::future::ready(out))
    }

    fn delete_reminder<'a>(
        &'a self,
        key: &'a StateKey,
        name: &'a str,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let out = (|| {
            let mut all = lock(&self.reminders);
            let k = (key.kind.clone(), key.id.clone(), Arc::<str>::from(name));
            let r = all.get(&k).map(|(r, f, live)| (r.version, *f, *live));
            let version = check_reminder(r, expected, token)?;
            if let Some((row, fence, live)) = all.get_mut(&k).filter(|(_, _, live)| *live) {
                row.version = version;
                *fence = token.unwrap_or(*fence);
                *live = false;
            }
            Ok(())
        })();
        Box::pin(std::future::ready(out))
    }

    fn reminders_of<'a>(
        &'a self,
        key: &'a StateKey,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let all = lock(&self.reminders);
        let mine = all
            .values()
            .filter(|(r, _, live)| *live && r.key.kind == key.kind && r.key.id == key.id)
            .map(|(r, _, _)| r.clone())
            .collect();
        Box::pin(std::future::ready(Ok(mine)))
    }

    fn reminders_due<'a>(
        &'a self,
        kind: &'a str,
        shards: &'a [u16],
        before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let all = lock(&self.reminders);
        let mut due: Vec<ReminderRow> = all
            .values()
            .filter(|(_, _, live)| *live)
            .map(|(r, _, _)| r)
            .filter(|r| {
                &*r.key.kind == kind && r.due_ms < before_ms && shards.contains(&r.key.shard)
            })
            .cloned()
            .collect();
        due.sort_by_key(|r| r.due_ms);
        due.truncate(limit);
        Box::pin(std::future::ready(Ok(due)))
    }
}
