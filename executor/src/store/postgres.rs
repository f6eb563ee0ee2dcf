//! The PostgreSQL backend: the [`Store`] boundary on a database that several executor replicas
//! share (selected by `EXECUTOR_STORE_URL`).
//!
//! **Schema.** Created and migrated at start by versioned migrations (`executor/migrations/`,
//! run by refinery under an advisory lock, so replicas starting together migrate once): `claims`,
//! `answers`, `in_flight`, `tasks`, `outbox` and `dead_letters`.
//!
//! **Claims across replicas.** A key is claimed by a row in `claims` (`INSERT … ON CONFLICT`),
//! owned by this instance (a random id) and leased: a background task renews the leases of the
//! claims and in-flight markers this instance holds every third of the lease, so only a dead
//! replica's claims expire, and a live one takes an expired claim over. A key whose in-flight
//! marker is still there cannot be claimed anew: the marker's execution may have called its
//! provider, so its key waits for [`Store::abandoned`] (which takes over markers whose lease
//! expired, or that a closed instance left) to record its `outcome_unknown`. Within one instance
//! a map of held keys answers repeated claims without the database and makes a released key
//! claimable at once (the row itself is deleted in the background, by its claim token).
//!
//! **Atomic commit.** Answer, tasks, events, the in-flight marker and the claim are written and
//! removed in one transaction. If it fails, the outcome is kept in memory with its claim (its
//! key stays held and its lease renewed), health is `Failing`, and it is retried every second
//! until recorded; a retry of a commit that did reach the database is recognised by its answer.
//!
//! **Shared outbox.** Events of a sink are leased oldest first with `FOR UPDATE SKIP LOCKED`,
//! so an event is leased by one replica at a time; a dead replica's leases expire. Depths are
//! cached: recounted across replicas every second (a count over the outbox: more often cost
//! measurable database time under load) and adjusted by this instance's own commits
//! and settlements. Bells ring on this instance's commits and, for other replicas' events, when
//! the recount finds leasable events (a short poll, not `LISTEN/NOTIFY`). The drop-oldest policy
//! deletes the oldest events beyond the bound inside the commit; dropped events are counted by
//! the instance that dropped them.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::{
    Abandoned, Claim, ClaimGuard, Health, InFlightMarker, LeasedEvent, OutboxBound, OutboxDepth, Outcome, Settlement,
    Sink, Store, StoreError, StoreFuture, Write,
};
use crate::clock::now_ms;
use crate::metrics::Metrics;

mod schema {
    refinery::embed_migrations!("migrations");
}

/// How often a failing store retries the outcomes it keeps.
const RETRY: Duration = Duration::from_secs(1);
/// How often depths are recounted (and other replicas' events noticed).
const RECOUNT: Duration = Duration::from_secs(1);
/// Makes the current transaction wait for the database's disk at commit. Two writes are synced:
/// the in-flight marker before a provider call (an interrupted call becomes `outcome_unknown`,
/// never a second call) and the outcome with its events. Sessions otherwise run with
/// `synchronous_commit=off`, and PostgreSQL writes its log in order, so every earlier write is
/// durable once a later synced commit is. What a crash of the database can lose: leases and
/// settlements of deliveries (an event is sent again; sinks drop duplicates by event id), lease
/// renewals, and claims of executions that have called nothing yet (a task whose claim is lost
/// may run again for a duplicate that arrives while the database recovers; the first outcome is
/// the one recorded).
const DURABLE: &str = "SELECT set_config('synchronous_commit', 'on', true)";
/// Advisory lock key held while migrating ("bhivexec").
const MIGRATION_LOCK: i64 = 0x6268_6976_6578_6563;
/// Recount rounds skipped because of local changes before one is applied anyway.
const MAX_SKIPPED_RECOUNTS: u32 = 10;

/// Why the PostgreSQL store could not be opened; every message names the variable the URL came
/// from (`EXECUTOR_STORE_URL` or `DATABASE_URL`), and none contains its password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("{0}: not a PostgreSQL connection URL (postgres://user:password@host:port/database)")]
    Url(String),
    /// The pool cannot be built (for example a pool size of 0).
    #[error("{0}: cannot build the connection pool: {1}")]
    Pool(String, String),
    /// The database cannot be reached or refused the connection.
    #[error("{0}: cannot connect to the database: {1}")]
    Connect(String, String),
    /// The schema cannot be created or migrated.
    #[error("{0}: migrating the store's schema failed: {1}")]
    Migrate(String, String),
    /// `EXECUTOR_STORE_CA_FILE` cannot be read or holds no PEM certificate.
    #[error("EXECUTOR_STORE_CA_FILE={0}: {1}")]
    CaFile(String, String),
}

/// Where the PostgreSQL store is and how to reach it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The variable the URL came from (named in errors).
    pub variable: &'a str,
    /// `postgres://…`; `sslmode=require` asks for TLS, verified against the Mozilla roots and
    /// `ca_file`.
    pub url: &'a str,
    /// More trusted certificates (PEM).
    pub ca_file: Option<&'a std::path::Path>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long this instance's claims and in-flight markers outlive it (renewed while it lives).
    pub lease: Duration,
}

/// The TLS connector for `sslmode=require`: rustls on ring, trusting the Mozilla roots and the
/// certificates in `ca_file`.
pub(crate) fn tls(ca_file: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let refused = |message: String| ConnectError::CaFile(shown.clone(), message);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| refused(format!("cannot read it: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| refused(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(refused("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| refused(format!("a certificate in it is not usable: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::CaFile("-".into(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One sink's cached depth and its bell.
#[derive(Default)]
struct SinkSide {
    events: AtomicU64,
    bytes: AtomicU64,
    dead: AtomicU64,
    dropped: AtomicU64,
    bell: Notify,
}

impl SinkSide {
    fn add(&self, counter: &AtomicU64, delta: i64) {
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_add_signed(delta)));
    }
}

/// An outcome whose commit failed, kept with its claim until it is recorded.
struct Kept {
    claim: ClaimGuard,
    outcome: Outcome,
}

struct Inner {
    pool: Pool,
    /// This instance's id: the owner of its claims and in-flight markers.
    owner: String,
    lease: Duration,
    bounds: [OutboxBound; 2],
    metrics: Metrics,
    sinks: [SinkSide; 2],
    /// Keys this instance holds, with their fingerprints.
    held: Mutex<HashMap<String, String>>,
    /// Keys of held claims with an in-flight marker.
    in_flight: Mutex<HashSet<String>>,
    /// Keys of held claims with no row of theirs left in `claims` (recorded, or never taken):
    /// their release has nothing to delete.
    settled: Mutex<HashSet<String>>,
    kept: Mutex<Vec<Kept>>,
    /// Kept outcomes taken out of `kept` by the retry under way (still unrecorded).
    retrying: AtomicU64,
    failing: Mutex<Option<String>>,
    /// Bumped by every local depth adjustment, so a recount that raced one is not applied.
    generation: AtomicU64,
    closed: AtomicBool,
    runtime: tokio::runtime::Handle,
}

/// The PostgreSQL store. Cheap to share; [`Store::close`] stops it.
pub struct Postgres {
    inner: Arc<Inner>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Postgres {
    /// Connects to the database of `target`, creating or migrating the schema. Plain TCP unless
    /// the URL says `sslmode=require` (then TLS with a verified certificate, or no connection).
    /// Must be called within a tokio runtime.
    pub async fn connect(
        target: Target<'_>,
        bounds: [OutboxBound; 2],
        metrics: Metrics,
    ) -> Result<Arc<Postgres>, ConnectError> {
        let Target { variable, url, ca_file, pool_size, lease } = target;
        let shown = format!("{variable}={}", redact(url));
        let mut config = tokio_postgres::Config::from_str(url).map_err(|_| ConnectError::Url(shown.clone()))?;
        // Only the writes that must survive a crash of the database wait for its disk (see
        // `DURABLE`); everything else is durable with the next synced commit.
        let options = config.get_options().map_or_else(String::new, |o| format!("{o} "));
        config.options(format!("{options}-c synchronous_commit=off"));
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Manager::from_config(config, tls(ca_file)?, recycling),
            _ => Manager::from_config(config, NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| ConnectError::Pool(shown.clone(), e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| ConnectError::Connect(shown.clone(), cause(&e)))?;
        migrate(&mut client).await.map_err(|e| ConnectError::Migrate(shown.clone(), e))?;
        drop(client);

        let inner = Arc::new(Inner {
            pool,
            owner: uuid::Uuid::new_v4().to_string(),
            lease,
            bounds,
            metrics,
            sinks: Default::default(),
            held: Mutex::default(),
            in_flight: Mutex::default(),
            settled: Mutex::default(),
            kept: Mutex::default(),
            retrying: AtomicU64::new(0),
            failing: Mutex::default(),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        inner.recount(true).await.map_err(|e| ConnectError::Connect(shown.clone(), e.to_string()))?;
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(inner.clone().renew(stop.clone())),
            tokio::spawn(inner.clone().recounter(stop.clone())),
            tokio::spawn(inner.clone().retry_kept(stop.clone())),
        ];
        Ok(Arc::new(Postgres { inner, stop, tasks: Mutex::new(tasks) }))
    }

    fn guard(&self, key: &str, fingerprint: &str, token: String) -> ClaimGuard {
        let inner = Arc::downgrade(&self.inner);
        let owned = key.to_owned();
        ClaimGuard::new(key.to_owned(), fingerprint.to_owned(), move || {
            let Some(inner) = inner.upgrade() else { return };
            let settled = inner.settled.lock().expect("settled lock").remove(&owned);
            inner.held.lock().expect("held lock").remove(&owned);
            let marked = inner.in_flight.lock().expect("in-flight lock").remove(&owned);
            if inner.closed.load(Ordering::Acquire) || (settled && !marked) {
                return;
            }
            let runtime = inner.runtime.clone();
            runtime.spawn(async move {
                let Ok(client) = inner.pool.get().await else { return };
                if !settled {
                    let _ = client
                        .execute("DELETE FROM claims WHERE key = $1 AND token = $2::text::uuid", &[&owned, &token])
                        .await;
                }
                if marked {
                    // Dropped with its remote call possibly made: hand it to `abandoned` now.
                    let _ = client
                        .execute(
                            "UPDATE in_flight SET lease_until = now() - interval '1 second' WHERE key = $1",
                            &[&owned],
                        )
                        .await;
                }
            });
        })
    }
}

impl Drop for Postgres {
    /// Stops the background tasks (renewals among them: a store dropped without a close leaves its
    /// claims to expire, as a dead replica's do).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Deletes the delivered events `seqs` in one statement; how many were there, and their bytes.
async fn delete_delivered(client: &impl GenericClient, seqs: &[i64]) -> Result<(i64, i64), StoreError> {
    if seqs.is_empty() {
        return Ok((0, 0));
    }
    let delete = client.prepare_cached("DELETE FROM outbox WHERE seq = ANY($1) RETURNING length(body)").await?;
    let gone = client.query(&delete, &[&seqs]).await?;
    Ok((gone.len() as i64, gone.iter().map(|row| i64::from(row.get::<_, i32>(0))).sum()))
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains("password") { "(a connection string with a password)".into() } else { url.into() };
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.into(),
    }
}

async fn migrate(client: &mut Object) -> Result<(), String> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| pg_cause(&e))?;
    let migrated = schema::migrations::runner().run_async(&mut ***client).await.map_err(|e| e.to_string());
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| pg_cause(&e));
    migrated.map(drop).and(unlocked.map(drop))
}

/// A database error in plain words: the server's message and code, never its detail (which can
/// quote row values).
fn pg_cause(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("the database refused: {} ({})", db.message(), db.code().code()),
        None => crate::logging::error_chain(error),
    }
}

/// A pool error in plain words (see [`pg_cause`]).
fn cause(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg_cause(error),
        other => other.to_string(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Unavailable(format!("the PostgreSQL store: {}", pg_cause(&error)))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(format!("the PostgreSQL store: {}", cause(&error)))
    }
}

fn sink_of(sink: Sink) -> i16 {
    sink.index() as i16
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl Inner {
    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.check_open()?;
        Ok(self.pool.get().await?)
    }

    fn fail(&self, cause: String) {
        let mut failing = self.failing.lock().expect("failing lock");
        if failing.replace(cause.clone()).as_ref() != Some(&cause) {
            tracing::error!(%cause, "the store cannot write; outcomes are kept and recorded once it can");
        }
    }

    /// Outcomes reached but not recorded yet: kept, or being retried.
    fn unrecorded(&self) -> usize {
        let kept = self.kept.lock().expect("kept lock");
        kept.len() + self.retrying.load(Ordering::SeqCst) as usize
    }

    fn recovered(&self) {
        if self.failing.lock().expect("failing lock").take().is_some() {
            tracing::info!("the store can write again");
        }
    }

    /// Adjusts a cached counter and marks concurrent recounts stale.
    fn adjust(&self, sink: Sink, events: i64, bytes: i64, dead: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let side = &self.sinks[sink.index()];
        side.add(&side.events, events);
        side.add(&side.bytes, bytes);
        side.add(&side.dead, dead);
    }

    /// Recounts every outbox (across replicas); `force` applies it even if local changes raced it.
    /// Returns whether any sink has leasable events.
    async fn recount(&self, force: bool) -> Result<[bool; 2], StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let client = self.pool.get().await?;
        let outbox = client
            .query(
                "SELECT sink, count(*), coalesce(sum(length(body)), 0)::bigint, \
                 count(*) FILTER (WHERE leased_until IS NULL OR leased_until < now()) FROM outbox GROUP BY sink",
                &[],
            )
            .await?;
        let dead = client.query("SELECT sink, count(*) FROM dead_letters GROUP BY sink", &[]).await?;
        let mut counts = [(0u64, 0u64, 0u64, false); 2];
        for row in outbox {
            if let Some(c) = counts.get_mut(row.get::<_, i16>(0) as usize) {
                (c.0, c.1, c.3) = (row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64, row.get::<_, i64>(3) > 0);
            }
        }
        for row in dead {
            if let Some(c) = counts.get_mut(row.get::<_, i16>(0) as usize) {
                c.2 = row.get::<_, i64>(1) as u64;
            }
        }
        if force || self.generation.load(Ordering::SeqCst) == generation {
            for sink in Sink::ALL {
                let (side, (events, bytes, dead, _)) = (&self.sinks[sink.index()], counts[sink.index()]);
                side.events.store(events, Ordering::SeqCst);
                side.bytes.store(bytes, Ordering::SeqCst);
                side.dead.store(dead, Ordering::SeqCst);
            }
        }
        Ok(counts.map(|c| c.3))
    }

    /// Recounts depths every [`RECOUNT`] and rings the bells of sinks with leasable events.
    async fn recounter(self: Arc<Self>, stop: CancellationToken) {
        let mut skipped = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RECOUNT) => {}
            }
            let generation = self.generation.load(Ordering::SeqCst);
            match self.recount(skipped >= MAX_SKIPPED_RECOUNTS).await {
                Ok(leasable) => {
                    let raced = self.generation.load(Ordering::SeqCst) != generation;
                    skipped = if raced { skipped + 1 } else { 0 };
                    for sink in Sink::ALL.into_iter().filter(|s| leasable[s.index()]) {
                        self.sinks[sink.index()].bell.notify_one();
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "recounting the outboxes failed");
                    self.fail(error.to_string());
                    continue;
                }
            }
            if self.unrecorded() == 0 {
                self.recovered();
            }
        }
    }

    /// Renews the leases of this instance's claims and in-flight markers every third of a lease.
    async fn renew(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.lease / 3) => {}
            }
            let keys: Vec<String> = self.held.lock().expect("held lock").keys().cloned().collect();
            let marked: Vec<String> = self.in_flight.lock().expect("in-flight lock").iter().cloned().collect();
            let renewed = async {
                let client = self.pool.get().await?;
                let secs = lease_secs(self.lease);
                // The table names are constants of this function, never input.
                for (table, keys) in [("claims", &keys), ("in_flight", &marked)] {
                    if keys.is_empty() {
                        continue;
                    }
                    let renew = format!(
                        "UPDATE {table} SET lease_until = now() + $1 * interval '1 second' \
                         WHERE owner = $2::text::uuid AND key = ANY($3)"
                    );
                    client.execute(&renew, &[&secs, &self.owner, keys]).await?;
                }
                Ok::<_, StoreError>(())
            };
            if let Err(error) = renewed.await {
                tracing::warn!(%error, "renewing this executor's claims failed; they expire if it keeps failing");
            }
        }
    }

    /// Records kept outcomes every [`RETRY`] until none is left.
    async fn retry_kept(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
            let kept = {
                let mut kept = self.kept.lock().expect("kept lock");
                // Counted before they leave `kept`: nobody sees the store recovered meanwhile.
                self.retrying.store(kept.len() as u64, Ordering::SeqCst);
                std::mem::take(&mut *kept)
            };
            if kept.is_empty() {
                continue;
            }
            let (count, mut left) = (kept.len(), Vec::new());
            for item in kept {
                match self.write(&item.claim, &item.outcome).await {
                    Ok(()) => drop(item.claim),
                    Err(error) => {
                        self.fail(error.to_string());
                        left.push(item);
                    }
                }
            }
            let recorded = left.is_empty();
            let mut kept = self.kept.lock().expect("kept lock");
            kept.extend(left);
            self.retrying.store(0, Ordering::SeqCst);
            if recorded && kept.is_empty() {
                tracing::warn!(count, "outcomes reached while the store failed are recorded now");
                self.recovered();
            }
        }
    }

    /// Writes one outcome in one transaction. A retry of a commit that reached the database
    /// finds its answer and changes nothing. The statements are pipelined (sent together, answered
    /// in order: tokio-postgres sends a request when its future is first polled), so a commit costs
    /// three round trips (begin, the statements, commit) whatever it holds.
    async fn write(&self, claim: &ClaimGuard, outcome: &Outcome) -> Result<(), StoreError> {
        use tokio_postgres::types::ToSql;
        let started = Instant::now();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let answer = tx.prepare_cached(
            "INSERT INTO answers (key, fingerprint, answer, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO NOTHING",
        );
        let task = tx.prepare_cached(
            "INSERT INTO tasks (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        );
        let event = tx.prepare_cached(
            "INSERT INTO outbox (sink, event_id, trace_id, body, enqueued_ms) VALUES ($1, $2, $3, $4, $5)",
        );
        let unmark = tx.prepare_cached("DELETE FROM in_flight WHERE key = $1");
        let unclaim = tx.prepare_cached("DELETE FROM claims WHERE key = $1");
        let durable = tx.prepare_cached(DURABLE);
        let (answer, task, event, unmark, unclaim, durable) =
            tokio::try_join!(answer, task, event, unmark, unclaim, durable)?;

        let (key, fingerprint, created) = (claim.key(), claim.fingerprint(), outcome.created_ms as i64);
        let answer_params: [&(dyn ToSql + Sync); 4] = [&key, &fingerprint, &&outcome.answer[..], &created];
        let task_params: Vec<[&(dyn ToSql + Sync); 2]> =
            outcome.writes.iter().map(|Write::Task { id, record }| [id as _, record as _]).collect();
        let enqueued = now_ms() as i64;
        let sinks: Vec<i16> = outcome.events.iter().map(|e| sink_of(e.sink)).collect();
        let event_params: Vec<[&(dyn ToSql + Sync); 5]> = outcome
            .events
            .iter()
            .zip(&sinks)
            .map(|(e, sink)| [sink as _, &e.event_id as _, &e.trace_id as _, &e.body as _, &enqueued as _])
            .collect();
        let key_params: [&(dyn ToSql + Sync); 1] = [&key];
        let (_, inserted, _, _, _, _) = tokio::try_join!(
            tx.execute(&durable, &[]),
            tx.execute(&answer, &answer_params),
            futures_util::future::try_join_all(task_params.iter().map(|p| tx.execute(&task, p))),
            futures_util::future::try_join_all(event_params.iter().map(|p| tx.execute(&event, p))),
            tx.execute(&unmark, &key_params),
            tx.execute(&unclaim, &key_params),
        )?;
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(());
        }
        let mut added = [(0i64, 0i64); 2];
        for event in &outcome.events {
            added[event.sink.index()].0 += 1;
            added[event.sink.index()].1 += event.body.len() as i64;
        }
        let mut dropped = [(0i64, 0i64); 2];
        for sink in Sink::ALL {
            let bound = self.bounds[sink.index()];
            // Trimming scans the sink's outbox: only when the depth (exact for this instance's
            // writes, other replicas' as of the last recount) would pass the bound.
            let (side, (events, bytes)) = (&self.sinks[sink.index()], added[sink.index()]);
            let over = side.events.load(Ordering::SeqCst) + events as u64 > bound.max_events
                || side.bytes.load(Ordering::SeqCst) + bytes as u64 > bound.max_bytes;
            if !bound.drop_oldest || events == 0 || !over {
                continue;
            }
            let rows = tx
                .query(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM (SELECT seq, \
                     count(*) OVER newest_first AS n, sum(length(body)) OVER newest_first AS b \
                     FROM outbox WHERE sink = $1 WINDOW newest_first AS (ORDER BY seq DESC)) t WHERE n > $2 OR b > $3) \
                     RETURNING length(body)",
                    &[&sink_of(sink), &(bound.max_events as i64), &(bound.max_bytes as i64)],
                )
                .await?;
            dropped[sink.index()] = (rows.len() as i64, rows.iter().map(|r| i64::from(r.get::<_, i32>(0))).sum());
        }
        tx.commit().await?;
        self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        for sink in Sink::ALL {
            let (i, side) = (sink.index(), &self.sinks[sink.index()]);
            self.adjust(sink, added[i].0 - dropped[i].0, added[i].1 - dropped[i].1, 0);
            if dropped[i].0 > 0 {
                side.dropped.fetch_add(dropped[i].0 as u64, Ordering::SeqCst);
                self.metrics.events_dropped.with_label_values(&[sink.name()]).inc_by(dropped[i].0 as u64);
            }
            if added[i].0 > 0 {
                side.bell.notify_waiters();
                side.bell.notify_one();
            }
        }
        self.in_flight.lock().expect("in-flight lock").remove(claim.key());
        self.settled.lock().expect("settled lock").insert(claim.key().to_owned());
        Ok(())
    }

    /// The statement that takes a key for this instance, unless another live instance holds it,
    /// an in-flight marker waits on it or it is answered; it returns the key when taken. A row of
    /// this owner that this instance no longer holds (its key is not in `held`, which the caller
    /// checked) is a released claim whose delete has not run yet.
    const TAKE: &str = "INSERT INTO claims (key, fingerprint, owner, token, lease_until) \
         SELECT $1, $2, $3::text::uuid, $4::text::uuid, now() + $5 * interval '1 second' \
         WHERE NOT EXISTS (SELECT 1 FROM in_flight WHERE key = $1) \
         AND NOT EXISTS (SELECT 1 FROM answers WHERE key = $1) \
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, owner = excluded.owner, \
         token = excluded.token, lease_until = excluded.lease_until \
         WHERE claims.lease_until < now() OR claims.owner = excluded.owner \
         RETURNING key";
}

impl Store for Postgres {
    fn claim<'a>(&'a self, key: &'a str, fingerprint: &'a str) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check_open()?;
            {
                let mut held = inner.held.lock().expect("held lock");
                match held.get(key) {
                    Some(holder) if holder == fingerprint => return Ok(Claim::InProgress),
                    Some(_) => return Ok(Claim::Mismatch),
                    None => held.insert(key.to_owned(), fingerprint.to_owned()),
                };
            }
            let token = uuid::Uuid::new_v4().to_string();
            // Dropped on every path but Fresh: releases the key here and any row in the database.
            let guard = self.guard(key, fingerprint, token.clone());
            let client = inner.client().await?;
            let answered = |row: tokio_postgres::Row| {
                if row.get::<_, &str>(0) == fingerprint {
                    Claim::Replay(Bytes::copy_from_slice(row.get::<_, &[u8]>(1)))
                } else {
                    Claim::Mismatch
                }
            };
            let answer_query = client.prepare_cached("SELECT fingerprint, answer FROM answers WHERE key = $1").await?;
            let take = client.prepare_cached(Inner::TAKE).await?;
            let holder_query = client
                .prepare_cached(
                    "SELECT fingerprint FROM claims WHERE key = $1 \
                     UNION ALL SELECT fingerprint FROM in_flight WHERE key = $1 LIMIT 1",
                )
                .await?;
            let take_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&key, &fingerprint, &inner.owner, &token, &lease_secs(inner.lease)];
            let key_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            for _ in 0..3 {
                // Until the claim is taken, the guard has no row to delete.
                inner.settled.lock().expect("settled lock").insert(key.to_owned());
                // One round trip: PostgreSQL runs the three in order, each on a fresh snapshot,
                // so the last look-up sees an answer another replica committed while we took
                // the key (the take itself refuses a key answered before it started).
                let (before, taken, after) = tokio::try_join!(
                    client.query_opt(&answer_query, &key_param),
                    client.query_opt(&take, &take_params),
                    client.query_opt(&answer_query, &key_param),
                )?;
                if taken.is_some() {
                    inner.settled.lock().expect("settled lock").remove(key);
                }
                if let Some(row) = before.or(after) {
                    return Ok(answered(row));
                }
                if taken.is_some() {
                    return Ok(Claim::Fresh(guard));
                }
                if let Some(holder) = client.query_opt(&holder_query, &key_param).await? {
                    let same = holder.get::<_, &str>(0) == fingerprint;
                    return Ok(if same { Claim::InProgress } else { Claim::Mismatch });
                }
                // The holder let go between the statements: try again.
            }
            Ok(Claim::InProgress)
        })
    }

    fn record_in_flight<'a>(&'a self, claim: &'a ClaimGuard, marker: &'a InFlightMarker) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let client = inner.client().await?;
            let value = serde_json::to_vec(marker).unwrap_or_default();
            claim.in_flight.store(true, Ordering::SeqCst);
            inner.in_flight.lock().expect("in-flight lock").insert(claim.key().to_owned());
            let mut client = client;
            let tx = client.transaction().await?;
            let record = tx
                .prepare_cached(
                    "INSERT INTO in_flight (key, fingerprint, marker, owner, lease_until) \
                     VALUES ($1, $2, $3, $4::text::uuid, now() + $5 * interval '1 second') \
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, marker = excluded.marker, \
                     owner = excluded.owner, lease_until = excluded.lease_until",
                )
                .await?;
            let durable = tx.prepare_cached(DURABLE).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&claim.key(), &claim.fingerprint(), &value, &inner.owner, &lease_secs(inner.lease)];
            tokio::try_join!(tx.execute(&durable, &[]), tx.execute(&record, &params))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn commit(&self, claim: ClaimGuard, outcome: Outcome) -> StoreFuture<'_, ()> {
        let inner = self.inner.clone();
        // Run to the end even if the caller stops waiting: the outcome is recorded or kept.
        let task = self.inner.runtime.spawn(async move {
            inner.check_open()?;
            match inner.write(&claim, &outcome).await {
                Ok(()) => {
                    drop(claim);
                    if inner.unrecorded() == 0 {
                        inner.recovered();
                    }
                    Ok(())
                }
                Err(error) => {
                    inner.fail(error.to_string());
                    inner.kept.lock().expect("kept lock").push(Kept { claim, outcome });
                    Err(error)
                }
            }
        });
        Box::pin(async move { task.await.unwrap_or(Err(StoreError::Closed)) })
    }

    fn abandoned(&self) -> StoreFuture<'_, Vec<Abandoned>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut client = inner.client().await?;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "UPDATE in_flight SET owner = $1::text::uuid, lease_until = now() + $2 * interval '1 second' \
                     WHERE lease_until < now() RETURNING key, fingerprint, marker",
                    &[&inner.owner, &lease_secs(inner.lease)],
                )
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in rows {
                let (key, fingerprint): (String, String) = (row.get(0), row.get(1));
                let token = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "INSERT INTO claims (key, fingerprint, owner, token, lease_until) \
                     VALUES ($1, $2, $3::text::uuid, $4::text::uuid, now() + $5 * interval '1 second') \
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, owner = excluded.owner, \
                     token = excluded.token, lease_until = excluded.lease_until",
                    &[&key, &fingerprint, &inner.owner, &token, &lease_secs(inner.lease)],
                )
                .await?;
                let marker: InFlightMarker = serde_json::from_slice(row.get::<_, &[u8]>(2))
                    .map_err(|e| StoreError::Damaged(format!("an in-flight marker in PostgreSQL: {e}")))?;
                found.push((key, token, marker));
            }
            tx.commit().await?;
            let mut out = Vec::with_capacity(found.len());
            for (key, token, marker) in found {
                inner.held.lock().expect("held lock").insert(key.clone(), marker.fingerprint.clone());
                inner.in_flight.lock().expect("in-flight lock").insert(key.clone());
                let claim = self.guard(&key, &marker.fingerprint, token);
                claim.in_flight.store(true, Ordering::SeqCst);
                out.push(Abandoned { marker, claim });
            }
            Ok(out)
        })
    }

    fn lease(&self, sink: Sink, limit: usize, lease_for: Duration) -> StoreFuture<'_, Vec<LeasedEvent>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let lease = client
                .prepare_cached(
                    "UPDATE outbox SET leased_until = now() + $3 * interval '1 second' WHERE seq IN (\
                     SELECT seq FROM outbox WHERE sink = $1 AND (leased_until IS NULL OR leased_until < now()) \
                     ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING seq, enqueued_ms, event_id, trace_id, body, attempts",
                )
                .await?;
            let rows = client.query(&lease, &[&sink_of(sink), &(limit as i64), &lease_secs(lease_for)]).await?;
            let mut out: Vec<LeasedEvent> = rows
                .into_iter()
                .map(|row| LeasedEvent {
                    seq: row.get::<_, i64>(0) as u64,
                    enqueued_ms: row.get::<_, i64>(1) as u64,
                    event_id: row.get(2),
                    trace_id: row.get(3),
                    body: Bytes::copy_from_slice(row.get::<_, &[u8]>(4)),
                    attempts: row.get::<_, i32>(5) as u32,
                })
                .collect();
            out.sort_by_key(|e| e.seq);
            Ok(out)
        })
    }

    fn settle(&self, sink: Sink, settlements: Vec<Settlement>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut client = inner.client().await?;
            let (delivered, others): (Vec<Settlement>, Vec<Settlement>) =
                settlements.into_iter().partition(|s| matches!(s, Settlement::Delivered(_)));
            let delivered: Vec<i64> = delivered
                .iter()
                .filter_map(|s| if let Settlement::Delivered(seq) = s { Some(*seq as i64) } else { None })
                .collect();
            // The common case, deliveries only, is one statement (one round trip, atomic).
            if others.is_empty() {
                let (events, bytes) = delete_delivered(&client, &delivered).await?;
                if events != 0 {
                    inner.adjust(sink, -events, -bytes, 0);
                }
                return Ok(());
            }
            let tx = client.transaction().await?;
            let (gone, gone_bytes) = delete_delivered(&tx, &delivered).await?;
            let (mut events, mut bytes, mut dead) = (-gone, -gone_bytes, 0i64);
            for settlement in others {
                match settlement {
                    // Settled above.
                    Settlement::Delivered(_) => {}
                    Settlement::Failed(seq) => {
                        tx.execute(
                            "UPDATE outbox SET attempts = attempts + 1, leased_until = NULL WHERE seq = $1",
                            &[&(seq as i64)],
                        )
                        .await?;
                    }
                    Settlement::Release(seq) => {
                        tx.execute("UPDATE outbox SET leased_until = NULL WHERE seq = $1", &[&(seq as i64)]).await?;
                    }
                    Settlement::DeadLetter { seq, record } => {
                        let gone = tx
                            .query_opt("DELETE FROM outbox WHERE seq = $1 RETURNING length(body)", &[&(seq as i64)])
                            .await?;
                        if let Some(row) = gone {
                            let record = serde_json::to_string(&record).unwrap_or_else(|_| "null".into());
                            tx.execute(
                                "INSERT INTO dead_letters (sink, record) VALUES ($1, $2::text::jsonb)",
                                &[&sink_of(sink), &record],
                            )
                            .await?;
                            events -= 1;
                            bytes -= i64::from(row.get::<_, i32>(0));
                            dead += 1;
                        }
                    }
                }
            }
            tx.commit().await?;
            if events != 0 || dead != 0 {
                inner.adjust(sink, events, bytes, dead);
            }
            Ok(())
        })
    }

    fn depth(&self, sink: Sink) -> OutboxDepth {
        let side = &self.inner.sinks[sink.index()];
        OutboxDepth {
            events: side.events.load(Ordering::SeqCst),
            bytes: side.bytes.load(Ordering::SeqCst),
            dead_letters: side.dead.load(Ordering::SeqCst),
            dropped: side.dropped.load(Ordering::SeqCst),
        }
    }

    fn oldest_enqueued_ms(&self, sink: Sink) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let row = client
                .query_opt("SELECT enqueued_ms FROM outbox WHERE sink = $1 ORDER BY seq LIMIT 1", &[&sink_of(sink)])
                .await?;
            Ok(row.map(|row| row.get::<_, i64>(0) as u64))
        })
    }

    fn dead_letters(&self, sink: Sink, limit: usize) -> StoreFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let rows = client
                .query(
                    "SELECT record::text FROM dead_letters WHERE sink = $1 ORDER BY id DESC LIMIT $2",
                    &[&sink_of(sink), &(limit as i64)],
                )
                .await?;
            Ok(rows.iter().map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap_or_default()).collect())
        })
    }

    fn expire(&self, before_ms: u64) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let gone = client.execute("DELETE FROM answers WHERE created_ms < $1", &[&(before_ms as i64)]).await?;
            Ok(gone as usize)
        })
    }

    fn bell(&self, sink: Sink) -> &Notify {
        &self.inner.sinks[sink.index()].bell
    }

    fn health(&self) -> Health {
        match self.inner.failing.lock().expect("failing lock").clone() {
            None => Health::Ok,
            Some(cause) => Health::Failing { cause, unrecorded: self.inner.unrecorded() },
        }
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            self.stop.cancel();
            let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
            for task in tasks {
                let _ = task.await;
            }
            // This instance will record nothing more: its claims go, its markers are abandoned.
            let kept = inner.kept.lock().expect("kept lock").len();
            if kept > 0 {
                tracing::error!(kept, "closing with outcomes not recorded; their keys report outcome_unknown");
            }
            if let Ok(client) = inner.pool.get().await {
                let _ = client.execute("DELETE FROM claims WHERE owner = $1::text::uuid", &[&inner.owner]).await;
                let _ = client
                    .execute(
                        "UPDATE in_flight SET lease_until = now() - interval '1 second' WHERE owner = $1::text::uuid",
                        &[&inner.owner],
                    )
                    .await;
            }
            inner.pool.close();
            Ok(())
        })
    }
}
