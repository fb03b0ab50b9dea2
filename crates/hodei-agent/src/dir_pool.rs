//! A pool of emptied directories kept for reuse, in `<parent>/.recycled/`:
//! the spool's attempt directories ([`crate::spool::Recycler`]) and the
//! per-job working directories ([`crate::workdir`]) both use one. Creating
//! and deleting a directory per job made ext4's inode allocator a large part
//! of the agent's time; renaming one in and out of a pool costs no inode.
//!
//! Blocking file I/O: call from `spawn_blocking`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The pool's name in its parent directory. Not a name Hodei gives a job's
/// directory: those end with `@<attempt>` or `-<attempt>`.
pub const RECYCLED_DIR: &str = ".recycled";

/// Emptied directories (`T` says what is kept of each) in one pool.
#[derive(Debug)]
pub struct DirPool<T> {
    dir: PathBuf,
    free: Mutex<Vec<T>>,
    next: AtomicU64,
    max: usize,
}

impl<T> DirPool<T> {
    /// An empty pool of at most `max` entries in `<parent>/.recycled`,
    /// deleting what an earlier agent left there.
    pub fn open(parent: &Path, max: usize) -> io::Result<DirPool<T>> {
        let dir = parent.join(RECYCLED_DIR);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(&dir)?;
        Ok(DirPool {
            dir,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no more entries are kept.
    pub fn is_full(&self) -> bool {
        self.lock().len() >= self.max
    }

    /// A new path in the pool to move an emptied directory to.
    pub fn slot(&self) -> PathBuf {
        self.dir
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string())
    }

    /// Keeps an entry moved into the pool.
    pub fn put(&self, entry: T) {
        self.lock().push(entry);
    }

    /// An entry to reuse, if any.
    pub fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes the pool (the agent is leaving).
    pub fn clear(&self) -> io::Result<()> {
        self.lock().clear();
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_pool_is_deleted_at_open_and_the_pool_at_clear() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join(RECYCLED_DIR).join("7")).expect("leftover");
        let pool: DirPool<PathBuf> = DirPool::open(root.path(), 1).expect("pool");
        assert!(pool.take().is_none());
        assert_eq!(
            fs::read_dir(root.path().join(RECYCLED_DIR))
                .expect("dir")
                .count(),
            0
        );
        let (a, b) = (pool.slot(), pool.slot());
        assert_ne!(a, b, "every slot is new");
        pool.put(a.clone());
        assert!(pool.is_full());
        assert_eq!(pool.take(), Some(a));
        pool.clear().expect("clear");
        assert!(!root.path().join(RECYCLED_DIR).exists());
    }
}
