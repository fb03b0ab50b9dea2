//! `POST /api/v1/jobs` and `/api/v1/jobs/batch` bodies: bytes → serde_json
//! `SubmitRequest` → normalized, validated `JobSpec` → the engine, and the
//! spec as it goes on the wire to an agent and into the store.
//!
//! Must never panic, and:
//! - normalizing is idempotent (resubmissions compare equal);
//! - a stored spec reads back equal (JSON round trip);
//! - a spec valid under smaller limits is valid under the defaults;
//! - a valid spec is accepted by the engine, and accepted again, unchanged,
//!   when resubmitted under the same id;
//! - an assignment carries the spec to the agent unchanged.
#![no_main]

use hodei_core::api::{BatchSubmitRequest, SubmitRequest};
use hodei_core::engine::{Engine, EngineConfig, Input, Output, Reply, ToAgent};
use hodei_core::spec::Limits;
use hodei_core::{Job, JobSpec};
use hwp_proto::pb;
use libfuzzer_sys::fuzz_target;

fn small() -> Limits {
    Limits {
        max_spec_bytes: 512,
        max_args: 8,
        max_arg_bytes: 64,
        max_command_bytes: 128,
        max_env: 4,
        max_env_bytes: 128,
        ..Limits::default()
    }
}

fn check(request: SubmitRequest) {
    let (id, spec) = request.into_parts();
    let spec = spec.normalized();
    assert_eq!(
        spec.clone().normalized(),
        spec,
        "normalizing twice changed it"
    );

    let json = serde_json::to_string(&spec).expect("a spec serializes");
    let back: JobSpec = serde_json::from_str(&json).expect("a serialized spec parses");
    assert_eq!(back, spec, "the JSON round trip changed the spec");

    let default = spec.validate_with(&Limits::default());
    if let Err(e) = &default {
        assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
    }
    if spec.validate_with(&small()).is_ok() {
        assert!(
            default.is_ok(),
            "valid under small limits, not under the defaults"
        );
    }
    if default.is_err() {
        return;
    }
    assert!(spec.size_bytes() <= Limits::default().max_spec_bytes);

    let id = id
        .filter(|id| hodei_core::spec::validate_job_id(id).is_ok())
        .unwrap_or_else(|| "fuzz-job".to_string());
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Output::default();
    for req in [1, 2] {
        let input = Input::Submit {
            req,
            id: id.clone(),
            spec: spec.clone(),
            submitter: None,
            fresh: false,
            existing: None,
        };
        engine.handle(input, 1_000, &mut out);
    }
    let job = match &out.replies[..] {
        [
            (1, Reply::Submitted { job, created: true }),
            (2, Reply::Submitted { created: false, .. }),
        ] => job.clone(),
        other => panic!("a valid spec was not accepted twice: {other:?}"),
    };
    assert_eq!(job.spec, spec);
    wire_round_trip(&job);
}

/// The assignment an agent gets, read back as the server reads a seed
/// submission: the same spec (the kill grace is always explicit on the wire).
fn wire_round_trip(job: &Job) {
    let assign = ToAgent::Assign {
        job: Box::new(job.clone()),
        stdout_offset: 0,
        stderr_offset: 0,
    };
    let Ok(msg) = hodei_server::convert::server_message(assign, "s", 1, 1) else {
        return; // e.g. a secret that cannot be delivered: not a wire question
    };
    let Some(pb::server_message::Body::Assign(a)) = msg.body else {
        panic!("an assignment became {msg:?}");
    };
    let req = pb::AssignJobRequest {
        job_id: a.job_id,
        name: a.name,
        image: a.image,
        command: a.command,
        spec: a.spec,
    };
    let back =
        hodei_server::convert::spec_from_request(&req).expect("the server reads its own spec");
    let want = &job.spec;
    assert_eq!(
        back.kill_grace_ms(),
        want.kill_grace_ms(),
        "the kill grace changed on the wire"
    );
    let strip = |s: &JobSpec| JobSpec {
        kill_grace_ms: None,
        ..s.clone()
    };
    assert_eq!(strip(&back), strip(want), "the spec changed on the wire");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<SubmitRequest>(data) {
        check(request);
    }
    if let Ok(batch) = serde_json::from_slice::<BatchSubmitRequest>(data) {
        for request in batch.jobs.into_iter().take(16) {
            check(request);
        }
    }
});
