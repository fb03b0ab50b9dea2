//! The agent's on-disk log spool: what the agent owes the orchestrator for
//! each job attempt, kept on disk until it is acknowledged.
//!
//! # Layout
//!
//! ```text
//! <spool>/lock                   flock(2)ed by the agent that owns the spool
//! <spool>/<job id>@<attempt>/    one directory per attempt
//!     stdout, stderr             the streams; file offset == stream offset
//!     meta.json                  job id, attempt, stream base offsets,
//!                                acknowledged offsets, the process (pid,
//!                                pgid, start time, boot id) and the result
//! ```
//!
//! The job id is written into the directory name with every byte other than
//! `[A-Za-z0-9._-]` as `%XX`; `meta.json` is what counts.
//!
//! Log data is written with `pwrite` at its stream offset and read back with
//! `pread` when it is sent, but only the output that memory cannot hold, or
//! that is still unacknowledged when the attempt ends, is written at all
//! (see `outbox/stream.rs`): a stream file is sparse, and may hold nothing
//! when the orchestrator acknowledged everything while it was in memory.
//! It is not fsynced per write: an agent crash kills the job anyway (see
//! [`crate::recover`]). Acknowledged ranges are freed with
//! `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`, in whole 4 KiB
//! blocks (where the filesystem cannot punch holes the data just stays until
//! the attempt's directory is deleted).
//!
//! `meta.json` is replaced atomically when it holds a result before the
//! change, or one too large for a sector after it (see below): the new
//! content is written to `meta.json.tmp`, which
//! then swaps names with `meta.json` (`renameat2(RENAME_EXCHANGE)`; a plain
//! rename where the file system cannot), so the previous version stays as
//! `meta.json.tmp`, to be overwritten next time, and no inode is freed. Before the attempt has a
//! result, changes that only have to outlive the agent process are written
//! in place instead: one `pwrite` of at most one page at offset 0, padded
//! with spaces (JSON allows trailing whitespace) to the file's length so no
//! older byte is left after it. The agent's death cannot tear such a write;
//! the machine's loss can, which leaves an entry without a result, dropped
//! at start either way.
//!
//! # Recycling
//!
//! Creating and deleting a directory and three files for every job made
//! ext4's inode allocator a large part of the agent's time. Once the
//! orchestrator has acknowledged an attempt's result, its directory is
//! emptied (the stream files truncated) and moved to `<spool>/.recycled/`
//! ([`recycle`]); the next attempt renames it into place and rewrites
//! `meta.json`. An agent that starts deletes what `.recycled` holds.
//!
//! # What is fsynced, and when
//!
//! Everything before the result (the attempt's directory, its first
//! `meta.json`, the process record) has to outlive the agent *process*,
//! which the page cache does, not the machine: when the machine goes down
//! the job's processes die with it, and a result-less entry found at start
//! is abandoned or discarded either way. So creating an attempt and
//! recording its process make no fsync.
//!
//! When the attempt ends, the log bytes the orchestrator has not
//! acknowledged are written and then the result
//! ([`AttemptFiles::record_result`]), without fsync. Making it durable
//! ([`AttemptFiles::sync_result`]) fsyncs the log files that hold
//! unacknowledged bytes, then `meta.json`, then the attempt's directory
//! unless its files' entries are known to be on disk already (a recycled
//! directory's are), and the spool directory unless the attempt's
//! directory is known to be on disk already (a recycled one is): one fsync
//! in a recycled directory whose output was all acknowledged, more in a new
//! one. The outbox does that before offering the result when no session is
//! up, and otherwise only if the result is still unacknowledged 100 ms
//! after it was offered (see `outbox/late_sync.rs`): most results are
//! acknowledged and retired first, and are never fsynced. Until then the
//! machine's loss may leave the result without its log bytes; recovery
//! discards such an entry (log files shorter than the result's totals), as
//! it does one without a result.
//!
//! A recycled directory is renamed into place without fsync, so after the
//! machine's loss it may be found under any name it had since its parent
//! was last fsynced: an earlier attempt's name in the spool, or its slot in
//! `.recycled/`. Either way it holds its `meta.json`, which names the
//! attempt; recovery reads the pool too and takes back every entry whose
//! `meta.json` holds a result ([`crate::recover`]). A retired entry's result
//! is cleared from its `meta.json` first ([`AttemptFiles::clear_result`]),
//! so the pool holds no acknowledged result (unless the machine's loss
//! undid that write: then it is offered again, and acknowledged again).
//! This relies on renames being atomic, as on ext4, XFS and btrfs.
//!
//! The result is written in place when `meta.json` (compact JSON) fits in
//! one 512-byte sector with its padding: a disk writes a sector whole or
//! not at all, and what it replaces holds no result, so a power failure
//! mid-write leaves the old entry or the new one, never a mix (PostgreSQL
//! assumes the same of its 512-byte `pg_control`). A larger `meta.json`
//! goes through the spare file and the exchange.
//!
//! Every function here does blocking file I/O: call them from
//! `spawn_blocking` (the [`crate::outbox`] does).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

mod meta_file;
pub mod recycle;

use meta_file::MetaFile;
pub use recycle::{RECYCLED_DIR, Recycled, Recycler};

/// The metadata file's name in an attempt's directory.
pub const META_FILE: &str = "meta.json";
const META_TMP: &str = "meta.json.tmp";
const STREAM_FILES: [&str; 2] = ["stdout", "stderr"];
/// The lock file's name in the spool directory.
pub const LOCK_FILE: &str = "lock";
/// Holes are punched in whole blocks of this size.
pub const PUNCH_BLOCK: u64 = 4096;
/// `meta.json`'s format version.
pub const META_VERSION: u32 = 1;
/// Largest `meta.json` written in place: one page, which one `pwrite` at
/// offset 0 fills whole or not at all if the process dies.
const IN_PLACE_MAX: usize = 4096;
/// Largest `meta.json` whose result is written in place: one disk sector,
/// which a disk writes whole or not at all if the power fails (what
/// PostgreSQL assumes of its 512-byte `pg_control`).
const SECTOR: usize = 512;

/// The size and crc32c of what an attempt wrote into one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// The stream's end offset (its base plus every byte written).
    pub bytes: u64,
    /// crc32c of the bytes written (from the base offset on).
    pub crc32c: u32,
}

/// The job's leader process, to find it again after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when the process was started.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// How the attempt ended, as sent in `JobResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// `pb::Outcome` as a number.
    pub outcome: i32,
    pub exit_code: i32,
    pub signal: i32,
    pub message: String,
    pub stdout: Totals,
    pub stderr: Totals,
}

/// The content of `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub job_id: String,
    pub attempt: u32,
    /// Stream offsets the attempt's output starts at (stdout, stderr).
    pub base: [u64; 2],
    /// Acknowledged offsets when the file was last written.
    pub acked: [u64; 2],
    #[serde(default)]
    pub process: Option<ProcessRecord>,
    #[serde(default)]
    pub result: Option<ResultRecord>,
}

impl Meta {
    pub fn new(job_id: &str, attempt: u32, base: [u64; 2]) -> Meta {
        Meta {
            version: META_VERSION,
            job_id: job_id.to_string(),
            attempt,
            base,
            acked: base,
            process: None,
            result: None,
        }
    }
}

/// The directory name of an attempt.
pub fn attempt_dir_name(job_id: &str, attempt: u32) -> String {
    format!("{}@{attempt}", hodei_core::log::file_name_of(job_id))
}

/// One attempt's files. Shared between the writer and the sender; the
/// stream files are only accessed with positional reads and writes.
#[derive(Debug)]
pub struct AttemptFiles {
    dir: PathBuf,
    streams: [File; 2],
    meta: Mutex<MetaFile>,
}

impl AttemptFiles {
    /// Creates a fresh directory for the attempt (replacing a leftover one
    /// of the same name) with empty stream files and its `meta.json`.
    pub fn create(root: &Path, meta: Meta) -> io::Result<AttemptFiles> {
        Self::create_from(root, meta, None)
    }

    /// Like [`AttemptFiles::create`], reusing `recycled` (an earlier
    /// attempt's emptied directory, see [`Recycler`]) when given.
    pub fn create_from(
        root: &Path,
        meta: Meta,
        recycled: Option<Recycled>,
    ) -> io::Result<AttemptFiles> {
        let dir = root.join(attempt_dir_name(&meta.job_id, meta.attempt));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let reused = match recycled {
            Some(r) => match fs::rename(&r.dir, &dir) {
                Ok(()) => Some(r),
                Err(e) => {
                    tracing::debug!(dir = %r.dir.display(), error = %e, "cannot reuse a recycled spool entry");
                    let _ = fs::remove_dir_all(&r.dir);
                    None
                }
            },
            None => None,
        };
        let (streams, file, spare, entries_durable, placed) = match reused {
            Some(r) => (r.streams, r.meta, r.spare, r.entries_durable, r.placed),
            None => {
                fs::create_dir(&dir)?;
                let open = |name: &str| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(dir.join(name))
                };
                (
                    [open(STREAM_FILES[0])?, open(STREAM_FILES[1])?],
                    None,
                    None,
                    false,
                    false,
                )
            }
        };
        let files = AttemptFiles {
            dir,
            streams,
            meta: Mutex::new(MetaFile {
                meta,
                file,
                spare,
                entries_durable,
                placed,
                result_synced: false,
            }),
        };
        // Not fsynced: see "What is fsynced, and when" above.
        files.update_meta_cached(|_| {})?;
        Ok(files)
    }

    /// Opens an existing attempt directory whose `meta.json` was read.
    pub fn open(dir: &Path, meta: Meta) -> io::Result<AttemptFiles> {
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(name))
        };
        Ok(AttemptFiles {
            dir: dir.to_path_buf(),
            streams: [open(STREAM_FILES[0])?, open(STREAM_FILES[1])?],
            meta: Mutex::new(MetaFile {
                meta,
                file: None,
                spare: None,
                entries_durable: false,
                placed: false,
                result_synced: false,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_meta(&self) -> std::sync::MutexGuard<'_, MetaFile> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the metadata as last written.
    pub fn meta(&self) -> Meta {
        self.lock_meta().meta.clone()
    }

    /// Whether the attempt's result is recorded.
    pub fn has_result(&self) -> bool {
        self.lock_meta().meta.result.is_some()
    }

    /// Writes `data` at `offset` of stream `stream` (0 = stdout, 1 = stderr).
    pub fn write_at(&self, stream: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        self.stream(stream)?.write_all_at(data, offset)
    }

    /// Reads exactly `len` bytes at `offset` of stream `stream`.
    pub fn read_at(&self, stream: usize, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.stream(stream)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Frees `[from, to)` of a stream. Returns false when the filesystem
    /// cannot punch holes (nothing is freed then, nothing is wrong either).
    pub fn punch(&self, stream: usize, from: u64, to: u64) -> io::Result<bool> {
        let file = self.stream(stream)?;
        if to <= from {
            return Ok(true);
        }
        punch_hole(file, from, to - from)
    }

    /// The first offset at or after `from` that holds data (not a punched
    /// hole); `from` itself where the filesystem does not tell.
    pub fn data_from(&self, stream: usize, from: u64) -> io::Result<u64> {
        seek_data(self.stream(stream)?, from)
    }

    /// The current length of a stream file.
    pub fn len(&self, stream: usize) -> io::Result<u64> {
        Ok(self.stream(stream)?.metadata()?.len())
    }

    /// Flushes both stream files to disk.
    pub fn sync_logs(&self) -> io::Result<()> {
        for f in &self.streams {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Deletes the attempt's directory.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn stream(&self, stream: usize) -> io::Result<&File> {
        self.streams
            .get(stream)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such stream"))
    }
}

/// Reads and checks an attempt directory's `meta.json`.
pub fn read_meta(dir: &Path) -> Result<Meta, String> {
    let bytes =
        fs::read(dir.join(META_FILE)).map_err(|e| format!("cannot read {META_FILE}: {e}"))?;
    parse_meta(&bytes, dir.file_name().and_then(|n| n.to_str()))
}

/// Parses and checks the bytes of `meta.json` found in the directory named
/// `dir_name`. What is on disk after a crash is untrusted: anything that is
/// not a consistent record of that directory's attempt is an error.
pub fn parse_meta(bytes: &[u8], dir_name: Option<&str>) -> Result<Meta, String> {
    let meta = parse_meta_anywhere(bytes)?;
    let expected = attempt_dir_name(&meta.job_id, meta.attempt);
    if dir_name != Some(expected.as_str()) {
        return Err(format!(
            "{META_FILE} names job {:?} attempt {}, which is not this directory",
            meta.job_id, meta.attempt
        ));
    }
    Ok(meta)
}

/// Reads and checks `dir/meta.json` wherever the directory is: after the
/// machine's loss a recycled directory may be found under an earlier name
/// or in the pool (see "What is fsynced, and when").
pub fn read_meta_anywhere(dir: &Path) -> Result<Meta, String> {
    let bytes =
        fs::read(dir.join(META_FILE)).map_err(|e| format!("cannot read {META_FILE}: {e}"))?;
    parse_meta_anywhere(&bytes)
}

/// [`parse_meta`] without the check of the directory's name.
pub fn parse_meta_anywhere(bytes: &[u8]) -> Result<Meta, String> {
    let meta: Meta =
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt {META_FILE}: {e}"))?;
    if meta.version != META_VERSION {
        return Err(format!("unknown {META_FILE} version {}", meta.version));
    }
    for i in 0..2 {
        if meta.acked[i] < meta.base[i] {
            return Err(format!("{META_FILE}: acknowledged offset below the base"));
        }
        if let Some(r) = &meta.result {
            let t = [r.stdout, r.stderr][i];
            if t.bytes < meta.acked[i] {
                return Err(format!(
                    "{META_FILE}: result totals below the acknowledged offset"
                ));
            }
        }
    }
    Ok(meta)
}

/// fsyncs a directory (so that entries created or renamed in it last).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(target_os = "linux")]
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{FallocateFlags, fallocate};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, mode, offset, len) {
        Ok(()) => Ok(true),
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}

#[cfg(target_os = "linux")]
fn seek_data(file: &File, from: u64) -> io::Result<u64> {
    use nix::errno::Errno;
    use nix::unistd::{Whence, lseek};
    let Ok(offset) = i64::try_from(from) else {
        return Ok(from);
    };
    match lseek(file, offset, Whence::SeekData) {
        Ok(found) => Ok(u64::try_from(found).unwrap_or(from).max(from)),
        // No data after `from`: all hole up to the end of the file.
        Err(Errno::ENXIO) => Ok(file.metadata()?.len().max(from)),
        Err(Errno::EINVAL | Errno::EOPNOTSUPP) => Ok(from),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn seek_data(_file: &File, from: u64) -> io::Result<u64> {
    Ok(from)
}
