//! gRPC request bodies from agents and seed clients: bytes → the server's
//! message size check (`limits::FrameScan`) → prost decoding of each
//! message → the server's conversion into engine inputs
//! (`convert::agent_report`, `convert::spec_from_request`, …) → an engine
//! that holds a worker session running a job.
//!
//! The first byte picks the call whose body the rest is: an `Attach`
//! session (`AgentMessage`s), `StreamLogs` (`LogEntry`s), `AssignJob`,
//! `RegisterWorker`, `CancelJob`. Must never panic, and the size check must
//! find the same messages however the body is split into chunks.
#![no_main]

use bytes::Bytes;
use hodei_core::JobSpec;
use hodei_core::engine::{Engine, EngineConfig, Input, Output};
use hodei_core::spec::{validate_job_id, validate_label, validate_worker_id};
use hodei_server::convert;
use hodei_server::limits::FrameScan;
use hwp_proto::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Message size limit of this harness (the server's is configurable).
const LIMIT: usize = 64 * 1024;
const SESSION: u64 = 7;
const NOW: i64 = 1_000_000;

/// An engine with worker `w` attached (session 7) running job `j` attempt 1.
fn engine() -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Output::default();
    engine.handle(
        Input::Attach {
            session: SESSION,
            worker_id: "w".into(),
            labels: vec!["linux".into()],
            slots: 2,
            prefetch: 0,
            running: vec![],
        },
        NOW,
        &mut out,
    );
    engine.handle(
        Input::Submit {
            req: 1,
            id: "j".into(),
            spec: JobSpec::command(["true"]),
            submitter: None,
            fresh: false,
            existing: None,
        },
        NOW,
        &mut out,
    );
    engine.end_batch(NOW, &mut out);
    engine
}

/// Splits a gRPC body into its messages the way tonic does, after checking
/// it with the server's scanner (whole and in two chunks: same verdict).
fn frames(body: &[u8], split: usize) -> Vec<&[u8]> {
    let whole = FrameScan::default().feed(body, LIMIT);
    let split = split.min(body.len());
    let mut scan = FrameScan::default();
    let parts = scan.feed(&body[..split], LIMIT).and_then(|()| {
        scan.feed(&body[split..], LIMIT).map_err(|mut o| {
            o.at += split;
            o
        })
    });
    match (whole, parts) {
        (Ok(()), Ok(())) => {}
        (Err(a), Err(b)) => {
            assert_eq!(a.len, b.len, "split at {split}");
            // In two chunks, a prefix cut by the split is reported where the
            // second chunk starts.
            assert!(
                a.at == b.at || (b.at == split && a.at < split),
                "{a:?} vs {b:?}"
            );
        }
        (a, b) => panic!("whole {a:?}, split at {split}: {b:?}"),
    }
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > LIMIT {
            // The server refuses here; every message before it was handled.
            let at = body.len() - rest.len();
            assert_eq!(whole.map_err(|o| o.at), Err(at));
            break;
        }
        let Some(message) = rest.get(5..5 + len) else {
            break; // incomplete: tonic waits for the rest
        };
        out.push(message);
        rest = &rest[5 + len..];
    }
    out
}

fn run(engine: &mut Engine, input: Input) {
    let mut out = Output::default();
    engine.handle(input, NOW, &mut out);
    engine.end_batch(NOW, &mut out);
    // Every reply answers a request that was made.
    for (req, _) in &out.replies {
        assert!(*req < 1_000, "reply to unknown request {req}");
    }
}

fn attach(engine: &mut Engine, message: &[u8]) -> bool {
    let Ok(msg) = pb::AgentMessage::decode(message) else {
        return false; // INVALID_ARGUMENT ends the call
    };
    let Some(body) = msg.body else { return true };
    match convert::agent_report(SESSION, body, 1 << 20) {
        Ok(Some(input)) => {
            run(engine, input);
            true
        }
        Ok(None) => true,
        Err(status) => {
            assert!(!status.message().is_empty());
            false
        }
    }
}

fn stream_logs(engine: &mut Engine, message: &[u8], req: u64) -> bool {
    let Ok(mut entry) = pb::LogEntry::decode(message) else {
        return false;
    };
    if validate_job_id(&entry.job_id).is_err() {
        return false;
    }
    let Ok(stream) = convert::log_stream(entry.stream) else {
        return false;
    };
    let Ok(data) = hodei_server::grpc::log_bytes(&mut entry) else {
        return false;
    };
    let data: Bytes = data;
    run(
        engine,
        Input::Log {
            session: None,
            req: Some(req),
            job_id: entry.job_id,
            attempt: entry.attempt,
            stream,
            offset: entry.has_offset.then_some(entry.offset),
            data,
            timestamp_ms: entry.timestamp_ms,
            only_workers: None,
        },
    );
    true
}

fn unary(engine: &mut Engine, call: u8, message: &[u8]) {
    match call {
        2 => {
            let Ok(req) = pb::AssignJobRequest::decode(message) else {
                return;
            };
            let Ok(spec) = convert::spec_from_request(&req) else {
                return;
            };
            let id = if req.job_id.is_empty() {
                "generated".to_string()
            } else {
                req.job_id
            };
            run(
                engine,
                Input::Submit {
                    req: 2,
                    id,
                    spec,
                    submitter: None,
                    fresh: false,
                    existing: None,
                },
            );
        }
        3 => {
            let Ok(reg) = pb::WorkerRegistration::decode(message) else {
                return;
            };
            if validate_worker_id(&reg.worker_id).is_err()
                || reg.capabilities.iter().any(|l| validate_label(l).is_err())
            {
                return;
            }
            run(
                engine,
                Input::Register {
                    req: 3,
                    worker_id: reg.worker_id,
                    labels: reg.capabilities,
                    slots: reg.slots,
                },
            );
        }
        _ => {
            let Ok(req) = pb::CancelJobRequest::decode(message) else {
                return;
            };
            if validate_job_id(&req.job_id).is_err() {
                return;
            }
            run(
                engine,
                Input::Cancel {
                    req: 4,
                    id: req.job_id,
                    reason: req.reason,
                    existing: None,
                },
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [call, split, body @ ..] = data else {
        return;
    };
    let mut engine = engine();
    let messages = frames(body, usize::from(*split) * 4);
    match call % 5 {
        0 => {
            for m in messages {
                if !attach(&mut engine, m) {
                    break;
                }
            }
            run(&mut engine, Input::Detach { session: SESSION });
        }
        1 => {
            for (i, m) in messages.into_iter().enumerate() {
                if !stream_logs(&mut engine, m, 10 + i as u64) {
                    break;
                }
            }
        }
        n => {
            if let Some(m) = messages.first() {
                unary(&mut engine, n, m);
            }
        }
    }
    run(&mut engine, Input::Tick);
});
