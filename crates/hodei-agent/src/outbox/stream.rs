//! One stream of an attempt: offsets, checksum, dropped bytes, timestamps,
//! and where its unacknowledged bytes are (memory, the spool, or both).
//!
//! # Memory first, the spool behind
//!
//! A chunk of output is accepted into memory ([`StreamState::hold`]) and
//! sent from there. It is written to the spool only when it has to be:
//!
//! - holding it would pass the stream's memory limit ([`HELD_MAX`]) or the
//!   agent's ([`HELD_TOTAL_MAX`]), and no acknowledgement is coming
//!   to make room (no session, or none of the attempt's output
//!   acknowledged for a second; otherwise
//!   the writer waits for one): the oldest chunks are written first
//!   ([`StreamState::spill_due`]), then forgotten;
//! - the attempt ended: what the orchestrator has not acknowledged is
//!   written and fsynced before the result is recorded
//!   ([`StreamState::unsaved`]).
//!
//! A chunk the orchestrator acknowledges before either happens never
//! touches the disk. Nothing is lost by that: the spool of an attempt that
//! was still running when the agent died is deleted unread (its process
//! died with the agent, see [`crate::recover`]); what the spool is for is
//! an ended attempt whose result is not acknowledged, and output that
//! would not fit in memory while the orchestrator is slow or away.
//!
//! The held chunks are contiguous and end at `end`; the spool holds
//! `[disk_from, disk_end)` (less what was punched below `punched`). Every
//! byte from [`StreamState::held_from`] to `end` can be sent again.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::executor::now_ms;
use crate::spool::{PUNCH_BLOCK, Totals};

/// A new timestamp is kept for a stream's output at most this often.
const STAMP_EVERY_MS: i64 = 100;
const MAX_STAMPS: usize = 100_000;
/// The most unacknowledged output one stream holds in memory.
pub(super) const HELD_MAX: usize = 16 * 1024 * 1024;
/// The most unacknowledged output the agent holds in memory, all jobs
/// together; past it, a stream that grows makes room in its own memory.
pub(super) const HELD_TOTAL_MAX: usize = 64 * 1024 * 1024;

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
    /// Offset after the last byte accepted.
    pub(super) end: u64,
    /// Holes are punched in the spool file below this offset.
    pub(super) punched: u64,
    /// crc32c of the bytes from `base` to `end`.
    pub(super) crc: u32,
    /// Bytes dropped since the last marker.
    pub(super) dropped: u64,
    /// (offset, Unix ms): when the bytes from that offset on were read.
    pub(super) stamps: VecDeque<(u64, i64)>,
    /// (offset, bytes): accepted output not acknowledged, in order and
    /// contiguous up to `end`; the first chunk may start below `acked`.
    held: VecDeque<(u64, Bytes)>,
    held_bytes: usize,
    /// The spool file holds `[disk_from, disk_end)`.
    disk_from: u64,
    disk_end: u64,
}

impl StreamState {
    pub(super) fn new(offset: u64) -> StreamState {
        StreamState {
            base: offset,
            acked: offset,
            sent: offset,
            end: offset,
            punched: offset / PUNCH_BLOCK * PUNCH_BLOCK,
            disk_from: offset,
            disk_end: offset,
            ..StreamState::default()
        }
    }

    /// A stream recovered from the spool: `[from, end)` is on disk, and
    /// the first `acked` bytes are acknowledged.
    pub(super) fn on_disk(base: u64, acked: u64, from: u64, end: u64, crc: u32) -> StreamState {
        StreamState {
            acked,
            sent: from,
            end,
            crc,
            punched: from / PUNCH_BLOCK * PUNCH_BLOCK,
            disk_from: from,
            disk_end: end,
            ..StreamState::new(base)
        }
    }

    /// The orchestrator has stored everything below `offset`; returns the
    /// bytes this frees (unacknowledged, and held in memory). Acks trail
    /// sends, so an ack never moves `sent` back.
    pub(super) fn ack(&mut self, offset: u64) -> (u64, usize) {
        let offset = offset.min(self.end);
        if offset <= self.acked {
            return (0, 0);
        }
        let freed = offset - self.acked;
        self.acked = offset;
        while self.stamps.get(1).is_some_and(|(o, _)| *o <= offset) {
            self.stamps.pop_front();
        }
        self.sent = self.sent.max(offset);
        (freed, self.forget_below(offset))
    }

    /// The lowest offset from which every byte up to `end` is still held,
    /// in memory or in the spool: how far back a resend can go.
    pub(super) fn held_from(&self) -> u64 {
        let memory = self.held.front().map_or(self.end, |(o, _)| *o);
        let disk = self.disk_from.max(self.punched).max(self.base);
        if self.disk_end >= memory && disk <= memory {
            disk
        } else {
            memory
        }
    }

    /// The whole blocks of the spool file below `acked` not punched yet.
    pub(super) fn punch_range(&mut self) -> Option<(u64, u64)> {
        let to = self.acked.min(self.disk_end) / PUNCH_BLOCK * PUNCH_BLOCK;
        (to > self.punched).then(|| {
            let range = (self.punched, to);
            self.punched = to;
            range
        })
    }

    /// Accepts `data` at `end`: counted, stamped and held in memory.
    pub(super) fn hold(&mut self, data: Bytes, ts: i64) {
        let stamp = match self.stamps.back() {
            None => true,
            Some((_, last)) => ts >= last + STAMP_EVERY_MS && self.stamps.len() < MAX_STAMPS,
        };
        if stamp {
            self.stamps.push_back((self.end, ts));
        }
        self.crc = crc32c::crc32c_append(self.crc, &data);
        let offset = self.end;
        self.end += data.len() as u64;
        if !data.is_empty() {
            self.held_bytes += data.len();
            self.held.push_back((offset, data));
        }
    }

    /// Bytes held in memory.
    pub(super) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The length of the dropped-bytes marker due before this stream's
    /// next bytes (0 when none is due).
    pub(super) fn marker_len(&self) -> usize {
        if self.dropped > 0 {
            dropped_marker(self.dropped).len()
        } else {
            0
        }
    }

    /// Whether `len` more bytes (and the marker due before them) fit in
    /// memory, the agent holding `held_total` bytes in all: `None` if they
    /// do, else how many of this stream's held bytes may stay (its oldest
    /// must make room, see [`StreamState::spill_due`]).
    pub(super) fn room_for(&self, len: usize, held_total: usize) -> Option<usize> {
        let incoming = len + self.marker_len();
        let over_total = (held_total + incoming).saturating_sub(HELD_TOTAL_MAX);
        let keep = HELD_MAX
            .saturating_sub(incoming)
            .min(self.held_bytes.saturating_sub(over_total));
        (self.held_bytes > keep).then_some(keep)
    }

    /// The oldest held chunks not in the spool yet whose writing leaves at
    /// most `keep` bytes in memory.
    pub(super) fn spill_due(&self, keep: usize) -> Vec<(u64, Bytes)> {
        let mut left = self.held_bytes;
        let mut out = Vec::new();
        for (o, d) in &self.held {
            if left <= keep {
                break;
            }
            left -= d.len();
            if o + d.len() as u64 > self.disk_end {
                out.push((*o, d.clone()));
            }
        }
        out
    }

    /// Held chunks not in the spool yet with bytes not acknowledged: what
    /// must be written before the attempt's result is recorded.
    pub(super) fn unsaved(&self) -> Vec<(u64, Bytes)> {
        self.held
            .iter()
            .filter(|(o, d)| o + d.len() as u64 > self.disk_end.max(self.acked))
            .map(|(o, d)| (*o, d.clone()))
            .collect()
    }

    /// `[from, to)` was written to the spool (chunks of
    /// [`StreamState::spill_due`] or [`StreamState::unsaved`]); with
    /// `forget`, memory lets go of the chunks below `to`. Returns the bytes
    /// memory let go of.
    pub(super) fn saved(&mut self, from: u64, to: u64, forget: bool) -> usize {
        if from > self.disk_end {
            // The bytes between were acknowledged and forgotten unwritten.
            self.disk_from = from;
        }
        self.disk_end = self.disk_end.max(to);
        if forget { self.forget_below(to) } else { 0 }
    }

    /// What to send from `from`, at most `max` bytes: the length, and the
    /// bytes when memory holds them (`None`: read them from the spool).
    pub(super) fn sendable(&self, from: u64, max: usize) -> (usize, Option<Bytes>) {
        let memory = self.held.front().map_or(self.end, |(o, _)| *o);
        let left = self.end.saturating_sub(from);
        if from < memory {
            // Below memory: from the spool, up to where memory starts.
            let len = left.min(memory - from).min(max as u64) as usize;
            return (len, None);
        }
        let len = left.min(max as u64) as usize;
        (len, self.held_range(from, from + len as u64))
    }

    fn held_range(&self, from: u64, to: u64) -> Option<Bytes> {
        let start = self
            .held
            .partition_point(|(o, d)| o + d.len() as u64 <= from);
        let (o, d) = self.held.get(start)?;
        if *o > from {
            return None;
        }
        if to <= o + d.len() as u64 {
            // One chunk holds it all: no copy.
            return Some(d.slice((from - o) as usize..(to - o) as usize));
        }
        let mut out = BytesMut::with_capacity((to - from) as usize);
        let mut at = from;
        for (o, d) in self.held.iter().skip(start) {
            let end = (o + d.len() as u64).min(to);
            out.extend_from_slice(&d[(at - o) as usize..(end - o) as usize]);
            at = end;
            if at == to {
                return Some(out.freeze());
            }
        }
        None
    }

    /// Forgets the held chunks that end at or below `offset`; returns
    /// their bytes.
    fn forget_below(&mut self, offset: u64) -> usize {
        let mut freed = 0;
        while let Some((o, d)) = self.held.front() {
            if o + d.len() as u64 > offset {
                break;
            }
            freed += d.len();
            self.held.pop_front();
        }
        self.held_bytes -= freed;
        freed
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

    fn stream_with(chunks: &[&'static [u8]]) -> StreamState {
        let mut sb = StreamState::new(0);
        for d in chunks {
            sb.hold(Bytes::from_static(d), 0);
        }
        sb
    }

    #[test]
    fn held_output_is_sent_from_memory_in_any_slice_until_acknowledged() {
        let mut sb = stream_with(&[b"hello ", b"big ", b"world"]);
        assert_eq!(sb.end, 15);
        assert_eq!(sb.crc, crc32c::crc32c(b"hello big world"));
        assert_eq!(sb.sendable(0, 3), (3, Some(Bytes::from_static(b"hel"))));
        // Across chunks (copied), then the rest of the last one.
        assert_eq!(
            sb.sendable(3, 9),
            (9, Some(Bytes::from_static(b"lo big wo")))
        );
        assert_eq!(sb.sendable(12, 100), (3, Some(Bytes::from_static(b"rld"))));
        // Sent is not forgotten: a resend after a reconnect is from memory.
        assert_eq!(sb.held_bytes(), 15);
        assert_eq!(sb.ack(8), (8, 6), "only the first chunk ends below 8");
        assert_eq!(sb.held_from(), 6);
        assert_eq!(sb.sendable(8, 2), (2, Some(Bytes::from_static(b"g "))));
        assert_eq!(sb.ack(15), (7, 9));
        assert_eq!((sb.held_bytes(), sb.held_from()), (0, 15));
        assert_eq!(sb.sendable(15, 1), (0, None), "nothing left to send");
    }

    #[test]
    fn spilled_chunks_are_read_from_the_spool_up_to_where_memory_starts() {
        let mut sb = stream_with(&[b"aaaa", b"bbbb", b"cccc"]);
        // Keep at most 5 bytes in memory: the two oldest chunks go.
        let due = sb.spill_due(5);
        assert_eq!(due.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [0, 4]);
        // Until written, they are still sent from memory.
        assert_eq!(sb.sendable(2, 4).1.as_deref(), Some(&b"aabb"[..]));
        assert_eq!(sb.saved(0, 8, true), 8);
        assert_eq!(sb.held_bytes(), 4);
        assert_eq!(sb.sendable(2, 100), (6, None), "stops where memory starts");
        assert_eq!(sb.sendable(8, 100).1.as_deref(), Some(&b"cccc"[..]));
        assert_eq!(sb.held_from(), 0);
        assert!(sb.spill_due(5).is_empty(), "under the limit");
        // The spool's acknowledged whole blocks are punched, not memory's.
        sb.ack(12);
        assert_eq!(sb.punch_range(), None, "8 bytes on disk: no whole block");
        assert_eq!(sb.held_bytes(), 0);
    }

    #[test]
    fn bytes_acknowledged_before_they_were_written_leave_a_gap_in_the_spool() {
        let mut sb = stream_with(&[b"aaaa", b"bbbb"]);
        sb.ack(4);
        sb.hold(Bytes::from_static(b"cccc"), 0);
        let due = sb.spill_due(4);
        assert_eq!(due.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [4]);
        sb.saved(4, 8, true);
        // The spool holds 4..8; 0..4 was never written.
        assert_eq!(sb.held_from(), 4);
        assert_eq!(sb.sendable(4, 100), (4, None));
        // At the end, what is not acknowledged and not on disk yet.
        let unsaved = sb.unsaved();
        assert_eq!(unsaved.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [8]);
        assert_eq!(sb.saved(8, 12, false), 0, "kept in memory for sending");
        assert!(sb.unsaved().is_empty());
        assert!(sb.spill_due(0).is_empty(), "all of it is on disk");
        assert_eq!(sb.sendable(8, 100).1.as_deref(), Some(&b"cccc"[..]));
    }

    #[test]
    fn room_is_made_within_the_stream_and_the_agent_limits() {
        let mut sb = StreamState::new(0);
        sb.hold(Bytes::from(vec![0; HELD_MAX - 10]), 0);
        assert_eq!(sb.room_for(10, HELD_MAX - 10), None, "fits exactly");
        assert_eq!(sb.room_for(11, HELD_MAX - 10), Some(HELD_MAX - 11));
        // Over the agent's limit, the growing stream gives up what passes it.
        let others = HELD_TOTAL_MAX - HELD_MAX;
        assert_eq!(sb.room_for(10, others + HELD_MAX - 10), None);
        assert_eq!(
            sb.room_for(10, others + HELD_MAX - 10 + 100),
            Some(HELD_MAX - 10 - 100)
        );
        // The due marker needs room too.
        sb.dropped = 5;
        let marker = dropped_marker(5).len();
        assert_eq!(sb.marker_len(), marker);
        assert_eq!(sb.room_for(10, HELD_MAX - 10), Some(HELD_MAX - 10 - marker));
        // A stream holding nothing never has to make room.
        assert_eq!(
            StreamState::new(0).room_for(HELD_MAX * 2, HELD_TOTAL_MAX * 2),
            None
        );
    }

    #[test]
    fn a_recovered_stream_is_read_from_the_spool() {
        let sb = StreamState::on_disk(0, 100, 4096, 10_000, 7);
        assert_eq!(sb.held_from(), 4096);
        assert_eq!(sb.sendable(4096, 1 << 20), (10_000 - 4096, None));
        assert_eq!(sb.totals().bytes, 10_000);
    }
}
