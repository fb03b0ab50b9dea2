//! Private PostgreSQL servers for tests.
//!
//! Each [`PgServer`] is its own cluster (`initdb` into a temporary
//! directory), listening on a free loopback port with trust authentication,
//! so a test can create databases, stop the server and start it again
//! without touching anything else on the machine. The binaries come from
//! Debian's `postgresql` package (found on `PATH` or under
//! `/usr/lib/postgresql/<version>/bin`); `.ci/run` installs it.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! cluster is created and run as the `postgres` system user. Servers are
//! spawned by one long-lived thread with a parent-death signal, so they die
//! with the test process even when it is killed.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Directories of clusters are named `PREFIX…` in the temporary directory.
const PREFIX: &str = "hodei-pg-";

/// How long a server gets to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A private PostgreSQL server. Stopped (immediately) when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
}

/// The server shared by the tests of one test binary (each test makes its
/// own database with [`PgServer::create_database`]).
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| PgServer::start().unwrap_or_else(|e| panic!("{e}")))
}

impl PgServer {
    /// Creates a cluster and starts its server.
    pub fn start() -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let owner = if nix::unistd::geteuid().is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        remove_stale_clusters();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .map_err(|e| format!("cannot create a directory for PostgreSQL: {e}"))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| format!("mkdir {}: {e}", data.display()))?;
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = initdb
            .output()
            .map_err(|e| format!("cannot run initdb (is Debian's postgresql installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let server = PgServer {
            port: free_port()?,
            dir,
            bin,
            owner,
            child: Mutex::new(None),
        };
        server.start_server()?;
        Ok(server)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "hodei_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name)
            .output()
            .map_err(|e| format!("cannot run createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(self.url(&name))
    }

    /// Stops the server: `fast` shuts down cleanly (SIGINT), otherwise it
    /// stops immediately (SIGQUIT, recovery at the next start). Waits for
    /// the process to exit.
    pub fn stop(&self, fast: bool) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            let signal = if fast {
                Signal::SIGINT
            } else {
                Signal::SIGQUIT
            };
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`PgServer::stop`], on the same port.
    pub fn restart(&self) -> Result<(), String> {
        self.stop(true);
        self.start_server()
    }

    /// Starts the server process and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?);
        as_owner(&mut command, self.owner);
        let child = spawn_with_parent_death(command)?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .map_err(|e| format!("cannot run pg_isready: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL did not start within {START_TIMEOUT:?}; its log: {}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// Runs `command` as the cluster's owner when the tests run as root.
fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

/// Spawns `command` from a thread that lives as long as the process, with
/// SIGKILL as its parent-death signal (the signal follows the thread that
/// spawned the child, so a short-lived test thread must not spawn it).
fn spawn_with_parent_death(command: Command) -> Result<Child, String> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // SAFETY: only async-signal-safe work between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                                .map_err(std::io::Error::from)
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // Keep the thread (and so the parent-death link) alive until
                // the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the PostgreSQL spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| "the PostgreSQL spawner thread is gone".to_string())?;
    reply_rx
        .recv()
        .map_err(|_| "the PostgreSQL spawner thread is gone".to_string())?
        .map_err(|e| format!("cannot start postgres: {e}"))
}

/// The directory of the PostgreSQL server binaries.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths).find(|p| Path::new(p).join("postgres").exists())
        })
        .ok_or_else(|| {
            "PostgreSQL server binaries not found: install Debian's `postgresql` package \
             (`.ci/run` does)"
                .to_string()
        })
}

/// The uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| "no `postgres` user: install Debian's `postgresql` package".to_string())
}

/// Removes clusters left by earlier test processes (the shared server of a
/// test binary is never dropped): those over ten minutes old whose server
/// is not running.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        let pid = std::fs::read_to_string(entry.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
        let running = pid.is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok());
        if old && !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
