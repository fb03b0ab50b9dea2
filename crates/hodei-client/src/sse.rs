//! Server-sent events (the `text/event-stream` format of the HTML standard)
//! decoded from a byte stream.
//!
//! Incremental: every byte is looked at once, whatever the network's read
//! sizes. The `eventsource-stream` crate used before parsed the pending
//! line again from its start on every read, so a log event of 1 MiB (1.4 MB
//! of base64 arriving in reads of a few KiB) cost time quadratic in its
//! size: 15 % of the bench process's CPU went to that parser in the logs
//! scenario.

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its type (`event:`), `message` when none was given.
    pub event: String,
    /// Its `data:` lines, joined with `\n`.
    pub data: String,
    /// The last event id seen on the stream (`id:`), empty when none.
    pub id: String,
}

/// The decoder's state between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The line read so far (no terminator yet).
    line: Vec<u8>,
    /// The last line ended with `\r`: a `\n` right after belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    id: String,
}

impl Decoder {
    /// Reads `bytes`; returns the events they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', bytes) {
                Some(end) => {
                    self.line.extend_from_slice(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut out);
                    // Keep the allocation for the next line.
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.line.extend_from_slice(bytes);
                    break;
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // A comment (keep-alive).
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Valid UTF-8 (what a server sends) is checked at SIMD speed; only
        // invalid input takes the slower replacing conversion.
        let value = match std::str::from_utf8(value) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.id = value.into_owned(),
            _ => {} // `retry` and unknown fields are ignored.
        }
    }

    /// An empty line: the event is complete (one without data is dropped,
    /// as the standard says).
    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        out.push(Event {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        });
    }
}

/// The events of a byte stream; an error of the byte stream is passed on.
pub fn events<S, E>(bytes: S) -> impl Stream<Item = Result<Event, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    bytes
        .scan(Decoder::default(), |decoder, read| {
            let items: Vec<Result<Event, E>> = match read {
                Ok(b) => decoder.feed(&b).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::future::ready(Some(futures::stream::iter(items)))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str, id: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    const TEXT: &str = ": keep-alive\n\
        event: log\nid: 3:0\ndata: {\"a\":1}\n\n\
        data: first\ndata:second\n\n\
        event: end\r\ndata: x: y\r\n\r\n\
        event: ignored-without-data\n\n\
        id: 9\rdata\r\r";

    fn expected() -> Vec<Event> {
        vec![
            ev("log", "{\"a\":1}", "3:0"),
            ev("message", "first\nsecond", "3:0"),
            ev("end", "x: y", "3:0"),
            ev("message", "", "9"),
        ]
    }

    #[test]
    fn decodes_the_standard_format() {
        assert_eq!(Decoder::default().feed(TEXT.as_bytes()), expected());
    }

    #[test]
    fn any_split_into_reads_gives_the_same_events() {
        let bytes = TEXT.as_bytes();
        for cut in 0..=bytes.len() {
            let mut d = Decoder::default();
            let mut got = d.feed(&bytes[..cut]);
            got.extend(d.feed(&bytes[cut..]));
            assert_eq!(got, expected(), "cut at {cut}");
        }
        let mut d = Decoder::default();
        let got: Vec<Event> = bytes.iter().flat_map(|b| d.feed(&[*b])).collect();
        assert_eq!(got, expected(), "byte by byte");
    }

    #[test]
    fn a_large_event_in_small_reads() {
        let payload = "x".repeat(4 << 20);
        let text = format!("event: log\ndata: {payload}\n\n");
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for read in text.as_bytes().chunks(4096) {
            got.extend(d.feed(read));
        }
        assert_eq!(got, vec![ev("log", &payload, "")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let got = Decoder::default().feed(b"data: a\xffb\n\n");
        assert_eq!(got, vec![ev("message", "a\u{fffd}b", "")]);
    }
}
