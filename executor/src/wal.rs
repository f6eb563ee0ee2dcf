//! The write-ahead log that makes group commits cheap.
//!
//! A durable redb commit rewrites every B-tree page the batch touched and fsyncs them; with
//! random idempotency keys that is one page per insert. Instead, the writer appends each durable
//! batch to this log as one record and fsyncs only that sequential append, then applies the batch
//! to redb with a lazy commit. Every so often a *checkpoint* (one durable redb commit) makes the
//! lazy commits durable and empties the log. On start, records left in the log are replayed on
//! top of the last checkpoint, so a crash at any point loses nothing that was acknowledged.
//!
//! A record is `len: u32 | checksum: u64 | payload`, the checksum (FNV-1a) covering the payload:
//! a torn final record (crash mid-append) fails the check and is ignored, which is safe because
//! its batch was never acknowledged.
//!
//! Ops are logged *resolved* ([`Resolved`]): sequence numbers and timestamps are decided before
//! logging, so replaying a record rebuilds exactly the state the original apply produced.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::store::Sink;

/// A store mutation with every decision already made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    PutExecution { key: String, created_ms: u64, record: Vec<u8>, clear_in_flight: bool },
    PutInFlight { key: String, record: Vec<u8> },
    PutTask { id: String, record: Vec<u8> },
    Enqueue { sink: Sink, seq: u64, value: Vec<u8> },
    Ack { sink: Sink, seq: u64 },
    DeadLetter { sink: Sink, seq: u64, reason: String, at_ms: u64 },
    Expire { before_ms: u64 },
}

/// The log file.
pub(crate) struct Wal {
    file: File,
    len: u64,
}

impl Wal {
    /// Opens (or creates) the log and returns the batches it holds, oldest first.
    pub(crate) fn open(path: &Path) -> io::Result<(Wal, Vec<Vec<Resolved>>)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut batches = Vec::new();
        let mut rest = bytes.as_slice();
        let mut valid = 0u64;
        while rest.len() >= 12 {
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let sum = u64::from_be_bytes(rest[4..12].try_into().expect("8 bytes"));
            let Some(payload) = rest.get(12..12 + len) else { break };
            if fnv1a(payload) != sum {
                break;
            }
            match decode_batch(payload) {
                Some(batch) => batches.push(batch),
                None => break,
            }
            rest = &rest[12 + len..];
            valid += 12 + len as u64;
        }
        // Cut a torn tail so later appends follow the last good record.
        if valid < bytes.len() as u64 {
            file.set_len(valid)?;
            file.sync_data()?;
        }
        let len = file.seek(SeekFrom::End(0))?;
        Ok((Wal { file, len }, batches))
    }

    /// Appends one batch and waits until it is on disk.
    pub(crate) fn append(&mut self, batch: &[Resolved]) -> io::Result<()> {
        let payload = encode_batch(batch);
        let mut record = Vec::with_capacity(12 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&fnv1a(&payload).to_be_bytes());
        record.extend_from_slice(&payload);
        self.file.write_all(&record)?;
        self.file.sync_data()?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Empties the log (after a checkpoint made its contents durable in redb).
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }

    /// Bytes in the log.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn sink_tag(sink: Sink) -> u8 {
    match sink {
        Sink::Bucket => 0,
        Sink::Karma => 1,
    }
}

fn encode_batch(batch: &[Resolved]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 256);
    for op in batch {
        match op {
            Resolved::PutExecution { key, created_ms, record, clear_in_flight } => {
                out.push(1);
                put_bytes(&mut out, key.as_bytes());
                put_u64(&mut out, *created_ms);
                put_bytes(&mut out, record);
                out.push(*clear_in_flight as u8);
            }
            Resolved::PutInFlight { key, record } => {
                out.push(2);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, record);
            }
            Resolved::PutTask { id, record } => {
                out.push(3);
                put_bytes(&mut out, id.as_bytes());
                put_bytes(&mut out, record);
            }
            Resolved::Enqueue { sink, seq, value } => {
                out.extend_from_slice(&[4, sink_tag(*sink)]);
                put_u64(&mut out, *seq);
                put_bytes(&mut out, value);
            }
            Resolved::Ack { sink, seq } => {
                out.extend_from_slice(&[5, sink_tag(*sink)]);
                put_u64(&mut out, *seq);
            }
            Resolved::DeadLetter { sink, seq, reason, at_ms } => {
                out.extend_from_slice(&[6, sink_tag(*sink)]);
                put_u64(&mut out, *seq);
                put_bytes(&mut out, reason.as_bytes());
                put_u64(&mut out, *at_ms);
            }
            Resolved::Expire { before_ms } => {
                out.push(7);
                put_u64(&mut out, *before_ms);
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*head))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*head) as usize;
        let bytes = rest.get(..len)?.to_vec();
        self.0 = &rest[len..];
        Some(bytes)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }

    fn sink(&mut self) -> Option<Sink> {
        match self.u8()? {
            0 => Some(Sink::Bucket),
            1 => Some(Sink::Karma),
            _ => None,
        }
    }
}

fn decode_batch(payload: &[u8]) -> Option<Vec<Resolved>> {
    let mut r = Reader(payload);
    let mut batch = Vec::new();
    while let Some(tag) = r.u8() {
        batch.push(match tag {
            1 => Resolved::PutExecution {
                key: r.string()?,
                created_ms: r.u64()?,
                record: r.bytes()?,
                clear_in_flight: r.u8()? != 0,
            },
            2 => Resolved::PutInFlight { key: r.string()?, record: r.bytes()? },
            3 => Resolved::PutTask { id: r.string()?, record: r.bytes()? },
            4 => Resolved::Enqueue { sink: r.sink()?, seq: r.u64()?, value: r.bytes()? },
            5 => Resolved::Ack { sink: r.sink()?, seq: r.u64()? },
            6 => Resolved::DeadLetter { sink: r.sink()?, seq: r.u64()?, reason: r.string()?, at_ms: r.u64()? },
            7 => Resolved::Expire { before_ms: r.u64()? },
            _ => return None,
        });
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Resolved> {
        vec![
            Resolved::PutExecution { key: "k".into(), created_ms: 7, record: b"{}".to_vec(), clear_in_flight: true },
            Resolved::PutInFlight { key: "k2".into(), record: b"x".to_vec() },
            Resolved::PutTask { id: "task_1".into(), record: b"t".to_vec() },
            Resolved::Enqueue { sink: Sink::Karma, seq: 3, value: vec![1, 2, 3] },
            Resolved::Ack { sink: Sink::Bucket, seq: 9 },
            Resolved::DeadLetter { sink: Sink::Karma, seq: 4, reason: "HTTP 500".into(), at_ms: 11 },
            Resolved::Expire { before_ms: 5 },
        ]
    }

    #[test]
    fn batches_survive_a_round_trip_and_a_torn_tail_is_ignored() {
        let dir = std::env::temp_dir().join(format!("wal-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("wal");
        {
            let (mut wal, batches) = Wal::open(&path).expect("open");
            assert!(batches.is_empty());
            wal.append(&sample()).expect("append");
            wal.append(&sample()[..2]).expect("append");
        }
        // A crash mid-append leaves a partial record behind.
        let mut file = OpenOptions::new().append(true).open(&path).expect("reopen");
        file.write_all(&[0, 0, 0, 40, 1, 2, 3]).expect("torn write");
        let (mut wal, batches) = Wal::open(&path).expect("open");
        assert_eq!(batches, vec![sample(), sample()[..2].to_vec()]);
        wal.append(&sample()[2..3]).expect("append after the torn tail");
        drop(wal);
        let (mut wal, batches) = Wal::open(&path).expect("open");
        assert_eq!(batches.len(), 3, "a record appended after a torn tail is readable");
        wal.clear().expect("clear");
        assert_eq!(Wal::open(&path).expect("open").1, Vec::<Vec<Resolved>>::new());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
