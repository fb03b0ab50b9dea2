//! Remembered `PATH` lookups, as a shell's `hash` table remembers them.
//!
//! Finding a program in `PATH` ([`crate::spawn::resolve`]) tries each
//! directory in turn: with a `PATH` of nine directories and the program in
//! the last, that is nine `stat` calls per job, about 2 % of a busy agent's
//! time. A found program is remembered per (program, `PATH`) and reused
//! while it is fresh ([`FRESH_FOR`]), once checked: it must still be an
//! executable regular file, else it is looked up again. A program installed
//! meanwhile in an earlier `PATH` directory is found when the remembered
//! lookup goes stale, at most [`FRESH_FOR`] later (a shell's `hash` never
//! looks again until `hash -r`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::spawn;

/// How long a lookup is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Lookups remembered at most; past it the table starts over.
const MAX_ENTRIES: usize = 256;

/// (program, `PATH`) → where it was found, and when.
#[derive(Debug, Default)]
pub struct PathCache {
    found: Mutex<HashMap<(String, OsString), (PathBuf, Instant)>>,
}

impl PathCache {
    /// [`spawn::resolve`], reusing a fresh earlier answer that still names
    /// an executable regular file.
    pub fn resolve(&self, program: &str, path: Option<&OsStr>) -> io::Result<PathBuf> {
        if program.contains('/') || program.is_empty() {
            return spawn::resolve(program, path);
        }
        let key = (program.to_string(), path.unwrap_or_default().to_os_string());
        let now = Instant::now();
        let remembered = self
            .table()
            .get(&key)
            .filter(|(_, at)| now.duration_since(*at) < FRESH_FOR)
            .map(|(found, _)| found.clone());
        if let Some(found) = remembered
            && spawn::executable(&found) == Some(true)
        {
            return Ok(found);
        }
        let found = spawn::resolve(program, path)?;
        // A relative answer (an empty or relative `PATH` entry) depends on
        // the working directory: not remembered.
        if found.is_absolute() {
            let mut table = self.table();
            if table.len() >= MAX_ENTRIES {
                table.clear();
            }
            table.insert(key, (found.clone(), now));
        }
        Ok(found)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(String, OsString), (PathBuf, Instant)>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.found.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn tool(dir: &Path, name: &str) -> PathBuf {
        let file = dir.join(name);
        std::fs::write(&file, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        file
    }

    /// Two directories in `PATH`, each with an executable `tool`.
    struct Twice {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        path: OsString,
        in_a: PathBuf,
        in_b: PathBuf,
    }

    fn in_two_dirs() -> Twice {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        Twice {
            path: std::env::join_paths([a.path(), b.path()]).expect("PATH"),
            in_a: tool(a.path(), "tool"),
            in_b: tool(b.path(), "tool"),
            _dirs: (a, b),
        }
    }

    #[test]
    fn a_remembered_program_that_is_gone_is_looked_up_again() {
        let t = in_two_dirs();
        let cache = PathCache::default();
        assert_eq!(cache.resolve("tool", Some(&t.path)).expect("found"), t.in_a);
        std::fs::remove_file(&t.in_a).expect("rm");
        assert_eq!(cache.resolve("tool", Some(&t.path)).expect("found"), t.in_b);
        std::fs::remove_file(&t.in_b).expect("rm");
        assert_eq!(
            cache.resolve("tool", Some(&t.path)).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_remembered_program_that_lost_its_execute_bit_is_looked_up_again() {
        let t = in_two_dirs();
        let cache = PathCache::default();
        assert_eq!(cache.resolve("tool", Some(&t.path)).expect("found"), t.in_a);
        let not_executable = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&t.in_a, not_executable).expect("chmod");
        assert_eq!(cache.resolve("tool", Some(&t.path)).expect("found"), t.in_b);
    }

    #[test]
    fn lookups_are_remembered_per_path_and_go_stale() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let only_b = b.path().as_os_str().to_os_string();
        let both = std::env::join_paths([a.path(), b.path()]).expect("PATH");
        let in_b = tool(b.path(), "tool");
        let cache = PathCache::default();
        assert_eq!(cache.resolve("tool", Some(&both)).expect("found"), in_b);
        // Installed meanwhile in an earlier directory: the fresh answer
        // stands, another PATH is looked up on its own.
        let in_a = tool(a.path(), "tool");
        assert_eq!(cache.resolve("tool", Some(&both)).expect("found"), in_b);
        assert_eq!(cache.resolve("tool", Some(&only_b)).expect("found"), in_b);
        // Once stale, it is looked up again.
        {
            let mut table = cache.table();
            for (_, at) in table.values_mut() {
                *at = at.checked_sub(FRESH_FOR).unwrap_or(*at);
            }
        }
        assert_eq!(cache.resolve("tool", Some(&both)).expect("found"), in_a);
    }

    #[test]
    fn names_with_a_slash_and_relative_answers_are_not_remembered() {
        let cache = PathCache::default();
        assert_eq!(
            cache.resolve("./x/y", None).expect("as is"),
            PathBuf::from("./x/y")
        );
        let dir = tempfile::tempdir().expect("dir");
        tool(dir.path(), "tool");
        let relative = OsString::from("");
        // An empty PATH entry is the working directory: relative answers
        // (here: not found from the test's directory) are never stored.
        let _ = cache.resolve("tool", Some(&relative));
        assert!(cache.table().is_empty());
    }
}
