//! Starting a job's leader process.
//!
//! # Why not `std::process::Command`
//!
//! The leader must call `prctl(PR_SET_PDEATHSIG, SIGKILL)` on itself,
//! between the kernel creating it and `execve` (see "Dying with the agent"
//! in [`crate::process`]). With a `pre_exec` hook for that, the standard
//! library forks: the kernel copies the agent's page tables, and afterwards
//! every page the agent writes faults once (copy-on-write) and interrupts
//! the other CPUs to flush their TLBs. Without a hook it uses
//! `posix_spawn`, which creates the child with `clone(CLONE_VM |
//! CLONE_VFORK)`: the child borrows the agent's memory until `execve`, so
//! nothing is copied, but `posix_spawn` has no death-signal attribute.
//!
//! On Linux this module does what glibc's `posix_spawn` does, plus the
//! `prctl`. A throughput run of the bench profiled the agent spending about
//! 40 % of its CPU in `fork` and its aftermath (`copy_page_range`,
//! `do_wp_page`, TLB shootdowns); `docs/performance.md` has the figures
//! before and after.
//!
//! # The child
//!
//! The child runs on a stack of its own, in the agent's memory, while the
//! calling thread is suspended (`CLONE_VFORK`: until the child calls
//! `execve` or exits). Like glibc's `__spawni_child` it only makes system
//! calls on data prepared beforehand: no allocation, no lock, no Rust code
//! that could unwind. In order:
//!
//! 1. every signal handler the agent installed is reset to the default, and
//!    so is `SIGPIPE` (which the Rust runtime ignores), as `std` does; the
//!    parent blocks every signal around `clone`, so no handler of the agent
//!    can run on the child's stack, and the child unblocks them all;
//! 2. `setpgid(0, 0)`: the leader of a new process group;
//! 3. `PR_SET_PDEATHSIG(SIGKILL)`, then `getppid()`: if the agent already
//!    died, the child gives up (`ESRCH`) instead of running unwatched;
//! 4. stdin from `/dev/null`, stdout and stderr to the pipes (`dup2`),
//!    then `chdir` into the working directory;
//! 5. `execve`. Every descriptor the agent holds is close-on-exec. A file
//!    the kernel cannot execute (`ENOEXEC`: a script without `#!`) is run
//!    by `/bin/sh`, as `execvp(3)` does.
//!
//! If a step fails, the child writes `errno` to a close-on-exec pipe and
//! exits with 127; the parent reads that pipe once `clone` has returned (by
//! then the child has exec'd, which closed the pipe, or has exited), reaps
//! the child and returns the error.
//!
//! The program is looked up in `PATH` beforehand ([`resolve`]), as
//! `execvp(3)` would.
//!
//! Elsewhere than on Linux the leader is started by `std` (`posix_spawn`),
//! without a death signal.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

/// A started leader: its pid (also its process group id) and the read ends
/// of its stdout and stderr pipes. It is our child: reap it with `waitpid`.
#[derive(Debug)]
pub struct Leader {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Spawn<'a> {
    /// The file to execute, as [`resolve`] found it.
    pub path: &'a Path,
    /// `argv`, `argv[0]` included.
    pub argv: &'a [String],
    /// The whole environment.
    pub env: &'a [(OsString, OsString)],
    pub cwd: &'a Path,
}

/// `PATH` when neither the job nor the agent has one (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Finds `program` the way `execvp(3)` does: a name with a `/` is used as
/// it is (relative to the working directory); otherwise the first
/// executable regular file of that name in `path`'s directories (an empty
/// entry is the working directory). `NotFound` when there is none,
/// `PermissionDenied` when only files that are not executable were found.
pub fn resolve(program: &str, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(io::ErrorKind::NotFound.into());
    }
    let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut denied = false;
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(program);
        match executable(&candidate) {
            Some(true) => return Ok(candidate),
            Some(false) => denied = true,
            None => {}
        }
    }
    Err(if denied {
        io::ErrorKind::PermissionDenied.into()
    } else {
        io::ErrorKind::NotFound.into()
    })
}

/// Whether `path` is a regular file this process may execute; `None` when
/// it is not a regular file (or does not exist).
pub fn executable(path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file()
        .then(|| nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok())
}

/// The job's environment: the agent's own, overridden by `overrides` in
/// order.
pub fn environment<'a>(
    overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in overrides {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

#[cfg(target_os = "linux")]
pub use linux::spawn;

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{CString, c_char, c_int, c_void};
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::ptr;

    use nix::fcntl::OFlag;
    use nix::libc;
    use nix::unistd::Pid;

    use super::{Leader, Spawn};

    /// The child's stack: it only makes a few system calls.
    const CHILD_STACK: usize = 64 * 1024;

    /// Runs what the kernel cannot execute, as `execvp(3)` does.
    const SH: &std::ffi::CStr = c"/bin/sh";

    /// Everything the child reads, prepared by the parent.
    struct ChildArgs {
        path: *const c_char,
        argv: *const *const c_char,
        /// `/bin/sh path argv[1..]`, for a file without `#!`.
        sh_argv: *const *const c_char,
        envp: *const *const c_char,
        cwd: *const c_char,
        stdin: RawFd,
        stdout: RawFd,
        stderr: RawFd,
        /// Write end of the close-on-exec pipe that reports a failure.
        fail: RawFd,
        /// The agent: the parent the death signal is tied to.
        parent: libc::pid_t,
    }

    fn c_string(bytes: &[u8]) -> io::Result<CString> {
        CString::new(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the command, its environment or its working directory",
            )
        })
    }

    /// Starts `what` as the leader of a new process group that gets SIGKILL
    /// when the calling thread ends; see the [module documentation](super).
    /// Call it from a thread that lives as long as the agent.
    pub fn spawn(what: Spawn<'_>) -> io::Result<Leader> {
        let path = c_string(what.path.as_os_str().as_bytes())?;
        let argv = what
            .argv
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = what
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
                kv.extend_from_slice(k.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = c_string(what.cwd.as_os_str().as_bytes())?;
        let argv_ptrs: Vec<*const c_char> = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();
        let sh_argv_ptrs: Vec<*const c_char> = [SH.as_ptr(), path.as_ptr()]
            .into_iter()
            .chain(argv.iter().skip(1).map(|a| a.as_ptr()))
            .chain(std::iter::once(ptr::null()))
            .collect();
        let envp_ptrs: Vec<*const c_char> = envp
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();

        // std opens files close-on-exec.
        let stdin: OwnedFd = std::fs::File::open("/dev/null")?.into();
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (fail_r, fail_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let args = ChildArgs {
            path: path.as_ptr(),
            argv: argv_ptrs.as_ptr(),
            sh_argv: sh_argv_ptrs.as_ptr(),
            envp: envp_ptrs.as_ptr(),
            cwd: cwd.as_ptr(),
            stdin: stdin.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            fail: fail_w.as_raw_fd(),
            parent: std::process::id() as libc::pid_t,
        };
        let mut stack = vec![0u8; CHILD_STACK];

        // SAFETY: the stack and `args` (with everything it points to) live
        // until `clone` returns, which with CLONE_VFORK is after the child
        // exec'd or exited; the child only makes async-signal-safe system
        // calls on them (see `child`). Blocking every signal first keeps the
        // agent's handlers from running in the child before it resets them.
        let (pid, clone_error) = unsafe {
            let top = stack.as_mut_ptr().add(stack.len());
            // The ABI wants the stack 16-byte aligned.
            let top = top.sub(top as usize % 16).cast::<c_void>();
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                ptr::from_ref(&args).cast_mut().cast::<c_void>(),
            );
            let clone_error = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
            (pid, clone_error)
        };
        drop(stack);
        drop((stdin, out_w, err_w, fail_w));
        if pid < 0 {
            return Err(clone_error);
        }
        let pid = Pid::from_raw(pid);
        // The child has exec'd (closing its end) or exited, so this does
        // not block; at most briefly, while a child that another thread
        // started at the same moment still holds a copy of the write end
        // until its own execve.
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < errno.len() {
            match nix::unistd::read(&fail_r, &mut errno[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    reap(pid);
                    return Err(e.into());
                }
            }
        }
        match got {
            0 => Ok(Leader {
                pid,
                stdout: out_r,
                stderr: err_r,
            }),
            _ => {
                reap(pid);
                Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
            }
        }
    }

    /// Reaps a child that failed to start (it has exited already).
    fn reap(pid: Pid) {
        loop {
            match nix::sys::wait::waitpid(pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return,
            }
        }
    }

    /// The child, between `clone` and `execve`. Never returns.
    extern "C" fn child(arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent
        // is suspended; only async-signal-safe calls follow, on data that was
        // prepared before `clone` (no allocation, no lock, no unwinding).
        unsafe {
            let a = &*arg.cast_const().cast::<ChildArgs>();
            // 1..=64: every signal number Linux has (_NSIG is 65); the ones
            // glibc reserves answer EINVAL and are skipped.
            for signal in 1..=64 {
                if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                    continue;
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, ptr::null(), &mut old) != 0 {
                    continue;
                }
                let handler = old.sa_sigaction;
                let installed = handler != libc::SIG_IGN && handler != libc::SIG_DFL;
                if installed || signal == libc::SIGPIPE {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(signal, &default, ptr::null_mut());
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());

            if libc::setpgid(0, 0) != 0 {
                fail(a.fail, errno());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                fail(a.fail, errno());
            }
            // The agent may have died before the prctl: nobody would send
            // the signal any more.
            if libc::getppid() != a.parent {
                fail(a.fail, libc::ESRCH);
            }
            // The sources are not 0, 1 or 2 (the Rust runtime opens
            // /dev/null on any of them that is closed at start-up), so no
            // dup2 overwrites a source still to be copied; a source already
            // in place only loses its close-on-exec flag.
            for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
                let done = if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if done < 0 {
                    fail(a.fail, errno());
                }
            }
            if libc::chdir(a.cwd) != 0 {
                fail(a.fail, errno());
            }
            libc::execve(a.path, a.argv, a.envp);
            if errno() == libc::ENOEXEC {
                libc::execve(SH.as_ptr(), a.sh_argv, a.envp);
            }
            fail(a.fail, errno())
        }
    }

    fn errno() -> c_int {
        // SAFETY: reads the calling thread's errno.
        unsafe { *libc::__errno_location() }
    }

    /// Reports `code` to the parent and exits like a shell that could not
    /// run the command.
    fn fail(pipe: RawFd, code: c_int) -> ! {
        let bytes = code.to_ne_bytes();
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(pipe, bytes.as_ptr().cast::<c_void>(), bytes.len());
            libc::_exit(127)
        }
    }
}

/// Starts `what` with `std` (`posix_spawn`), without a death signal.
#[cfg(not(target_os = "linux"))]
pub fn spawn(what: Spawn<'_>) -> io::Result<Leader> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let (argv0, args) = what
        .argv
        .split_first()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut child = Command::new(what.path)
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(what.env.iter().map(|(k, v)| (k, v)))
        .current_dir(what.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the child has no pipes"));
    };
    // Dropping `child` neither waits nor kills: the caller reaps the pid.
    Ok(Leader {
        pid: Pid::from_raw(pid),
        stdout: out.into(),
        stderr: err.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_like_execvp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        let write = |p: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write(&a.join("tool"), 0o644);
        write(&b.join("tool"), 0o755);
        std::fs::create_dir_all(a.join("dir")).expect("dir");
        let path = OsString::from(format!("{}:{}", a.display(), b.display()));
        // The first *executable* one, as execvp: a's is not.
        assert_eq!(resolve("tool", Some(&path)).expect("found"), b.join("tool"));
        // A directory of that name is skipped.
        assert_eq!(
            resolve("dir", Some(&path)).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        let only_a = OsString::from(a.display().to_string());
        assert_eq!(
            resolve("tool", Some(&only_a)).map_err(|e| e.kind()),
            Err(io::ErrorKind::PermissionDenied)
        );
        assert_eq!(
            resolve("missing", Some(&path)).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        // A name with a slash is not looked up.
        assert_eq!(
            resolve("./x/y", Some(&path)).expect("as is"),
            PathBuf::from("./x/y")
        );
        assert_eq!(
            resolve("", Some(&path)).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn environment_overrides_in_order() {
        let env = environment([("HODEI_T_X", "1"), ("HODEI_T_X", "2"), ("HODEI_T_Y", "3")]);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("HODEI_T_X").as_deref(), Some("2"));
        assert_eq!(get("HODEI_T_Y").as_deref(), Some("3"));
    }
}
