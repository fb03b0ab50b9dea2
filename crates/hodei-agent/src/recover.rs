//! Opening the spool when the agent starts, and what happens to the attempts
//! a previous agent left in it.
//!
//! - **An attempt with a result** in its `meta.json` had ended, and its
//!   log (every byte the orchestrator had not acknowledged) was written
//!   before the result was (both fsynced, unless the orchestrator was
//!   about to acknowledge them: see "What is fsynced, and when" in
//!   [`crate::spool`]; an entry whose log files fall short of the result's
//!   totals is discarded, below). It is offered
//!   again: listed in `Hello.running`, its unacknowledged log (from the
//!   acknowledged offset in `meta.json`, skipping holes punched since) and
//!   its result are sent after `Welcome`, and the directory is deleted on
//!   `ResultAck`, exactly as if the agent had only lost its connection.
//! - **An attempt without a result** belonged to a process that was running
//!   when the previous agent died. Its leader got SIGKILL then (the executor
//!   sets `PR_SET_PDEATHSIG`), but other members of its process group may
//!   still run: the recorded group is SIGKILLed, after checking that it is
//!   really the one the agent started (see [`kill_recorded_group`]). The
//!   attempt is then forgotten: it is *not* listed in `Hello` and its
//!   directory (with its unsent log) is deleted. HWP has no "lost" outcome;
//!   the orchestrator, not finding the attempt in `Hello`, declares it lost
//!   or queues it again per its retry budget.
//! - **An entry under another name** than its attempt's, or **in the pool
//!   of emptied entries with a result**, is a recycled directory whose
//!   rename into place the machine's loss undid (see "What is fsynced, and
//!   when" in [`crate::spool`]): it is moved to its attempt's name first,
//!   then treated as above. `meta.json` says which attempt it holds.
//! - **A corrupt entry** (unreadable or invalid `meta.json`, log files
//!   shorter than the recorded result) is logged and deleted; so is an
//!   older attempt of a job that has a newer one in the spool.
//!
//! - **Containers** (jobs with an image) are not process groups of the
//!   agent and are not recorded here: at start, once the spool is locked,
//!   the agent kills and removes every container labelled with its name
//!   ([`crate::docker::remove_leftovers`]); their attempts are abandoned
//!   like the others (not listed in `Hello`).
//!
//! Two agents must never share a spool (each would kill the other's jobs):
//! the spool's `lock` file is `flock`ed while an agent uses it. For the same
//! reason two agents with the same name must not share a Docker engine.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::spool::{
    AttemptFiles, LOCK_FILE, Meta, ProcessRecord, RECYCLED_DIR, attempt_dir_name,
    read_meta_anywhere,
};

/// The spool directory, locked by this agent for as long as it is held.
#[derive(Debug)]
pub struct SpoolLock {
    pub dir: PathBuf,
    _lock: Flock<File>,
}

/// An attempt with a durable result, found in the spool at start.
#[derive(Debug)]
pub struct Resumed {
    pub files: AttemptFiles,
    pub meta: Meta,
    /// Where sending starts in each stream: the acknowledged offset, or
    /// later where the data below was already punched out.
    pub resume: [u64; 2],
}

/// What was found in the spool at start.
#[derive(Debug, Default)]
pub struct Recovery {
    pub resumed: Vec<Resumed>,
    /// Attempts that were still running: (job id, attempt, what happened to
    /// their process group). Their entries are deleted.
    pub abandoned: Vec<(String, u32, KillResult)>,
    /// Entries deleted because they could not be used.
    pub discarded: usize,
}

/// What [`kill_recorded_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillResult {
    /// The group was verified to be ours and was sent SIGKILL.
    Killed,
    /// Nothing of the recorded group runs any more.
    Gone,
    /// No process was recorded (the attempt had not started a process).
    NoProcess,
}

/// Locks `dir` (creating it) and sorts out what a previous agent left.
/// Blocking: call from `spawn_blocking`.
pub fn open_spool(dir: &Path) -> io::Result<(SpoolLock, Recovery)> {
    fs::create_dir_all(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == Errno::EWOULDBLOCK {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "the spool is in use by another agent",
            )
        } else {
            io::Error::from(e)
        }
    })?;
    let recovery = recover(dir)?;
    Ok((
        SpoolLock {
            dir: dir.to_path_buf(),
            _lock: lock,
        },
        recovery,
    ))
}

fn discard(dir: &Path, why: &str) {
    warn!(entry = %dir.display(), reason = why, "discarding spool entry");
    if let Err(e) = fs::remove_dir_all(dir) {
        warn!(entry = %dir.display(), error = %e, "cannot delete spool entry");
    }
}

fn recover(root: &Path) -> io::Result<Recovery> {
    let mut found: Vec<(PathBuf, Meta)> = Vec::new();
    let mut recovery = Recovery::default();
    for entry in fs::read_dir(root)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warn!(spool = %root.display(), error = %e, "cannot list the spool");
                continue;
            }
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || entry.file_name() == RECYCLED_DIR {
            continue; // the lock file, the pool of emptied entries
        }
        match read_meta_anywhere(&path) {
            Ok(meta) => found.extend(put_in_place(root, path, meta)),
            Err(why) => {
                discard(&path, &why);
                recovery.discarded += 1;
            }
        }
    }
    found.extend(take_back_from_pool(root));
    // Newest attempt of each job first; older attempts are stale.
    found.sort_by(|a, b| (&a.1.job_id, b.1.attempt).cmp(&(&b.1.job_id, a.1.attempt)));
    let mut seen = HashSet::new();
    for (path, meta) in found {
        if !seen.insert(meta.job_id.clone()) {
            discard(&path, "a newer attempt of the job is in the spool");
            recovery.discarded += 1;
            continue;
        }
        if meta.result.is_none() {
            let killed = match &meta.process {
                Some(p) => kill_recorded_group(p, &meta.job_id, meta.attempt),
                None => KillResult::NoProcess,
            };
            info!(job = %meta.job_id, attempt = meta.attempt, ?killed,
                "the previous agent died while this attempt ran; dropping it");
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(entry = %path.display(), error = %e, "cannot delete spool entry");
            }
            recovery.abandoned.push((meta.job_id, meta.attempt, killed));
            continue;
        }
        match resume(&path, meta) {
            Ok(r) => recovery.resumed.push(r),
            Err(why) => {
                discard(&path, &why);
                recovery.discarded += 1;
            }
        }
    }
    Ok(recovery)
}

/// Entries of the pool of emptied directories whose `meta.json` holds a
/// result: a recycled directory renamed into place without fsync, found at
/// its slot in the pool after the machine's loss (see "What is fsynced, and
/// when" in [`crate::spool`]). Each is moved back into the spool (the pool
/// is deleted next) and returned; the rest of the pool is left as it is.
fn take_back_from_pool(root: &Path) -> Vec<(PathBuf, Meta)> {
    let Ok(entries) = fs::read_dir(root.join(RECYCLED_DIR)) else {
        return Vec::new(); // no pool
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = read_meta_anywhere(&path) else {
            continue;
        };
        if meta.result.is_none() {
            continue;
        }
        info!(job = %meta.job_id, attempt = meta.attempt,
            "found a finished attempt in the pool of emptied entries");
        found.extend(put_in_place(root, path, meta));
    }
    found
}

/// Moves an entry found under another name than its attempt's (see
/// [`take_back_from_pool`]) to that name. `None` (and the entry deleted)
/// when that name is taken or the move fails.
fn put_in_place(root: &Path, path: PathBuf, meta: Meta) -> Option<(PathBuf, Meta)> {
    let to = root.join(attempt_dir_name(&meta.job_id, meta.attempt));
    if to == path {
        return Some((path, meta));
    }
    if to.exists() {
        discard(&path, "another directory holds the same attempt");
        return None;
    }
    match fs::rename(&path, &to) {
        Ok(()) => Some((to, meta)),
        Err(e) => {
            discard(&path, &format!("cannot move it to its attempt's name: {e}"));
            None
        }
    }
}

fn resume(path: &Path, meta: Meta) -> Result<Resumed, String> {
    let Some(result) = &meta.result else {
        return Err("no result".into());
    };
    let files = AttemptFiles::open(path, meta.clone()).map_err(|e| format!("cannot open: {e}"))?;
    let totals = [result.stdout, result.stderr];
    let mut resume = meta.acked;
    for i in 0..2 {
        if meta.acked[i] >= totals[i].bytes {
            // Nothing is owed: the file may hold none of it (output the
            // orchestrator acknowledged while in memory is never written).
            resume[i] = totals[i].bytes;
            continue;
        }
        let len = files.len(i).map_err(|e| format!("cannot stat: {e}"))?;
        if len < totals[i].bytes {
            return Err(format!(
                "log file {i} holds {len} bytes, the result says {}",
                totals[i].bytes
            ));
        }
        // Holes were punched only below the acknowledged offset.
        let data = files.data_from(i, meta.acked[i]).unwrap_or(meta.acked[i]);
        resume[i] = data.max(meta.acked[i]).min(totals[i].bytes);
    }
    Ok(Resumed {
        files,
        meta,
        resume,
    })
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Field 22: clock ticks after boot.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/<pid>/stat` line (the command name may hold anything,
/// so fields are counted after its last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field n is fields[n - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id, to tell a pid of an earlier boot from one of this boot.
/// Read once: it cannot change while the agent runs (it was read for every
/// job, 1 % of the agent's time in the throughput benchmark).
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .clone()
}

/// What to record about a job's leader process right after it started
/// (`None` when it is already gone). Blocking.
pub fn process_record(pid: u32) -> Option<ProcessRecord> {
    let stat = proc_stat(pid)?;
    Some(ProcessRecord {
        pid,
        pgid: pid,
        start_time: stat.start_time,
        boot_id: boot_id(),
    })
}

/// SIGKILLs a process group recorded by an earlier agent, if it is still the
/// same group. A pid (and so a group id) can be reused once nothing holds it,
/// so the group is killed only when one of these holds:
///
/// - the process `pid` exists and its start time is the recorded one (the
///   leader itself; the boot id must match too when both are known);
/// - some process in group `pgid` started no earlier than the leader and has
///   `HODEI_JOB_ID` and `HODEI_ATTEMPT` of this attempt in its environment
///   (the leader is gone, its children remain: they keep the group id
///   reserved, so it cannot have been reused).
pub fn kill_recorded_group(p: &ProcessRecord, job_id: &str, attempt: u32) -> KillResult {
    if let (Some(then), Some(now)) = (&p.boot_id, boot_id())
        && *then != now
    {
        return KillResult::Gone; // The machine rebooted since.
    }
    let (Ok(pid), Ok(pgid)) = (i32::try_from(p.pid), i32::try_from(p.pgid)) else {
        return KillResult::Gone;
    };
    if pid <= 1 || pgid <= 1 {
        return KillResult::Gone;
    }
    let ours = match proc_stat(p.pid) {
        Some(stat) => stat.start_time == p.start_time,
        None => group_members(pgid, p.start_time, job_id, attempt),
    };
    if !ours {
        return KillResult::Gone;
    }
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) => KillResult::Killed,
        Err(Errno::ESRCH) => KillResult::Gone,
        Err(e) => {
            warn!(pgid, error = %e, "cannot kill the process group of an abandoned job");
            KillResult::Gone
        }
    }
}

/// Whether a live process in group `pgid` belongs to the attempt.
fn group_members(pgid: i32, leader_start: u64, job_id: &str, attempt: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    let want_job = format!("HODEI_JOB_ID={job_id}");
    let want_attempt = format!("HODEI_ATTEMPT={attempt}");
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        let Some(stat) = proc_stat(pid) else {
            return false;
        };
        if stat.pgrp != pgid || stat.start_time < leader_start || stat.state == 'Z' {
            return false;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        vars.contains(&want_job.as_bytes()) && vars.contains(&want_attempt.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let line =
            "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_found() {
        let stat = proc_stat(std::process::id()).expect("own stat");
        assert!(stat.start_time > 0);
    }
}
