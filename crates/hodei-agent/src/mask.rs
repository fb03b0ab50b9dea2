//! What a job's output goes through before it reaches the outbox (and so
//! the spool and the orchestrator): its secrets replaced with `[MASKED]`
//! (one [`Masker`] per stream) and the per-job log limit, past which the
//! output is drained and dropped, never blocking the job, and a marker
//! says so. Offsets in the log are those of this filtered stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hodei_core::LogStream;
use hodei_core::mask::{Masker, Patterns};
use hodei_core::spec::human_bytes;
use hwp_proto::pb;

use crate::executor::{OutputChunk, now_ms};

/// Held-back bytes (a possible start of a secret) are passed on after the
/// job has been silent this long, so a prompt without a newline shows.
pub const IDLE_FLUSH: Duration = Duration::from_secs(2);

/// The marker written where the log limit is reached.
pub fn limit_marker(max: u64) -> String {
    format!(
        "\n[hodei: output truncated: this job's log reached its limit of {}; further output is dropped]\n",
        human_bytes(max)
    )
}

/// The marker written at the end of a truncated log.
pub fn dropped_marker(dropped: u64) -> String {
    format!("\n[hodei: {dropped} bytes of output dropped: the job's log limit was reached]\n")
}

/// Masks and limits one job's output. See the module docs.
pub struct OutputFilter {
    /// stdout, stderr; `None` when the job has no secrets.
    maskers: Option<[Masker; 2]>,
    /// 0: no limit.
    max_log_bytes: u64,
    /// Bytes passed on so far (both streams).
    written: u64,
    dropped: u64,
}

impl std::fmt::Debug for OutputFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFilter")
            .field("masking", &self.maskers.is_some())
            .field("max_log_bytes", &self.max_log_bytes)
            .field("written", &self.written)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl OutputFilter {
    /// For an assignment: its secrets, its log limit, and what of its log
    /// the orchestrator already has (a resumed attempt).
    pub fn new(secrets: &[pb::SecretEnv], max_log_bytes: u64, already: u64) -> OutputFilter {
        let patterns = Patterns::new(secrets.iter().map(|s| s.value.as_bytes()));
        let maskers = (!patterns.is_empty()).then(|| {
            let patterns = Arc::new(patterns);
            [Masker::new(patterns.clone()), Masker::new(patterns)]
        });
        OutputFilter {
            maskers,
            max_log_bytes,
            written: already,
            dropped: 0,
        }
    }

    /// A chunk the job wrote; returns what goes to the outbox.
    pub fn chunk(&mut self, chunk: OutputChunk) -> Vec<OutputChunk> {
        let data = match &mut self.maskers {
            Some(m) => Bytes::from(m[chunk.stream.index()].feed(&chunk.data)),
            None => chunk.data,
        };
        self.limit(chunk.stream, data, chunk.timestamp_ms)
    }

    /// Whether bytes are held back (then call [`flush`](Self::flush) after
    /// [`IDLE_FLUSH`] of silence).
    pub fn has_pending(&self) -> bool {
        self.maskers
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m.pending() > 0))
    }

    /// Passes on what is held back.
    pub fn flush(&mut self) -> Vec<OutputChunk> {
        let mut out = Vec::new();
        let Some(maskers) = &mut self.maskers else {
            return out;
        };
        let held: Vec<(LogStream, Vec<u8>)> = LogStream::BOTH
            .into_iter()
            .map(|s| (s, maskers[s.index()].flush()))
            .collect();
        for (stream, data) in held {
            if !data.is_empty() {
                out.extend(self.limit(stream, Bytes::from(data), now_ms()));
            }
        }
        out
    }

    /// The end of the output: what was held back, and how much was dropped.
    pub fn finish(&mut self) -> Vec<OutputChunk> {
        let mut out = self.flush();
        if self.dropped > 0 {
            out.push(OutputChunk {
                stream: LogStream::Stderr,
                data: dropped_marker(self.dropped).into(),
                timestamp_ms: now_ms(),
            });
        }
        out
    }

    fn limit(&mut self, stream: LogStream, data: Bytes, timestamp_ms: i64) -> Vec<OutputChunk> {
        let chunk = |data: Bytes| OutputChunk {
            stream,
            data,
            timestamp_ms,
        };
        let len = data.len() as u64;
        if len == 0 {
            return Vec::new();
        }
        if self.max_log_bytes == 0 || self.written + len <= self.max_log_bytes {
            self.written += len;
            return vec![chunk(data)];
        }
        let reached = self.dropped > 0 || self.written >= self.max_log_bytes;
        let keep = self.max_log_bytes.saturating_sub(self.written).min(len);
        self.written += keep;
        self.dropped += len - keep;
        let mut out = Vec::new();
        if keep > 0 {
            out.push(chunk(data.slice(..keep as usize)));
        }
        if !reached {
            out.push(chunk(limit_marker(self.max_log_bytes).into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stream: LogStream, data: &[u8]) -> OutputChunk {
        OutputChunk {
            stream,
            data: Bytes::copy_from_slice(data),
            timestamp_ms: 1,
        }
    }

    fn text(chunks: &[OutputChunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    fn secret(value: &str) -> pb::SecretEnv {
        pb::SecretEnv {
            name: "S".into(),
            value: value.into(),
        }
    }

    #[test]
    fn secrets_are_masked_per_stream_and_flushed_at_the_end() {
        let mut f = OutputFilter::new(&[secret("hunter2-x")], 0, 0);
        let mut all = f.chunk(out(LogStream::Stdout, b"pw=hunt"));
        assert!(f.has_pending());
        // The other stream does not complete stdout's secret.
        all.extend(f.chunk(out(LogStream::Stderr, b"er2-x\n")));
        all.extend(f.chunk(out(LogStream::Stdout, b"er2-x\nhun")));
        all.extend(f.finish());
        assert!(!f.has_pending());
        let stdout: Vec<_> = all
            .iter()
            .filter(|c| c.stream == LogStream::Stdout)
            .cloned()
            .collect();
        assert_eq!(text(&stdout), "pw=[MASKED]\nhun");
    }

    #[test]
    fn output_past_the_limit_is_dropped_with_markers() {
        let mut f = OutputFilter::new(&[], 10, 0);
        let mut all = f.chunk(out(LogStream::Stdout, b"123456"));
        all.extend(f.chunk(out(LogStream::Stderr, b"7890abc")));
        all.extend(f.chunk(out(LogStream::Stdout, b"more")));
        all.extend(f.finish());
        let shown = text(&all);
        assert!(
            shown.starts_with("1234567890\n[hodei: output truncated"),
            "{shown}"
        );
        assert!(shown.contains("limit of 10 bytes"), "{shown}");
        assert!(
            shown
                .ends_with("[hodei: 7 bytes of output dropped: the job's log limit was reached]\n")
        );
        assert_eq!(shown.matches("output truncated").count(), 1);
        assert!(!shown.contains("abc") && !shown.contains("more"));
    }

    #[test]
    fn no_secrets_and_no_limit_pass_everything() {
        let mut f = OutputFilter::new(&[], 0, 0);
        let all = f.chunk(out(LogStream::Stdout, b"abc"));
        assert_eq!(text(&all), "abc");
        assert!(f.finish().is_empty());
    }
}
