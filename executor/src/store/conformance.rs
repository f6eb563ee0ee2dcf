//! The conformance suite of the store boundary: one check per promise that the module docs of
//! [`crate::store`] make for every [`Store`], written once and run against every backend.
//!
//! A backend's tests name a [`Place`] (where the backend keeps its state, opened as often as a
//! check likes) and invoke [`conformance_tests!`], which makes each check its own test. A backend
//! that passes gives a key to one request at a time, replays answers byte for byte, records an
//! outcome whole or not at all, hands in-flight markers back after a close, leases events oldest
//! first and once at a time, settles and counts them exactly, applies the drop-oldest bound and
//! retention, rings its bells, answers `Closed` once closed, and forgets nothing it recorded
//! across a close and a reopen. Where a promise is "eventually", a check polls up to a deadline.
//! Requests are fingerprinted as the engine does (SHA-256 in hex); keys and ids are fresh UUIDs.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::{
    Abandoned, Claim, ClaimGuard, Health, InFlightMarker, LeasedEvent, NewEvent, OutboxBound, OutboxDepth, Outcome,
    Settlement, SharedStore, Sink, Store, StoreError, Write,
};

/// A place a backend keeps its state, opened as many times as a check likes.
pub(crate) trait Place: Send + Sync {
    /// Opens the store kept at this place with `bounds` (indexed by [`Sink::index`]); opened
    /// again after a close, everything recorded must be there. Panics if it cannot be opened.
    fn open(&self, bounds: [OutboxBound; 2]) -> Pin<Box<dyn Future<Output = SharedStore> + Send + '_>>;
}

/// Generates one test per conformance check for a backend.
///
/// The argument is a function (or closure) that returns a fresh `Box<dyn Place>`; it is called
/// once per test, so every check starts from an empty place:
///
/// ```ignore
/// fn embedded_place() -> Box<dyn Place> { ... }
/// conformance::conformance_tests!(embedded_place);
/// ```
macro_rules! conformance_tests {
    (@each $make_place:expr; $($check:ident),+ $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let place: ::std::boxed::Box<dyn $crate::store::conformance::Place> = ($make_place)();
            $crate::store::conformance::run(stringify!($check), $crate::store::conformance::$check(&*place)).await;
        }
    )+};
    ($make_place:expr) => {
        $crate::store::conformance::conformance_tests!(@each $make_place;
            a_claim_gives_a_key_to_one_request_at_a_time,
            a_committed_outcome_replays_its_answer_byte_for_byte,
            a_commit_records_the_answer_the_writes_and_the_events_together,
            an_outcome_is_recorded_whole_or_not_at_all,
            in_flight_markers_outlive_a_close_and_come_back_as_abandoned_claims,
            outboxes_lease_oldest_first_once_at_a_time_and_settle_exactly,
            dead_letters_are_listed_newest_first,
            events_committed_concurrently_are_all_leased_once,
            an_event_is_stamped_with_its_commit_time,
            an_expired_lease_makes_its_event_leasable_again,
            a_full_outbox_drops_its_oldest_events_under_drop_oldest,
            expire_forgets_answers_older_than_the_cutoff_and_keeps_newer_ones,
            oldest_enqueued_ms_tracks_the_oldest_waiting_event,
            everything_recorded_survives_close_and_reopen,
            the_bell_rings_when_a_commit_queues_events,
            concurrent_claims_for_one_key_give_exactly_one_fresh,
            a_fresh_store_is_healthy_and_a_closed_one_answers_closed,
        );
    };
}
pub(crate) use conformance_tests;

/// How long a check may take before it fails (a hung backend fails instead of hanging the run).
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a check waits for something that is promised "later" or "eventually".
const PATIENCE: Duration = Duration::from_secs(10);
/// The pause between two polls.
const POLL: Duration = Duration::from_millis(10);
/// A lease that does not expire during a check.
const LONG_LEASE: Duration = Duration::from_secs(600);
/// Slack allowed between a backend's timestamps and the suite's clock.
const CLOCK_SLACK_MS: u64 = 5_000;

/// Runs one check, failing it if it does not finish within [`CHECK_TIMEOUT`].
pub(crate) async fn run(check: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(CHECK_TIMEOUT, body).await.is_err() {
        panic!("{check}: did not finish within {CHECK_TIMEOUT:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------------------------

/// Claims: Fresh for a new key; while held, InProgress for the same request and Mismatch for
/// another; keys are independent; released uncommitted, the key is anybody's again.
pub(crate) async fn a_claim_gives_a_key_to_one_request_at_a_time(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let (key, fp, other) = (new_id(), new_fingerprint(), new_fingerprint());

    let guard = fresh(&*store, &key, &fp).await;
    assert_eq!(guard.key(), key, "the guard names the claimed key");
    assert_eq!(guard.fingerprint(), fp, "the guard names the claiming request's fingerprint");

    let again = claim(&*store, &key, &fp).await;
    assert!(
        matches!(again, Claim::InProgress),
        "the same request while the key is held: expected InProgress, got {again:?}"
    );
    let different = claim(&*store, &key, &other).await;
    assert!(
        matches!(different, Claim::Mismatch),
        "another request while the key is held: expected Mismatch, got {different:?}"
    );

    let unrelated = fresh(&*store, &new_id(), &fp).await;
    drop(unrelated);
    let still = claim(&*store, &key, &fp).await;
    assert!(
        matches!(still, Claim::InProgress),
        "releasing another key leaves this one held: expected InProgress, got {still:?}"
    );

    drop(guard);
    let by_other = claim(&*store, &key, &other).await;
    assert!(
        matches!(by_other, Claim::Fresh(_)),
        "a key released without a commit belongs to nobody (another request): expected Fresh, got {by_other:?}"
    );
    drop(by_other);
    let by_same = claim(&*store, &key, &fp).await;
    assert!(
        matches!(by_same, Claim::Fresh(_)),
        "a key released again (the first request): expected Fresh, got {by_same:?}"
    );
    drop(by_same);

    store.close().await.expect("close");
}

/// A committed outcome replays its answer byte for byte (small, oddly formatted and large
/// answers alike), again and again; another request under its key is a Mismatch.
pub(crate) async fn a_committed_outcome_replays_its_answer_byte_for_byte(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let (key, fp) = (new_id(), new_fingerprint());
    let body = answer("replayed");
    let guard = fresh(&*store, &key, &fp).await;
    store.commit(guard, outcome(body.clone(), Vec::new())).await.expect("commit");

    for round in 1..=2 {
        expect_replay(&*store, &key, &fp, &body, &format!("claim {round} after the commit")).await;
    }
    let different = claim(&*store, &key, &new_fingerprint()).await;
    assert!(
        matches!(different, Claim::Mismatch),
        "another request after the commit: expected Mismatch, got {different:?}"
    );
    expect_replay(&*store, &key, &fp, &body, "the same request after a mismatch").await;

    // JSON a parser would normalise, and an answer larger than any page or value size.
    let odd = Bytes::from_static(b"{ \"status\" : \"success\",\n  \"n\": 1.50, \"text\": \"\\u00e9 \xc3\xa9\" }\n");
    let (odd_key, odd_fp) = commit_new(&*store, outcome(odd.clone(), Vec::new())).await;
    expect_replay(&*store, &odd_key, &odd_fp, &odd, "an oddly formatted answer").await;
    let large = large_answer(300 * 1024);
    let (large_key, large_fp) = commit_new(&*store, outcome(large.clone(), Vec::new())).await;
    expect_replay(&*store, &large_key, &large_fp, &large, "a 300 KB answer").await;

    store.close().await.expect("close");
}

/// A commit records the answer, the adapter's writes and the events of both sinks together:
/// once it returns, the answer replays and each event is counted and leasable as queued.
pub(crate) async fn a_commit_records_the_answer_the_writes_and_the_events_together(place: &dyn Place) {
    let store = place.open(roomy()).await;
    for sink in Sink::ALL {
        assert_eq!(store.depth(sink), OutboxDepth::default(), "a new store's {} outbox is empty", sink.name());
    }
    let (key, fp) = (new_id(), new_fingerprint());
    let body = answer("atomic");
    let task_id = new_id();
    let task = Write::Task {
        id: task_id.clone(),
        record: serde_json::to_vec(&json!({"task_id": task_id, "title": "conformance"})).expect("task JSON"),
    };
    let (bucket, karma) = (event(Sink::Bucket, 1), event(Sink::Karma, 1));
    let before_ms = now_ms();
    let guard = fresh(&*store, &key, &fp).await;
    let outcome = Outcome {
        answer: body.clone(),
        created_ms: before_ms,
        writes: vec![task],
        events: vec![bucket.clone(), karma.clone()],
    };
    store.commit(guard, outcome).await.expect("commit");
    let after_ms = now_ms();

    expect_replay(&*store, &key, &fp, &body, "the committed key").await;
    for (sink, queued) in [(Sink::Bucket, &bucket), (Sink::Karma, &karma)] {
        let depth = store.depth(sink);
        assert_eq!(depth.events, 1, "{} depth right after the commit: {depth:?}", sink.name());
        assert!(depth.bytes > 0, "{} bytes are counted right after the commit: {depth:?}", sink.name());
        assert_eq!((depth.dead_letters, depth.dropped), (0, 0), "{} depth: {depth:?}", sink.name());
        let leased = lease(&*store, sink, 10, LONG_LEASE).await;
        assert_same_events(&format!("{} lease after the commit", sink.name()), &leased, std::slice::from_ref(queued));
        assert_eq!(leased[0].attempts, 0, "a new event has no failed attempts");
        assert_recent(leased[0].enqueued_ms, before_ms, after_ms, "enqueued_ms of a new event");
    }

    store.close().await.expect("close");
}

/// An outcome is recorded whole or not at all: a claim dropped without a commit leaves no
/// answer and no events, and a commit abandoned mid-way (its future dropped) leaves either the
/// answer with all its events or nothing.
pub(crate) async fn an_outcome_is_recorded_whole_or_not_at_all(place: &dyn Place) {
    let store = place.open(roomy()).await;
    // Something already recorded, so "nothing changed" is not just "empty".
    commit_new(&*store, outcome(answer("earlier"), vec![event(Sink::Bucket, 0), event(Sink::Karma, 0)])).await;
    let before = depths(&*store);

    let (key, fp) = (new_id(), new_fingerprint());
    drop(fresh(&*store, &key, &fp).await);
    let again = claim(&*store, &key, &fp).await;
    assert!(matches!(again, Claim::Fresh(_)), "a claim dropped without a commit leaves no answer: got {again:?}");
    drop(again);
    assert_eq!(depths(&*store), before, "a claim dropped without a commit leaves no events");

    // A commit whose caller gives up: dropped unpolled, then dropped after one poll.
    for polls in [0, 1] {
        let (key, fp) = (new_id(), new_fingerprint());
        let body = answer("abandoned commit");
        let guard = fresh(&*store, &key, &fp).await;
        let before = depths(&*store);
        let commit = store.commit(guard, outcome(body.clone(), vec![event(Sink::Bucket, 1), event(Sink::Karma, 1)]));
        if polls == 0 {
            drop(commit);
        } else if let Ok(result) = tokio::time::timeout(Duration::ZERO, commit).await {
            result.expect("commit");
        }
        let what = format!("a commit dropped after {polls} poll(s)");
        match settled_claim(&*store, &key, &fp, &what).await {
            Claim::Replay(stored) => {
                assert_eq!(stored, body, "{what}: the replayed answer");
                let after = depths(&*store);
                for sink in Sink::ALL {
                    let (b, a) = (before[sink.index()], after[sink.index()]);
                    assert_eq!(a.events, b.events + 1, "{what} was recorded: its {} event too", sink.name());
                }
            }
            Claim::Fresh(guard) => {
                drop(guard);
                assert_eq!(depths(&*store), before, "{what} was not recorded: nor were its events");
            }
            other => panic!("{what}: expected Replay or Fresh for its own request, got {other:?}"),
        }
    }

    store.close().await.expect("close");
}

/// In-flight markers are durable: one left without an outcome comes back from
/// [`Store::abandoned`] after a reopen, equal and with its key claimed (so nobody else runs it);
/// committing through that claim makes the key replay and the marker is gone for good. A marker
/// whose outcome was committed is never abandoned.
pub(crate) async fn in_flight_markers_outlive_a_close_and_come_back_as_abandoned_claims(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let (key, fp) = (new_id(), new_fingerprint());
    let marker = marker(&fp);
    let guard = fresh(&*store, &key, &fp).await;
    store.record_in_flight(&guard, &marker).await.expect("record_in_flight");

    let (done_key, done_fp) = (new_id(), new_fingerprint());
    let done_answer = answer("completed");
    let done_guard = fresh(&*store, &done_key, &done_fp).await;
    store.record_in_flight(&done_guard, &self::marker(&done_fp)).await.expect("record_in_flight");
    store.commit(done_guard, outcome(done_answer.clone(), Vec::new())).await.expect("commit");

    // The execution of `key` never finishes: the store goes down with its claim held.
    store.close().await.expect("close");
    drop(guard);
    drop(store);
    let store = place.open(roomy()).await;

    let mut abandoned = store.abandoned().await.expect("abandoned");
    let keys: Vec<String> = abandoned.iter().map(|a| a.claim.key().to_owned()).collect();
    assert_eq!(keys, vec![key.clone()], "exactly the marker without an outcome is abandoned");
    let Abandoned { marker: found, claim: held } = abandoned.pop().expect("one abandoned marker");
    assert_eq!(found, marker, "the abandoned marker is the one recorded, field for field");
    assert_eq!(held.key(), key, "the abandoned claim's key");
    assert_eq!(held.fingerprint(), fp, "the abandoned claim's fingerprint is the marker's");

    let same = claim(&*store, &key, &fp).await;
    assert!(matches!(same, Claim::InProgress), "the same request while the abandoned claim is held: got {same:?}");
    let different = claim(&*store, &key, &new_fingerprint()).await;
    assert!(
        matches!(different, Claim::Mismatch),
        "another request while the abandoned claim is held: got {different:?}"
    );
    expect_replay(&*store, &done_key, &done_fp, &done_answer, "the completed execution after a reopen").await;

    let unknown = answer("outcome_unknown");
    let report = event(Sink::Bucket, 1);
    store.commit(held, outcome(unknown.clone(), vec![report.clone()])).await.expect("commit");
    expect_replay(&*store, &key, &fp, &unknown, "the abandoned key once its outcome is committed").await;
    assert_eq!(store.depth(Sink::Bucket).events, 1, "the abandoned outcome's event is queued");

    let store = reopen(place, store, roomy()).await;
    let again = store.abandoned().await.expect("abandoned");
    let keys: Vec<&str> = again.iter().map(|a| a.claim.key()).collect();
    assert!(keys.is_empty(), "a marker whose outcome was committed is not abandoned again: got {keys:?}");
    drop(again);
    expect_replay(&*store, &key, &fp, &unknown, "the abandoned key after another reopen").await;
    let leased = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("the abandoned outcome's event after another reopen", &leased, std::slice::from_ref(&report));

    store.close().await.expect("close");
}

/// Outboxes lease oldest first, each event to one lease at a time, and settle exactly: a
/// delivery removes the event and its bytes, a failure makes it leasable again with the attempt
/// counted, a release without counting it, and a dead letter moves it aside with its reason.
pub(crate) async fn outboxes_lease_oldest_first_once_at_a_time_and_settle_exactly(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let events: Vec<NewEvent> = (1..=5).map(|n| event(Sink::Bucket, n)).collect();
    queue(&*store, &events).await;
    let full = store.depth(Sink::Bucket);
    assert_eq!(full.events, 5, "five events queued: {full:?}");
    assert!(full.bytes > 0, "queued events have bytes: {full:?}");

    let first = lease(&*store, Sink::Bucket, 3, LONG_LEASE).await;
    assert_same_events("the first lease (limit 3)", &first, &events[..3]);
    assert!(first.iter().all(|e| e.attempts == 0), "new events have no failed attempts");
    let second = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("the second lease (the rest, never an event leased already)", &second, &events[3..]);
    assert!(first[2].seq < second[0].seq, "seqs follow delivery order across leases");
    let third = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("a third lease while all are leased", &third, &[]);
    assert_eq!(store.depth(Sink::Bucket), full, "leasing changes no depth");
    assert_eq!(store.depth(Sink::Karma), OutboxDepth::default(), "Bucket events are not Karma's");
    assert!(lease(&*store, Sink::Karma, 10, LONG_LEASE).await.is_empty(), "Karma leases none of Bucket's events");

    settle(&*store, Sink::Bucket, vec![Settlement::Delivered(first[0].seq)]).await;
    let delivered = store.depth(Sink::Bucket);
    assert_eq!(delivered.events, 4, "a delivery removes one event: {delivered:?}");
    assert!(delivered.bytes < full.bytes, "a delivery removes its bytes: {full:?} then {delivered:?}");

    settle(&*store, Sink::Bucket, vec![Settlement::Failed(first[1].seq)]).await;
    let failed = store.depth(Sink::Bucket);
    assert_eq!(failed, delivered, "a failed attempt keeps the event and its bytes");

    let reason = "the sink refused it: 422 schema mismatch";
    settle(
        &*store,
        Sink::Bucket,
        vec![Settlement::DeadLetter { seq: first[2].seq, record: dead_record(reason, &first[2]) }],
    )
    .await;
    let dead = store.depth(Sink::Bucket);
    assert_eq!(dead.events, 3, "a dead letter leaves the outbox: {dead:?}");
    assert!(dead.bytes < failed.bytes, "a dead letter takes its bytes out of the outbox: {failed:?} then {dead:?}");
    assert_eq!(dead.dead_letters, 1, "the dead letter is kept: {dead:?}");
    let letters = store.dead_letters(Sink::Bucket, 10).await.expect("dead_letters");
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    assert_dead_letter(&letters[0], &events[2], reason);
    assert!(store.dead_letters(Sink::Karma, 10).await.expect("dead_letters").is_empty(), "Karma has no dead letters");

    // The failed event is leased again (and only it: the others are delivered, dead or leased).
    let retried = lease_until(&*store, Sink::Bucket, 1, LONG_LEASE).await;
    assert_same_events("the lease after a failed attempt", &retried, &events[1..2]);
    assert_eq!(retried[0].seq, first[1].seq, "a failed event keeps its place in the outbox");
    assert_eq!(retried[0].attempts, 1, "the failed attempt is counted");

    // Released (the sink was unreachable): leased again, the attempt not counted.
    settle(&*store, Sink::Bucket, vec![Settlement::Release(retried[0].seq)]).await;
    assert_eq!(store.depth(Sink::Bucket), dead, "a released event stays, with its bytes");
    let released = lease_until(&*store, Sink::Bucket, 1, LONG_LEASE).await;
    assert_same_events("the lease after a release", &released, &events[1..2]);
    assert_eq!(released[0].attempts, 1, "a release is not a failed attempt");
    settle(&*store, Sink::Bucket, vec![Settlement::Delivered(released[0].seq)]).await;

    settle(&*store, Sink::Bucket, second.iter().map(|e| Settlement::Delivered(e.seq)).collect()).await;
    let end = store.depth(Sink::Bucket);
    assert_eq!(end, OutboxDepth { events: 0, bytes: 0, dead_letters: 1, dropped: 0 }, "depths are exact at the end");
    assert!(lease(&*store, Sink::Bucket, 10, LONG_LEASE).await.is_empty(), "nothing is left to lease");

    store.close().await.expect("close");
}

/// [`Store::dead_letters`] lists the newest dead letters first (the last dead-lettered first,
/// whatever the events' outbox order), at most `limit` of them.
pub(crate) async fn dead_letters_are_listed_newest_first(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let events: Vec<NewEvent> = (1..=4).map(|n| event(Sink::Bucket, n)).collect();
    queue(&*store, &events).await;
    let leased = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("all four events", &leased, &events);
    let dead_letter = |n: usize| Settlement::DeadLetter {
        seq: leased[n].seq,
        record: dead_record(&format!("reason {n}"), &leased[n]),
    };

    // In outbox order: both readings of "newest" agree.
    settle(&*store, Sink::Bucket, vec![dead_letter(0)]).await;
    settle(&*store, Sink::Bucket, vec![dead_letter(1)]).await;
    let letters = store.dead_letters(Sink::Bucket, 10).await.expect("dead_letters");
    assert_eq!(letters.len(), 2, "two dead letters: {letters:?}");
    assert_dead_letter(&letters[0], &events[1], "reason 1");
    assert_dead_letter(&letters[1], &events[0], "reason 0");

    // Against outbox order: the event dead-lettered last is the newest dead letter.
    settle(&*store, Sink::Bucket, vec![dead_letter(3)]).await;
    settle(&*store, Sink::Bucket, vec![dead_letter(2)]).await;
    assert_eq!(store.depth(Sink::Bucket).dead_letters, 4, "four dead letters are kept");
    let letters = store.dead_letters(Sink::Bucket, 10).await.expect("dead_letters");
    let order: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap_or("?")).collect();
    assert_eq!(order, ["reason 2", "reason 3", "reason 1", "reason 0"], "dead letters, newest first");
    let newest = store.dead_letters(Sink::Bucket, 1).await.expect("dead_letters");
    assert_eq!(newest.len(), 1, "the limit is applied: {newest:?}");
    assert_dead_letter(&newest[0], &events[2], "reason 2");

    store.close().await.expect("close");
}

/// Events committed concurrently, while a deliverer leases and settles, are all leased,
/// exactly once each and in commit order per outcome; none is skipped.
pub(crate) async fn events_committed_concurrently_are_all_leased_once(place: &dyn Place) {
    const WRITERS: usize = 4;
    const COMMITS: usize = 150;
    const PER_OUTCOME: u64 = 8;
    let store = place.open(roomy()).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let deliverer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut idle_since: Option<Instant> = None;
            loop {
                let leased = lease(&*store, Sink::Bucket, 100, LONG_LEASE).await;
                if !leased.is_empty() {
                    settle(&*store, Sink::Bucket, leased.iter().map(|e| Settlement::Delivered(e.seq)).collect()).await;
                    seen.extend(leased.into_iter().map(|e| e.event_id));
                    continue;
                }
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    // Every writer is done: stop once the outbox is empty, or give up on what
                    // stays unleasable after a while.
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if store.depth(Sink::Bucket).events == 0 || since.elapsed() > PATIENCE {
                        return seen;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // The writers commit in rounds, all at the same moment, so their commits overlap.
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for _ in 0..COMMITS {
                    let events: Vec<NewEvent> = (0..PER_OUTCOME).map(|n| event(Sink::Bucket, n)).collect();
                    sent.push(events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>());
                    let guard = fresh(&*store, &new_id(), &new_fingerprint()).await;
                    barrier.wait().await;
                    let committed = store.commit(guard, outcome(answer("concurrent"), events));
                    committed.await.expect("commit");
                }
                sent
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.extend(writer.await.expect("a writer task"));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = deliverer.await.expect("the deliverer task");
    let stuck = store.depth(Sink::Bucket);

    let total = WRITERS * COMMITS * PER_OUTCOME as usize;
    let unique: std::collections::HashSet<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), seen.len(), "no event is leased twice while leased or after delivery");
    let missing = outcomes.iter().flatten().filter(|id| !unique.contains(id.as_str())).count();
    assert_eq!(
        (seen.len(), missing),
        (total, 0),
        "{total} events committed concurrently: {} leased, {missing} never leasable (depth at the end: {stuck:?})",
        seen.len()
    );
    let position: std::collections::HashMap<&str, usize> =
        seen.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for ids in &outcomes {
        assert!(
            ids.windows(2).all(|w| position[w[0].as_str()] < position[w[1].as_str()]),
            "one outcome's events lease in order"
        );
    }
    assert_eq!(store.depth(Sink::Bucket), OutboxDepth::default(), "all delivered: depths are exact");

    store.close().await.expect("close");
}

/// A leased event's `enqueued_ms` is when it was committed, not when its outcome was reached
/// (an outcome kept while the store failed, or an abandoned one, is committed late).
pub(crate) async fn an_event_is_stamped_with_its_commit_time(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let before_ms = now_ms();
    let mut late = outcome(answer("late"), vec![event(Sink::Bucket, 1)]);
    late.created_ms = before_ms - 600_000;
    commit_new(&*store, late).await;
    let after_ms = now_ms();
    let leased = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_eq!(leased.len(), 1, "the event is leasable");
    assert_recent(leased[0].enqueued_ms, before_ms, after_ms, "enqueued_ms of an outcome reached 10 minutes ago");
    store.close().await.expect("close");
}

/// A lease holds its event for `lease_for` and no longer: before then no other lease gets it,
/// after then it is leasable again.
pub(crate) async fn an_expired_lease_makes_its_event_leasable_again(place: &dyn Place) {
    const SHORT: Duration = Duration::from_millis(300);
    let store = place.open(roomy()).await;
    let queued = [event(Sink::Bucket, 1)];
    queue(&*store, &queued).await;

    let start = Instant::now();
    let first = lease(&*store, Sink::Bucket, 10, SHORT).await;
    assert_same_events("the short lease", &first, &queued);
    let early = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    if start.elapsed() < SHORT {
        assert_same_events("a lease before the first one expires", &early, &[]);
    }
    let again = if early.is_empty() { lease_until(&*store, Sink::Bucket, 1, LONG_LEASE).await } else { early };
    assert!(
        start.elapsed() >= SHORT,
        "the event came back after {:?}, before its {SHORT:?} lease could expire",
        start.elapsed()
    );
    assert_same_events("the lease after expiry", &again, &queued);
    assert_eq!(again[0].seq, first[0].seq, "an expired lease's event keeps its place");
    let held = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("a lease while the new (long) lease holds", &held, &[]);
    assert_eq!(store.depth(Sink::Bucket).events, 1, "expiry neither adds nor removes events");

    store.close().await.expect("close");
}

/// A full outbox under the drop-oldest policy keeps its newest `max_events` events and counts
/// the dropped ones.
pub(crate) async fn a_full_outbox_drops_its_oldest_events_under_drop_oldest(place: &dyn Place) {
    let bound = OutboxBound { max_events: 3, max_bytes: 1 << 30, drop_oldest: true };
    let store = place.open([bound; 2]).await;
    let events: Vec<NewEvent> = (1..=5).map(|n| event(Sink::Bucket, n)).collect();
    queue(&*store, &events).await;

    let depth = store.depth(Sink::Bucket);
    assert_eq!(depth.events, 3, "a bound of 3 events keeps 3: {depth:?}");
    assert_eq!(depth.dropped, 2, "the two events over the bound are counted as dropped: {depth:?}");
    assert_eq!(depth.dead_letters, 0, "dropped events are not dead letters: {depth:?}");
    let leased = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("the outbox after dropping the oldest", &leased, &events[2..]);
    assert_eq!(store.depth(Sink::Karma), OutboxDepth::default(), "Karma's outbox is untouched");

    settle(&*store, Sink::Bucket, leased.iter().map(|e| Settlement::Delivered(e.seq)).collect()).await;
    let end = store.depth(Sink::Bucket);
    assert_eq!((end.events, end.bytes, end.dropped), (0, 0, 2), "dropped events took their bytes along: {end:?}");

    store.close().await.expect("close");
}

/// [`Store::expire`] forgets exactly the answers created before the cutoff (their keys are
/// fresh again), keeps newer ones, and leaves queued events alone.
pub(crate) async fn expire_forgets_answers_older_than_the_cutoff_and_keeps_newer_ones(place: &dyn Place) {
    let store = place.open(roomy()).await;
    let now = now_ms();
    let mut old = Vec::new();
    for n in 0..2 {
        let mut out = outcome(answer("old"), vec![event(Sink::Bucket, n)]);
        out.created_ms = now - 60_000;
        old.push(commit_new(&*store, out).await);
    }
    let recent_answer = answer("recent");
    let mut recent_outcome = outcome(recent_answer.clone(), vec![event(Sink::Bucket, 9)]);
    recent_outcome.created_ms = now;
    let (recent_key, recent_fp) = commit_new(&*store, recent_outcome).await;
    let before = depths(&*store);

    let forgotten = store.expire(now - 30_000).await.expect("expire");
    assert_eq!(forgotten, 2, "expire(now - 30 s) forgets the two answers created a minute ago");
    for (key, fp) in &old {
        let after = claim(&*store, key, fp).await;
        assert!(matches!(after, Claim::Fresh(_)), "an expired key claims Fresh: got {after:?}");
    }
    expect_replay(&*store, &recent_key, &recent_fp, &recent_answer, "an answer newer than the cutoff").await;
    assert_eq!(depths(&*store), before, "expiry forgets answers, not queued events");

    let forgotten = store.expire(now + 1).await.expect("expire");
    assert_eq!(forgotten, 1, "expire(now + 1) forgets the recent answer too");
    let after = claim(&*store, &recent_key, &recent_fp).await;
    assert!(matches!(after, Claim::Fresh(_)), "the recent key claims Fresh after expiry: got {after:?}");
    drop(after);
    assert_eq!(store.expire(now + 1).await.expect("expire"), 0, "nothing is left to expire");

    store.close().await.expect("close");
}

/// [`Store::oldest_enqueued_ms`] is None for an empty outbox and otherwise the enqueue time of
/// the oldest event not yet settled (leased or not).
pub(crate) async fn oldest_enqueued_ms_tracks_the_oldest_waiting_event(place: &dyn Place) {
    let store = place.open(roomy()).await;
    for sink in Sink::ALL {
        assert_eq!(oldest(&*store, sink).await, None, "an empty {} outbox has no oldest event", sink.name());
    }
    let before_ms = now_ms();
    let events: Vec<NewEvent> = (1..=2).map(|n| event(Sink::Bucket, n)).collect();
    queue(&*store, &events).await;
    let after_ms = now_ms();

    let first = oldest(&*store, Sink::Bucket).await.expect("an outbox with events has an oldest one");
    assert_recent(first, before_ms, after_ms, "oldest_enqueued_ms");
    assert_eq!(oldest(&*store, Sink::Karma).await, None, "Karma's outbox is still empty");

    let leased = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("both events", &leased, &events);
    assert!(leased[0].enqueued_ms <= leased[1].enqueued_ms, "enqueue times follow delivery order");
    assert_eq!(oldest(&*store, Sink::Bucket).await, Some(leased[0].enqueued_ms), "a leased event is still waiting");

    settle(&*store, Sink::Bucket, vec![Settlement::Delivered(leased[0].seq)]).await;
    assert_eq!(oldest(&*store, Sink::Bucket).await, Some(leased[1].enqueued_ms), "the next event is the oldest now");
    settle(&*store, Sink::Bucket, vec![Settlement::Delivered(leased[1].seq)]).await;
    assert_eq!(oldest(&*store, Sink::Bucket).await, None, "a drained outbox has no oldest event");

    store.close().await.expect("close");
}

/// Everything recorded survives a close and a reopen: answers replay, undelivered events
/// (leased or not) come back with their ids and bodies, dead letters and depths are the same,
/// and delivered events do not come back.
pub(crate) async fn everything_recorded_survives_close_and_reopen(place: &dyn Place) {
    const SHORT: Duration = Duration::from_millis(200);
    let store = place.open(roomy()).await;
    let body = answer("durable");
    let bucket: Vec<NewEvent> = (1..=4).map(|n| event(Sink::Bucket, n)).collect();
    let karma = event(Sink::Karma, 1);
    let (key, fp) = commit_new(&*store, outcome(body.clone(), vec![bucket[0].clone(), karma.clone()])).await;
    let large = large_answer(200 * 1024);
    let (large_key, large_fp) = commit_new(&*store, outcome(large.clone(), Vec::new())).await;
    queue(&*store, &bucket[1..]).await;

    let delivered_and_dead = lease(&*store, Sink::Bucket, 2, LONG_LEASE).await;
    assert_same_events("the first two Bucket events", &delivered_and_dead, &bucket[..2]);
    let reason = "never deliverable";
    settle(
        &*store,
        Sink::Bucket,
        vec![
            Settlement::Delivered(delivered_and_dead[0].seq),
            Settlement::DeadLetter {
                seq: delivered_and_dead[1].seq,
                record: dead_record(reason, &delivered_and_dead[1]),
            },
        ],
    )
    .await;
    // bucket[2] is leased (briefly) when the store closes; bucket[3] is not leased at all.
    let leased = lease(&*store, Sink::Bucket, 1, SHORT).await;
    assert_same_events("the third Bucket event", &leased, &bucket[2..3]);

    let depths_before = depths(&*store);
    let letters_before = store.dead_letters(Sink::Bucket, 10).await.expect("dead_letters");
    let oldest_before = oldest(&*store, Sink::Bucket).await;
    assert_eq!(depths_before[Sink::Bucket.index()].events, 2, "two Bucket events wait before the close");
    assert_eq!(letters_before.len(), 1, "one dead letter before the close");

    let store = reopen(place, store, roomy()).await;
    assert_eq!(store.health(), Health::Ok, "a reopened store is healthy");
    expect_replay(&*store, &key, &fp, &body, "an answer after a reopen").await;
    expect_replay(&*store, &large_key, &large_fp, &large, "a 200 KB answer after a reopen").await;
    let different = claim(&*store, &key, &new_fingerprint()).await;
    assert!(
        matches!(different, Claim::Mismatch),
        "another request for a recorded key after a reopen: got {different:?}"
    );

    let depths_after = depths(&*store);
    for sink in Sink::ALL {
        let (b, a) = (depths_before[sink.index()], depths_after[sink.index()]);
        assert_eq!(
            (a.events, a.bytes, a.dead_letters),
            (b.events, b.bytes, b.dead_letters),
            "{} depth (events, bytes, dead letters) after a reopen: {b:?} before, {a:?} after",
            sink.name()
        );
    }
    assert_eq!(store.dead_letters(Sink::Bucket, 10).await.expect("dead_letters"), letters_before, "dead letters");
    assert_eq!(oldest(&*store, Sink::Bucket).await, oldest_before, "oldest_enqueued_ms after a reopen");

    let mut back = lease_until(&*store, Sink::Bucket, 2, LONG_LEASE).await;
    back.sort_by_key(|e| e.seq);
    assert_same_events("the undelivered Bucket events after a reopen", &back, &bucket[2..]);
    let karma_back = lease(&*store, Sink::Karma, 10, LONG_LEASE).await;
    assert_same_events("the Karma event after a reopen", &karma_back, std::slice::from_ref(&karma));
    let more = lease(&*store, Sink::Bucket, 10, LONG_LEASE).await;
    assert_same_events("a delivered or dead-lettered event after a reopen", &more, &[]);

    store.close().await.expect("close");
}

/// A sink's bell rings when a commit queues an event for it.
pub(crate) async fn the_bell_rings_when_a_commit_queues_events(place: &dyn Place) {
    let store = place.open(roomy()).await;
    for sink in Sink::ALL {
        let mut rung = pin!(store.bell(sink).notified());
        rung.as_mut().enable();
        commit_new(&*store, outcome(answer("bell"), vec![event(sink, 1)])).await;
        if tokio::time::timeout(Duration::from_secs(5), rung).await.is_err() {
            panic!("the {} bell did not ring within 5 s of a commit that queued an event for it", sink.name());
        }
    }
    store.close().await.expect("close");
}

/// Concurrent claims of one key give it to exactly one of them; the others get InProgress when
/// they are the same request and Mismatch when not.
pub(crate) async fn concurrent_claims_for_one_key_give_exactly_one_fresh(place: &dyn Place) {
    let store = place.open(roomy()).await;

    let (key, fp) = (new_id(), new_fingerprint());
    let claims = claim_together(&store, &key, &vec![fp.clone(); 50]).await;
    let fresh = claims.iter().filter(|c| matches!(c, Claim::Fresh(_))).count();
    let in_progress = claims.iter().filter(|c| matches!(c, Claim::InProgress)).count();
    assert_eq!((fresh, in_progress), (1, 49), "50 concurrent claims of one request: {claims:?}");
    drop(claims);
    drop(fresh_claim(claim(&*store, &key, &fp).await, "the key after the winner released it"));

    let (key, fps) = (new_id(), [new_fingerprint(), new_fingerprint()]);
    let asked: Vec<String> = (0..50).map(|n| fps[n % 2].clone()).collect();
    let claims = claim_together(&store, &key, &asked).await;
    let winners: Vec<&str> =
        claims.iter().filter_map(|c| if let Claim::Fresh(g) = c { Some(g.fingerprint()) } else { None }).collect();
    assert_eq!(winners.len(), 1, "50 concurrent claims of two requests: exactly one Fresh: {claims:?}");
    let winner = winners[0];
    for (claim, fp) in claims.iter().zip(&asked) {
        match claim {
            Claim::Fresh(_) => {}
            Claim::InProgress => assert_eq!(fp, winner, "InProgress only for the winner's request"),
            Claim::Mismatch => assert_ne!(fp, winner, "Mismatch only for the other request"),
            Claim::Replay(_) => panic!("nothing was committed, yet a claim replayed: {claims:?}"),
        }
    }
    drop(claims);

    store.close().await.expect("close");
}

/// A fresh store is healthy and empty; once closed, every call answers [`StoreError::Closed`],
/// including a commit through a claim taken before the close.
pub(crate) async fn a_fresh_store_is_healthy_and_a_closed_one_answers_closed(place: &dyn Place) {
    let store = place.open(roomy()).await;
    assert_eq!(store.health(), Health::Ok, "a fresh store is healthy");
    for sink in Sink::ALL {
        assert_eq!(store.depth(sink), OutboxDepth::default(), "a fresh store's {} outbox", sink.name());
    }
    let (key, fp) = (new_id(), new_fingerprint());
    let to_mark = fresh(&*store, &key, &fp).await;
    let to_commit = fresh(&*store, &new_id(), &new_fingerprint()).await;

    store.close().await.expect("close");
    expect_closed("claim", store.claim(&new_id(), &fp).await);
    expect_closed("record_in_flight", store.record_in_flight(&to_mark, &marker(&fp)).await);
    expect_closed("commit", store.commit(to_commit, outcome(answer("late"), vec![event(Sink::Bucket, 1)])).await);
    expect_closed("abandoned", store.abandoned().await);
    expect_closed("lease", store.lease(Sink::Bucket, 10, LONG_LEASE).await);
    expect_closed("settle", store.settle(Sink::Bucket, vec![Settlement::Delivered(0)]).await);
    expect_closed("oldest_enqueued_ms", store.oldest_enqueued_ms(Sink::Bucket).await);
    expect_closed("dead_letters", store.dead_letters(Sink::Bucket, 10).await);
    expect_closed("expire", store.expire(now_ms()).await);
    drop(to_mark);
    drop(store);

    // Nothing the closed store refused was recorded.
    let store = place.open(roomy()).await;
    assert_eq!(store.health(), Health::Ok, "a reopened store is healthy");
    assert_eq!(depths(&*store), [OutboxDepth::default(); 2], "the refused commit queued nothing");
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Bounds no check reaches.
fn roomy() -> [OutboxBound; 2] {
    [OutboxBound { max_events: 1_000_000, max_bytes: 1 << 32, drop_oldest: false }; 2]
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new request fingerprint, shaped as the engine's (SHA-256 in lowercase hex).
fn new_fingerprint() -> String {
    Sha256::digest(new_id().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new event for `sink` with fresh ids; its JSON body names its ids and `n`.
fn event(sink: Sink, n: u64) -> NewEvent {
    let (event_id, trace_id) = (new_id(), new_id());
    let body = json!({"event_id": event_id, "trace_id": trace_id, "sink": sink.name(), "n": n});
    NewEvent { sink, event_id, trace_id, body: serde_json::to_vec(&body).expect("event JSON") }
}

/// A distinct answer (JSON).
fn answer(label: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({"status": "success", "label": label, "nonce": new_id()})).expect("JSON"))
}

/// A distinct answer (JSON) of about `len` bytes.
fn large_answer(len: usize) -> Bytes {
    let filler: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    Bytes::from(serde_json::to_vec(&json!({"nonce": new_id(), "filler": filler})).expect("JSON"))
}

/// An outcome created now, without writes.
fn outcome(answer: Bytes, events: Vec<NewEvent>) -> Outcome {
    Outcome { answer, created_ms: now_ms(), writes: Vec::new(), events }
}

/// An in-flight marker of the request with `fingerprint`, with every field set.
fn marker(fingerprint: &str) -> InFlightMarker {
    InFlightMarker {
        fingerprint: fingerprint.to_owned(),
        trace_id: new_id(),
        action_type: "send_whatsapp".to_owned(),
        user_id: Some("user-42".to_owned()),
        product: Some("conformance".to_owned()),
        metadata: Some(json!({"nested": {"list": [1, 2.5, null, true]}, "text": "h\u{e9}llo \u{2713}"})),
        started_ms: now_ms(),
    }
}

async fn claim(store: &dyn Store, key: &str, fingerprint: &str) -> Claim {
    store.claim(key, fingerprint).await.unwrap_or_else(|e| panic!("claim of {key}: {e}"))
}

fn fresh_claim(claim: Claim, what: &str) -> ClaimGuard {
    match claim {
        Claim::Fresh(guard) => guard,
        other => panic!("{what}: expected Fresh, got {other:?}"),
    }
}

async fn fresh(store: &dyn Store, key: &str, fingerprint: &str) -> ClaimGuard {
    fresh_claim(claim(store, key, fingerprint).await, "a new key")
}

async fn expect_replay(store: &dyn Store, key: &str, fingerprint: &str, body: &Bytes, what: &str) {
    match claim(store, key, fingerprint).await {
        Claim::Replay(stored) => assert!(
            stored == body,
            "{what}: the replayed answer differs from the committed one ({} bytes replayed, {} committed)",
            stored.len(),
            body.len()
        ),
        other => panic!("{what}: expected Replay, got {other:?}"),
    }
}

/// Claims `key` until the answer is not InProgress (a commit may still be finishing).
async fn settled_claim(store: &dyn Store, key: &str, fingerprint: &str, what: &str) -> Claim {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let claim = claim(store, key, fingerprint).await;
        if !matches!(claim, Claim::InProgress) {
            return claim;
        }
        assert!(Instant::now() < deadline, "{what}: the key is still InProgress after {PATIENCE:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Claims a new key and commits `outcome` under it; returns the key and the fingerprint.
async fn commit_new(store: &dyn Store, outcome: Outcome) -> (String, String) {
    let (key, fp) = (new_id(), new_fingerprint());
    let guard = fresh(store, &key, &fp).await;
    store.commit(guard, outcome).await.unwrap_or_else(|e| panic!("commit: {e}"));
    (key, fp)
}

/// Queues `events` in this order, one commit each.
async fn queue(store: &dyn Store, events: &[NewEvent]) {
    for event in events {
        commit_new(store, outcome(answer("queued"), vec![event.clone()])).await;
    }
}

/// Claims `key` once per fingerprint, all at the same moment, and returns every answer (the
/// guards are held until the caller drops them).
async fn claim_together(store: &SharedStore, key: &str, fingerprints: &[String]) -> Vec<Claim> {
    let barrier = Arc::new(tokio::sync::Barrier::new(fingerprints.len()));
    let tasks: Vec<_> = fingerprints
        .iter()
        .map(|fp| {
            let (store, barrier, key, fp) = (Arc::clone(store), Arc::clone(&barrier), key.to_owned(), fp.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&key, &fp).await
            })
        })
        .collect();
    let mut claims = Vec::with_capacity(tasks.len());
    for task in tasks {
        claims.push(task.await.expect("a claim task").expect("claim"));
    }
    claims
}

async fn lease(store: &dyn Store, sink: Sink, limit: usize, lease_for: Duration) -> Vec<LeasedEvent> {
    store.lease(sink, limit, lease_for).await.unwrap_or_else(|e| panic!("lease of {}: {e}", sink.name()))
}

/// Leases `sink` until `want` events were leased in all (or [`PATIENCE`] ran out); returns them.
async fn lease_until(store: &dyn Store, sink: Sink, want: usize, lease_for: Duration) -> Vec<LeasedEvent> {
    let deadline = Instant::now() + PATIENCE;
    let mut leased = Vec::new();
    loop {
        leased.extend(lease(store, sink, 100, lease_for).await);
        if leased.len() >= want || Instant::now() >= deadline {
            return leased;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn settle(store: &dyn Store, sink: Sink, settlements: Vec<Settlement>) {
    store.settle(sink, settlements).await.unwrap_or_else(|e| panic!("settle of {}: {e}", sink.name()));
}

async fn oldest(store: &dyn Store, sink: Sink) -> Option<u64> {
    store.oldest_enqueued_ms(sink).await.unwrap_or_else(|e| panic!("oldest_enqueued_ms of {}: {e}", sink.name()))
}

fn depths(store: &dyn Store) -> [OutboxDepth; 2] {
    Sink::ALL.map(|sink| store.depth(sink))
}

/// Closes `store`, lets it go, and opens the place again.
async fn reopen(place: &dyn Place, store: SharedStore, bounds: [OutboxBound; 2]) -> SharedStore {
    store.close().await.expect("close");
    drop(store);
    place.open(bounds).await
}

/// Asserts that `leased` are `queued`, in order, with their ids and bodies, seqs increasing.
fn assert_same_events(what: &str, leased: &[LeasedEvent], queued: &[NewEvent]) {
    let leased_ids: Vec<&str> = leased.iter().map(|e| e.event_id.as_str()).collect();
    let queued_ids: Vec<&str> = queued.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(leased_ids, queued_ids, "{what}: the event ids, in delivery order");
    for (got, sent) in leased.iter().zip(queued) {
        assert_eq!(got.trace_id, sent.trace_id, "{what}: the trace id of {}", sent.event_id);
        assert!(got.body[..] == sent.body[..], "{what}: the body of {} differs", sent.event_id);
    }
    assert!(leased.windows(2).all(|w| w[0].seq < w[1].seq), "{what}: seqs increase in delivery order");
}

/// A dead-letter record as a deliverer would make it.
fn dead_record(reason: &str, event: &LeasedEvent) -> Value {
    let body: Value = serde_json::from_slice(&event.body).expect("event JSON");
    serde_json::json!({"reason": reason, "event_id": event.event_id, "trace_id": event.trace_id, "event": body})
}

/// Asserts that a dead letter record names `event` and `reason`.
fn assert_dead_letter(record: &Value, event: &NewEvent, reason: &str) {
    assert_eq!(record["reason"], reason, "the dead letter's reason: {record}");
    assert_eq!(record["event_id"], event.event_id.as_str(), "the dead letter's event id: {record}");
    assert_eq!(record["trace_id"], event.trace_id.as_str(), "the dead letter's trace id: {record}");
    let body: Value = serde_json::from_slice(&event.body).expect("event JSON");
    assert_eq!(record["event"], body, "the dead letter keeps the event: {record}");
}

fn assert_recent(ms: u64, before_ms: u64, after_ms: u64, what: &str) {
    assert!(
        ms + CLOCK_SLACK_MS >= before_ms && ms <= after_ms + CLOCK_SLACK_MS,
        "{what} is {ms}, not within {CLOCK_SLACK_MS} ms of [{before_ms}, {after_ms}]"
    );
}

fn expect_closed<T>(call: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Closed) => {}
        Err(other) => panic!("{call} after close: expected StoreError::Closed, got {other:?}"),
        Ok(_) => panic!("{call} after close: expected StoreError::Closed, got Ok"),
    }
}

/// The suite against the embedded (fjall) backend, one temporary directory per check.
mod embedded_backend {
    use std::future::Future;
    use std::path::PathBuf;
    use std::pin::Pin;

    use super::Place;
    use crate::metrics::Metrics;
    use crate::store::embedded::Embedded;
    use crate::store::{OutboxBound, SharedStore};

    /// A temporary directory holding an embedded store; removed when the place is dropped.
    struct EmbeddedPlace {
        dir: tempfile::TempDir,
    }

    impl Place for EmbeddedPlace {
        fn open(&self, bounds: [OutboxBound; 2]) -> Pin<Box<dyn Future<Output = SharedStore> + Send + '_>> {
            let dir: PathBuf = self.dir.path().to_path_buf();
            Box::pin(async move {
                let opened = tokio::task::spawn_blocking(move || Embedded::open(&dir, bounds, Metrics::new()))
                    .await
                    .expect("the open task ran");
                opened.expect("the embedded store opens") as SharedStore
            })
        }
    }

    fn embedded_place() -> Box<dyn Place> {
        Box::new(EmbeddedPlace { dir: tempfile::tempdir().expect("a temporary directory") })
    }

    super::conformance_tests!(embedded_place);
}
