//! Reusing acknowledged attempts' directories, so that a job costs the file
//! system renames and truncations instead of a directory and three files
//! created and deleted (see "Recycling" in [`crate::spool`]).
//!
//! An entry is recycled only after the orchestrator acknowledged its result:
//! nothing in it is owed any more. Its result is cleared from `meta.json`
//! and its stream files are truncated first, then the directory is renamed
//! to `<spool>/.recycled/<n>`, with none of it fsynced: if the machine goes
//! down before that reaches the disk, the old entry comes back at start, and
//! its result is offered again (the orchestrator records a result once) or,
//! with its log gone, it is discarded as corrupt.
//!
//! Every function here does blocking file I/O: call them from
//! `spawn_blocking`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::AttemptFiles;
use crate::dir_pool::DirPool;

pub use crate::dir_pool::RECYCLED_DIR;

/// At most this many emptied directories are kept; more are deleted.
const MAX_RECYCLED: usize = 64;

/// An emptied attempt directory, with its files still open.
#[derive(Debug)]
pub struct Recycled {
    pub(super) dir: PathBuf,
    pub(super) streams: [File; 2],
    /// `meta.json` (the last attempt's) and `meta.json.tmp`, where they
    /// were open, with their lengths.
    pub(super) meta: Option<(File, usize)>,
    pub(super) spare: Option<(File, usize)>,
    /// Its files' entries are on disk (see `spool::MetaFile`).
    pub(super) entries_durable: bool,
    /// It is on disk in the spool or the pool (see `spool::MetaFile`).
    pub(super) placed: bool,
}

/// The pool of emptied attempt directories.
#[derive(Debug)]
pub struct Recycler {
    pool: DirPool<Recycled>,
}

impl Recycler {
    /// An empty pool in `<spool>/.recycled`, deleting what an earlier agent
    /// left there.
    pub fn open(spool: &Path) -> io::Result<Recycler> {
        Ok(Recycler {
            pool: DirPool::open(spool, MAX_RECYCLED)?,
        })
    }

    /// An emptied directory to create the next attempt from, if any.
    pub fn take(&self) -> Option<Recycled> {
        self.pool.take()
    }

    /// Empties an acknowledged attempt's directory and keeps it for reuse;
    /// deletes it when the pool is full or it cannot be emptied.
    pub fn retire(&self, files: AttemptFiles) -> io::Result<()> {
        if self.pool.is_full() {
            return files.remove();
        }
        let to = match self.empty(&files) {
            Ok(to) => to,
            Err(e) => {
                tracing::debug!(dir = %files.dir.display(), error = %e, "cannot recycle a spool entry");
                return files.remove();
            }
        };
        let AttemptFiles { streams, meta, .. } = files;
        let meta = meta.into_inner().unwrap_or_else(|p| p.into_inner());
        self.pool.put(Recycled {
            dir: to,
            streams,
            meta: meta.file,
            spare: meta.spare,
            entries_durable: meta.entries_durable,
            placed: meta.placed,
        });
        Ok(())
    }

    /// Truncates the stream files and moves the directory into the pool;
    /// returns its new path.
    fn empty(&self, files: &AttemptFiles) -> io::Result<PathBuf> {
        files.clear_result()?;
        for f in &files.streams {
            if f.metadata()?.len() > 0 {
                f.set_len(0)?;
            }
        }
        let to = self.pool.slot();
        fs::rename(&files.dir, &to)?;
        Ok(to)
    }

    /// Deletes the pool (the agent is leaving).
    pub fn clear(&self) -> io::Result<()> {
        self.pool.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{META_FILE, Meta, ResultRecord, Totals, read_meta};

    fn result(stdout: &[u8]) -> ResultRecord {
        ResultRecord {
            outcome: 1,
            exit_code: 0,
            signal: 0,
            message: "a message long enough to make meta.json longer".into(),
            stdout: Totals {
                bytes: stdout.len() as u64,
                crc32c: crc32c::crc32c(stdout),
            },
            stderr: Totals::default(),
        }
    }

    #[test]
    fn a_recycled_directory_becomes_a_fresh_attempt() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = Recycler::open(root.path()).expect("pool");
        let first =
            AttemptFiles::create(root.path(), Meta::new("first-job", 1, [0, 0])).expect("create");
        first.write_at(0, 0, b"0123456789").expect("write");
        first
            .make_result_durable([true, false], |m| m.result = Some(result(b"0123456789")))
            .expect("result");
        let first_dir = first.dir().to_path_buf();
        pool.retire(first).expect("retire");
        assert!(!first_dir.exists(), "moved out of the spool");

        let reused = pool.take().expect("one in the pool");
        assert!(pool.take().is_none());
        // A shorter id, and a base offset: the stream starts past zero.
        let second =
            AttemptFiles::create_from(root.path(), Meta::new("j2", 3, [5, 0]), Some(reused))
                .expect("create from recycled");
        assert_eq!(second.dir(), root.path().join("j2@3"));
        assert_eq!(second.len(0).expect("len"), 0, "stdout emptied");
        let meta = read_meta(second.dir()).expect("a valid meta.json in place");
        assert_eq!(
            (meta.job_id.as_str(), meta.attempt, meta.result),
            ("j2", 3, None)
        );
        second.write_at(0, 5, b"hi").expect("write");
        second
            .update_meta_cached(|m| m.acked = [6, 0])
            .expect("in place");
        assert_eq!(read_meta(second.dir()).expect("meta").acked, [6, 0]);
        assert_eq!(second.read_at(0, 5, 2).expect("read"), b"hi");
        let names: Vec<_> = fs::read_dir(second.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        assert_eq!(names.len(), 3, "stdout, stderr, meta.json: {names:?}");
        assert!(second.dir().join(META_FILE).exists());
        // Its result is written in place over the first attempt's longer
        // meta.json, padded.
        let mut short = result(b"hi");
        short.message.clear();
        short.stdout.bytes = 7; // from the base offset 5
        second
            .make_result_durable([true, false], |m| m.result = Some(short.clone()))
            .expect("second result");
        let meta = read_meta(second.dir()).expect("meta with the result");
        assert_eq!((meta.result, meta.acked), (Some(short), [6, 0]));

        pool.clear().expect("clear");
        assert!(!root.path().join(RECYCLED_DIR).exists());
    }
}
