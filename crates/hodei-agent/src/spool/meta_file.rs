//! `meta.json`: written in place or exchanged into place, fsynced when a
//! result has to be durable (see "What is fsynced, and when" in
//! [`crate::spool`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    AttemptFiles, IN_PLACE_MAX, META_FILE, META_TMP, Meta, ProcessRecord, SECTOR, sync_dir,
};

/// `meta.json`: what it holds, the open file with its length (for writes
/// in place), and `meta.json.tmp` (the previous version) likewise.
#[derive(Debug)]
pub(super) struct MetaFile {
    pub(super) meta: Meta,
    pub(super) file: Option<(File, usize)>,
    pub(super) spare: Option<(File, usize)>,
    /// The directory's own entries (its files) are known to be on disk:
    /// it was fsynced since they were created.
    pub(super) entries_durable: bool,
    /// The directory itself is known to be on disk under one of the names
    /// recovery looks at (`<spool>/*`, `<spool>/.recycled/*`): its parent
    /// was fsynced after it was created, and since then it was only renamed
    /// between those two directories.
    pub(super) placed: bool,
    /// The result `meta` holds is known to be on disk.
    pub(super) result_synced: bool,
}

impl MetaFile {
    /// `meta.json` open for writing in place, with its length: the handle
    /// kept from the last write, or the file in `dir` opened (created if
    /// missing). Put it back in `file` after writing.
    pub(super) fn take_file(&mut self, dir: &Path) -> io::Result<(File, usize)> {
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
    /// has a result: its process is gone then, and a recorded result is
    /// never rewritten.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{ResultRecord, Totals, read_meta};

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
