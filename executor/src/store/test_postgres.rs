//! A real PostgreSQL for tests, and the conformance suite run against the PostgreSQL backend.
//!
//! With `EXECUTOR_TEST_DATABASE_URL` set, its server is used (the URL must allow
//! `CREATE DATABASE`). Otherwise the first test that asks starts a throwaway server: `initdb`
//! into a temporary directory and `postgres` on a free loopback port with its socket in that
//! directory (as the `postgres` user when the tests run as root, as CI does). One server serves
//! the whole test process; each test gets its own database (`test_<uuid>`).
//!
//! **Stopping it.** The server runs under a small shell that waits on a pipe whose write end
//! this process holds for its whole life: when the test process exits (however it ends), the
//! pipe closes, the shell stops the server (fast shutdown) and removes the temporary directory.

use std::future::Future;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::store::conformance::Place;
use crate::store::postgres::Postgres;
use crate::store::{OutboxBound, SharedStore};

/// How long the server may take to start.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// The lease of claims in tests: short, so a closed instance's markers expire quickly.
pub(crate) const TEST_LEASE: Duration = Duration::from_millis(300);

/// A running test server: the URL of its maintenance database, and what keeps it alive.
struct Server {
    admin_url: String,
    /// Held until the process exits; its closing stops the server.
    _keepalive: Mutex<Option<ChildStdin>>,
    _child: Mutex<Option<Child>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The admin URL of the test server, starting it on first use. Blocking.
fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("EXECUTOR_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server { admin_url: url, _keepalive: Mutex::new(None), _child: Mutex::new(None) },
        _ => start_server(),
    })
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// `program args…`, as the `postgres` user when running as root.
fn as_server_user(root: bool, program: &str) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Where PostgreSQL's server programs are: on PATH, else Debian's `/usr/lib/postgresql/<n>/bin`
/// (the newest), which the `postgresql` package does not put on PATH.
fn server_bin(program: &str) -> String {
    if Command::new(program).arg("--version").output().is_ok_and(|out| out.status.success()) {
        return program.to_owned();
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
    let mut dirs: Vec<(u32, std::path::PathBuf)> = versions
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin").join(program))))
        .filter(|(_, path)| path.exists())
        .collect();
    dirs.sort();
    let found = dirs.pop().map(|(_, path)| path.display().to_string());
    found.unwrap_or_else(|| {
        panic!(
            "{program} not found: install PostgreSQL (apt-get install -y postgresql) or set EXECUTOR_TEST_DATABASE_URL"
        )
    })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn start_server() -> Server {
    let root = running_as_root();
    // Not a TempDir: the server's shell removes it once the server is down.
    let dir = tempfile::Builder::new().prefix("executor-test-pg-").tempdir().expect("a temporary directory").keep();
    let data = dir.join("data");
    if root {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown of {} to postgres failed", dir.display());
    }
    let initdb = as_server_user(root, &server_bin("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
        .arg(&data)
        .output()
        .expect("initdb runs (PostgreSQL must be installed: initdb and postgres on PATH)");
    assert!(
        initdb.status.success(),
        "initdb into {} failed: {}",
        data.display(),
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = free_port();
    // Stop the server and remove its directory when stdin closes (the test process is gone).
    let script = r#""$3" -D "$1/data" -p "$2" -k "$1" -c listen_addresses=127.0.0.1 -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 >"$1/log" 2>&1 &
        pid=$!
        cat >/dev/null
        kill -INT "$pid"
        wait "$pid"
        rm -rf "$1""#;
    let mut child = as_server_user(root, "sh")
        .args(["-c", script, "sh"])
        .arg(&dir)
        .arg(port.to_string())
        .arg(server_bin("postgres"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test server starts");
    let keepalive = child.stdin.take();
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        let ready = Command::new("pg_isready").args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status();
        let ready = match ready {
            Ok(status) => status.success(),
            // Without pg_isready: try a TCP connection (the server accepts once it is ready).
            Err(_) => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        if ready {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("the test PostgreSQL server exited ({status}) before it was ready: {log}");
        }
        assert!(Instant::now() < deadline, "the test PostgreSQL server was not ready within {START_PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { admin_url, _keepalive: Mutex::new(keepalive), _child: Mutex::new(Some(child)) }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("EXECUTOR_TEST_DATABASE_URL is a postgres:// URL");
    let (base, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
    let authority = base.split('/').next().unwrap_or(base);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}

/// A new, empty database on the test server; returns its URL.
pub(crate) async fn new_database() -> String {
    let admin_url = tokio::task::spawn_blocking(|| server().admin_url.clone()).await.expect("the server starts");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.expect("connecting to the test server");
    let connection = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    drop(client);
    let _ = connection.await;
    with_database(&admin_url, &name)
}

/// A database of its own on the test server (created on first open).
struct PostgresPlace {
    url: tokio::sync::OnceCell<String>,
}

impl Place for PostgresPlace {
    fn open(&self, bounds: [OutboxBound; 2]) -> Pin<Box<dyn Future<Output = SharedStore> + Send + '_>> {
        Box::pin(async move {
            let url = self.url.get_or_init(new_database).await;
            let store = Postgres::connect(url, 4, TEST_LEASE, bounds, Metrics::new()).await;
            store.unwrap_or_else(|e| panic!("the PostgreSQL store opens: {e}")) as SharedStore
        })
    }
}

fn postgres_place() -> Box<dyn Place> {
    Box::new(PostgresPlace { url: tokio::sync::OnceCell::new() })
}

mod postgres_backend {
    crate::store::conformance::conformance_tests!(super::postgres_place);
}

#[test]
fn a_password_never_appears_in_what_the_store_reports() {
    let shown = crate::store::postgres::redact("postgres://exec:s3cret@db.internal:5432/executor?sslmode=disable");
    assert_eq!(shown, "postgres://exec:***@db.internal:5432/executor?sslmode=disable");
    assert_eq!(crate::store::postgres::redact("postgres://exec@db/executor"), "postgres://exec@db/executor");
}

#[test]
fn a_test_database_url_gets_the_database_of_each_test() {
    assert_eq!(with_database("postgres://u:p@h:1/postgres?x=1", "test_a"), "postgres://u:p@h:1/test_a?x=1");
    assert_eq!(with_database("postgresql://u@h", "test_b"), "postgresql://u@h/test_b");
}

/// Replicas: what the PostgreSQL backend promises beyond the conformance suite, with several
/// instances on one database.
mod replicas {
    use std::time::{Duration, Instant};

    use super::{TEST_LEASE, new_database};
    use crate::metrics::Metrics;
    use crate::store::postgres::Postgres;
    use crate::store::{Claim, ClaimGuard, Health, InFlightMarker, NewEvent, OutboxBound, Outcome, Sink, Store};

    const PATIENCE: Duration = Duration::from_secs(10);

    fn roomy() -> [OutboxBound; 2] {
        [OutboxBound { max_events: 1_000_000, max_bytes: 1 << 32, drop_oldest: false }; 2]
    }

    async fn replica(url: &str) -> std::sync::Arc<Postgres> {
        Postgres::connect(url, 4, TEST_LEASE, roomy(), Metrics::new()).await.expect("a replica connects")
    }

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    async fn fresh(store: &Postgres, key: &str, fp: &str) -> ClaimGuard {
        match store.claim(key, fp).await.expect("claim") {
            Claim::Fresh(guard) => guard,
            other => panic!("expected Fresh, got {other:?}"),
        }
    }

    fn marker(fp: &str) -> InFlightMarker {
        InFlightMarker {
            fingerprint: fp.to_owned(),
            trace_id: id(),
            action_type: "send_email".into(),
            user_id: None,
            product: None,
            metadata: None,
            started_ms: 0,
        }
    }

    fn outcome(events: Vec<NewEvent>) -> Outcome {
        Outcome { answer: bytes::Bytes::from(format!("{{\"n\":\"{}\"}}", id())), created_ms: 1, writes: vec![], events }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_replicas_claim_is_never_taken_over_and_its_release_frees_the_key_everywhere() {
        let url = new_database().await;
        let (a, b) = (replica(&url).await, replica(&url).await);
        let (key, fp) = (id(), id());
        let held = fresh(&a, &key, &fp).await;
        // Several leases pass: A renews, so B never gets the key.
        let until = Instant::now() + TEST_LEASE * 4;
        while Instant::now() < until {
            let seen = b.claim(&key, &fp).await.expect("claim");
            assert!(matches!(seen, Claim::InProgress), "another replica while A holds the key: {seen:?}");
            let other = b.claim(&key, &id()).await.expect("claim");
            assert!(matches!(other, Claim::Mismatch), "another request on another replica: {other:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(held);
        let deadline = Instant::now() + PATIENCE;
        loop {
            match b.claim(&key, &fp).await.expect("claim") {
                Claim::Fresh(_) => break,
                Claim::InProgress if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
                other => panic!("the key A released: expected Fresh on B, got {other:?}"),
            }
        }
        a.close().await.expect("close");
        b.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_replicas_claims_and_markers_are_taken_over_once_its_lease_expires() {
        let url = new_database().await;
        let (a, b) = (replica(&url).await, replica(&url).await);
        let (plain, marked, fp) = (id(), id(), id());
        let plain_guard = fresh(&a, &plain, &fp).await;
        let marked_guard = fresh(&a, &marked, &fp).await;
        a.record_in_flight(&marked_guard, &marker(&fp)).await.expect("record_in_flight");
        // A dies: no release runs, no renewal either.
        std::mem::forget(plain_guard);
        std::mem::forget(marked_guard);
        let died = Instant::now();
        drop(a);

        let deadline = died + PATIENCE;
        let mut taken = None;
        while taken.is_none() {
            match b.claim(&plain, &fp).await.expect("claim") {
                Claim::Fresh(guard) => taken = Some(guard),
                Claim::InProgress => {}
                other => panic!("a dead replica's claim: expected InProgress, then Fresh; got {other:?}"),
            }
            assert!(Instant::now() < deadline, "a dead replica's claim was not taken over within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            died.elapsed() >= TEST_LEASE / 2,
            "taken over after {:?}, before its lease could expire",
            died.elapsed()
        );

        // The marked key is never claimable anew: it waits for `abandoned`.
        let seen = b.claim(&marked, &fp).await.expect("claim");
        assert!(matches!(seen, Claim::InProgress), "a key with a dead replica's marker: {seen:?}");
        let found = loop {
            let found = b.abandoned().await.expect("abandoned");
            if !found.is_empty() || Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let keys: Vec<&str> = found.iter().map(|f| f.claim.key()).collect();
        assert_eq!(keys, [marked.as_str()], "the dead replica's marker is abandoned to a live one");
        let seen = b.claim(&marked, &fp).await.expect("claim");
        assert!(matches!(seen, Claim::InProgress), "the abandoned key while its claim is held: {seen:?}");
        let found = found.into_iter().next().expect("one");
        b.commit(found.claim, outcome(vec![])).await.expect("commit");
        let replay = b.claim(&marked, &fp).await.expect("claim");
        assert!(matches!(replay, Claim::Replay(_)), "the abandoned key after its outcome: {replay:?}");
        b.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_one_outbox_and_never_lease_an_event_twice() {
        let url = new_database().await;
        let (a, b) = (replica(&url).await, replica(&url).await);
        let events: Vec<NewEvent> = (0..20)
            .map(|n| NewEvent {
                sink: Sink::Karma,
                event_id: id(),
                trace_id: id(),
                body: format!("{{\"n\":{n}}}").into(),
            })
            .collect();
        let guard = fresh(&a, &id(), &id()).await;
        a.commit(guard, outcome(events.clone())).await.expect("commit");
        let deadline = Instant::now() + PATIENCE;
        while b.depth(Sink::Karma).events != 20 {
            assert!(Instant::now() < deadline, "B's depth never showed A's events: {:?}", b.depth(Sink::Karma));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (from_a, from_b) = tokio::join!(
            a.lease(Sink::Karma, 15, Duration::from_secs(600)),
            b.lease(Sink::Karma, 15, Duration::from_secs(600))
        );
        let (from_a, from_b) = (from_a.expect("lease"), from_b.expect("lease"));
        let mut ids: Vec<String> = from_a.iter().chain(&from_b).map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), 20, "all 20 events leased between the replicas, none twice");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20, "no event leased by both replicas");
        a.close().await.expect("close");
        b.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outcome_whose_write_failed_is_kept_and_recorded_once_the_database_takes_it() {
        let url = new_database().await;
        let store = replica(&url).await;
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        admin
            .batch_execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$; \
                 CREATE TRIGGER refuse BEFORE INSERT ON answers FOR EACH ROW EXECUTE FUNCTION refuse();",
            )
            .await
            .expect("a trigger that refuses answers");
        let (key, fp) = (id(), id());
        let guard = fresh(&store, &key, &fp).await;
        let kept = outcome(vec![]);
        let failed = store.commit(guard, kept.clone()).await;
        assert!(failed.is_err(), "the refused commit fails: {failed:?}");
        assert!(
            matches!(store.health(), Health::Failing { unrecorded: 1, .. }),
            "failing, with the outcome kept: {:?}",
            store.health()
        );
        let again = store.claim(&key, &fp).await.expect("claim");
        assert!(matches!(again, Claim::InProgress), "the kept outcome's key stays held: {again:?}");

        admin.batch_execute("DROP TRIGGER refuse ON answers").await.expect("drop the trigger");
        let deadline = Instant::now() + PATIENCE;
        while store.health() != Health::Ok {
            assert!(Instant::now() < deadline, "still failing after {PATIENCE:?}: {:?}", store.health());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match store.claim(&key, &fp).await.expect("claim") {
            Claim::Replay(answer) => assert_eq!(answer, kept.answer, "the kept outcome's answer"),
            other => panic!("the kept outcome, once recorded: expected Replay, got {other:?}"),
        }
        store.close().await.expect("close");
    }
}
