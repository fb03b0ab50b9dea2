//! Log streams and the offset arithmetic that makes resent data idempotent.

use serde::{Deserialize, Serialize};

/// Which output of a process a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub const BOTH: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    pub fn index(self) -> usize {
        match self {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }

    pub fn parse(s: &str) -> Option<LogStream> {
        match s {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// The size and crc32c of everything in one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTotal {
    pub bytes: u64,
    pub crc32c: u32,
}

impl StreamTotal {
    /// The total after appending `data`.
    pub fn append(self, data: &[u8]) -> StreamTotal {
        StreamTotal {
            bytes: self.bytes + data.len() as u64,
            crc32c: crc32c::crc32c_append(self.crc32c, data),
        }
    }
}

/// What to do with a chunk `[offset, offset + len)` when `persisted` bytes of
/// its stream are already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFit {
    /// Store the chunk from byte `skip` of its data on (0: all of it).
    Append { skip: usize },
    /// Everything in it is stored already: a resend.
    Duplicate,
    /// It starts past the end: bytes before it are missing.
    Gap { missing_from: u64 },
}

/// Deduplicates by offset: resent bytes are dropped, gaps are refused.
pub fn fit_chunk(persisted: u64, offset: u64, len: usize) -> ChunkFit {
    let end = offset.saturating_add(len as u64);
    if offset > persisted {
        ChunkFit::Gap {
            missing_from: persisted,
        }
    } else if end <= persisted {
        ChunkFit::Duplicate
    } else {
        ChunkFit::Append {
            skip: (persisted - offset) as usize,
        }
    }
}

/// A job id made safe as part of a file name: every byte other than
/// `[A-Za-z0-9._-]` becomes `%XX`. Valid ids (see
/// [`crate::spec::validate_job_id`]) come out unchanged; ids read from disk
/// or the wire are not trusted to be valid. The agent's spool entries and
/// the SQLite store's log files are named with it.
pub fn file_name_of(job_id: &str) -> String {
    let mut name = String::with_capacity(job_id.len() + 24);
    for b in job_id.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_valid_ids_and_escape_the_rest() {
        assert_eq!(file_name_of("job-1.a_b"), "job-1.a_b");
        assert_eq!(file_name_of("a/b c%"), "a%2Fb%20c%25");
    }

    #[test]
    fn chunks_fit_by_offset() {
        assert_eq!(fit_chunk(0, 0, 10), ChunkFit::Append { skip: 0 });
        assert_eq!(fit_chunk(10, 10, 5), ChunkFit::Append { skip: 0 });
        assert_eq!(fit_chunk(10, 4, 10), ChunkFit::Append { skip: 6 });
        assert_eq!(fit_chunk(10, 0, 10), ChunkFit::Duplicate);
        assert_eq!(fit_chunk(10, 2, 3), ChunkFit::Duplicate);
        assert_eq!(fit_chunk(10, 11, 3), ChunkFit::Gap { missing_from: 10 });
        assert_eq!(fit_chunk(10, 10, 0), ChunkFit::Duplicate);
    }

    #[test]
    fn totals_compose() {
        let whole = StreamTotal::default().append(b"hello world");
        let parts = StreamTotal::default().append(b"hello ").append(b"world");
        assert_eq!(whole, parts);
        assert_eq!(whole.bytes, 11);
        assert_eq!(whole.crc32c, crc32c::crc32c(b"hello world"));
    }

    #[test]
    fn stream_names_round_trip() {
        for s in LogStream::BOTH {
            assert_eq!(LogStream::parse(s.as_str()), Some(s));
        }
    }
}
