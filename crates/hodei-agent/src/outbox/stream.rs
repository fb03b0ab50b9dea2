//! One stream of an attempt: offsets, checksum, dropped bytes, timestamps.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::executor::now_ms;
use crate::spool::{PUNCH_BLOCK, Totals};

/// A new timestamp is kept for a stream's output at most this often.
const STAMP_EVERY_MS: i64 = 100;
const MAX_STAMPS: usize = 100_000;
/// The most output a stream keeps in memory, written but not sent yet.
const RECENT_MAX: usize = 2 * 1024 * 1024;

/// The line written into a stream after `n` of its bytes were dropped.
pub fn dropped_marker(n: u64) -> String {
    format!("\n[hodei: {n} bytes of output dropped: the agent's log spool was full]\n")
}

#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// The stream offset the attempt's output starts at.
    pub(super) base: u64,
    /// Bytes below this offset are durable on the orchestrator.
    pub(super) acked: u64,
    /// Bytes below this offset were sent on the current session.
    pub(super) sent: u64,
    /// Offset after the last byte written to the spool.
    pub(super) end: u64,
    /// Holes are punched in the spool file below this offset.
    pub(super) punched: u64,
    /// crc32c of the bytes from `base` to `end`.
    pub(super) crc: u32,
    /// Bytes dropped since the last marker.
    pub(super) dropped: u64,
    /// (offset, Unix ms): when the bytes from that offset on were read.
    pub(super) stamps: VecDeque<(u64, i64)>,
    /// (offset, bytes): output written to the spool and not sent yet, in
    /// order, kept (up to [`RECENT_MAX`]) so that it is sent from memory
    /// instead of being read back from the spool. What does not fit, and
    /// what is sent again after a reconnect, is read from the spool.
    recent: VecDeque<(u64, Bytes)>,
    recent_bytes: usize,
}

impl StreamState {
    pub(super) fn new(offset: u64) -> StreamState {
        StreamState {
            base: offset,
            acked: offset,
            sent: offset,
            end: offset,
            punched: offset / PUNCH_BLOCK * PUNCH_BLOCK,
            ..StreamState::default()
        }
    }

    /// The orchestrator has stored everything below `offset`; returns the
    /// bytes this frees. Acks trail sends, so an ack never moves `sent` back.
    pub(super) fn ack(&mut self, offset: u64) -> u64 {
        let offset = offset.min(self.end);
        if offset <= self.acked {
            return 0;
        }
        let freed = offset - self.acked;
        self.acked = offset;
        while self.stamps.get(1).is_some_and(|(o, _)| *o <= offset) {
            self.stamps.pop_front();
        }
        self.sent = self.sent.max(offset);
        freed
    }

    /// The whole blocks below `acked` not punched yet.
    pub(super) fn punch_range(&mut self) -> Option<(u64, u64)> {
        let to = self.acked / PUNCH_BLOCK * PUNCH_BLOCK;
        (to > self.punched).then(|| {
            let range = (self.punched, to);
            self.punched = to;
            range
        })
    }

    pub(super) fn wrote(&mut self, data: &[u8], ts: i64) {
        let stamp = match self.stamps.back() {
            None => true,
            Some((_, last)) => ts >= last + STAMP_EVERY_MS && self.stamps.len() < MAX_STAMPS,
        };
        if stamp {
            self.stamps.push_back((self.end, ts));
        }
        self.end += data.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, data);
    }

    /// Keeps `data`, just written at `offset`, for sending.
    pub(super) fn keep_recent(&mut self, offset: u64, data: Bytes) {
        if data.is_empty() || self.recent_bytes + data.len() > RECENT_MAX {
            return;
        }
        self.recent_bytes += data.len();
        self.recent.push_back((offset, data));
    }

    /// Bytes `[from, from + len)` if memory holds all of them; whatever
    /// lies below their end is forgotten (it is being sent, or was).
    pub(super) fn take_recent(&mut self, from: u64, len: usize) -> Option<Bytes> {
        let to = from + len as u64;
        let taken = self.recent_range(from, to);
        self.forget_below(to);
        taken
    }

    fn recent_range(&self, from: u64, to: u64) -> Option<Bytes> {
        let start = self
            .recent
            .iter()
            .position(|(o, d)| *o <= from && from < o + d.len() as u64)?;
        let (o, d) = &self.recent[start];
        if to <= o + d.len() as u64 {
            // One chunk holds it all: no copy.
            return Some(d.slice((from - o) as usize..(to - o) as usize));
        }
        let mut out = BytesMut::with_capacity((to - from) as usize);
        let mut at = from;
        for (o, d) in self.recent.iter().skip(start) {
            if *o > at {
                return None; // A chunk that did not fit was left out.
            }
            let end = (o + d.len() as u64).min(to);
            out.extend_from_slice(&d[(at - o) as usize..(end - o) as usize]);
            at = end;
            if at == to {
                return Some(out.freeze());
            }
        }
        None
    }

    /// Forgets the kept chunks that end at or below `offset`.
    pub(super) fn forget_below(&mut self, offset: u64) {
        while let Some((o, d)) = self.recent.front() {
            if o + d.len() as u64 > offset {
                break;
            }
            self.recent_bytes -= d.len();
            self.recent.pop_front();
        }
    }

    pub(super) fn stamp_at(&self, offset: u64) -> i64 {
        let i = self.stamps.partition_point(|(o, _)| *o <= offset);
        match i.checked_sub(1).and_then(|i| self.stamps.get(i)) {
            Some((_, ts)) => *ts,
            None => self.stamps.front().map_or_else(now_ms, |(_, ts)| *ts),
        }
    }

    pub(super) fn totals(&self) -> Totals {
        Totals {
            bytes: self.end,
            crc32c: self.crc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_with(chunks: &[(u64, &'static [u8])]) -> StreamState {
        let mut sb = StreamState::new(0);
        for (o, d) in chunks {
            sb.keep_recent(*o, Bytes::from_static(d));
        }
        sb
    }

    #[test]
    fn recent_output_is_taken_from_memory_in_any_slice() {
        let mut sb = stream_with(&[(0, b"hello "), (6, b"big "), (10, b"world")]);
        assert_eq!(sb.take_recent(0, 3).as_deref(), Some(&b"hel"[..]));
        // Across chunks (copied), then the rest of the last one.
        assert_eq!(sb.take_recent(3, 9).as_deref(), Some(&b"lo big wo"[..]));
        assert_eq!(sb.recent.len(), 1, "the chunks below 12 are forgotten");
        assert_eq!(sb.take_recent(12, 3).as_deref(), Some(&b"rld"[..]));
        assert!(sb.recent.is_empty() && sb.recent_bytes == 0);
        assert_eq!(sb.take_recent(15, 1), None);
    }

    #[test]
    fn what_memory_does_not_hold_is_read_from_the_spool() {
        // A gap (a chunk that did not fit), and a range from before the
        // first kept chunk (a resend after a reconnect).
        let mut sb = stream_with(&[(0, b"abc"), (6, b"ghi")]);
        assert_eq!(sb.take_recent(1, 6), None);
        let mut sb = stream_with(&[(4, b"efgh")]);
        assert_eq!(sb.take_recent(0, 6), None);
        assert_eq!(sb.recent.len(), 1, "bytes 6..8 are not sent yet");
        assert_eq!(sb.take_recent(6, 2).as_deref(), Some(&b"gh"[..]));
        let mut sb = stream_with(&[(4, b"efgh")]);
        assert_eq!(sb.take_recent(0, 8), None);
        assert!(
            sb.recent.is_empty(),
            "what was sent from the spool is forgotten"
        );
        // Past the limit, chunks are not kept.
        let mut sb = StreamState::new(0);
        sb.keep_recent(0, Bytes::from(vec![1; RECENT_MAX]));
        sb.keep_recent(RECENT_MAX as u64, Bytes::from_static(b"x"));
        assert_eq!(sb.recent.len(), 1);
        assert_eq!(sb.take_recent(RECENT_MAX as u64, 1), None);
    }
}
