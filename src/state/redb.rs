//! The embedded store (see [`RedbStore`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    check_claim, check_reminder, check_save, check_size, BoxFuture, ReminderRow, StateKey,
    StateStore, StoreError, Stored,
};

/// A row's key: `(kind, id)`.
type RowKey<'a> = (&'a str, &'a str);
/// A row: `(version, fence, shard, bytes)`.
type RowValue<'a> = (u64, u64, u16, Option<&'a [u8]>);

/// The rows.
const ROWS: TableDefinition<RowKey, RowValue> = TableDefinition::new("mesh_state");

/// A reminder's key: `(kind, id, name)`.
type ReminderKey<'a> = (&'a str, &'a str, &'a str);
/// A reminder: `(shard, due_ms, period_ms, version, fence, live,
/// payload)`; not live: a deleted one's tombstone (version and fence
/// kept, not in [`DUE`]).
type ReminderValue<'a> = (u16, u64, u64, u64, u64, bool, &'a [u8]);
/// The reminders.
const REMINDERS: TableDefinition<ReminderKey, ReminderValue> =
    TableDefinition::new("mesh_reminders");
/// The reminders by when they are due: `(kind, shard, due_ms, id, name)`,
/// kept beside [`REMINDERS`] in the same transactions.
type DueKey<'a> = (&'a str, u16, u64, &'a str, &'a str);
const DUE: TableDefinition<DueKey, ()> = TableDefinition::new("mesh_reminders_due");

/// How the embedded store works.
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// Commit with an fsync (redb's `Durability::Immediate`): on by
    /// default. Off, writes survive a crash of the process but not of the
    /// machine (benchmarks say which they measured).
    pub fsync: bool,
    /// The largest row, in bytes ([`super::DEFAULT_MAX_ROW`]).
    pub max_row: usize,
    /// The most operations one commit takes (1024).
    pub max_batch: usize,
    /// Operations queued for the writer before callers wait (4096).
    pub queue: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            fsync: true,
            max_row: super::DEFAULT_MAX_ROW,
            max_batch: 1024,
            queue: 4096,
        }
    }
}

/// The embedded store: one file on this machine, through
/// [redb](https://docs.rs/redb) (pure Rust, copy-on-write B-tree, one
/// writer). Durable on one machine: a node that restarts on the same disk
/// finds every acknowledged write; another machine finds nothing.
///
/// **Group commit.** One writer thread takes every claim and save queued
/// since its last commit (up to [`RedbOptions::max_batch`]), applies them
/// in order in one write transaction (each a read-compare-write on the
/// row; a later one in the batch sees the earlier ones) and commits once:
/// one fsync for the batch, then every caller gets its answer. A refused
/// operation writes nothing and does not abort the others.
///
/// Contracts (besides the store contract of [`super`]):
/// - `Ok` from `save` comes after the commit returned: with
///   [`RedbOptions::fsync`] (the default) the bytes are on disk. Without
///   it, a commit is durable only once a later fsync'd one follows, so a
///   crash of the machine (not of the process) may lose the newest writes.
/// - A commit that fails answers every write of its batch
///   [`StoreError::Uncertain`]; a transaction that cannot begin answers
///   [`StoreError::Unavailable`] (nothing written).
/// - Plain loads read a snapshot on tokio's blocking pool, beside the
///   writer; a load sees every save acknowledged before it started.
/// - Drop: dropping the last clone of the store closes the queue and
///   waits (blocking) for the writer thread to answer what was queued (a
///   commit at most) and end; then the file is free. One process opens a
///   file at a time (redb refuses a second: [`RedbStore::open`] fails,
///   saying so).
#[derive(Debug, Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    writer: Arc<WriterHandle>,
    limit: usize,
    path: Arc<PathBuf>,
}

/// The writer's queue and thread: dropped with the last clone of the
/// store, which closes the queue and waits for the thread to end (it
/// answers what was queued first), so that the file is free again when
/// the drop returns.
#[derive(Debug)]
struct WriterHandle {
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.ops = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the writer is asked.
enum Op {
    Claim {
        key: StateKey,
        token: u64,
        reply: oneshot::Sender<Result<Stored, StoreError>>,
    },
    Save {
        key: StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// A reminder written (`row: Some`) or deleted (`None`, `name` of
    /// `key`); answers the new version (0 for a delete).
    Reminder {
        key: StateKey,
        name: Arc<str>,
        row: Option<Box<ReminderRow>>,
        expected: u64,
        token: Option<u64>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Claim { key, token, .. } => write!(f, "Claim({key:?}, {token})"),
            Op::Save { key, expected, .. } => write!(f, "Save({key:?}, {expected})"),
            Op::Reminder {
                key,
                name,
                expected,
                ..
            } => write!(f, "Reminder({key:?}, {name}, {expected})"),
        }
    }
}

/// An operation's answer, sent once the batch committed.
enum Answer {
    Claim(
        oneshot::Sender<Result<Stored, StoreError>>,
        Result<Stored, StoreError>,
    ),
    Save(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
}

impl RedbStore {
    /// Opens (or creates) the store at `path` with the default options.
    /// Blocks while it opens the file (a start-up step).
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, RedbOptions::default())
    }

    /// The same with `options`.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: RedbOptions,
    ) -> Result<RedbStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("{}: {e}", path.display()).into())
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(&e))?;
        }
        let db = Database::create(&path).map_err(|e| unavailable(&e))?;
        // The table exists from the start: a read never finds it missing.
        let tx = db.begin_write().map_err(|e| unavailable(&e))?;
        tx.open_table(ROWS).map_err(|e| unavailable(&e))?;
        tx.open_table(REMINDERS).map_err(|e| unavailable(&e))?;
        tx.open_table(DUE).map_err(|e| unavailable(&e))?;
        tx.commit().map_err(|e| unavailable(&e))?;
        let db = Arc::new(db);
        let (ops, rx) = mpsc::channel(options.queue.max(1));
        let writer = Writer {
            db: db.clone(),
            rx,
            fsync: options.fsync,
            max_batch: options.max_batch.max(1),
            limit: options.max_row,
        };
        let thread = std::thread::Builder::new()
            .name("mesh-state-redb".into())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(&e))?;
        Ok(RedbStore {
            db,
            writer: Arc::new(WriterHandle {
                ops: Some(ops),
                thread: Some(thread),
            }),
            limit: options.max_row,
            path: Arc::new(path),
        })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `op` to the writer and waits for its answer.
    async fn ask<T>(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(ops) = &self.writer.ops else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        if ops.send(op).await.is_err() {
            return Err(StoreError::Unavailable(
                "the store's writer has ended".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Uncertain(
                "the store's writer ended mid-batch".into(),
            ))
        })
    }
}

impl StateStore for RedbStore {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            if let Some(token) = claim {
                let (reply, answer) = oneshot::channel();
                let op = Op::Claim {
                    key: key.clone(),
                    token,
                    reply,
                };
                return self.ask(op, answer).await;
            }
            let (db, key, limit) = (self.db.clone(), key.clone(), self.limit);
            tokio::task::spawn_blocking(move || read(&db, &key, limit))
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Unavailable(
                        format!("the read failed: {e}").into(),
                    ))
                })
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            check_size(bytes, self.limit)?;
            let (reply, answer) = oneshot::channel();
            let op = Op::Save {
                key: key.clone(),
                expected,
                token,
                bytes: bytes.map(<[u8]>::to_vec),
                reply,
            };
            self.ask(op, answer).await
        })
    }

    fn put_reminder<'a>(
        &'a self,
        row: &'a ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            check_size(Some(&row.payload), self.limit)?;
            let (reply, answer) = oneshot::channel();
            let op = Op::Reminder {
                key: row.key.clone(),
                name: row.name.clone(),
                row: Some(Box::new(row.clone())),
                expected,
                token,
                reply,
            };
            self.ask(op, answer).await
        })
    }

    fn delete_reminder<'a>(
        &'a self,
        key: &'a StateKey,
        name: &'a str,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let op = Op::Reminder {
                key: key.clone(),
                name: name.into(),
                row: None,
                expected,
                token,
                reply,
            };
            self.ask(op, answer).await.map(drop)
        })
    }

    fn reminders_of<'a>(
        &'a self,
        key: &'a StateKey,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let (db, key, limit) = (self.db.clone(), key.clone(), self.limit);
        Box::pin(blocking(move || reminders_of(&db, &key, limit)))
    }

    fn reminders_due<'a>(
        &'a self,
        kind: &'a str,
        shards: &'a [u16],
        before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let (db, kind, shards) = (self.db.clone(), kind.to_owned(), shards.to_vec());
        let max_row = self.limit;
        Box::pin(blocking(move || {
            reminders_due(&db, &kind, &shards, before_ms, limit, max_row)
        }))
    }
}

/// Runs a read on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Unavailable(
            format!("the read failed: {e}").into(),
        ))
    })
}

fn unavailable(e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string().into())
}

/// A stored reminder, its payload copied out if within `limit`.
fn reminder_row(
    key: &StateKey,
    name: &str,
    (shard, due_ms, period_ms, version, _, _, payload): ReminderValue,
    limit: usize,
) -> Result<ReminderRow, StoreError> {
    check_size(Some(payload), limit)?;
    Ok(ReminderRow {
        key: StateKey {
            kind: key.kind.clone(),
            id: key.id.clone(),
            shard,
        },
        name: name.into(),
        due_ms,
        period_ms,
        payload: payload.to_vec(),
        version,
    })
}

/// The reminders of `key`'s actor, by name, on a snapshot.
fn reminders_of(
    db: &Database,
    key: &StateKey,
    limit: usize,
) -> Result<Vec<ReminderRow>, StoreError> {
    let tx = db.begin_read().map_err(|e| unavailable(&e))?;
    let t = tx.open_table(REMINDERS).map_err(|e| unavailable(&e))?;
    let from: ReminderKey = (&*key.kind, &*key.id, "");
    let mut out = Vec::new();
    for entry in t.range(from..).map_err(|e| unavailable(&e))? {
        let (k, v) = entry.map_err(|e| unavailable(&e))?;
        let (kind, id, name) = k.value();
        if kind != &*key.kind || id != &*key.id {
            break;
        }
        let v = v.value();
        if v.5 {
            out.push(reminder_row(key, name, v, limit)?);
        }
    }
    Ok(out)
}

/// The reminders of `kind` in `shards` due before `before_ms`, earliest
/// first, at most `limit`, on a snapshot.
fn reminders_due(
    db: &Database,
    kind: &str,
    shards: &[u16],
    before_ms: u64,
    limit: usize,
    max_row: usize,
) -> Result<Vec<ReminderRow>, StoreError> {
    let tx = db.begin_read().map_err(|e| unavailable(&e))?;
    let due = tx.open_table(DUE).map_err(|e| unavailable(&e))?;
    let rows = tx.open_table(REMINDERS).map_err(|e| unavailable(&e))?;
    let mut found: Vec<(u64, String, String)> = Vec::new();
    for &shard in shards {
        let from: DueKey = (kind, shard, 0, "", "");
        let to: DueKey = (kind, shard, before_ms, "", "");
        for entry in due.range(from..to).map_err(|e| unavailable(&e))? {
            let (k, _) = entry.map_err(|e| unavailable(&e))?;
            let (_, _, at, id, name) = k.value();
            found.push((at, id.to_owned(), name.to_owned()));
        }
    }
    found.sort();
    found.truncate(limit);
    let mut out = Vec::with_capacity(found.len());
    for (_, id, name) in found {
        let key = StateKey {
            kind: kind.into(),
            id: id.as_str().into(),
            shard: 0,
        };
        if let Some(v) = rows
            .get((kind, id.as_str(), name.as_str()))
            .map_err(|e| unavailable(&e))?
        {
            let v = v.value();
            if v.5 {
                match reminder_row(&key, &name, v, max_row) {
                    Ok(row) => out.push(row),
                    // One row this store cannot hold (over its limit) does
                    // not keep the others from firing.
                    Err(e @ StoreError::TooLarge { .. }) => {
                        tracing::warn!(kind, id, name, "a due reminder skipped: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// A plain load, on a snapshot.
fn read(db: &Database, key: &StateKey, limit: usize) -> Result<Stored, StoreError> {
    let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(e.to_string().into());
    let tx = db.begin_read().map_err(|e| unavailable(&e))?;
    let t = tx.open_table(ROWS).map_err(|e| unavailable(&e))?;
    let row = t.get((&*key.kind, &*key.id)).map_err(|e| unavailable(&e))?;
    match row {
        None => Ok(Stored::default()),
        Some(g) => {
            let (version, _, _, bytes) = g.value();
            Ok(Stored {
                version,
                bytes: owned(bytes, limit)?,
            })
        }
    }
}

/// A row's bytes, copied out if they are within `limit`.
fn owned(bytes: Option<&[u8]>, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
    check_size(bytes, limit)?;
    Ok(bytes.map(<[u8]>::to_vec))
}

/// The writer thread: group commit.
struct Writer {
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    fsync: bool,
    max_batch: usize,
    limit: usize,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(op) = self.rx.blocking_recv() {
            batch.push(op);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    /// Applies and commits `batch` (emptied), then answers each operation.
    fn commit(&self, batch: &mut Vec<Op>) {
        let mut ops = std::mem::take(batch).into_iter();
        let mut tx = match self.db.begin_write() {
            Ok(tx) => tx,
            Err(e) => return fail_all(ops, StoreError::Unavailable(e.to_string().into())),
        };
        let durability = if self.fsync {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = tx.set_durability(durability) {
            return fail_all(ops, StoreError::Unavailable(e.to_string().into()));
        }
        let mut answers = Vec::with_capacity(ops.len());
        let applied = (|| -> Result<(), redb::Error> {
            let mut t = tx.open_table(ROWS)?;
            for op in ops.by_ref() {
                answers.push(match op {
                    Op::Claim { key, token, reply } => {
                        let k = (&*key.kind, &*key.id);
                        let row = t.get(k)?.map(|g| {
                            let (v, f, _, b) = g.value();
                            (v, f, owned(b, self.limit))
                        });
                        let out = match row {
                            Some((_, _, Err(e))) => Err(e),
                            Some((v, f, Ok(bytes))) => {
                                check_claim(Some((v, f)), token).map(|()| (v, bytes))
                            }
                            None => Ok((0, None)),
                        };
                        if let Ok((version, bytes)) = &out {
                            t.insert(k, (*version, token, key.shard, bytes.as_deref()))?;
                        }
                        let out = out.map(|(version, bytes)| Stored { version, bytes });
                        Answer::Claim(reply, out)
                    }
                    Op::Save {
                        key,
                        expected,
                        token,
                        bytes,
                        reply,
                    } => {
                        let k = (&*key.kind, &*key.id);
                        let row = t.get(k)?.map(|g| {
                            let (v, f, _, _) = g.value();
                            (v, f)
                        });
                        let out = check_save(row, expected, token);
                        if out.is_ok() {
                            let fence = token.unwrap_or_else(|| row.map_or(0, |(_, f)| f));
                            t.insert(k, (expected + 1, fence, key.shard, bytes.as_deref()))?;
                        }
                        Answer::Save(reply, out.map(|()| expected + 1))
                    }
                    Op::Reminder {
                        key,
                        name,
                        row,
                        expected,
                        token,
                        reply,
                    } => {
                        let mut rt = tx.open_table(REMINDERS)?;
                        let mut due = tx.open_table(DUE)?;
                        let k = (&*key.kind, &*key.id, &*name);
                        let old = rt.get(k)?.map(|g| {
                            let (shard, at, _, v, f, live, _) = g.value();
                            (shard, at, v, f, live)
                        });
                        let out = check_reminder(
                            old.map(|(_, _, v, f, live)| (v, f, live)),
                            expected,
                            token,
                        );
                        if let Ok(version) = out {
                            let fence = token.unwrap_or_else(|| old.map_or(0, |(_, _, _, f, _)| f));
                            if let Some((shard, at, _, _, true)) = old {
                                due.remove((&*key.kind, shard, at, &*key.id, &*name))?;
                            }
                            match &row {
                                Some(r) => {
                                    let value = (
                                        key.shard,
                                        r.due_ms,
                                        r.period_ms,
                                        version,
                                        fence,
                                        true,
                                        &r.payload[..],
                                    );
                                    rt.insert(k, value)?;
                                    due.insert(
                                        (&*key.kind, key.shard, r.due_ms, &*key.id, &*name),
                                        (),
                                    )?;
                                }
                                // A tombstone, for a live one only.
                                None => {
                                    if let Some((shard, at, _, _, true)) = old {
                                        rt.insert(
                                            k,
                                            (shard, at, 0, version, fence, false, &[][..]),
                                        )?;
                                    }
                                }
                            }
                        }
                        Answer::Save(reply, out)
                    }
                });
            }
            Ok(())
        })();
        if let Err(e) = applied {
            // Nothing of the batch is committed (the transaction drops).
            let e = StoreError::Unavailable(e.to_string().into());
            for a in answers {
                a.send_err(e.clone());
            }
            return fail_all(ops, e);
        }
        match tx.commit() {
            Ok(()) => answers.into_iter().for_each(Answer::send),
            Err(e) => {
                let e = StoreError::Uncertain(format!("the commit failed: {e}").into());
                for a in answers {
                    a.send_err_if_ok(e.clone());
                }
            }
        }
    }
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Claim(r, out) => drop(r.send(out)),
            Answer::Save(r, out) => drop(r.send(out)),
        }
    }

    fn send_err(self, e: StoreError) {
        match self {
            Answer::Claim(r, _) => drop(r.send(Err(e))),
            Answer::Save(r, _) => drop(r.send(Err(e))),
        }
    }

    /// After a failed commit: a refusal stands (it wrote nothing), a write
    /// is uncertain.
    fn send_err_if_ok(self, e: StoreError) {
        match self {
            Answer::Claim(r, out) => drop(r.send(out.and(Err(e)))),
            Answer::Save(r, out) => drop(r.send(out.and(Err(e)))),
        }
    }
}

/// Answers every operation of `ops` with `e`.
fn fail_all(ops: impl Iterator<Item = Op>, e: StoreError) {
    for op in ops {
        match op {
            Op::Claim { reply, .. } => drop(reply.send(Err(e.clone()))),
            Op::Save { reply, .. } | Op::Reminder { reply, .. } => drop(reply.send(Err(e.clone()))),
        }
    }
}
