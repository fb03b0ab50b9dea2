//! Decoding stored rows into domain records, shared by every backend.
//!
//! Both schemas store the same columns with the same meaning: integers as
//! 64-bit, text as text, the spec as JSON text and log data as bytes. The
//! decoders are generic over the driver's row type, check every value on the
//! way out and name the column in the error, so a corrupt row is reported
//! (as [`StoreError::Corrupt`] naming the job), never wrapped or panicked on.

use bytes::Bytes;
use hodei_core::engine::WorkerRecord;
use hodei_core::{Job, JobSpec, JobState, LogStream};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{FinishedCount, LogChunk, StoreError};

/// A column's value, or a message naming the column.
pub(super) fn get<'r, R, T>(row: &'r R, col: &str) -> Result<T, String>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    row.try_get(col).map_err(|e| format!("column {col}: {e}"))
}

/// An integer column converted to `T`, refusing values out of its range.
pub(super) fn int<R, T>(row: &R, col: &str) -> Result<T, String>
where
    R: Row,
    T: TryFrom<i64>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let value: i64 = get(row, col)?;
    T::try_from(value).map_err(|_| format!("column {col}: {value} is out of range"))
}

fn opt_int<R, T>(row: &R, col: &str) -> Result<Option<T>, String>
where
    R: Row,
    T: TryFrom<i64>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let value: Option<i64> = get(row, col)?;
    value
        .map(|v| T::try_from(v).map_err(|_| format!("column {col}: {v} is out of range")))
        .transpose()
}

pub(super) fn corrupt(job_id: &str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        job_id: job_id.to_string(),
        message: message.into(),
    }
}

pub(super) fn to_i64(value: u64, job_id: &str, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| corrupt(job_id, format!("{what} {value} is too large")))
}

pub(super) fn stream_from_code(code: i64) -> Result<LogStream, String> {
    match code {
        0 => Ok(LogStream::Stdout),
        1 => Ok(LogStream::Stderr),
        _ => Err(format!("unknown log stream {code}")),
    }
}

/// A job from the columns of `select_jobs!`.
pub(super) fn job_from_row<R>(row: &R) -> Result<Job, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = get(row, "id").map_err(|m| corrupt("?", m))?;
    decode_job(row, &id).map_err(|message| corrupt(&id, message))
}

fn decode_job<R>(row: &R, id: &str) -> Result<Job, String>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, "state")?;
    let spec: String = get(row, "spec")?;
    Ok(Job {
        id: id.to_string(),
        spec: serde_json::from_str::<JobSpec>(&spec).map_err(|e| format!("bad spec JSON: {e}"))?,
        state: JobState::parse(&state).ok_or_else(|| format!("unknown state {state:?}"))?,
        attempt: int(row, "attempt")?,
        retries: int(row, "retries")?,
        worker: get(row, "worker")?,
        exit_code: opt_int(row, "exit_code")?,
        signal: opt_int(row, "signal")?,
        reason: get(row, "reason")?,
        cancel_requested: get::<R, i64>(row, "cancel_requested")? != 0,
        seq: int(row, "seq")?,
        created_at: get(row, "created_at")?,
        assigned_at: get(row, "assigned_at")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        submitter: get(row, "submitter")?,
    })
}

/// A stored chunk, trimmed to start at `from` of its stream if it began before.
pub(super) fn decode_chunk<R>(row: &R, from: &[u64; 2]) -> Result<LogChunk, String>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let stream = stream_from_code(get(row, "stream")?)?;
    let mut offset: u64 = int(row, "start_offset")?;
    let mut data = Bytes::from(get::<R, Vec<u8>>(row, "data")?);
    let from = from[stream.index()];
    if offset < from {
        let skip = usize::try_from(from - offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        data = data.slice(skip..);
        offset += skip as u64;
    }
    Ok(LogChunk {
        stream,
        offset,
        data,
        timestamp_ms: get(row, "ts")?,
    })
}

/// A worker from `id, labels, slots, last_seen`.
pub(super) fn worker_from_row<R>(row: &R) -> Result<WorkerRecord, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = get(row, "id").map_err(|m| corrupt("(worker)", m))?;
    let decoded = (|| {
        let labels: String = get(row, "labels")?;
        Ok::<_, String>(WorkerRecord {
            labels: serde_json::from_str(&labels)
                .map_err(|e| format!("bad worker labels JSON: {e}"))?,
            slots: int(row, "slots")?,
            last_seen: get(row, "last_seen")?,
            id: id.clone(),
        })
    })();
    decoded.map_err(|m| corrupt(&format!("(worker {id})"), m))
}

/// `(job id, attempt, stream, end offset)` of the log-ends query.
pub(super) fn log_end_from_row<R>(row: &R) -> Result<(String, u32, LogStream, u64), StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = get(row, "id").map_err(|m| corrupt("?", m))?;
    let decoded = (|| {
        let attempt: u32 = int(row, "attempt")?;
        let stream = stream_from_code(get(row, "stream")?)?;
        let end: u64 = int(row, "end_offset")?;
        Ok::<_, String>((attempt, stream, end))
    })();
    let (attempt, stream, end) = decoded.map_err(|m| corrupt(&id, m))?;
    Ok((id, attempt, stream, end))
}

/// `(state, n)` of the count-by-state query.
pub(super) fn state_count_from_row<R>(row: &R) -> Result<(JobState, u64), StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let decoded = (|| {
        let state: String = get(row, "state")?;
        let parsed = JobState::parse(&state).ok_or_else(|| format!("unknown state {state:?}"))?;
        Ok::<_, String>((parsed, int(row, "n")?))
    })();
    decoded.map_err(|m| corrupt("(count by state)", m))
}

/// `(minute, state, n)` of the finished-since query.
pub(super) fn finished_from_row<R>(row: &R) -> Result<FinishedCount, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let decoded = (|| {
        let state: String = get(row, "state")?;
        Ok::<_, String>(FinishedCount {
            minute: int(row, "minute")?,
            state: JobState::parse(&state).ok_or_else(|| format!("unknown state {state:?}"))?,
            count: int(row, "n")?,
        })
    })();
    decoded.map_err(|m| corrupt("(finished jobs)", m))
}
