//! The conformance suite run against the PostgreSQL backend, and what the backend promises
//! with several instances on one database. The server comes from `test_support::postgres`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use test_support::postgres::new_database;

use crate::metrics::Metrics;
use crate::store::conformance::Place;
use crate::store::postgres::{Postgres, Target};
use crate::store::{OutboxBound, SharedStore};

/// The lease of claims in tests: short, so a closed instance's markers expire quickly.
pub(crate) const TEST_LEASE: Duration = Duration::from_millis(300);

/// The test store's connection: a pool of 4, the short test lease.
fn target(url: &str) -> Target<'_> {
    Target { variable: "EXECUTOR_STORE_URL", url, ca_file: None, pool_size: 4, lease: TEST_LEASE }
}

/// A database of its own on the test server (created on first open).
struct PostgresPlace {
    url: tokio::sync::OnceCell<String>,
}

impl Place for PostgresPlace {
    fn open(&self, bounds: [OutboxBound; 2]) -> Pin<Box<dyn Future<Output = SharedStore> + Send + '_>> {
        Box::pin(async move {
            let url = self.url.get_or_init(new_database).await;
            let store = Postgres::connect(target(url), bounds, Metrics::new()).await;
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

/// TLS: `sslmode=require` connects only with a certificate it can verify.
mod tls {
    use super::*;
    use crate::store::Store;

    fn bounds() -> [OutboxBound; 2] {
        [OutboxBound { max_events: 100, max_bytes: 1 << 20, drop_oldest: false }; 2]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_require_connects_over_tls_to_a_server_whose_certificate_is_trusted() {
        let (url, certificate) = test_support::postgres::new_tls_database().await;
        let url = format!("{url}?sslmode=require");
        let target = Target { ca_file: Some(&certificate), ..target(&url) };
        let store = Postgres::connect(target, bounds(), Metrics::new()).await.expect("the store connects over TLS");
        store.close().await.expect("close");

        // The same connector, asked directly: the session is encrypted.
        let tls = crate::store::postgres::tls(Some(&certificate)).expect("a connector");
        let (client, connection) = tokio_postgres::connect(&url, tls).await.expect("a TLS connection");
        tokio::spawn(connection);
        let row =
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("a row");
        assert!(row.get::<_, bool>(0), "the session uses TLS");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_certificate_or_a_bad_ca_file_is_refused_naming_the_variable() {
        let (url, _) = test_support::postgres::new_tls_database().await;
        let url = format!("{url}?sslmode=require");
        let refused = Postgres::connect(target(&url), bounds(), Metrics::new()).await.err().expect("refused");
        let said = refused.to_string();
        assert!(said.contains("EXECUTOR_STORE_URL") && said.contains("certificate"), "{said}");

        let not_pem = tempfile::NamedTempFile::new().expect("a file");
        std::fs::write(not_pem.path(), b"not a certificate").expect("written");
        let target = Target { ca_file: Some(not_pem.path()), ..target(&url) };
        let refused = Postgres::connect(target, bounds(), Metrics::new()).await.err().expect("refused");
        let said = refused.to_string();
        assert!(said.contains("EXECUTOR_STORE_CA_FILE") && said.contains("no PEM certificate"), "{said}");
    }
}

#[test]
fn a_password_never_appears_in_what_the_store_reports() {
    let shown = crate::store::postgres::redact("postgres://exec:s3cret@db.internal:5432/executor?sslmode=disable");
    assert_eq!(shown, "postgres://exec:***@db.internal:5432/executor?sslmode=disable");
    assert_eq!(crate::store::postgres::redact("postgres://exec@db/executor"), "postgres://exec@db/executor");
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
        Postgres::connect(super::target(url), roomy(), Metrics::new()).await.expect("a replica connects")
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
