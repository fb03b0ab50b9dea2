//! One stream of an attempt: offsets, checksum, dropped bytes, timestamps.

use std::collections::VecDeque;

use crate::executor::now_ms;
use crate::spool::{PUNCH_BLOCK, Totals};

/// A new timestamp is kept for a stream's output at most this often.
const STAMP_EVERY_MS: i64 = 100;
const MAX_STAMPS: usize = 100_000;

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
