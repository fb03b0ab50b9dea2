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
//! `meta.json` is replaced atomically when it holds a result, before or
//! after the change: the new content is written to `meta.json.tmp`, which
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
//! Only the result has to be durable before it is offered: everything
//! before it (the attempt's directory, its first `meta.json`, the process
//! record) has to outlive the agent *process*, which the page cache does,
//! not the machine: when the machine goes down the job's processes die with
//! it, and a result-less entry found at start is abandoned or discarded
//! either way. So creating an attempt and recording its process make no
//! fsync. When the attempt ends ([`AttemptFiles::make_result_durable`]):
//! the log files that hold bytes the orchestrator has not acknowledged are
//! fsynced, then `meta.json` with the result is written and fsynced, the
//! attempt's directory is fsynced unless its files' entries are known to be
//! on disk already (a recycled directory's are), and so is the spool
//! directory unless the attempt's directory is known to be on disk already
//! (a recycled one is). Only then is the result offered: a result found on
//! disk implies its complete log. For a job whose output the orchestrator
//! has all acknowledged (or that printed nothing) that is one fsync in a
//! recycled directory, three in a new one.
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

pub mod recycle;

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

/// `meta.json`: what it holds, the open file with its length (for writes
/// in place), and `meta.json.tmp` (the previous version) likewise.
#[derive(Debug)]
struct MetaFile {
    meta: Meta,
    file: Option<(File, usize)>,
    spare: Option<(File, usize)>,
    /// The directory's own entries (its files) are known to be on disk:
    /// it was fsynced since they were created.
    entries_durable: bool,
    /// The directory itself is known to be on disk under one of the names
    /// recovery looks at (`<spool>/*`, `<spool>/.recycled/*`): its parent
    /// was fsynced after it was created, and since then it was only renamed
    /// between those two directories.
    placed: bool,
    /// The result `meta` holds is known to be on disk.
    result_synced: bool,
}

impl MetaFile {
    /// `meta.json` open for writing in place, with its length: the handle
    /// kept from the last write, or the file in `dir` opened (created if
    /// missing). Put it back in `file` after writing.
    fn take_file(&mut self, dir: &Path) -> io::Result<(File, usize)> {
        if let Some(open) = self.file.take() {
            return Ok(open);
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(META_FILE))?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        Ok((file, len))
    }
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

    /// Changes the metadata without fsync: the change outlives the agent
    /// process, not the machine. Written in place while there is no result
    /// (see the module documentation), else replaced atomically.
    pub fn update_meta_cached(&self, change: impl FnOnce(&mut Meta)) -> io::Result<()> {
        let mut current = self.lock_meta();
        let mut next = current.meta.clone();
        change(&mut next);
        self.write_meta(&mut current, next)
    }

    /// Writes `next` as the metadata, without fsync. While `meta.json`
    /// holds no result it is written in place: up to a page when `next`
    /// has no result either (a write torn by the machine's loss loses
    /// nothing that was offered), within one sector when it has one (a
    /// disk writes a sector whole, so a result is never torn). Otherwise it
    /// goes into the spare file, which then swaps names with `meta.json`.
    fn write_meta(&self, current: &mut MetaFile, next: Meta) -> io::Result<()> {
        let json = serde_json::to_vec(&next).map_err(io::Error::other)?;
        let limit = if next.result.is_some() {
            SECTOR
        } else {
            IN_PLACE_MAX
        };
        current.result_synced = false;
        if current.meta.result.is_none() {
            let (file, known) = current.take_file(&self.dir)?;
            if json.len().max(known) <= limit {
                let len = write_padded(&file, &json, known)?;
                current.meta = next;
                current.file = Some((file, len));
                return Ok(());
            }
            current.file = Some((file, known));
        }
        let tmp = self.dir.join(META_TMP);
        let (spare, known) = match current.spare.take() {
            Some(spare) => spare,
            None => (File::create(&tmp)?, 0),
        };
        let len = write_padded(&spare, &json, known)?;
        let exchanged = swap_into_place(&tmp, &self.dir.join(META_FILE))?;
        // Which file `meta.json` names is on disk only once the
        // directory is fsynced again.
        current.entries_durable = false;
        let old = current.file.replace((spare, len));
        current.spare = old.filter(|_| exchanged);
        current.meta = next;
        Ok(())
    }

    /// fsyncs `meta.json` as last written, then the attempt's directory
    /// unless its entries are known to be on disk, then the spool
    /// directory unless the attempt's directory is known to be placed.
    fn sync_meta(&self, current: &mut MetaFile) -> io::Result<()> {
        if let Some((file, _)) = &current.file {
            file.sync_data()?;
        }
        if !current.entries_durable {
            sync_dir(&self.dir)?;
            current.entries_durable = true;
        }
        if !current.placed {
            if let Some(root) = self.dir.parent() {
                sync_dir(root)?;
            }
            current.placed = true;
        }
        current.result_synced = current.meta.result.is_some();
        Ok(())
    }

    /// Records the attempt's end: writes `change` (the result) into
    /// `meta.json` without fsync. It then outlives the agent process; the
    /// machine's loss only once [`AttemptFiles::sync_result`] made it
    /// durable.
    pub fn record_result(&self, change: impl FnOnce(&mut Meta)) -> io::Result<()> {
        self.update_meta_cached(change)
    }

    /// Makes the recorded result durable: fsyncs the log files named in
    /// `unacked` (those holding bytes the orchestrator has not
    /// acknowledged), then `meta.json` and the directories as needed (see
    /// `sync_meta`). Returns false, doing nothing, when `meta.json` holds
    /// no result (it was acknowledged and cleared meanwhile).
    pub fn sync_result(&self, unacked: [bool; 2]) -> io::Result<bool> {
        if !self.has_result() {
            return Ok(false);
        }
        for (file, dirty) in self.streams.iter().zip(unacked) {
            if dirty {
                file.sync_data()?;
            }
        }
        let mut current = self.lock_meta();
        if current.meta.result.is_none() {
            return Ok(false);
        }
        if !current.result_synced {
            self.sync_meta(&mut current)?;
        }
        Ok(true)
    }

    /// Whether the result in `meta.json` is known to be on disk.
    pub fn result_synced(&self) -> bool {
        self.lock_meta().result_synced
    }

    /// Records the attempt's end and makes it durable at once:
    /// [`AttemptFiles::record_result`], then [`AttemptFiles::sync_result`].
    pub fn make_result_durable(
        &self,
        unacked: [bool; 2],
        change: impl FnOnce(&mut Meta),
    ) -> io::Result<()> {
        self.record_result(change)?;
        self.sync_result(unacked).map(|_| ())
    }

    /// Records the job's process in `meta.json` without fsync (see
    /// [`AttemptFiles::update_meta_cached`]), unless the attempt already
    /// has a result: its process is gone then, and a durable result is
    /// never rewritten without fsync.
    pub fn record_process(&self, process: ProcessRecord) -> io::Result<()> {
        let mut current = self.lock_meta();
        if current.meta.result.is_some() {
            return Ok(());
        }
        let mut next = current.meta.clone();
        next.process = Some(process);
        self.write_meta(&mut current, next)
    }

    /// Rewrites `meta.json` without its result, in place and without fsync:
    /// the entry is being retired (its result was acknowledged), so that a
    /// restarted agent finding it in the pool does not offer the result
    /// again. A write the machine's loss tears or undoes leaves an
    /// unreadable entry (deleted) or the old result (offered again, which
    /// the orchestrator acknowledges without recording it twice).
    pub fn clear_result(&self) -> io::Result<()> {
        let mut current = self.lock_meta();
        if current.meta.result.is_none() {
            return Ok(());
        }
        let mut next = current.meta.clone();
        next.result = None;
        let json = serde_json::to_vec(&next).map_err(io::Error::other)?;
        let (file, known) = current.take_file(&self.dir)?;
        let len = write_padded(&file, &json, known)?;
        current.meta = next;
        current.file = Some((file, len));
        current.result_synced = false;
        Ok(())
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

/// Writes `json` at offset 0, padded with spaces (trailing whitespace is
/// valid JSON) to `known`, the file's length, so nothing older is left
/// after it. Returns the file's length.
fn write_padded(file: &File, json: &[u8], known: usize) -> io::Result<usize> {
    if json.len() >= known {
        file.write_all_at(json, 0)?;
        return Ok(json.len());
    }
    let mut padded = Vec::with_capacity(known);
    padded.extend_from_slice(json);
    padded.resize(known, b' ');
    file.write_all_at(&padded, 0)?;
    Ok(known)
}

/// Moves `tmp` to `path` atomically. Where the file system can, the two
/// names are exchanged (`renameat2(RENAME_EXCHANGE)`): the old file stays
/// as `tmp`, to be overwritten next time, so no inode is freed or
/// allocated. Elsewhere, a plain rename. Returns whether they were
/// exchanged.
fn swap_into_place(tmp: &Path, path: &Path) -> io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        if renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE).is_ok() {
            return Ok(true);
        }
    }
    fs::rename(tmp, path).map(|()| false)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> ResultRecord {
        ResultRecord {
            outcome: 1,
            exit_code: 0,
            signal: 0,
            message: String::new(),
            stdout: Totals {
                bytes: 3,
                crc32c: crc32c::crc32c(b"hi\n"),
            },
            stderr: Totals::default(),
        }
    }

    #[test]
    fn a_cached_entry_reads_back_and_the_durable_result_replaces_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let files = AttemptFiles::create(root.path(), Meta::new("j/1", 2, [0, 0])).expect("create");
        // Written without fsync, still complete and valid for a reader.
        assert_eq!(read_meta(files.dir()).expect("meta").result, None);
        files.write_at(0, 0, b"hi\n").expect("write");
        files
            .update_meta_cached(|m| m.acked = [1, 0])
            .expect("cached update");
        assert_eq!(read_meta(files.dir()).expect("meta").acked, [1, 0]);
        files
            .make_result_durable([true, false], |m| m.result = Some(result()))
            .expect("durable result");
        let meta = read_meta(files.dir()).expect("meta");
        assert_eq!(meta.result, Some(result()));
        assert_eq!(meta.acked, [1, 0]);
        assert_eq!(files.read_at(0, 0, 3).expect("log"), b"hi\n");
        // It fit in a sector: written in place, no spare file.
        assert!(fs::read(files.dir().join(META_FILE)).expect("meta").len() <= SECTOR);
        assert!(!files.dir().join(META_TMP).exists());
    }

    #[test]
    fn a_result_larger_than_a_sector_is_exchanged_into_place() {
        let root = tempfile::tempdir().expect("tempdir");
        let files = AttemptFiles::create(root.path(), Meta::new("j", 1, [0, 0])).expect("create");
        let mut long = result();
        long.message = "spawn failed: ".repeat(40);
        files
            .make_result_durable([false, false], |m| m.result = Some(long.clone()))
            .expect("durable result");
        assert_eq!(read_meta(files.dir()).expect("meta").result, Some(long));
        // The previous version is kept (exchanged, not deleted), and ignored.
        let before: Meta =
            serde_json::from_slice(&fs::read(files.dir().join(META_TMP)).expect("tmp"))
                .expect("the previous meta.json");
        assert_eq!(before.result, None);
    }
}
