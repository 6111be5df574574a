//! The PostgreSQL store (see [`PgStore`]).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use super::{check_size, BoxFuture, ReminderRow, StateKey, StateStore, StoreError, Stored};

/// How the PostgreSQL store connects and works.
#[derive(Clone)]
pub struct PgOptions {
    /// Connections (16). Operations go round them, each connection
    /// shared: the statements of concurrent operations on one connection
    /// are pipelined (sent without waiting for the answers before them).
    pub pool: usize,
    /// The schema the table lives in (`public`).
    pub schema: String,
    /// The most one operation may take, the wait for a connection
    /// included (5 s).
    pub timeout: Duration,
    /// The largest row, in bytes ([`super::DEFAULT_MAX_ROW`]).
    pub max_row: usize,
    /// TLS: the PEM certificates that verify the server's (its CA), or
    /// `None` (no TLS). With roots, every TCP connection is TLS (an
    /// `sslmode` of `prefer`, the default, is raised to `require`, so no
    /// one between can downgrade it to plain text), the server's
    /// certificate is checked against them and against the connection
    /// string's host (libpq's `verify-full`), on mesh's crypto provider.
    /// Without them, `sslmode=require` is refused: it would encrypt to
    /// anyone. Unix sockets never use TLS.
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool", &self.pool)
            .field("schema", &self.schema)
            .field("timeout", &self.timeout)
            .field("max_row", &self.max_row)
            .field(
                "ca",
                &self
                    .ca
                    .as_ref()
                    .map(|c| format!("{} bytes of PEM", c.len())),
            )
            .finish()
    }
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool: 16,
            schema: "public".into(),
            timeout: Duration::from_secs(5),
            max_row: super::DEFAULT_MAX_ROW,
            ca: None,
        }
    }
}

/// The store for clusters: one PostgreSQL table every node reaches,
/// through [tokio-postgres](https://docs.rs/tokio-postgres) and a pool of
/// connections ([deadpool-postgres](https://docs.rs/deadpool-postgres)).
///
/// ```sql
/// CREATE TABLE <schema>.mesh_state (
///     kind    text   NOT NULL,  -- <capability>/<actor>
///     id      bytea  NOT NULL,  -- the id's UTF-8 bytes (text refuses NUL)
///     shard   int    NOT NULL,
///     version bigint NOT NULL,  -- writes so far; 0 = never written
///     fence   bigint NOT NULL,  -- highest fencing token seen
///     payload bytea,            -- NULL = cleared (a tombstone, never deleted)
///     PRIMARY KEY (kind, id));
/// ```
///
/// Each operation is one statement, atomic at READ COMMITTED (a blocked
/// `UPDATE` re-checks its `WHERE` on the row version it waited for; an
/// `INSERT ... ON CONFLICT DO UPDATE` is an atomic insert or update):
///
/// - a claim: `INSERT ... ON CONFLICT DO UPDATE SET fence = $token WHERE
///   fence <= $token RETURNING version, payload` (no row back: fenced);
/// - a save on version 0: the same upsert, `WHERE version = 0` (and the
///   fence, with a token); on version `v > 0`: `UPDATE ... WHERE version =
///   v` (and the fence). One row changed: written; none: a second
///   `SELECT` (off the hot path) says whether it was a conflict or a fence.
///
/// Connections: [`PgOptions::pool`] of them, taken from the pool as first
/// needed and each shared by the operations sent round-robin to it, so
/// that concurrent operations are *pipelined* (tokio-postgres sends a
/// statement without waiting for the answers of those before it on the
/// connection; each operation gets its own answer, in order). One failed
/// operation fails no other; a broken connection fails the operations in
/// flight on it (saves as [`StoreError::Uncertain`]) and is replaced by
/// the next operation on its lane.
///
/// Contracts (besides the store contract of [`super`]):
/// - The table (and the schema) are created on first use, by whichever
///   node gets there first (`IF NOT EXISTS`, a concurrent creation
///   tolerated); a server that is down at start is not an error: calls
///   fail with [`StoreError::Unavailable`] until it answers.
/// - Every operation is bounded by [`PgOptions::timeout`] (the wait for a
///   connection included). A load or a save that fails before the
///   statement was sent, or that the server refused (a database error),
///   wrote nothing: [`StoreError::Unavailable`]. A save whose connection
///   broke or that timed out after sending may have committed:
///   [`StoreError::Uncertain`].
/// - A row is read back only if its payload is within
///   [`PgOptions::max_row`] (the length is checked in the statement), so
///   a row grown by another writer never makes this node allocate it.
/// - TLS with [`PgOptions::ca`] (see there), on rustls and mesh's crypto
///   provider; without it, connect over a Unix socket or a trusted
///   network.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    options: Arc<PgOptions>,
    sql: Arc<Sql>,
    /// Set once the table exists (created on first use).
    ready: Arc<OnceCell<()>>,
    /// The connections statements are pipelined on, taken from the pool
    /// as first needed (see [`PgStore::client`]).
    lanes: Arc<Lanes>,
}

/// A lane's connection, lent to one operation.
struct Lease {
    lane: usize,
    c: Arc<deadpool_postgres::Object>,
}

/// One shared connection per lane; operations go round the lanes.
struct Lanes {
    lanes: Vec<tokio::sync::Mutex<Option<Arc<deadpool_postgres::Object>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The statements, with the schema in them.
struct Sql {
    create: String,
    load: String,
    claim: String,
    insert: String,
    insert_fenced: String,
    update: String,
    update_fenced: String,
    row: String,
    r_insert: String,
    r_update: String,
    r_delete: String,
    r_row: String,
    r_of: String,
    r_due: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let t = format!("{}.mesh_state", quote_ident(schema));
        let r = format!("{}.mesh_reminders", quote_ident(schema));
        // `IF NOT EXISTS` does not make two sessions' creates safe against
        // each other (the loser fails on the catalog: "type already
        // exists", a unique violation): a transaction-scoped advisory lock
        // on the schema's name makes nodes that start together take turns.
        let turn = xxhash_rust::xxh3::xxh3_64(format!("mesh_state:{schema}").as_bytes()) as i64;
        Sql {
            create: format!(
                "BEGIN; SELECT pg_advisory_xact_lock({turn}); \
                 CREATE SCHEMA IF NOT EXISTS {schema}; \
                 CREATE TABLE IF NOT EXISTS {t} (kind text NOT NULL, id bytea NOT NULL, \
                 shard int NOT NULL, version bigint NOT NULL, fence bigint NOT NULL, \
                 payload bytea, PRIMARY KEY (kind, id)); \
                 CREATE TABLE IF NOT EXISTS {r} (kind text NOT NULL, id bytea NOT NULL, \
                 name bytea NOT NULL, shard int NOT NULL, due_ms bigint NOT NULL, \
                 period_ms bigint NOT NULL, payload bytea, version bigint NOT NULL, \
                 fence bigint NOT NULL, PRIMARY KEY (kind, id, name)); \
                 CREATE INDEX IF NOT EXISTS mesh_reminders_due ON {r} (kind, shard, due_ms); \
                 COMMIT",
                schema = quote_ident(schema)
            ),
            // $3: the row limit. A longer payload comes back as NULL with
            // its length, never as bytes.
            load: format!(
                "SELECT version, CASE WHEN octet_length(payload) > $3 THEN NULL ELSE payload END, \
                 octet_length(payload) FROM {t} WHERE kind = $1 AND id = $2"
            ),
            claim: format!(
                "INSERT INTO {t} AS s (kind, id, shard, version, fence, payload) \
                 VALUES ($1, $2, $3, 0, $4, NULL) \
                 ON CONFLICT (kind, id) DO UPDATE SET fence = EXCLUDED.fence \
                 WHERE s.fence <= EXCLUDED.fence \
                 RETURNING s.version, CASE WHEN octet_length(s.payload) > $5 THEN NULL ELSE s.payload END, \
                 octet_length(s.payload)"
            ),
            insert: format!(
                "INSERT INTO {t} AS s (kind, id, shard, version, fence, payload) \
                 VALUES ($1, $2, $3, 1, 0, $4) \
                 ON CONFLICT (kind, id) DO UPDATE SET version = 1, payload = EXCLUDED.payload \
                 WHERE s.version = 0"
            ),
            insert_fenced: format!(
                "INSERT INTO {t} AS s (kind, id, shard, version, fence, payload) \
                 VALUES ($1, $2, $3, 1, $5, $4) \
                 ON CONFLICT (kind, id) DO UPDATE SET version = 1, fence = EXCLUDED.fence, \
                 payload = EXCLUDED.payload \
                 WHERE s.version = 0 AND s.fence <= EXCLUDED.fence"
            ),
            update: format!(
                "UPDATE {t} SET version = $3::bigint + 1, payload = $4 \
                 WHERE kind = $1 AND id = $2 AND version = $3::bigint"
            ),
            update_fenced: format!(
                "UPDATE {t} SET version = $3::bigint + 1, payload = $4, fence = $5 \
                 WHERE kind = $1 AND id = $2 AND version = $3::bigint AND fence <= $5"
            ),
            row: format!("SELECT version, fence FROM {t} WHERE kind = $1 AND id = $2"),
            // A deleted reminder is a tombstone: its payload NULL, its
            // version and fence kept (versions only grow).
            // $1 kind, $2 id, $3 name, $4 shard, $5 due_ms, $6 period_ms,
            // $7 payload, $8 fence (0 without a token), $9 the token (NULL:
            // eventual). Over a tombstone: its version + 1.
            r_insert: format!(
                "INSERT INTO {r} AS x (kind, id, name, shard, due_ms, period_ms, payload, version, fence) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8) ON CONFLICT (kind, id, name) DO UPDATE \
                 SET shard = EXCLUDED.shard, due_ms = EXCLUDED.due_ms, period_ms = EXCLUDED.period_ms, \
                 payload = EXCLUDED.payload, version = x.version + 1, \
                 fence = COALESCE($9::bigint, x.fence) \
                 WHERE x.payload IS NULL AND ($9::bigint IS NULL OR x.fence <= $9::bigint) \
                 RETURNING version"
            ),
            // The same, $8 the token (NULL: eventual), $9 the expected version.
            r_update: format!(
                "UPDATE {r} SET shard = $4, due_ms = $5, period_ms = $6, payload = $7, \
                 version = $9::bigint + 1, fence = COALESCE($8::bigint, fence) \
                 WHERE kind = $1 AND id = $2 AND name = $3 AND version = $9::bigint \
                 AND payload IS NOT NULL AND ($8::bigint IS NULL OR fence <= $8::bigint)"
            ),
            r_delete: format!(
                "UPDATE {r} SET payload = NULL, version = version + 1, \
                 fence = COALESCE($5::bigint, fence) \
                 WHERE kind = $1 AND id = $2 AND name = $3 AND version = $4::bigint \
                 AND payload IS NOT NULL AND ($5::bigint IS NULL OR fence <= $5::bigint)"
            ),
            // A tombstone's version reads as 0 (absent).
            r_row: format!(
                "SELECT CASE WHEN payload IS NULL THEN 0 ELSE version END, fence FROM {r} \
                 WHERE kind = $1 AND id = $2 AND name = $3"
            ),
            // A payload over the limit ($3 / $4) comes back as NULL with its
            // length, never as bytes.
            r_of: format!(
                "SELECT name, shard, due_ms, period_ms, version, \
                 CASE WHEN octet_length(payload) > $3 THEN NULL ELSE payload END, \
                 octet_length(payload) FROM {r} WHERE kind = $1 AND id = $2 \
                 AND payload IS NOT NULL ORDER BY name"
            ),
            r_due: format!(
                "SELECT id, name, shard, due_ms, period_ms, version, \
                 CASE WHEN octet_length(payload) > $5 THEN NULL ELSE payload END, \
                 octet_length(payload) FROM {r} \
                 WHERE kind = $1 AND shard = ANY($2) AND due_ms < $3 AND payload IS NOT NULL \
                 ORDER BY due_ms LIMIT $4"
            ),
        }
    }
}

/// What went wrong, in the server's words when it said any.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ),
        None => {
            // The causes too: "error performing TLS handshake: invalid
            // peer certificate: UnknownIssuer".
            let mut text = format!("PostgreSQL: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

/// What a pool's failure to give a connection says: the server's own
/// error when it refused one (`no pg_hba.conf entry ...`).
fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => format!("PostgreSQL: {other}"),
    }
}

/// A statement the server refused, or that could not reach it: nothing
/// was written.
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(pg_error(&e).into())
}

/// Why a compare-and-set that changed no row was refused, given the row's
/// `(version, fence)` now: the store contract's one rule.
fn refusal(row: Option<(u64, u64)>, expected: u64, token: Option<u64>) -> StoreError {
    super::check_save(row, expected, token)
        .err()
        .unwrap_or(StoreError::Conflict {
            expected,
            stored: row.map_or(0, |(v, _)| v),
        })
}

/// The `(version, fence)` a one-row `SELECT version, fence ...` returns.
async fn version_and_fence(
    c: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<(u64, u64)>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(unavailable)?;
    let row = c.query_opt(&st, params).await.map_err(unavailable)?;
    row.map(|r| {
        let v: i64 = r.try_get(0).map_err(unavailable)?;
        let f: i64 = r.try_get(1).map_err(unavailable)?;
        Ok((unsigned(v), unsigned(f)))
    })
    .transpose()
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stored number as PostgreSQL's `bigint` (versions and tokens stay far
/// below `i64::MAX`; beyond it, saturated).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgStore {
    /// A store on the server `config` names: a connection string
    /// (`host=/run/postgresql user=mesh dbname=app`) or a URL
    /// (`postgresql://mesh@db.internal/app`), with the default options.
    /// Connects nothing yet (see the module docs).
    pub fn new(config: &str) -> Result<PgStore, StoreError> {
        PgStore::with_options(config, PgOptions::default())
    }

    /// The same with `options`.
    pub fn with_options(config: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let mut pg: tokio_postgres::Config = config.parse().map_err(|e| {
            StoreError::Unavailable(format!("the PostgreSQL connection string: {e}").into())
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(options.timeout);
        }
        let config = ManagerConfig {
            // Verified: a connection given back after a failure is checked
            // with a round trip before it is lent again (it may not know yet
            // that it broke); lanes keep theirs, so this is rare.
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match &options.ca {
            Some(ca) => {
                let tls = super::pg_tls::RustlsConnect::new(ca)?;
                if matches!(pg.get_ssl_mode(), SslMode::Prefer) {
                    pg.ssl_mode(SslMode::Require);
                }
                Manager::from_config(pg, tls, config)
            }
            None if matches!(pg.get_ssl_mode(), SslMode::Require) => {
                return Err(StoreError::Unavailable(
                    "sslmode=require without PgOptions::ca: the server's certificate could not \
                     be verified (give the PEM roots of its CA)"
                        .into(),
                ))
            }
            None => Manager::from_config(pg, NoTls, config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("the connection pool: {e}").into()))?;
        let lanes = (0..options.pool.max(1))
            .map(|_| tokio::sync::Mutex::new(None))
            .collect();
        Ok(PgStore {
            pool,
            sql: Arc::new(Sql::new(&options.schema)),
            options: Arc::new(options),
            ready: Arc::new(OnceCell::new()),
            lanes: Arc::new(Lanes {
                lanes,
                next: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// A connection to send one operation on, shared with the others of
    /// its lane (tokio-postgres pipelines the statements of concurrent
    /// operations on one connection: each is sent without waiting for the
    /// answers before it, and answers come back in order). The table is
    /// created first if this is the first use, on a connection of its own
    /// (its transaction must not take in others' statements). A lane
    /// whose connection broke takes a new one from the pool.
    async fn client(&self) -> Result<Lease, StoreError> {
        self.ready
            .get_or_try_init(|| async {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Unavailable(pool_error(&e).into()))?;
                if let Err(e) = client.batch_execute(&self.sql.create).await {
                    // Not committed: end the transaction before the
                    // connection goes back to the pool.
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(StoreError::Unavailable(
                        format!("creating the table: {}", pg_error(&e)).into(),
                    ));
                }
                Ok(())
            })
            .await?;
        let lanes = &self.lanes.lanes;
        let i = self
            .lanes
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % lanes.len();
        let mut lane = lanes[i].lock().await;
        if let Some(c) = lane.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Lease {
                lane: i,
                c: c.clone(),
            });
        }
        // Broken (or never taken): dropping the last reference to it
        // gives it back to the pool, whose recycling discards it.
        *lane = None;
        let client = Arc::new(
            self.pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(pool_error(&e).into()))?,
        );
        *lane = Some(client.clone());
        Ok(Lease { lane: i, c: client })
    }

    /// Runs `op` on a connection, all within [`PgOptions::timeout`] (the
    /// wait for the connection included; past it, `late`). A connection
    /// whose operation failed unavailable or uncertain, or ran late (a
    /// broken connection among the causes: it may not know yet that it is
    /// closed), is taken out of its lane, so the next operation there
    /// connects anew; the others in flight on it finish on it.
    async fn on_lane<T, F>(
        &self,
        late: impl FnOnce() -> StoreError,
        op: impl FnOnce(Arc<deadpool_postgres::Object>) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let lease = match tokio::time::timeout_at(deadline, self.client()).await {
            Ok(lease) => lease?,
            Err(_) => {
                return Err(StoreError::Unavailable(
                    format!(
                        "PostgreSQL: no connection within {:?}",
                        self.options.timeout
                    )
                    .into(),
                ))
            }
        };
        let result = tokio::time::timeout_at(deadline, op(lease.c.clone()))
            .await
            .unwrap_or_else(|_| Err(late()));
        if matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Uncertain(_))
        ) {
            let mut lane = self.lanes.lanes[lease.lane].lock().await;
            if lane.as_ref().is_some_and(|c| Arc::ptr_eq(c, &lease.c)) {
                *lane = None;
            }
        }
        result
    }

    async fn load_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        key: &StateKey,
        claim: Option<u64>,
    ) -> Result<Stored, StoreError> {
        let limit = i32::try_from(self.options.max_row).unwrap_or(i32::MAX);
        let row = match claim {
            None => {
                let st = c
                    .prepare_cached(&self.sql.load)
                    .await
                    .map_err(unavailable)?;
                c.query_opt(&st, &[&&*key.kind, &key.id.as_bytes(), &limit])
                    .await
                    .map_err(unavailable)?
            }
            Some(token) => {
                let st = c
                    .prepare_cached(&self.sql.claim)
                    .await
                    .map_err(unavailable)?;
                let shard = i32::from(key.shard);
                let got = c
                    .query_opt(
                        &st,
                        &[&&*key.kind, &key.id.as_bytes(), &shard, &big(token), &limit],
                    )
                    .await
                    .map_err(unavailable)?;
                if got.is_none() {
                    let (_, fence) = self.row(&c, key).await?.unwrap_or((0, 0));
                    return Err(StoreError::Fenced {
                        token,
                        stored: fence,
                    });
                }
                got
            }
        };
        let Some(row) = row else {
            return Ok(Stored::default());
        };
        let version: i64 = row.try_get(0).map_err(unavailable)?;
        let bytes: Option<Vec<u8>> = row.try_get(1).map_err(unavailable)?;
        let len: Option<i32> = row.try_get(2).map_err(unavailable)?;
        if let Some(len) = len.filter(|_| bytes.is_none()) {
            return Err(StoreError::TooLarge {
                size: usize::try_from(len).unwrap_or(usize::MAX),
                limit: self.options.max_row,
            });
        }
        Ok(Stored {
            version: unsigned(version),
            bytes,
        })
    }

    /// A row's version and fence.
    async fn row(
        &self,
        c: &deadpool_postgres::Object,
        key: &StateKey,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&&*key.kind, &key.id.as_bytes()];
        version_and_fence(c, &self.sql.row, &params).await
    }

    async fn save_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        key: &StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let sql = match (expected, token) {
            (0, None) => &self.sql.insert,
            (0, Some(_)) => &self.sql.insert_fenced,
            (_, None) => &self.sql.update,
            (_, Some(_)) => &self.sql.update_fenced,
        };
        let st = c.prepare_cached(sql).await.map_err(unavailable)?;
        let (kind, id, shard) = (&*key.kind, key.id.as_bytes(), i32::from(key.shard));
        let (version, fence) = (big(expected), big(token.unwrap_or(0)));
        let sent = match (expected, token) {
            (0, None) => c.execute(&st, &[&kind, &id, &shard, &bytes]).await,
            (0, Some(_)) => c.execute(&st, &[&kind, &id, &shard, &bytes, &fence]).await,
            (_, None) => c.execute(&st, &[&kind, &id, &version, &bytes]).await,
            (_, Some(_)) => {
                c.execute(&st, &[&kind, &id, &version, &bytes, &fence])
                    .await
            }
        };
        let changed = match sent {
            Ok(n) => n,
            // The server refused the statement: it wrote nothing.
            Err(e) if e.as_db_error().is_some() => return Err(unavailable(e)),
            Err(e) => {
                return Err(StoreError::Uncertain(
                    format!("{}: the write may or may not have committed", pg_error(&e)).into(),
                ))
            }
        };
        if changed == 1 {
            return Ok(expected + 1);
        }
        // Refused: say why.
        let row = self.row(&c, key).await?;
        Err(refusal(row, expected, token))
    }
}

/// Reminders (the [`StateStore`] methods below), one statement each.
impl PgStore {
    /// A read that timed out.
    fn no_answer(&self) -> StoreError {
        StoreError::Unavailable(
            format!("PostgreSQL: no answer within {:?}", self.options.timeout).into(),
        )
    }

    /// A reminder's version and fence.
    async fn reminder_row(
        &self,
        c: &deadpool_postgres::Object,
        key: &StateKey,
        name: &str,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&&*key.kind, &key.id.as_bytes(), &name.as_bytes()];
        version_and_fence(c, &self.sql.r_row, &params).await
    }

    async fn put_reminder_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        row: &ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> Result<u64, StoreError> {
        let key = &row.key;
        let (kind, id, name) = (&*key.kind, key.id.as_bytes(), row.name.as_bytes());
        let (shard, due, period) = (i32::from(key.shard), big(row.due_ms), big(row.period_ms));
        let payload = &row.payload[..];
        let sent = if expected == 0 {
            let st = c
                .prepare_cached(&self.sql.r_insert)
                .await
                .map_err(unavailable)?;
            let (fence, token_arg) = (big(token.unwrap_or(0)), token.map(big));
            c.query_opt(
                &st,
                &[
                    &kind, &id, &name, &shard, &due, &period, &payload, &fence, &token_arg,
                ],
            )
            .await
            .and_then(|row| {
                row.map(|r| r.try_get::<_, i64>(0).map(unsigned))
                    .transpose()
            })
            .map(|v| v.map_or((0, expected), |v| (1, v - 1)))
        } else {
            let st = c
                .prepare_cached(&self.sql.r_update)
                .await
                .map_err(unavailable)?;
            let (token, version) = (token.map(big), big(expected));
            c.execute(
                &st,
                &[
                    &kind, &id, &name, &shard, &due, &period, &payload, &token, &version,
                ],
            )
            .await
            .map(|n| (n, expected))
        };
        // (rows written, the version written over)
        match sent {
            Ok((1, over)) => Ok(over + 1),
            Ok(_) => Err(match self.reminder_row(&c, key, &row.name).await {
                Err(e) => e,
                Ok(now) => refusal(now, expected, token),
            }),
            Err(e) if e.as_db_error().is_some() => Err(unavailable(e)),
            Err(e) => Err(StoreError::Uncertain(
                format!("{}: the write may or may not have committed", pg_error(&e)).into(),
            )),
        }
    }

    async fn delete_reminder_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        key: &StateKey,
        name: &str,
        expected: u64,
        token: Option<u64>,
    ) -> Result<(), StoreError> {
        let st = c
            .prepare_cached(&self.sql.r_delete)
            .await
            .map_err(unavailable)?;
        let (version, token_arg) = (big(expected), token.map(big));
        let sent = c
            .execute(
                &st,
                &[
                    &&*key.kind,
                    &key.id.as_bytes(),
                    &name.as_bytes(),
                    &version,
                    &token_arg,
                ],
            )
            .await;
        match sent {
            Ok(1) => Ok(()),
            Ok(_) => {
                let row = self.reminder_row(&c, key, name).await?;
                match super::check_save(row, expected, token) {
                    // Nothing to delete (absent, or a tombstone), as expected.
                    Ok(()) if expected == 0 => Ok(()),
                    _ => Err(refusal(row, expected, token)),
                }
            }
            Err(e) if e.as_db_error().is_some() => Err(unavailable(e)),
            Err(e) => Err(StoreError::Uncertain(
                format!("{}: the delete may or may not have committed", pg_error(&e)).into(),
            )),
        }
    }

    /// A reminder read back: `(payload or NULL, its length)` checked
    /// against the row limit.
    fn reminder_payload(
        &self,
        payload: Option<Vec<u8>>,
        len: Option<i32>,
    ) -> Result<Vec<u8>, StoreError> {
        match payload {
            Some(p) => Ok(p),
            None => Err(StoreError::TooLarge {
                size: len
                    .and_then(|l| usize::try_from(l).ok())
                    .unwrap_or(usize::MAX),
                limit: self.options.max_row,
            }),
        }
    }

    /// A reminder read back: from column `from`, its name, shard, due
    /// time, period, version, and payload (NULL past the row limit) with
    /// its length (the order of `r_of` and, after the id, of `r_due`).
    fn reminder_at(
        &self,
        r: &tokio_postgres::Row,
        kind: &str,
        id: Arc<str>,
        from: usize,
    ) -> Result<ReminderRow, StoreError> {
        let name: Vec<u8> = r.try_get(from).map_err(unavailable)?;
        let shard: i32 = r.try_get(from + 1).map_err(unavailable)?;
        Ok(ReminderRow {
            key: StateKey {
                kind: kind.into(),
                id,
                shard: u16::try_from(shard).unwrap_or_default(),
            },
            name: String::from_utf8_lossy(&name).into(),
            due_ms: unsigned(r.try_get(from + 2).map_err(unavailable)?),
            period_ms: unsigned(r.try_get(from + 3).map_err(unavailable)?),
            version: unsigned(r.try_get(from + 4).map_err(unavailable)?),
            payload: self.reminder_payload(
                r.try_get(from + 5).map_err(unavailable)?,
                r.try_get(from + 6).map_err(unavailable)?,
            )?,
        })
    }

    async fn reminders_of_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        key: &StateKey,
    ) -> Result<Vec<ReminderRow>, StoreError> {
        let limit = i32::try_from(self.options.max_row).unwrap_or(i32::MAX);
        let st = c
            .prepare_cached(&self.sql.r_of)
            .await
            .map_err(unavailable)?;
        let rows = c
            .query(&st, &[&&*key.kind, &key.id.as_bytes(), &limit])
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| self.reminder_at(r, &key.kind, key.id.clone(), 0))
            .collect()
    }

    async fn reminders_due_now(
        &self,
        c: Arc<deadpool_postgres::Object>,
        kind: &str,
        shards: &[u16],
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<ReminderRow>, StoreError> {
        let max_row = i32::try_from(self.options.max_row).unwrap_or(i32::MAX);
        let shards: Vec<i32> = shards.iter().map(|s| i32::from(*s)).collect();
        let (before, count) = (big(before_ms), i64::try_from(limit).unwrap_or(i64::MAX));
        let st = c
            .prepare_cached(&self.sql.r_due)
            .await
            .map_err(unavailable)?;
        let rows = c
            .query(&st, &[&kind, &shards, &before, &count, &max_row])
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Vec<u8> = r.try_get(0).map_err(unavailable)?;
            let id: Arc<str> = String::from_utf8_lossy(&id).into();
            match self.reminder_at(r, kind, id.clone(), 1) {
                Ok(row) => out.push(row),
                // One row this node cannot hold (over its limit) does not
                // keep the others from firing.
                Err(e @ StoreError::TooLarge { .. }) => {
                    tracing::warn!(kind, %id, "a due reminder skipped: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

impl StateStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        // A claim that timed out may have raised the fence: that only
        // refuses older tokens, never this one's next try.
        let late = move || {
            StoreError::Unavailable(
                format!("PostgreSQL: no answer within {:?}", self.options.timeout).into(),
            )
        };
        Box::pin(self.on_lane(late, move |c| self.load_now(c, key, claim)))
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let late = move || {
            StoreError::Uncertain(
                format!(
                    "PostgreSQL: no answer within {:?}: the write may or may not have committed",
                    self.options.timeout
                )
                .into(),
            )
        };
        Box::pin(async move {
            check_size(bytes, self.options.max_row)?;
            self.on_lane(late, move |c| self.save_now(c, key, expected, token, bytes))
                .await
        })
    }

    fn put_reminder<'a>(
        &'a self,
        row: &'a ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let late = move || {
            StoreError::Uncertain(
                format!(
                    "PostgreSQL: no answer within {:?}: the write may or may not have committed",
                    self.options.timeout
                )
                .into(),
            )
        };
        Box::pin(async move {
            check_size(Some(&row.payload), self.options.max_row)?;
            self.on_lane(late, move |c| {
                self.put_reminder_now(c, row, expected, token)
            })
            .await
        })
    }

    fn delete_reminder<'a>(
        &'a self,
        key: &'a StateKey,
        name: &'a str,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let late = move || {
            StoreError::Uncertain(
                format!(
                    "PostgreSQL: no answer within {:?}: the delete may or may not have committed",
                    self.options.timeout
                )
                .into(),
            )
        };
        Box::pin(self.on_lane(late, move |c| {
            self.delete_reminder_now(c, key, name, expected, token)
        }))
    }

    fn reminders_of<'a>(
        &'a self,
        key: &'a StateKey,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        Box::pin(self.on_lane(
            move || self.no_answer(),
            move |c| self.reminders_of_now(c, key),
        ))
    }

    fn reminders_due<'a>(
        &'a self,
        kind: &'a str,
        shards: &'a [u16],
        before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        Box::pin(self.on_lane(
            move || self.no_answer(),
            move |c| self.reminders_due_now(c, kind, shards, before_ms, limit),
        ))
    }
}
