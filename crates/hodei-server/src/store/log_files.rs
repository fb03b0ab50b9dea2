//! Large log chunks of the SQLite store, kept in files beside the database.
//!
//! SQLite is a poor place for megabytes of output: a 1 MiB chunk is 256
//! overflow pages written to the WAL, then copied into the database file by
//! a checkpoint, and read back page by page; in the logs benchmark SQLite
//! was over half of the server's time. A chunk of at least
//! [`FILE_MIN_BYTES`] is therefore written into
//! `<data dir>/logs/<job id>@<attempt>.<stdout|stderr>`, at its stream
//! offset (file offset == stream offset, so the file is sparse where the
//! stream's small chunks live in the database), and its row in
//! `log_chunks` keeps an empty `data` with the real `end_offset`. Small
//! chunks (a job's few lines) stay rows with their bytes, so a short job
//! makes no file; but once a stream has a file open here, its small chunks
//! go there too ([`LogFiles::placement`]): a job printing megabytes also
//! arrives in pieces of a few KiB whenever the agent is ahead of it, and
//! those would otherwise be written twice (WAL, then checkpoint).
//!
//! Order makes it durable: the bytes are written and fdatasynced (and the
//! directory fsynced when a file was created) before the transaction that
//! inserts their rows commits, so a committed row never points at bytes
//! that are not on disk. After a crash between the two, the file holds bytes
//! no row names; they are ignored, and written again at the same offsets
//! when the agent resends them. Bytes at an offset never change.
//!
//! The job id is written into the file name with every byte other than
//! `[A-Za-z0-9._-]` as `%XX`.
//!
//! Blocking file I/O: call from `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hodei_core::LogStream;
use hodei_core::engine::LogWrite;

use super::StoreError;

/// Chunks of at least this many bytes go to files.
pub const FILE_MIN_BYTES: usize = 64 * 1024;
/// The directory's name in the data directory.
pub const LOGS_DIR: &str = "logs";
/// Open files kept; past this the cache starts over.
const MAX_OPEN: usize = 64;

type Key = (String, u32, LogStream);

/// The log files of one data directory.
#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    open: Mutex<HashMap<Key, Arc<File>>>,
}

impl LogFiles {
    /// Uses (creating it durably) `<data_dir>/logs`.
    pub fn open(data_dir: &Path) -> Result<LogFiles, StoreError> {
        let dir = data_dir.join(LOGS_DIR);
        let made = (|| {
            if !dir.is_dir() {
                fs::create_dir_all(&dir)?;
                File::open(data_dir)?.sync_all()?;
            }
            Ok(())
        })();
        made.map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(LogFiles {
            dir,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, job_id: &str, attempt: u32, stream: LogStream) -> PathBuf {
        let name = hodei_core::log::file_name_of(job_id);
        self.dir
            .join(format!("{name}@{attempt}.{}", stream.as_str()))
    }

    /// The stream's file, opened (created when `create`); with whether it
    /// was created now.
    fn file(&self, key: &Key, create: bool) -> io::Result<(Arc<File>, bool)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(key) {
            return Ok((f.clone(), false));
        }
        let path = self.path(&key.0, key.1, key.2);
        let (file, created) = if create {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => (f, true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
                    OpenOptions::new().read(true).write(true).open(&path)?,
                    false,
                ),
                Err(e) => return Err(e),
            }
        } else {
            // Read-write even for a read: the handle is cached, and the
            // next write to the stream (a job still running) takes it.
            (
                OpenOptions::new().read(true).write(true).open(&path)?,
                false,
            )
        };
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        let file = Arc::new(file);
        open.insert(key.clone(), file.clone());
        Ok((file, created))
    }

    /// Where each chunk's bytes go: `true` for its stream's file (a chunk
    /// of at least [`FILE_MIN_BYTES`], or any chunk of a stream whose file
    /// is open here), `false` for its row. After the cache was cleared or a
    /// restart, small chunks are rows again until the next large one: each
    /// row says where its bytes are. One lock for the whole batch.
    pub fn placement(&self, logs: &[LogWrite]) -> Vec<bool> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        logs.iter()
            .map(|l| {
                // The key is built (a job id copied) only for a small
                // chunk while some file is open.
                l.data.len() >= FILE_MIN_BYTES
                    || (!open.is_empty()
                        && open.contains_key(&(l.job_id.clone(), l.attempt, l.stream)))
            })
            .collect()
    }

    /// Writes `logs` into their files and makes them durable.
    pub fn write(&self, logs: &[LogWrite]) -> Result<(), StoreError> {
        let mut touched: Vec<Arc<File>> = Vec::new();
        let mut created = false;
        for log in logs {
            let key = (log.job_id.clone(), log.attempt, log.stream);
            let (file, new) = self.file(&key, true).map_err(|e| self.error(&key, e))?;
            created |= new;
            file.write_all_at(&log.data, log.offset)
                .map_err(|e| self.error(&key, e))?;
            if !touched.iter().any(|t| Arc::ptr_eq(t, &file)) {
                touched.push(file);
            }
        }
        for file in touched {
            file.sync_data().map_err(|e| self.dir_error(e))?;
        }
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.dir_error(e))?;
        }
        Ok(())
    }

    /// Reads bytes `[from, to)` of a stream's file.
    pub fn read(
        &self,
        job_id: &str,
        attempt: u32,
        stream: LogStream,
        from: u64,
        to: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let key = (job_id.to_string(), attempt, stream);
        let corrupt = |message: String| StoreError::Corrupt {
            job_id: job_id.to_string(),
            message,
        };
        let len = usize::try_from(to.saturating_sub(from))
            .map_err(|_| corrupt(format!("log range {from}..{to} too large")))?;
        let (file, _) = self.file(&key, false).map_err(|e| {
            corrupt(format!(
                "log file {}: {e}",
                self.path(job_id, attempt, stream).display()
            ))
        })?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, from).map_err(|e| {
            corrupt(format!(
                "log file {} at {from}..{to}: {e}",
                self.path(job_id, attempt, stream).display()
            ))
        })?;
        Ok(buf)
    }

    fn error(&self, key: &Key, source: io::Error) -> StoreError {
        StoreError::DataDir {
            path: self.path(&key.0, key.1, key.2).display().to_string(),
            source,
        }
    }

    fn dir_error(&self, source: io::Error) -> StoreError {
        StoreError::DataDir {
            path: self.dir.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn chunks_are_read_back_at_their_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::open(dir.path()).expect("open");
        let chunk = |offset: u64, data: &'static [u8]| LogWrite {
            job_id: "a/b c".into(),
            attempt: 2,
            stream: LogStream::Stderr,
            offset,
            data: Bytes::from_static(data),
            timestamp_ms: 0,
        };
        let (first, second) = (chunk(10, b"hello "), chunk(16, b"world"));
        let small = |attempt: u32, stream: LogStream| LogWrite {
            attempt,
            stream,
            ..chunk(0, b"x")
        };
        let big = LogWrite {
            data: Bytes::from(vec![b'y'; FILE_MIN_BYTES]),
            ..small(9, LogStream::Stdout)
        };
        let probe = [small(2, LogStream::Stderr), big.clone()];
        assert_eq!(files.placement(&probe), [false, true]);
        files.write(&[first, second]).expect("write");
        // The stream's later chunks, however small, follow it to its file;
        // other streams' and attempts' small chunks stay rows.
        let probe = [
            small(2, LogStream::Stderr),
            small(2, LogStream::Stdout),
            small(1, LogStream::Stderr),
            big,
        ];
        assert_eq!(files.placement(&probe), [true, false, false, true]);
        assert_eq!(
            files
                .read("a/b c", 2, LogStream::Stderr, 13, 21)
                .expect("read"),
            b"lo world"
        );
        let name = dir.path().join(LOGS_DIR).join("a%2Fb%20c@2.stderr");
        assert!(name.is_file(), "{name:?}");
        // Another handle (a restarted server) reads the same, then takes
        // the stream's next bytes through the handle its read opened.
        let again = LogFiles::open(dir.path()).expect("reopen");
        assert_eq!(
            again
                .read("a/b c", 2, LogStream::Stderr, 10, 16)
                .expect("read"),
            b"hello "
        );
        again.write(&[chunk(21, b"!")]).expect("write after a read");
        assert_eq!(
            again
                .read("a/b c", 2, LogStream::Stderr, 16, 22)
                .expect("read"),
            b"world!"
        );
        assert!(matches!(
            again.read("a/b c", 2, LogStream::Stdout, 0, 1),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
