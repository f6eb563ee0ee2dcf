//! Store faults with the real binary: a flipped byte in any store file, a journal cut short, a
//! full disk (a 32 MiB tmpfs, so root is needed) and repeated `SIGKILL`s under load.
//!
//! The rule everywhere: an acknowledged execution is never lost and never executed twice. A
//! damaged store either refuses to start (non-zero exit, the data directory named in its logs) or
//! answers every retry of an acknowledged request with the stored answer or a 5xx, and no message
//! is sent again. A store that cannot write refuses new executions with 503 `store_unavailable`
//! before any provider call, keeps an outcome it could not record and records it once it can.
//!
//! Nothing here knows the store's file formats: the data directory is walked, and a damaged file
//! is any regular file in it. Files are copied as their bytes up to the last non-zero one plus
//! their length, so a preallocated (sparse) journal stays sparse in every copy, and a byte is
//! flipped in the middle of those bytes, not in a zero tail no reader looks at.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Damaged files
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_any_store_file_never_loses_or_repeats_an_acknowledged_execution() {
    let neighbours = Neighbours::start().await;
    let pristines = [Pristine::make(&neighbours, Stop::Kill).await, Pristine::make(&neighbours, Stop::Term).await];
    for pristine in &pristines {
        pristine.assert_an_undamaged_copy_replays_everything(&neighbours).await;
    }

    let files = spread_across_kinds(&pristines, 25);
    let names: Vec<_> = files.iter().map(|(_, file)| file.relative.display().to_string()).collect();
    assert!(files.len() >= 3, "the data directories hold too few files to damage: {names:?}");
    let (mut summary, mut breaches) = (Vec::new(), Vec::new());
    for (pristine, file) in files {
        let data_dir = pristine.snapshot.restore();
        let offset = file.middle();
        let target = data_dir.path().join(&file.relative);
        let handle = OpenOptions::new().write(true).open(&target).expect("the copied file opens");
        handle.write_all_at(&[file.byte_at(offset) ^ 0xFF], offset).expect("a byte is flipped");
        drop(handle);
        let damage = format!(
            "byte {offset} of {} flipped in {} (stopped by {})",
            file.len,
            file.relative.display(),
            pristine.stop.name()
        );

        let (verdict, found) =
            check_never_loses_or_repeats(&neighbours, data_dir.path(), &damage, &pristine.acknowledged).await;
        summary.push(format!("{damage}: {}", verdict.describe()));
        breaches.extend(found.into_iter().map(|breach| format!("{damage}: {breach}")));
    }
    eprintln!("flipped bytes, one run each:\n  {}", summary.join("\n  "));
    assert!(breaches.is_empty(), "{} breaches of the rule:\n{}", breaches.len(), breaches.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_short_never_loses_or_repeats_an_acknowledged_execution() {
    let neighbours = Neighbours::start().await;
    let pristines = [Pristine::make(&neighbours, Stop::Kill).await, Pristine::make(&neighbours, Stop::Term).await];

    let (mut summary, mut breaches) = (Vec::new(), Vec::new());
    for pristine in &pristines {
        let Some(journal) = pristine.snapshot.newest_journal() else {
            assert!(
                pristine.stop != Stop::Kill,
                "an executor killed right after acknowledging leaves a journal with content: {:?}",
                pristine.snapshot.files.iter().map(|f| &f.relative).collect::<Vec<_>>()
            );
            summary.push(format!("stopped by {}: no journal with content to cut", pristine.stop.name()));
            continue;
        };
        let content = journal.content.len() as u64;
        for (cut_to, how, incomplete_last_batch) in
            [(content.saturating_sub(5), "by its last 5 bytes", true), (content / 2, "to half its content", false)]
        {
            let data_dir = pristine.snapshot.restore();
            let target = data_dir.path().join(&journal.relative);
            OpenOptions::new()
                .write(true)
                .open(&target)
                .expect("the copied journal opens")
                .set_len(cut_to)
                .expect("cut");
            let damage = format!(
                "{} ({content} bytes of content, {} in all) cut {how} to {cut_to} bytes (stopped by {})",
                journal.relative.display(),
                journal.len,
                pristine.stop.name()
            );

            let (verdict, found) =
                check_never_loses_or_repeats(&neighbours, data_dir.path(), &damage, &pristine.acknowledged).await;
            breaches.extend(found.into_iter().map(|breach| format!("{damage}: {breach}")));
            if let (Verdict::Served { logs, .. }, true) = (&verdict, incomplete_last_batch) {
                let name = journal.relative.file_name().expect("a file name").to_string_lossy().into_owned();
                if !logs.iter().any(|line| line.contains("WARN") && line.contains(&name)) {
                    breaches.push(format!("{damage}: the last batch was cut, yet no warning names {name}"));
                }
            }
            summary.push(format!("{damage}: {}", verdict.describe()));
        }
    }
    eprintln!("journals cut short, one run each:\n  {}", summary.join("\n  "));
    assert!(breaches.is_empty(), "{} breaches of the rule:\n{}", breaches.len(), breaches.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_executions_before_any_provider_call_and_recovers_without_a_restart() {
    let tmpfs = match Tmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_new_executions_...: it needs a 32 MiB tmpfs, and {why}");
            return;
        }
    };
    let data_dir = tmpfs.data_dir();
    let neighbours = Neighbours::start().await;
    let mut process = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    let http = client();
    let mut acknowledged = acknowledge(&process, 3, 2).await;

    let filler = tmpfs.fill();
    let (recorded, first_refused) = until_the_store_refuses_a_write(&http, &process, secs(10.0)).await;
    acknowledged.extend(recorded);

    let message = trace_id();
    let refused = post(&http, &process, &whatsapp_request(&message)).await;
    refused.assert_rejected(503, "store_unavailable");
    assert!(refused.header("retry-after").is_some(), "a Retry-After header: {:?}", refused.headers);
    assert_eq!(neighbours.provider_calls(&message).await, 0, "refused before the provider was called");
    let health = call_get(&http, &format!("{}/healthz", process.base_url())).await;
    assert_eq!(health["store"], "failing", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let ready = http.get(format!("{}/readyz", process.base_url())).send().await.expect("readyz answers");
    assert_eq!(ready.status().as_u16(), 503, "not ready while the store fails");
    let ready: serde_json::Value = ready.json().await.expect("JSON");
    assert!(ready["reason"].as_str().is_some_and(|r| r.starts_with("store_failing")), "{ready}");
    let task = trace_id();
    let refused = post(&http, &process, &task_request(&task)).await;
    refused.assert_rejected(503, "store_unavailable");
    assert!(refused.header("retry-after").is_some(), "a Retry-After header: {:?}", refused.headers);

    fs::remove_file(&filler).expect("the filler is removed");

    // The executor recovers by itself: the refused message is executed on a retry, once.
    let sent = eventually(secs(20.0), "a retry succeeds once the disk has room", async || {
        let answer = post(&http, &process, &whatsapp_request(&message)).await;
        match answer.status {
            200 => Some(answer),
            409 | 503 => None,
            _ => panic!("a retry after the disk was freed answered {}: {}", answer.status, answer.text),
        }
    })
    .await;
    sent.assert_success(&message);
    assert_eq!(neighbours.provider_calls(&message).await, 1, "the refused message is sent once, on the retry");
    acknowledged.push(Acknowledged { trace: message.clone(), request: whatsapp_request(&message), answer: sent.body });
    // The task refused while the store was failing was never executed: its retry executes it, it
    // does not replay it. (The first refused request is different: its write was attempted and
    // failed, so the store kept its outcome and records it once it can; its retry may replay it.)
    let mut recorded_after_all = Vec::new();
    for refused in [&task, &first_refused] {
        let answer = post(&http, &process, &task_request(refused)).await;
        answer.assert_success(refused);
        if refused == &task && answer.header("idempotent-replayed") == Some("true") {
            recorded_after_all.push(answer.text.clone());
        }
        acknowledged.push(Acknowledged { trace: refused.clone(), request: task_request(refused), answer: answer.body });
    }
    eventually(secs(15.0), "healthz says the store is ok", async || {
        (call_get(&http, &format!("{}/healthz", process.base_url())).await["store"] == "ok").then_some(())
    })
    .await;
    let ready = http.get(format!("{}/readyz", process.base_url())).send().await.expect("readyz answers");
    assert_eq!(ready.status().as_u16(), 200, "ready again once the store writes");

    neighbours.assert_events_arrive(&acknowledged).await;
    // Nothing was answered `success` without being recorded: it survives a kill and replays.
    process.kill();
    let restarted = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    assert_replays_identically(&http, &restarted, &acknowledged, "after the disk was full and a kill").await;
    assert_eq!(neighbours.provider_calls(&message).await, 1, "a replay sends nothing");
    assert!(
        recorded_after_all.is_empty(),
        "requests refused with 503 store_unavailable (\"nothing was executed\") were recorded after all; their \
         retries replayed: {recorded_after_all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_reached_while_the_disk_is_full_is_recorded_once_the_disk_has_room() {
    let tmpfs = match Tmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("SKIPPED an_outcome_reached_while_the_disk_is_full_...: it needs a 32 MiB tmpfs, and {why}");
            return;
        }
    };
    let data_dir = tmpfs.data_dir();
    let neighbours = Neighbours::start().await;
    neighbours.fakes.slow_whatsapp(secs(1.5));
    let process = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    let http = client();
    let message = trace_id();
    // A message longer than a page: on a full disk, its outcome cannot fit in what is left of the
    // page the journal is writing into, so it cannot be recorded until there is room.
    let text: String = (0..120).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let request = workflow(&message, json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": text}));
    let pending = {
        let (http, url, request) = (http.clone(), process.url(), request.clone());
        tokio::spawn(async move { call(&http, &url, &request).await })
    };
    eventually(secs(10.0), "the provider call is in flight", async || {
        (neighbours.fakes.whatsapp_arrivals() == 1).then_some(())
    })
    .await;

    let filler = tmpfs.fill();

    let answer = pending.await.expect("the caller task").unwrap_or_else(|| no_answer(&process));
    answer.assert_rejected(503, "store_unavailable");
    assert!(answer.header("retry-after").is_some(), "a Retry-After header: {:?}", answer.headers);
    for _ in 0..3 {
        let retry = post(&http, &process, &request).await;
        match retry.status {
            409 => retry.assert_rejected(409, "execution_in_progress"),
            503 => retry.assert_rejected(503, "store_unavailable"),
            _ => panic!("a retry while the disk is full answered {}: {}", retry.status, retry.text),
        }
    }
    assert_eq!(neighbours.fakes.whatsapp_arrivals(), 1, "retries while the disk is full send nothing");
    let health = call_get(&http, &format!("{}/healthz", process.base_url())).await;
    assert_eq!(health["store"], "failing", "{health}");

    fs::remove_file(&filler).expect("the filler is removed");

    let replay = eventually(secs(20.0), "the kept outcome is recorded and a retry replays it", async || {
        let retry = post(&http, &process, &request).await;
        match retry.status {
            200 => Some(retry),
            409 | 503 => None,
            _ => panic!("a retry after the disk was freed answered {}: {}", retry.status, retry.text),
        }
    })
    .await;
    replay.assert_success(&message);
    let sent = neighbours.fakes.stack.providers().whatsapp_messages();
    assert_eq!(replay.result()["whatsapp_message_id"], sent[0].message_id.as_str(), "{}", replay.text);
    assert_eq!(neighbours.fakes.whatsapp_arrivals(), 1, "the message was sent once");
    neighbours.assert_events_arrive(&[Acknowledged { trace: message, request, answer: replay.body }]).await;
}

// ---------------------------------------------------------------------------------------------
// Kills
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_five_times_loses_nothing_and_executes_nothing_twice() {
    let neighbours = Neighbours::start().await;
    let data_dir = TempDir::new().expect("a temp dir");
    let acknowledged = Arc::new(Mutex::new(Vec::<Acknowledged>::new()));
    let mut per_cycle = Vec::new();
    for _cycle in 0..5 {
        let mut process = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
        let (stop, in_cycle) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let mut workers = Vec::new();
        for worker in 0..8 {
            let (http, url, acknowledged) = (client(), process.url(), acknowledged.clone());
            let (stop, in_cycle) = (stop.clone(), in_cycle.clone());
            workers.push(tokio::spawn(async move {
                for round in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let trace = trace_id();
                    let request =
                        if (worker + round) % 4 == 0 { whatsapp_request(&trace) } else { task_request(&trace) };
                    let Some(answer) = call(&http, &url, &request).await else { break };
                    if answer.status == 200 {
                        acknowledged.lock().expect("lock").push(Acknowledged { trace, request, answer: answer.body });
                        in_cycle.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        // The load runs for about a second (a measured interval, not a wait for an event).
        let started = Instant::now();
        eventually(secs(20.0), "a second of load with acknowledged executions", async || {
            (started.elapsed() >= secs(1.0) && in_cycle.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await;
        process.kill();
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.await.expect("a caller task");
        }
        per_cycle.push(in_cycle.load(Ordering::SeqCst));
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    eprintln!("acknowledged per cycle before each kill: {per_cycle:?}");

    let last = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    assert_replays_identically(&client(), &last, &acknowledged, "after five kills").await;
    let repeated: Vec<(String, usize)> =
        neighbours.provider_calls_by_trace().await.into_iter().filter(|(_, calls)| *calls > 1).collect();
    assert!(repeated.is_empty(), "WhatsApp messages sent more than once (trace, calls): {repeated:?}");
    neighbours.assert_events_arrive(&acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_are_not_sent_again_after_a_kill() {
    let neighbours = Neighbours::start().await;
    let data_dir = TempDir::new().expect("a temp dir");
    let mut process = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    let acknowledged = acknowledge(&process, 100, 0).await;
    let traces: BTreeSet<String> = acknowledged.iter().map(|a| a.trace.clone()).collect();
    eventually(secs(20.0), "both sinks have every event", async || {
        (traces.is_subset(&neighbours.fakes.bucket().trace_ids())
            && traces.is_subset(&neighbours.fakes.karma().trace_ids()))
        .then_some(())
    })
    .await;
    let delivered_before = neighbours.fakes.bucket().event_ids().len() + neighbours.fakes.karma().event_ids().len();
    assert_eq!(delivered_before, 200, "one event per execution and sink");

    // Acknowledgements are written without a sync of their own and become durable with the next
    // synced write group: one more execution, answered, is that group (no waiting on the clock).
    let later = trace_id();
    post(&client(), &process, &task_request(&later)).await.assert_success(&later);
    process.kill();
    let restarted = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
    let http = client();
    eventually(secs(20.0), "the restarted executor's outboxes are empty", async || {
        let status = call_get(&http, &format!("{}/api/integration/status", restarted.base_url())).await;
        let depth = |sink: &str| status["pillars"][sink]["outbox_depth"].as_u64();
        (depth("bucket") == Some(0) && depth("karma") == Some(0)).then_some(())
    })
    .await;

    // The 200 events delivered before the kill (the later execution's own may be sent twice).
    let before: Vec<Vec<Delivery>> = [neighbours.fakes.bucket(), neighbours.fakes.karma()]
        .iter()
        .map(|sink| sink.delivered().into_iter().filter(|d| traces.contains(&d.trace_id())).collect())
        .collect();
    let unique = |deliveries: &[Delivery]| deliveries.iter().map(Delivery::event_id).collect::<BTreeSet<_>>().len();
    let duplicates: usize = before.iter().map(|d| d.len() - unique(d)).sum();
    eprintln!("events sent again after the kill: {duplicates} of {delivered_before}");
    assert!(duplicates <= 5, "{duplicates} of {delivered_before} delivered events were sent again after the kill");
    assert_eq!(before.iter().map(|d| unique(d)).sum::<usize>(), 200, "no event is new");
}

// ---------------------------------------------------------------------------------------------
// The rule, checked on a damaged data directory
// ---------------------------------------------------------------------------------------------

/// How an executor on a damaged data directory behaved.
enum Verdict {
    /// It exited before listening.
    Refused,
    /// It listened, then stopped answering and exited.
    RefusedAfterListening,
    /// It served: `replayed` retries got the stored answer, `errors` a 5xx.
    Served { replayed: usize, errors: usize, logs: Vec<String> },
}

impl Verdict {
    fn describe(&self) -> String {
        match self {
            Verdict::Refused => "refused to start".to_owned(),
            Verdict::RefusedAfterListening => "listened, then exited".to_owned(),
            Verdict::Served { replayed, errors, .. } => format!("served: {replayed} replayed, {errors} answered 5xx"),
        }
    }
}

/// Starts an executor on `data_dir` (damaged as `damage` says) and checks the rule: it refuses,
/// exiting non-zero (not by a panic) and naming the directory, or every retry of an
/// `acknowledged` request answers the stored answer or a 5xx, and no WhatsApp message is sent a
/// second time. Returns what it did and every breach of the rule (empty if none).
async fn check_never_loses_or_repeats(
    neighbours: &Neighbours,
    data_dir: &Path,
    damage: &str,
    acknowledged: &[Acknowledged],
) -> (Verdict, Vec<String>) {
    let named = data_dir.display().to_string();
    let calls_before = neighbours.provider_calls_by_trace().await;
    let refusal = |status: Option<std::process::ExitStatus>, logs: &[String]| {
        let mut breaches = Vec::new();
        match status {
            None => breaches.push("it neither listened nor exited within 20 s".to_owned()),
            Some(status) if status.success() => breaches.push(format!("it exited with {status} without serving")),
            Some(_) => {}
        }
        if !logs.iter().any(|l| l.contains(&named)) {
            breaches.push(format!("its logs do not name the data directory {named}"));
        }
        if logs.iter().any(|l| l.contains("panicked")) {
            breaches.push("it stopped by a panic".to_owned());
        }
        if !breaches.is_empty() {
            breaches.push(format!("its last log lines: {:#?}", &logs[logs.len().saturating_sub(8)..]));
        }
        breaches
    };
    let mut process = match ExecutorProcess::try_start(EXECUTOR, data_dir, &neighbours.env()).await {
        Ok(process) => process,
        Err(NotServing { status, logs }) => return (Verdict::Refused, refusal(status, &logs)),
    };
    let http = client();
    let url = process.url();
    let answers = join_all(acknowledged.iter().map(|ack| call(&http, &url, &ack.request))).await;
    if answers.iter().any(Option::is_none) {
        let status =
            eventually(secs(10.0), &format!("{damage}: the executor that stopped answering exits"), async || {
                process.exited()
            })
            .await;
        return (Verdict::RefusedAfterListening, refusal(Some(status), &process.logs()));
    }

    let (mut replayed, mut errors, mut differing) = (0, 0, Vec::new());
    for (ack, answer) in acknowledged.iter().zip(answers.into_iter().flatten()) {
        if answer.status == 200 && answer.body == ack.answer {
            replayed += 1;
        } else if answer.status >= 500 {
            errors += 1;
        } else {
            differing.push(format!(
                "{} answered {} {} (acknowledged with {})",
                ack.trace, answer.status, answer.text, ack.answer
            ));
        }
    }
    let mut breaches = Vec::new();
    if let Some(first) = differing.first() {
        breaches.push(format!(
            "{} of {} acknowledged executions got neither their answer nor a 5xx (lost, or executed again); the \
             first: {first}",
            differing.len(),
            acknowledged.len()
        ));
    }
    // Counted during this run only: an earlier run on another copy may have sent some again.
    let calls = neighbours.provider_calls_by_trace().await;
    let count = |calls: &BTreeMap<String, usize>, trace: &str| calls.get(trace).copied().unwrap_or(0);
    let sent_again: Vec<&str> = acknowledged
        .iter()
        .filter(|ack| ack.is_whatsapp() && count(&calls, &ack.trace) > count(&calls_before, &ack.trace))
        .map(|ack| ack.trace.as_str())
        .collect();
    if !sent_again.is_empty() {
        breaches.push(format!("{} acknowledged WhatsApp messages were sent again: {sent_again:?}", sent_again.len()));
    }
    (Verdict::Served { replayed, errors, logs: process.logs() }, breaches)
}

/// How the executor that made a pristine data directory was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `SIGKILL`.
    Kill,
    /// `SIGTERM` (a graceful shutdown).
    Term,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "kill -9",
            Stop::Term => "SIGTERM",
        }
    }
}

/// A data directory after 40 task and 10 WhatsApp executions, and what they were answered.
struct Pristine {
    snapshot: Snapshot,
    acknowledged: Vec<Acknowledged>,
    stop: Stop,
}

impl Pristine {
    async fn make(neighbours: &Neighbours, stop: Stop) -> Self {
        let data_dir = TempDir::new().expect("a temp dir");
        let mut process = ExecutorProcess::start(EXECUTOR, &data_dir, &neighbours.env()).await;
        let acknowledged = acknowledge(&process, 40, 10).await;
        match stop {
            Stop::Kill => process.kill(),
            Stop::Term => {
                let status = process.terminate().await;
                assert!(status.success(), "a clean exit on SIGTERM: {status}: {:#?}", process.logs());
            }
        }
        Self { snapshot: Snapshot::take(data_dir.path()), acknowledged, stop }
    }

    /// The control: an undamaged copy serves every acknowledged answer again.
    async fn assert_an_undamaged_copy_replays_everything(&self, neighbours: &Neighbours) {
        let data_dir = self.snapshot.restore();
        let process = ExecutorProcess::start(EXECUTOR, data_dir.path(), &neighbours.env()).await;
        let what = format!("an undamaged copy of a data directory stopped by {}", self.stop.name());
        assert_replays_identically(&client(), &process, &self.acknowledged, &what).await;
    }
}

/// A data directory kept in memory: its directories, and each regular file's bytes up to the
/// last non-zero one with the file's length (restored as a sparse tail).
struct Snapshot {
    dirs: Vec<PathBuf>,
    files: Vec<StoredFile>,
}

/// One file of a [`Snapshot`].
#[derive(Debug)]
struct StoredFile {
    relative: PathBuf,
    content: Vec<u8>,
    len: u64,
}

impl StoredFile {
    /// The middle of the file's content (of the whole file if it is all zeros).
    fn middle(&self) -> u64 {
        if self.content.is_empty() { self.len / 2 } else { self.content.len() as u64 / 2 }
    }

    fn byte_at(&self, offset: u64) -> u8 {
        self.content.get(offset as usize).copied().unwrap_or(0)
    }

    /// The file's path with every run of digits replaced by `#` (`#.jnl`).
    fn kind(&self) -> String {
        let mut kind = String::new();
        for c in self.relative.to_string_lossy().chars() {
            if !c.is_ascii_digit() {
                kind.push(c);
            } else if !kind.ends_with('#') {
                kind.push('#');
            }
        }
        kind
    }

    /// The number in the file's name (`3` for `3.jnl`).
    fn number(&self) -> Option<u64> {
        self.relative.file_stem()?.to_str()?.parse().ok()
    }
}

impl Snapshot {
    fn take(root: &Path) -> Self {
        let mut snapshot = Self { dirs: Vec::new(), files: Vec::new() };
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            for entry in fs::read_dir(root.join(&relative)).expect("the data directory is readable") {
                let entry = entry.expect("a directory entry");
                let child = relative.join(entry.file_name());
                let kind = entry.file_type().expect("a file type");
                if kind.is_dir() {
                    snapshot.dirs.push(child.clone());
                    pending.push(child);
                } else if kind.is_file() {
                    let mut content = fs::read(entry.path()).expect("a store file is readable");
                    let len = content.len() as u64;
                    content.truncate(content.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1));
                    snapshot.files.push(StoredFile { relative: child, content, len });
                }
            }
        }
        snapshot.dirs.sort();
        snapshot.files.sort_by(|a, b| a.relative.cmp(&b.relative));
        snapshot
    }

    /// A fresh temp dir holding the snapshot.
    fn restore(&self) -> TempDir {
        let dir = TempDir::new().expect("a temp dir");
        for relative in &self.dirs {
            fs::create_dir_all(dir.path().join(relative)).expect("a directory is created");
        }
        for file in &self.files {
            let target = dir.path().join(&file.relative);
            fs::write(&target, &file.content).expect("a file is written");
            if file.len > file.content.len() as u64 {
                File::options().write(true).open(&target).and_then(|f| f.set_len(file.len)).expect("extended");
            }
        }
        dir
    }

    /// The journal (`*.jnl`, wherever it is) with the highest number among those with content.
    fn newest_journal(&self) -> Option<&StoredFile> {
        self.files
            .iter()
            .filter(|f| f.relative.extension().is_some_and(|e| e == "jnl"))
            .filter(|f| !f.content.is_empty())
            .max_by_key(|f| f.number())
    }
}

/// Up to `cap` non-empty files of `pristines`, taken in turn from each group of one kind of file
/// in one pristine directory, so every kind is damaged before any is damaged twice.
fn spread_across_kinds(pristines: &[Pristine], cap: usize) -> Vec<(&Pristine, &StoredFile)> {
    let mut groups: BTreeMap<(String, usize), VecDeque<(&Pristine, &StoredFile)>> = BTreeMap::new();
    for (index, pristine) in pristines.iter().enumerate() {
        for file in pristine.snapshot.files.iter().filter(|f| f.len > 0) {
            groups.entry((file.kind(), index)).or_default().push_back((pristine, file));
        }
    }
    let mut picked = Vec::new();
    while picked.len() < cap && groups.values().any(|group| !group.is_empty()) {
        for group in groups.values_mut() {
            if picked.len() < cap
                && let Some(next) = group.pop_front()
            {
                picked.push(next);
            }
        }
    }
    picked
}

// ---------------------------------------------------------------------------------------------
// The neighbours, calls and what was acknowledged
// ---------------------------------------------------------------------------------------------

/// The executor's neighbours here: the stack's fakes, accepting everything. Its WhatsApp fake
/// answers each send with a new message id, so a repeated execution cannot pass for a replay.
struct Neighbours {
    fakes: Fakes,
}

impl Neighbours {
    async fn start() -> Self {
        Self { fakes: Fakes::start().await }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.fakes.env()
    }

    /// The sends the provider answered, per trace (`X-Trace-Id`).
    async fn provider_calls_by_trace(&self) -> BTreeMap<String, usize> {
        let mut calls = BTreeMap::new();
        for call in self.fakes.whatsapp_calls() {
            *calls.entry(call.trace_id.unwrap_or_default()).or_default() += 1;
        }
        calls
    }

    async fn provider_calls(&self, trace: &str) -> usize {
        self.provider_calls_by_trace().await.get(trace).copied().unwrap_or(0)
    }

    /// Waits until every acknowledged execution's events have reached both sinks.
    async fn assert_events_arrive(&self, acknowledged: &[Acknowledged]) {
        let traces: BTreeSet<String> = acknowledged.iter().map(|a| a.trace.clone()).collect();
        for (name, sink) in [("bucket", self.fakes.bucket()), ("karma", self.fakes.karma())] {
            eventually(secs(20.0), &format!("{name} has the events of {} executions", traces.len()), async || {
                traces.is_subset(&sink.trace_ids()).then_some(())
            })
            .await;
        }
    }
}

/// An acknowledged execution: the request and the answer it got.
#[derive(Debug, Clone)]
struct Acknowledged {
    trace: String,
    request: Value,
    answer: Value,
}

impl Acknowledged {
    fn is_whatsapp(&self) -> bool {
        self.request["data"]["payload"]["action_type"] == "whatsapp"
    }
}

/// `POST`s `body` to `url`; `None` if no answer came (the executor died or hung).
async fn call(http: &reqwest::Client, url: &str, body: &Value) -> Option<TestResponse> {
    TestResponse::try_send(http.post(url).json(body)).await.ok()
}

/// `POST`s `body` to `process`, failing the test with its last log lines if no answer comes.
async fn post(http: &reqwest::Client, process: &ExecutorProcess, body: &Value) -> TestResponse {
    call(http, &process.url(), body).await.unwrap_or_else(|| no_answer(process))
}

fn no_answer(process: &ExecutorProcess) -> TestResponse {
    let logs = process.logs();
    panic!("the executor did not answer; its last log lines: {:#?}", &logs[logs.len().saturating_sub(12)..])
}

/// `GET`s `url` and returns the JSON body.
async fn call_get(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.expect("an answer");
    response.json().await.expect("a JSON body")
}

/// Executes `tasks` task and `messages` WhatsApp requests one after the other (every fifth a
/// message while there are some), asserting each succeeds.
async fn acknowledge(process: &ExecutorProcess, tasks: usize, messages: usize) -> Vec<Acknowledged> {
    let http = client();
    let (mut tasks_left, mut messages_left) = (tasks, messages);
    let mut acknowledged = Vec::new();
    for index in 0.. {
        let trace = trace_id();
        let request = if messages_left > 0 && (index % 5 == 4 || tasks_left == 0) {
            messages_left -= 1;
            whatsapp_request(&trace)
        } else if tasks_left > 0 {
            tasks_left -= 1;
            task_request(&trace)
        } else {
            break;
        };
        let answer = post(&http, process, &request).await;
        answer.assert_success(&trace);
        acknowledged.push(Acknowledged { trace, request, answer: answer.body });
    }
    acknowledged
}

/// Asserts every acknowledged request is answered 200 with its first answer.
async fn assert_replays_identically(
    http: &reqwest::Client,
    process: &ExecutorProcess,
    acknowledged: &[Acknowledged],
    when: &str,
) {
    let url = process.url();
    let mut differing = Vec::new();
    for chunk in acknowledged.chunks(16) {
        let answers = join_all(chunk.iter().map(|ack| call(http, &url, &ack.request))).await;
        for (ack, answer) in chunk.iter().zip(answers) {
            let answer = answer.unwrap_or_else(|| panic!("{when}: no answer to the retry of {}", ack.trace));
            if answer.status != 200 || answer.body != ack.answer {
                differing.push(format!("{}: first {}, now {} {}", ack.trace, ack.answer, answer.status, answer.text));
            }
        }
    }
    assert!(
        differing.is_empty(),
        "{when}: {} of {} acknowledged executions do not replay their answer (lost or repeated); first five:\n{}",
        differing.len(),
        acknowledged.len(),
        differing.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Executes tasks until the store refuses one with 503 `store_unavailable` (the file system is
/// full, but the page the journal is writing into may still take a few records); returns those
/// answered `success` meanwhile, which must have been recorded, and the trace refused.
async fn until_the_store_refuses_a_write(
    http: &reqwest::Client,
    process: &ExecutorProcess,
    deadline: std::time::Duration,
) -> (Vec<Acknowledged>, String) {
    let mut acknowledged = Vec::new();
    let refused = eventually(deadline, "the store refuses a write on the full disk", async || {
        let trace = trace_id();
        let request = task_request(&trace);
        let answer = post(http, process, &request).await;
        if answer.status == 200 {
            answer.assert_success(&trace);
            acknowledged.push(Acknowledged { trace, request, answer: answer.body });
            return None;
        }
        answer.assert_rejected(503, "store_unavailable");
        assert!(answer.header("retry-after").is_some(), "a Retry-After header: {:?}", answer.headers);
        Some(trace)
    })
    .await;
    (acknowledged, refused)
}

// ---------------------------------------------------------------------------------------------
// A small disk
// ---------------------------------------------------------------------------------------------

/// A 32 MiB tmpfs mounted on a temp dir, unmounted (lazily) when dropped.
struct Tmpfs {
    mount_point: TempDir,
}

impl Tmpfs {
    /// Mounts it, or says why it cannot (not root, or `mount` failed).
    fn mount() -> Result<Self, String> {
        let status = fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
        if uid != Some("0") {
            return Err(format!("the tests do not run as root (effective uid {})", uid.unwrap_or("unknown")));
        }
        let mount_point = TempDir::new().map_err(|e| format!("no temp dir: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
            .arg(mount_point.path())
            .output()
            .map_err(|e| format!("mount(8) cannot run: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { mount_point })
    }

    /// The executor's data directory on it.
    fn data_dir(&self) -> PathBuf {
        let dir = self.mount_point.path().join("data");
        fs::create_dir(&dir).expect("the data directory is created");
        dir
    }

    /// Writes a filler file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.mount_point.path().join("filler");
        let mut file = File::create(&filler).expect("the filler is created");
        let chunk = vec![0xA5u8; 1 << 20];
        let mut size = chunk.len();
        loop {
            match file.write(&chunk[..size]) {
                Ok(written) if written > 0 => {}
                Ok(_) => break,
                Err(error) if error.kind() == ErrorKind::StorageFull && size > 4096 => size = 4096,
                Err(error) if error.kind() == ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.mount_point.path()).status();
    }
}
