//! The job's output: the container's demultiplexed frames forwarded as
//! they come, and the agent's own notes in the job's stderr.

use std::pin::Pin;

use bollard::container::LogOutput;
use futures::{Stream, StreamExt};
use hodei_core::{LogStream, Outcome};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::executor::{OutputChunk, now_ms};

pub(super) type OutputStream =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Forwards the container's demultiplexed output to `tx` until it ends.
pub(super) async fn pump(mut frames: OutputStream, tx: mpsc::Sender<OutputChunk>) {
    let mut forwarding = true;
    while let Some(frame) = frames.next().await {
        let (stream, data) = match frame {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                (LogStream::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(err) => {
                warn!(%err, "reading the container's output failed");
                break;
            }
        };
        if data.is_empty() || !forwarding {
            continue;
        }
        let chunk = OutputChunk {
            stream,
            data,
            timestamp_ms: now_ms(),
        };
        if tx.send(chunk).await.is_err() {
            debug!("output receiver gone; draining the container's output");
            forwarding = false;
        }
    }
}

pub(super) async fn note_stderr(message: &str, output: &mpsc::Sender<OutputChunk>) {
    let chunk = OutputChunk {
        stream: LogStream::Stderr,
        data: format!("{message}\n").into(),
        timestamp_ms: now_ms(),
    };
    let _ = output.send(chunk).await;
}

/// Writes `message` to the job's stderr and returns it as the outcome.
pub(super) async fn failed(
    code: i32,
    message: String,
    output: &mpsc::Sender<OutputChunk>,
) -> Outcome {
    note_stderr(&message, output).await;
    Outcome::SpawnFailed { code, message }
}
