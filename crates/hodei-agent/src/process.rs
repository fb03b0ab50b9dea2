//! The local process executor: runs a job as a process tree on this machine.
//!
//! # Starting
//!
//! `command` is executed directly, without a shell: `command[0]` is looked up
//! in `PATH` the way `execvp(3)` does it (the job's `PATH` if `spec.env` sets
//! one, else the agent's) and the other elements are passed as they are. The
//! environment is the agent's own plus `spec.env`, plus `HODEI_JOB_ID` and
//! `HODEI_ATTEMPT`; the current directory is `spec.working_dir`; stdin is
//! `/dev/null`. The process becomes the leader of a new process group and
//! every signal Hodei sends goes to that whole group, so shells, pipelines
//! and background children are reached too. [`crate::spawn`] starts it
//! without forking the agent's memory.
//!
//! A command that cannot be started is an [`Outcome::SpawnFailed`], with the
//! shell's codes: 127 when the program is not found, 126 when it is found but
//! cannot be executed (permission denied, or any other OS error). The message
//! is also written to the job's stderr so that users see it in the job log.
//!
//! # Output
//!
//! stdout and stderr are read from two pipes by two tasks. Each read (into a
//! buffer of at most 64 KiB, or 1 MiB once a read came back full and the
//! pipe was grown to match) becomes one [`OutputChunk`] right away, so
//! interactive output is forwarded immediately and heavy output travels in
//! large chunks; the bytes are never copied or decoded. If the receiver is
//! gone the pipes are still drained, so the job never blocks on a full pipe.
//! [`Executor::run`] returns after both pipes reached end-of-file and every
//! byte was sent.
//!
//! # Ending
//!
//! On cancel or timeout the group gets SIGTERM; once the leader has exited and
//! both pipes are closed, or `kill_grace` has passed, whatever is left of the
//! group gets SIGKILL. The outcome is then [`Outcome::Cancelled`] or
//! [`Outcome::TimedOut`], whatever the exit status.
//!
//! **When the leader exits on its own, the rest of its group is SIGKILLed at
//! once.** Background children would otherwise keep the pipes open, so the
//! job would never end (or would end at an arbitrary later time), and would
//! outlive a job the orchestrator already considers finished. CI runners do
//! the same (GitLab kills the job's process group, GitHub Actions cleans up
//! orphan processes when a step ends). A job that needs its background work
//! finished must `wait` for it. The outcome is the leader's own status.
//!
//! # Dying with the agent
//!
//! On Linux the leader is started with `PR_SET_PDEATHSIG(SIGKILL)`: if the
//! agent dies (crash, `kill -9`), the kernel kills the job's leader. The
//! signal fires when the *thread* that created the job ends, so jobs are
//! spawned from the async task itself, on a runtime worker thread, which
//! lives as long as the agent (never from a `spawn_blocking` thread, which
//! may end while the job runs). Only the leader gets the signal, and a
//! set-user-id program clears it; what else is left of the group is killed
//! by the next agent started on the same spool ([`crate::recover`]).
//!
//! # Process group id reuse
//!
//! The group id is the leader's pid, and a pid is free for reuse once nothing
//! holds it. On Linux the executor learns that the leader exited from a
//! pidfd (or, on kernels without one, `waitid(WEXITED | WNOWAIT)` on a
//! blocking thread), which leaves it an unreaped zombie: its pid,
//! and so the group id, stay reserved. The leader is reaped only after the
//! last signal to its group, and the group is never signalled afterwards, so
//! a signal can never reach an unrelated process group that reused the id.
//! (Elsewhere the leader is reaped first; the remaining members still hold
//! the id while they live, and ESRCH is ignored.)
//!
//! # Limits
//!
//! A process that leaves the group (`setsid`, `setpgid`) is out of reach. If
//! it keeps a pipe open after the group was killed, reading stops once the
//! pipe has been idle for [`PIPE_CLOSE_GRACE`] after the kill, so such a
//! process cannot hold the job (and the agent's slot) forever.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::pin::pin;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::FutureExt;
use futures::future::{FusedFuture, pending};
use hodei_core::{LogStream, Outcome};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::executor::{CancelSignal, ExecSpec, Executor, OutputChunk, now_ms};
use crate::path_cache::PathCache;
use crate::spawn;

/// The most one read from a pipe (and so one [`OutputChunk`]) carries, at
/// first: a pipe's default capacity.
const READ_CHUNK: usize = 64 * 1024;
/// A pipe whose read came back full (the job writes faster than the agent
/// reads) is grown to this, and reads up to it: fewer, larger chunks for
/// heavy output, and no cost for a job that prints little.
const PIPE_GROWN: usize = 1024 * 1024;

/// How long the pipes may stay open, idle, after the whole group was killed
/// and its leader reaped; only a process that left the group can hold them.
pub const PIPE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs jobs as local processes; see the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct ProcessExecutor {
    /// Programs found in `PATH` lately.
    lookups: std::sync::Arc<PathCache>,
}

impl ProcessExecutor {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    async fn run(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
        mut cancel: CancelSignal,
    ) -> Outcome {
        let job = spec.job_id.as_str();
        let Some(program) = spec.command.first() else {
            return spawn_failed(127, "hodei: the command is empty".into(), &output).await;
        };
        if *cancel.borrow() {
            debug!(job, "cancelled before start");
            return Outcome::Cancelled;
        }

        let leader = match start(program, &spec, &self.lookups) {
            Ok(leader) => leader,
            Err(err) => {
                let (code, message) = describe_spawn_error(program, &spec, &err).await;
                debug!(job, %err, code, "spawn failed");
                return spawn_failed(code, message, &output).await;
            }
        };
        let (pgid, out, err) = leader;
        let pid = pgid.as_raw();
        debug!(job, pid, "started");
        spec.on_start.started(pid.unsigned_abs());

        let (stop_tx, stop_rx) = watch::channel(false);
        // Both pipes in one task: one task spawned per job instead of two.
        let stdout = pump(out, LogStream::Stdout, output.clone(), stop_rx.clone());
        let stderr = pump(err, LogStream::Stderr, output, stop_rx);
        let pumps = tokio::spawn(async move {
            futures::join!(stdout, stderr);
        });
        let mut drained = pin!(join_pumps(pumps).fuse());

        let reaped = Reaped::default();
        let mut group = GroupGuard(Some(pgid));
        let reason = {
            let mut exited = pin!(leader_exited(pgid, &reaped).fuse());
            let timeout = async {
                match spec.timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => pending().await,
                }
            };
            let cancelled = async {
                if cancel.wait_for(|c| *c).await.is_err() {
                    pending::<()>().await; // No sender left: cannot be cancelled.
                }
            };
            let reason = tokio::select! {
                () = &mut exited => None,
                () = cancelled => Some(Outcome::Cancelled),
                () = timeout => Some(Outcome::TimedOut),
            };
            if let Some(reason) = &reason {
                debug!(job, pid, ?reason, "terminating the process group");
                group.signal(Signal::SIGTERM);
                let gone = async {
                    if !exited.is_terminated() {
                        (&mut exited).await;
                    }
                    if !drained.is_terminated() {
                        (&mut drained).await;
                    }
                };
                let _ = tokio::time::timeout(spec.kill_grace, gone).await;
            }
            // The leader is gone or must go: nothing of the group may outlive it.
            group.signal(Signal::SIGKILL);
            if !exited.is_terminated() {
                exited.await;
            }
            reason
        };
        group.0 = None; // Reaping frees the group id: no more signals.
        let status = match reaped.take() {
            Some(status) => Some(status),
            None => reap(pgid, job).await,
        };

        if !drained.is_terminated()
            && tokio::time::timeout(PIPE_CLOSE_GRACE, &mut drained)
                .await
                .is_err()
        {
            debug!(job, "pipes held open by a process outside the group");
            let _ = stop_tx.send(true);
            drained.await;
        }

        let outcome = match (reason, status) {
            (Some(reason), _) => reason,
            (None, Some(status)) => outcome_of(status),
            (None, None) => Outcome::Exited { code: -1 },
        };
        debug!(job, pid, ?outcome, "finished");
        outcome
    }
}

/// Starts the job's leader: `program` looked up in the job's `PATH` (else
/// the agent's), the agent's environment plus `spec.env` plus
/// `HODEI_JOB_ID` and `HODEI_ATTEMPT`, in `spec.working_dir`; see
/// [`crate::spawn`]. Runs on the calling (runtime worker) thread, which the
/// death signal is tied to; the `PATH` lookup's few `stat` calls run there
/// too, as they would inside `std`'s spawn (one or two when `lookups`
/// remembers the program).
///
/// Returns the leader's pid (its group id) and its stdout and stderr pipes.
fn start(
    program: &str,
    spec: &ExecSpec,
    lookups: &PathCache,
) -> io::Result<(Pid, pipe::Receiver, pipe::Receiver)> {
    let attempt = spec.attempt.to_string();
    let env = spawn::environment(
        spec.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([
                ("HODEI_JOB_ID", spec.job_id.as_str()),
                ("HODEI_ATTEMPT", attempt.as_str()),
            ]),
    );
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let path = lookups.resolve(program, path_var)?;
    let leader = spawn::spawn(spawn::Spawn {
        path: &path,
        argv: &spec.command,
        env: &env,
        cwd: &spec.working_dir,
    })?;
    let pipes = (
        pipe::Receiver::from_owned_fd(leader.stdout),
        pipe::Receiver::from_owned_fd(leader.stderr),
    );
    match pipes {
        (Ok(out), Ok(err)) => Ok((leader.pid, out, err)),
        (Err(e), _) | (_, Err(e)) => {
            // Not for fresh pipes; but never leave the job running.
            let _ = killpg(leader.pid, Signal::SIGKILL);
            let _ = wait_for(leader.pid);
            Err(e)
        }
    }
}

/// Sends signals to the job's process group while it may do so: `None` once
/// the leader was reaped. Dropping it (the `run` future was dropped midway)
/// SIGKILLs the group so that no process of the job survives.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        let Some(pgid) = self.0 else { return };
        match killpg(pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => debug!(pgid = pgid.as_raw(), ?signal, %err, "killpg failed"),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        // Dropped before the leader was reaped (the `run` future was
        // dropped): reap it in the background, or it stays a zombie for as
        // long as the agent lives.
        if let Some(pid) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || wait_for(pid));
        }
    }
}

/// The leader's exit status, when waiting for its exit had to reap it
/// (not on Linux).
#[derive(Debug, Default)]
struct Reaped(std::sync::Mutex<Option<ExitStatus>>);

impl Reaped {
    #[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
    fn set(&self, status: ExitStatus) {
        if let Ok(mut r) = self.0.lock() {
            *r = Some(status);
        }
    }

    fn take(&self) -> Option<ExitStatus> {
        self.0.lock().ok().and_then(|mut r| r.take())
    }
}

/// Resolves once the leader has exited, leaving it an unreaped zombie so its
/// pid (the group id) stays reserved. Errors mean it cannot be waited for
/// (already gone) and count as exited.
///
/// Waits on a pidfd (Linux 5.3+) registered with the runtime's reactor, so no
/// thread is parked per running job; where there is no pidfd,
/// `waitid(WEXITED | WNOWAIT)` on a blocking thread.
#[cfg(any(target_os = "linux", target_os = "android"))]
async fn leader_exited(pid: Pid, _reaped: &Reaped) {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    match pidfd(pid) {
        // A pidfd polls readable once the process has exited; the zombie
        // is still there (nothing reaped it), so the group id stays ours.
        Ok(fd) => {
            let _ = fd.readable().await;
            return;
        }
        Err(err) => debug!(pid = pid.as_raw(), %err, "no pidfd; waiting on a thread"),
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    let waited = tokio::task::spawn_blocking(move || {
        loop {
            match waitid(Id::Pid(pid), flags) {
                Err(Errno::EINTR) => continue,
                other => return other.map(drop),
            }
        }
    })
    .await;
    if let Ok(Err(err)) = waited {
        debug!(pid = pid.as_raw(), %err, "waitid");
    }
}

/// `pidfd_open(pid)`, registered with the runtime for readability.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn pidfd(pid: Pid) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file
    // descriptor or -1; nothing else is read or written.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an `OwnedFd` is a valid open descriptor that only it closes,
    // and `as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Resolves once the leader has exited. Without `waitid` this reaps it.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
async fn leader_exited(pid: Pid, reaped: &Reaped) {
    if let Ok(Some(status)) = tokio::task::spawn_blocking(move || wait_for(pid)).await {
        reaped.set(status);
    }
}

/// Reaps the leader (which has exited) and returns its exit status.
async fn reap(pid: Pid, job: &str) -> Option<ExitStatus> {
    // It has exited, so this does not block; a thread only if it had not.
    let status = match try_reap(pid) {
        Some(status) => Some(status),
        None => tokio::task::spawn_blocking(move || wait_for(pid))
            .await
            .ok()
            .flatten(),
    };
    if status.is_none() {
        warn!(
            job,
            pid = pid.as_raw(),
            "cannot get the exit status of the job's process"
        );
    }
    status
}

/// `waitpid(pid, WNOHANG)`: reaps the child if it has exited.
fn try_reap(pid: Pid) -> Option<ExitStatus> {
    waitpid(pid, nix::libc::WNOHANG)
}

/// `waitpid(pid)`: blocks until the child exits, then reaps it.
fn wait_for(pid: Pid) -> Option<ExitStatus> {
    waitpid(pid, 0)
}

/// `waitpid(2)` on our own child, retried on EINTR; `None` when it did not
/// reap it (not exited with `WNOHANG`, or an error).
fn waitpid(pid: Pid, flags: nix::libc::c_int) -> Option<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child, with a valid status pointer.
        let r = unsafe { nix::libc::waitpid(pid.as_raw(), &mut status, flags) };
        if r == pid.as_raw() {
            return Some(ExitStatus::from_raw(status));
        }
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
}

fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled { signal },
        (None, None) => Outcome::Exited { code: -1 },
    }
}

async fn join_pumps(pumps: JoinHandle<()>) {
    if let Err(err) = pumps.await {
        warn!(%err, "output pump failed");
    }
}

/// Forwards one pipe to `output` until end-of-file, or until `stop` is set
/// and the pipe has nothing more to read right now.
async fn pump<R: AsyncRead + AsFd + Unpin>(
    mut pipe: R,
    stream: LogStream,
    output: mpsc::Sender<OutputChunk>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    let mut forwarding = true;
    let mut chunk = READ_CHUNK;
    // Growing is tried once: a refusal (the user's pipe-buffer limit) stands.
    let mut may_grow = true;
    loop {
        buf.reserve(chunk);
        let read = {
            let mut limited = (&mut buf).limit(chunk);
            tokio::select! {
                biased;
                read = pipe.read_buf(&mut limited) => read,
                _ = stop.wait_for(|s| *s) => break,
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if n == chunk && may_grow {
                    may_grow = false;
                    chunk = grow_pipe(&pipe).unwrap_or(chunk).max(chunk);
                }
                let out = OutputChunk {
                    stream,
                    data: buf.split().freeze(),
                    timestamp_ms: now_ms(),
                };
                if forwarding && output.send(out).await.is_err() {
                    debug!(?stream, "output receiver gone; draining the pipe");
                    forwarding = false;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                warn!(?stream, %err, "reading the job's output failed");
                break;
            }
        }
    }
}

/// Grows a pipe to [`PIPE_GROWN`]; its new capacity, or `None` when the
/// kernel refused (past the user's pipe-buffer limit, say: the pipe keeps
/// its size and nothing else changes).
#[cfg(target_os = "linux")]
fn grow_pipe(pipe: &impl AsFd) -> Option<usize> {
    use nix::fcntl::{FcntlArg, fcntl};
    let size = fcntl(pipe.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_GROWN as i32));
    match size {
        Ok(size) => usize::try_from(size).ok().map(|s| s.min(PIPE_GROWN)),
        Err(err) => {
            debug!(%err, "cannot grow the output pipe");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn grow_pipe(_pipe: &impl AsFd) -> Option<usize> {
    None
}

/// The exit code and message for a command that could not be started.
async fn describe_spawn_error(program: &str, spec: &ExecSpec, err: &io::Error) -> (i32, String) {
    match err.kind() {
        io::ErrorKind::NotFound => {
            // The same errno comes back when changing directory failed.
            if let Err(dir_err) = tokio::fs::metadata(&spec.working_dir).await {
                let dir = &spec.working_dir;
                return (
                    126,
                    format!("hodei: cannot use working directory {dir:?}: {dir_err}"),
                );
            }
            let what = if program.contains('/') {
                "no such file or directory"
            } else {
                "command not found"
            };
            (127, format!("hodei: cannot run {program:?}: {what}"))
        }
        io::ErrorKind::PermissionDenied => (
            126,
            format!("hodei: cannot run {program:?}: permission denied"),
        ),
        _ => (126, format!("hodei: cannot run {program:?}: {err}")),
    }
}

/// Writes `message` to the job's stderr and returns it as the outcome.
async fn spawn_failed(code: i32, message: String, output: &mpsc::Sender<OutputChunk>) -> Outcome {
    let chunk = OutputChunk {
        stream: LogStream::Stderr,
        data: format!("{message}\n").into(),
        timestamp_ms: now_ms(),
    };
    let _ = output.send(chunk).await;
    Outcome::SpawnFailed { code, message }
}
