//! Real values of the `hodei_core` API types, serialized, checked against
//! the OpenAPI schemas: types, enum values, required fields, and (for
//! values with every optional field set) that each documented property
//! exists and each serialized field is documented.

use std::collections::BTreeMap;

use hodei_core::api::{
    EndEvent, ErrorBody, Finished, JobList, LogEvent, MinuteStats, Stats, SubmitRequest,
    SubmitResponse, WorkerCounts,
};
use hodei_core::engine::WorkerInfo;
use hodei_core::{Job, JobSpec, JobState, LogStream};
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi as _;

use crate::http::openapi::ApiDoc;

struct Checker {
    doc: Value,
    errors: Vec<String>,
}

impl Checker {
    fn new() -> Checker {
        let json = ApiDoc::openapi().to_json().expect("encode");
        Checker {
            doc: serde_json::from_str(&json).expect("JSON"),
            errors: Vec::new(),
        }
    }

    /// Checks `value` against the component schema `name`; `full`: every
    /// documented property must be present in the value.
    fn check<T: Serialize>(&mut self, name: &str, value: &T, full: bool) {
        let value = serde_json::to_value(value).expect("serialize");
        let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        self.value(&schema, &value, name, full);
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &self.doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    fn matches(&self, schema: &Value, value: &Value) -> bool {
        let mut probe = Checker {
            doc: Value::Null,
            errors: Vec::new(),
        };
        probe.doc = self.doc.clone();
        probe.value(schema, value, "", false);
        probe.errors.is_empty()
    }

    fn value(&mut self, schema: &Value, value: &Value, at: &str, full: bool) {
        let schema = self.resolve(schema).clone();
        if schema.is_null() {
            return self.errors.push(format!("{at}: no schema"));
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema[key].as_array() {
                if !options.iter().any(|o| self.matches(o, value)) {
                    self.errors
                        .push(format!("{at}: {value} matches no option of {schema}"));
                } else if let Some(o) = options.iter().find(|o| self.matches(o, value)) {
                    // Descend for the completeness check.
                    self.value(o, value, at, full);
                }
                return;
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let type_ok = types.is_empty()
            || types.contains(&actual)
            || (actual == "integer" && types.contains(&"number"));
        if !type_ok {
            return self
                .errors
                .push(format!("{at}: {value} is {actual}, documented {types:?}"));
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            self.errors
                .push(format!("{at}: {value} not in documented enum {allowed:?}"));
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
            && n < min
        {
            self.errors.push(format!("{at}: {n} below minimum {min}"));
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(&schema["items"], item, &format!("{at}[{i}]"), full);
                }
            }
            Value::Object(map) => self.object(&schema, map, at, full),
            _ => {}
        }
    }

    fn object(
        &mut self,
        schema: &Value,
        map: &serde_json::Map<String, Value>,
        at: &str,
        full: bool,
    ) {
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for required in schema["required"].as_array().into_iter().flatten() {
            if let Some(r) = required.as_str()
                && !map.contains_key(r)
            {
                self.errors.push(format!("{at}: required {r} missing"));
            }
        }
        for (key, v) in map {
            match props.get(key) {
                Some(p) => self.value(p, v, &format!("{at}.{key}"), full),
                None => match &schema["additionalProperties"] {
                    Value::Object(_) => {
                        let extra = schema["additionalProperties"].clone();
                        self.value(&extra, v, &format!("{at}.{key}"), full);
                    }
                    _ => self
                        .errors
                        .push(format!("{at}: field {key} not documented")),
                },
            }
        }
        if full {
            for key in props.keys() {
                if !map.contains_key(key) {
                    self.errors
                        .push(format!("{at}: documented {key} never serialized"));
                }
            }
        }
    }
}

fn full_job() -> Job {
    let spec = JobSpec {
        name: "build".into(),
        command: vec!["make".into(), "all".into()],
        image: Some("rust:1".into()),
        env: BTreeMap::from([("A".into(), "1".into())]),
        working_dir: Some("/src".into()),
        timeout_ms: Some(60_000),
        labels: vec!["linux".into()],
        priority: -2,
        max_retries: 3,
        kill_grace_ms: Some(5_000),
        cpu_millicores: Some(500),
        memory_bytes: Some(64 << 20),
        pull_policy: Some(hodei_core::spec::PullPolicy::Never),
        secrets: vec!["DB_PASSWORD".into()],
    };
    let mut job = Job::new("j-1".into(), spec, 7, 1_000);
    job.state = JobState::TimedOut;
    job.attempt = 2;
    job.retries = 1;
    job.worker = Some("w1".into());
    job.exit_code = Some(137);
    job.signal = Some(9);
    job.reason = Some("timed out".into());
    job.cancel_requested = true;
    job.assigned_at = Some(1_001);
    job.started_at = Some(1_002);
    job.finished_at = Some(61_002);
    job.submitter = Some("tok1".into());
    job
}

#[test]
fn serialized_api_values_match_their_schemas() {
    let mut c = Checker::new();
    let job = full_job();
    let fresh = Job::new("j-2".into(), JobSpec::command(["true"]), 8, 2_000);
    c.check("Job", &job, true);
    c.check("Job", &fresh, false);
    for state in JobState::ALL {
        c.check("JobState", &state, false);
    }
    for stream in LogStream::BOTH {
        c.check("LogStream", &stream, false);
    }
    let spec = job.spec.clone();
    let request = SubmitRequest {
        id: Some("j-1".into()),
        name: spec.name,
        command: spec.command,
        image: spec.image,
        env: spec.env,
        working_dir: spec.working_dir,
        timeout_ms: spec.timeout_ms,
        labels: spec.labels,
        priority: spec.priority,
        max_retries: spec.max_retries,
        kill_grace_ms: spec.kill_grace_ms,
        cpu_millicores: spec.cpu_millicores,
        memory_bytes: spec.memory_bytes,
        pull_policy: spec.pull_policy,
        secrets: spec.secrets,
    };
    c.check("SubmitRequest", &request, true);
    c.check(
        "SubmitRequest",
        &SubmitRequest {
            command: vec!["true".into()],
            ..SubmitRequest::default()
        },
        false,
    );
    let created = SubmitResponse {
        job: job.clone(),
        created: true,
    };
    c.check("SubmitResponse", &created, true);
    let page = JobList {
        jobs: vec![job.clone()],
        next_cursor: Some("7".into()),
    };
    c.check("JobList", &page, true);
    // A job without the optional fields (no `submitter`) in a page.
    let page = JobList {
        jobs: vec![job.clone(), fresh],
        next_cursor: Some("7".into()),
    };
    c.check("JobList", &page, false);
    c.check(
        "JobList",
        &JobList {
            jobs: vec![],
            next_cursor: None,
        },
        false,
    );
    let error = ErrorBody {
        code: "invalid_argument".into(),
        message: "bad".into(),
        field: Some("limit".into()),
    };
    c.check("ErrorBody", &error, true);
    let log = LogEvent {
        attempt: 1,
        stream: LogStream::Stderr,
        offset: 10,
        data: "aGk=".into(),
        timestamp_ms: 5,
    };
    c.check("LogEvent", &log, true);
    c.check("EndEvent", &EndEvent::of(&job), true);
    for state in ["ready", "busy", "draining", "offline"] {
        let worker = WorkerInfo {
            id: "w1".into(),
            labels: vec!["linux".into()],
            slots: 4,
            prefetch: 1,
            running: vec!["j-1".into()],
            state: state.into(),
            last_seen: 9,
        };
        c.check("WorkerInfo", &worker, true);
    }
    let stats = Stats {
        at_ms: 1,
        jobs: BTreeMap::from([("queued".into(), 3)]),
        queue_depth: 3,
        running: 1,
        last_hour: Finished {
            succeeded: 1,
            failed: 2,
            cancelled: 0,
        },
        per_minute: vec![MinuteStats::default()],
        workers: WorkerCounts::default(),
    };
    c.check("Stats", &stats, true);
    assert!(
        c.errors.is_empty(),
        "values do not match the OpenAPI schemas:\n  {}",
        c.errors.join("\n  ")
    );
}

#[test]
fn a_wrong_value_is_caught() {
    let mut c = Checker::new();
    c.check("JobState", &"paused", false);
    c.check("ErrorBody", &serde_json::json!({"code": "x"}), false);
    c.check(
        "LogEvent",
        &serde_json::json!({"attempt": 1, "stream": "stdout", "offset": 0, "data": "",
            "timestamp_ms": 0, "extra": true}),
        false,
    );
    assert_eq!(c.errors.len(), 3, "{:?}", c.errors);
}
