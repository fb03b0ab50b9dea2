//! The job-state event stream (`GET /api/v1/events`, Server-Sent Events).

use futures::StreamExt;
use futures::stream::BoxStream;
use hodei_core::Job;
use hodei_core::api::events;
use hodei_core::engine::WorkerInfo;

use crate::{Client, ClientError};

/// One event of [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiEvent {
    /// Subscribed: changes from now on are delivered.
    Ready,
    /// A job changed state (its current record).
    Job(Box<Job>),
    /// A worker changed.
    Worker(WorkerInfo),
    /// This many changes were missed; reload what you show.
    Lagged(u64),
}

/// The stream of [`Client::events`]; it ends when the server closes it.
pub type Events = BoxStream<'static, Result<ApiEvent, ClientError>>;

fn decode(name: &str, data: &str) -> Result<Option<ApiEvent>, ClientError> {
    let bad = |e: serde_json::Error| ClientError::Protocol(format!("bad {name} event: {e}"));
    Ok(match name {
        events::READY => Some(ApiEvent::Ready),
        events::JOB => Some(ApiEvent::Job(Box::new(
            serde_json::from_str(data).map_err(bad)?,
        ))),
        events::WORKER => Some(ApiEvent::Worker(serde_json::from_str(data).map_err(bad)?)),
        events::LAGGED => Some(ApiEvent::Lagged(data.trim().parse().unwrap_or_default())),
        "error" => return Err(ClientError::Protocol(data.to_string())),
        _ => None,
    })
}

impl Client {
    /// Subscribes to job and worker changes (`job`: only that job's). The
    /// first event is [`ApiEvent::Ready`]. No reconnection: on a dropped
    /// connection the stream ends; subscribe again and reload.
    pub async fn events(&self, job: Option<&str>) -> Result<Events, ClientError> {
        let mut req = self.http.get(self.url("/events"));
        if let Some(id) = job {
            req = req.query(&[("job", id)]);
        }
        let resp = self.send(req).await?;
        let stream = crate::sse::events(resp.bytes_stream()).filter_map(|ev| async move {
            match ev {
                Ok(ev) => decode(&ev.event, &ev.data).transpose(),
                Err(e) => Some(Err(ClientError::Protocol(e.to_string()))),
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_by_name() {
        assert_eq!(decode("ready", "{}").unwrap(), Some(ApiEvent::Ready));
        assert_eq!(decode("lagged", "12").unwrap(), Some(ApiEvent::Lagged(12)));
        assert_eq!(decode("keep-alive", "").unwrap(), None);
        assert!(decode("job", "{").is_err());
        assert!(decode("error", "store failed").is_err());
    }
}
