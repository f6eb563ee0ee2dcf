//! Steps for executor replicas: the stack runs several executors on one PostgreSQL database (a
//! throwaway server from `test_support::postgres`) behind its round-robin front; replicas are
//! stopped and started, and each answer names the replica that served it.

use std::collections::BTreeSet;

use cucumber::{given, then, when};
use test_support::TestResponse;

use super::BhivWorld;
use super::params::{Action, Outcome};
use super::payloads::execute_body;
use super::world::Sent;

/// The replica that served an answer (the front's `x-executor-replica` header).
fn replica_of(reply: &TestResponse) -> usize {
    let header = reply.headers.get("x-executor-replica").expect("the front names the replica that answered");
    header.to_str().ok().and_then(|v| v.parse().ok()).expect("a replica number")
}

#[given(expr = "a BHIV stack with {int} executor replicas on PostgreSQL")]
async fn replicated_stack(w: &mut BhivWorld, replicas: usize) {
    let url = test_support::postgres::new_database().await;
    // A short lease: a stopped replica's leftovers are taken over within a second.
    w.configure(|b| {
        b.executor_replicas(replicas).executor_env("EXECUTOR_STORE_URL", url).executor_env("EXECUTOR_STORE_LEASE", "1")
    });
}

#[when(expr = "I send the same {action} workflow {int} times at once")]
async fn same_many_times(w: &mut BhivWorld, action: Action, copies: usize) {
    w.start().await;
    let trace = w.fresh_trace();
    let body = execute_body(&trace, "workflow", w.payload(action, Outcome::Successful, None));
    let sent = Sent { trace, body, headers: Vec::new() };
    let world = &*w;
    let replies = futures_util::future::join_all((0..copies).map(|_| world.send_execute(&sent))).await;
    let winner = replies.iter().find(|r| r.status == 200).cloned().expect("one copy is answered 200");
    w.batch = replies;
    w.record(sent, action, winner);
}

#[then(expr = "every answer is the stored success or 409 with error code {string}")]
async fn success_or_in_progress(w: &mut BhivWorld, code: String) {
    let stored = &w.last_reply().body;
    for reply in &w.batch {
        match reply.status {
            200 => assert_eq!(&reply.body, stored, "every 200 carries the one stored answer"),
            409 => assert_eq!(reply.error_code(), Some(code.as_str()), "{}", reply.body),
            other => panic!("a copy was answered {other}: {}", reply.body),
        }
    }
}

#[then(expr = "the answers came from {int} different replicas")]
async fn answered_by(w: &mut BhivWorld, replicas: usize) {
    let served: BTreeSet<usize> = w.batch.iter().map(replica_of).collect();
    assert_eq!(served.len(), replicas, "replicas that answered: {served:?}");
}

#[when(expr = "replica {int} is stopped")]
async fn stop_replica(w: &mut BhivWorld, index: usize) {
    w.start().await;
    w.stack().stop_replica(index).await.unwrap_or_else(|e| panic!("stopping replica {index}: {e}"));
}

#[when(expr = "replica {int} is started again")]
async fn start_replica(w: &mut BhivWorld, index: usize) {
    w.stack().start_replica(index).await.unwrap_or_else(|e| panic!("starting replica {index}: {e}"));
}

#[then(expr = "replica {int} answered none of them and the others all did")]
async fn none_from(w: &mut BhivWorld, stopped: usize) {
    let replicas = w.stack().replicas().await.len();
    let served: BTreeSet<usize> = w.executions.iter().filter_map(|e| e.reply.as_ref()).map(replica_of).collect();
    let others: BTreeSet<usize> = (0..replicas).filter(|i| *i != stopped).collect();
    assert_eq!(served, others, "the replicas that answered");
}

#[when(expr = "I execute {int} {action} workflows with each replica stopped in turn")]
async fn execute_while_rolling(w: &mut BhivWorld, count: usize, action: Action) {
    w.start().await;
    let replicas = w.stack().replicas().await.len();
    for n in 0..count {
        let victim = n % replicas;
        w.stack().stop_replica(victim).await.unwrap_or_else(|e| panic!("stopping replica {victim}: {e}"));
        let reply = w.execute(action, Outcome::Successful, None, None, Vec::new()).await;
        assert_ne!(replica_of(&reply), victim, "a stopped replica answered");
        w.stack().start_replica(victim).await.unwrap_or_else(|e| panic!("starting replica {victim}: {e}"));
    }
}
