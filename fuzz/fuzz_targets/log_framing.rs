//! Log framing: offsets, deduplication and stream totals, and what an agent
//! reads back from its spool after a crash.
//!
//! The first byte picks the part:
//! - 0: an agent sends chunks of a known output at arbitrary offsets
//!   (resends, overlaps, gaps, absurd offsets) and a result with claimed
//!   totals. What the engine stores must be exactly a prefix of the output,
//!   each byte once, in order; a result is recorded only when every byte it
//!   claims is stored, and a difference is noted in the job's reason.
//! - 1: `meta.json` bytes from the agent's spool (`spool::parse_meta`): a
//!   record that is accepted is consistent, and directory names are
//!   injective and safe.
//! - 2: `/proc/<pid>/stat` lines (`recover::parse_stat`), whose command
//!   name a job chooses.
//! - 3: `fit_chunk` and `StreamTotal` arithmetic.
//! - 4: a log-frames body (`hodei_core::frames`), as a server sends it to a
//!   following client, arriving in two reads split where the next byte
//!   says: decoding never panics, and the frames it decodes encode back to
//!   bytes that decode to the same frames.
#![no_main]

use bytes::Bytes;
use hodei_agent::recover::parse_stat;
use hodei_agent::spool::{Meta, attempt_dir_name, parse_meta};
use hodei_core::engine::{Engine, EngineConfig, Input, Output, ToAgent};
use hodei_core::frames::{Decoder, encode};
use hodei_core::log::{ChunkFit, StreamTotal, fit_chunk};
use hodei_core::{JobSpec, LogStream, Outcome};
use libfuzzer_sys::fuzz_target;

const SESSION: u64 = 1;
const NOW: i64 = 1_000_000;

/// Byte `i` of the job's output on `stream`.
fn output(stream: usize, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7 + stream as u64 * 101) % 251) as u8
}

fn output_range(stream: usize, from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|k| output(stream, from + k)).collect()
}

fn batch(engine: &mut Engine, inputs: Vec<Input>) -> Output {
    let mut out = Output::default();
    for input in inputs {
        engine.handle(input, NOW, &mut out);
    }
    engine.end_batch(NOW, &mut out);
    out
}

fn offsets(data: &[u8]) {
    let mut engine = Engine::new(EngineConfig::default());
    batch(
        &mut engine,
        vec![
            Input::Attach {
                session: SESSION,
                worker_id: "w".into(),
                labels: vec![],
                slots: 1,
                prefetch: 0,
                running: vec![],
            },
            Input::Submit {
                req: 1,
                id: "j".into(),
                spec: JobSpec::command(["true"]),
                submitter: None,
                fresh: false,
                existing: None,
            },
        ],
    );
    batch(
        &mut engine,
        vec![Input::Started {
            session: SESSION,
            job_id: "j".into(),
            attempt: 1,
        }],
    );
    let mut stored = [StreamTotal::default(); 2];
    for op in data.chunks_exact(5) {
        let stream = usize::from(op[0] & 1);
        let far = op[0] & 0x80 != 0;
        let base = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let offset = if far { u64::MAX - base } else { base };
        let len = usize::from(op[3]);
        let input = if op[0] & 0x40 != 0 {
            // A result claiming `claim` bytes of each stream.
            let claim = |s: usize| {
                let n = u64::from(op[3 + s]) * 8;
                StreamTotal::default().append(&output_range(s, 0, n as usize))
            };
            let totals = [claim(0), claim(1)];
            let out = batch(
                &mut engine,
                vec![Input::Result {
                    session: SESSION,
                    job_id: "j".into(),
                    attempt: 1,
                    outcome: Outcome::Exited { code: 0 },
                    totals: Some(totals),
                }],
            );
            let finished = out.writes.jobs.get("j").filter(|j| j.state.is_terminal());
            if let Some(job) = finished {
                // Recorded only with every claimed byte stored; a checksum
                // or size that differs is noted in the job's reason.
                for s in 0..2 {
                    assert!(totals[s].bytes <= stored[s].bytes, "recorded with bytes missing");
                }
                if totals != stored {
                    let reason = job.reason.as_deref().unwrap_or_default();
                    assert!(reason.contains("differs"), "mismatch not noted: {reason:?}");
                }
                return;
            }
            continue;
        } else {
            let data = if far {
                Bytes::from(vec![0; len])
            } else {
                Bytes::from(output_range(stream, offset, len))
            };
            Input::Log {
                session: Some(SESSION),
                req: None,
                job_id: "j".into(),
                attempt: 1,
                stream: [LogStream::Stdout, LogStream::Stderr][stream],
                offset: Some(offset),
                data,
                timestamp_ms: NOW,
                only_workers: None,
            }
        };
        let out = batch(&mut engine, vec![input]);
        for w in &out.writes.logs {
            let s = w.stream.index();
            assert_eq!(w.offset, stored[s].bytes, "a write that does not continue the stream");
            assert_eq!(
                &w.data[..],
                &output_range(s, w.offset, w.data.len())[..],
                "stored bytes that are not the output's"
            );
            stored[s] = stored[s].append(&w.data);
        }
        for (_, msg) in &out.messages {
            if let ToAgent::LogAck { offsets, .. } = msg {
                assert_eq!(*offsets, [stored[0].bytes, stored[1].bytes], "ack != stored");
            }
        }
    }
}

/// Undoes [`attempt_dir_name`].
fn decode_dir_name(name: &str) -> Option<(String, u32)> {
    let (id, attempt) = name.rsplit_once('@')?;
    let mut bytes = Vec::new();
    let mut it = id.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    Some((String::from_utf8(bytes).ok()?, attempt.parse().ok()?))
}

fn spool_meta(data: &[u8]) {
    // The directory a record names, so that its other checks are reached.
    let dir = serde_json::from_slice::<Meta>(data)
        .ok()
        .map(|m| attempt_dir_name(&m.job_id, m.attempt));
    for dir_name in [dir.as_deref(), Some("x@1"), None] {
        let Ok(meta) = parse_meta(data, dir_name) else {
            continue;
        };
        let name = attempt_dir_name(&meta.job_id, meta.attempt);
        assert_eq!(Some(name.as_str()), dir_name);
        assert!(!name.contains('/') && !name.contains('\0') && name != "." && name != "..");
        assert_eq!(decode_dir_name(&name), Some((meta.job_id.clone(), meta.attempt)));
        for i in 0..2 {
            assert!(meta.acked[i] >= meta.base[i]);
            if let Some(r) = &meta.result {
                assert!([r.stdout, r.stderr][i].bytes >= meta.acked[i]);
            }
        }
    }
}

fn proc_stat(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_stat(&text);
    // Whatever the command name, the numbers after it are read right.
    let comm: String = text.chars().take(64).collect();
    let line = format!(
        "4242 ({comm}) S 1 777 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100"
    );
    let stat = parse_stat(&line).expect("a well-formed stat line");
    assert_eq!((stat.state, stat.pgrp, stat.start_time), ('S', 777, 987654));
}

fn arithmetic(data: &[u8]) {
    for op in data.chunks_exact(17) {
        let persisted = u64::from_le_bytes(op[0..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(op[8..16].try_into().expect("8 bytes"));
        let len = usize::from(op[16]) * 1000;
        match fit_chunk(persisted, offset, len) {
            ChunkFit::Append { skip } => {
                assert!(skip < len, "append of nothing");
                assert_eq!(offset + skip as u64, persisted);
            }
            ChunkFit::Duplicate => assert!(offset <= persisted),
            ChunkFit::Gap { missing_from } => {
                assert!(offset > persisted);
                assert_eq!(missing_from, persisted);
            }
        }
    }
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    let whole = StreamTotal::default().append(data);
    assert_eq!(StreamTotal::default().append(a).append(b), whole);
    assert_eq!(whole.crc32c, crc32c::crc32c(data));
}

fn log_frames(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split).min(body.len());
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    'reads: for read in [&body[..cut], &body[cut..]] {
        decoder.feed(read);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'reads, // A malformed body: the client stops.
            }
        }
    }
    let again: Vec<u8> = frames.iter().flat_map(|f| encode(f).to_vec()).collect();
    let mut decoder = Decoder::default();
    decoder.feed(&again);
    let mut back = Vec::new();
    while let Some(frame) = decoder.next_frame().expect("re-encoded frames decode") {
        back.push(frame);
    }
    decoder.finish().expect("re-encoded frames end on a frame boundary");
    assert_eq!(back, frames);
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => offsets(rest),
        1 => spool_meta(rest),
        2 => proc_stat(rest),
        3 => arithmetic(rest),
        _ => log_frames(rest),
    }
});
