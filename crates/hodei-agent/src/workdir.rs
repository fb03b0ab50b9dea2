//! Per-job working directories: `<work dir>/<job id>-<attempt>`, made empty
//! for the job and deleted after it.
//!
//! Creating and deleting a directory per job is a large part of what ext4
//! costs a short job (the inode allocator searches past recently freed
//! inodes). A directory the job left exactly as it got it (empty, with the
//! same permissions and owner) is therefore moved to `<work
//! dir>/.recycled/<n>` instead, and the next job's directory is renamed
//! from there. Anything else is deleted as before. Jobs run as the agent's
//! user, so a recycled directory gives a job nothing it could not reach
//! anyway; what the checks do not see (extended attributes, timestamps)
//! may pass from one job to the next.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::dir_pool::DirPool;

/// At most this many empty directories are kept.
const MAX_RECYCLED: usize = 64;

/// Creates, recycles and deletes per-job directories. Blocking file I/O:
/// call from `spawn_blocking`.
#[derive(Debug)]
pub struct WorkDirs {
    root: PathBuf,
    pool: DirPool<PathBuf>,
    /// Mode and owner of a freshly made directory, learnt at the first one.
    fresh: Mutex<Option<(u32, u32, u32)>>,
}

impl WorkDirs {
    /// An empty pool in `<root>/.recycled`, deleting what an earlier agent
    /// left there.
    pub fn open(root: &Path) -> io::Result<WorkDirs> {
        Ok(WorkDirs {
            root: root.to_path_buf(),
            pool: DirPool::open(root, MAX_RECYCLED)?,
            fresh: Mutex::new(None),
        })
    }

    /// The per-job directory of an attempt: `<work dir>/<job id>-<attempt>`.
    pub fn job_dir(&self, job_id: &str, attempt: u32) -> PathBuf {
        self.root.join(format!("{job_id}-{attempt}"))
    }

    /// Makes `dir` an empty directory for a job (replacing nothing: it must
    /// not exist yet, or be a directory already).
    pub fn make(&self, dir: &Path) -> io::Result<()> {
        if let Some(recycled) = self.pool.take() {
            if fs::rename(&recycled, dir).is_ok() {
                return Ok(());
            }
            let _ = fs::remove_dir_all(&recycled);
        }
        fs::create_dir_all(dir)?;
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        if fresh.is_none() {
            *fresh = Some(signature(&fs::symlink_metadata(dir)?));
        }
        Ok(())
    }

    /// The job is over: keeps `dir` for another job if it is as the job got
    /// it, else deletes it.
    pub fn release(&self, dir: &Path) -> io::Result<()> {
        if !self.pool.is_full() && self.reusable(dir) {
            let to = self.pool.slot();
            if fs::rename(dir, &to).is_ok() {
                self.pool.put(to);
                return Ok(());
            }
        }
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn reusable(&self, dir: &Path) -> bool {
        let fresh = *self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(meta) = fs::symlink_metadata(dir) else {
            return false;
        };
        meta.is_dir()
            && fresh == Some(signature(&meta))
            && fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
    }

    /// Deletes the pool (the agent is leaving).
    pub fn clear(&self) -> io::Result<()> {
        self.pool.clear()
    }
}

/// Permission bits and owner.
fn signature(meta: &Metadata) -> (u32, u32, u32) {
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_directory_left_as_it_was_given_is_reused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = WorkDirs::open(root.path()).expect("open");
        let a = root.path().join("a-1");
        dirs.make(&a).expect("make");
        dirs.release(&a).expect("release");
        assert!(!a.exists());
        assert_eq!(dirs.pool.len(), 1, "kept");

        // Reused for the next job, which leaves a file: deleted.
        let b = root.path().join("b-1");
        dirs.make(&b).expect("make");
        assert!(dirs.pool.is_empty(), "taken from the pool");
        assert_eq!(fs::read_dir(&b).expect("b").count(), 0);
        fs::write(b.join("left"), b"x").expect("write");
        dirs.release(&b).expect("release");
        assert!(!b.exists());
        assert!(dirs.pool.is_empty(), "not kept");

        // A job that changed its directory's permissions: deleted.
        let c = root.path().join("c-1");
        dirs.make(&c).expect("make");
        fs::set_permissions(&c, fs::Permissions::from_mode(0o705)).expect("chmod");
        dirs.release(&c).expect("release");
        assert!(!c.exists());
        assert!(dirs.pool.is_empty(), "not kept");

        dirs.clear().expect("clear");
        assert!(!root.path().join(crate::dir_pool::RECYCLED_DIR).exists());
    }
}
