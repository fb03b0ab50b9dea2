//! Docker test support: images built on this machine (there is no
//! registry), the `docker` CLI, unique names, and guards that remove what a
//! test made even when it fails.
//!
//! - [`busybox_image`]: a root filesystem of a static busybox (`/bin/sh`
//!   and the usual tools), imported with `docker import`. Built once, then
//!   reused while the image exists.
//! - [`hodei_image`]: the same plus the `hodei` binary under test (debug
//!   info stripped) and the shared libraries `ldd` lists, with the dynamic
//!   loader. Tagged by the binary's size and modification time, so a rebuilt
//!   binary gets a new image and an unchanged one is not imported again.
//!
//! A static busybox comes from Debian's `busybox-static` (`.ci/run`
//! installs it); a dynamically linked busybox works too (its libraries are
//! copied like hodei's).
//!
//! When no engine answers, the tests fail, saying so; with
//! `HODEI_SKIP_DOCKER_TESTS=1` they pass without running.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The busybox image.
pub const BUSYBOX_IMAGE: &str = "hodei-test/busybox:1";
/// Repository of the images holding the hodei binary.
pub const HODEI_REPO: &str = "hodei-test/hodei";
/// `PATH` in the test images.
const IMAGE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Whether the Docker tests should run: false (after saying why) when
/// `HODEI_SKIP_DOCKER_TESTS` is set; panics when no engine answers.
pub fn docker_tests_enabled() -> bool {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    *CHECKED.get_or_init(|| {
        if std::env::var_os("HODEI_SKIP_DOCKER_TESTS").is_some_and(|v| v != "0") {
            eprintln!("HODEI_SKIP_DOCKER_TESTS is set: skipping the Docker tests");
            return false;
        }
        let out = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
        assert!(
            out.status.success(),
            "these tests need a Docker engine (docker version: {}); \
             set HODEI_SKIP_DOCKER_TESTS=1 to skip them",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        true
    })
}

/// Runs `docker ARGS` and returns its output (blocking).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the docker CLI")
}

/// `docker ARGS`, which must succeed; returns its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS` without blocking the runtime.
pub async fn docker_async(args: &[&str]) -> Output {
    tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the docker CLI")
}

/// `docker ARGS` (async), which must succeed; returns its stdout, trimmed.
pub async fn docker_async_ok(args: &[&str]) -> String {
    let out = docker_async(args).await;
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Ids of the containers (running or not) with label `key=value`.
pub async fn containers_labelled(key: &str, value: &str) -> Vec<String> {
    let filter = format!("label={key}={value}");
    docker_async_ok(&["ps", "-aq", "--filter", &filter])
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Ids of the containers with every one of `labels` (`key=value`).
pub async fn containers_with(labels: &[String]) -> Vec<String> {
    let mut args = vec!["ps".to_string(), "-aq".to_string()];
    for l in labels {
        args.push("--filter".into());
        args.push(format!("label={l}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_async_ok(&args)
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Force-removes, when dropped, every container labelled with agent name
/// `.0` (`hodei.agent`).
pub struct AgentContainers(pub String);

impl Drop for AgentContainers {
    fn drop(&mut self) {
        let filter = format!("label=hodei.agent={}", self.0);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
    }
}

/// A name no other test or run uses: `prefix-<pid>-<n>-<random>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{n}-{:05x}",
        std::process::id(),
        nanos & 0xfffff
    )
}

/// Removes, when dropped, the containers and networks registered with it
/// (in that order), whatever state the test left them in.
#[derive(Default)]
pub struct DockerCleanup {
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
}

impl DockerCleanup {
    pub fn container(&self, name: &str) {
        lock(&self.containers).push(name.to_string());
    }

    pub fn network(&self, name: &str) {
        lock(&self.networks).push(name.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut *lock(&self.containers));
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for net in std::mem::take(&mut *lock(&self.networks)) {
            let _ = docker(&["network", "rm", &net]);
        }
    }
}

// ---------------------------------------------------------------------------
// Images.

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", tag])
        .status
        .success()
}

/// The busybox image, built on first use.
pub fn busybox_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if image_exists(BUSYBOX_IMAGE) {
            return;
        }
        let started = Instant::now();
        let root = tempfile::tempdir().expect("rootfs dir");
        busybox_rootfs(root.path());
        import(root.path(), BUSYBOX_IMAGE);
        eprintln!(
            "[docker] built {BUSYBOX_IMAGE} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
    BUSYBOX_IMAGE
}

/// The image holding the hodei binary under test, built on first use.
pub fn hodei_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_hodei"));
        let meta = std::fs::metadata(&binary).expect("hodei binary");
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let key = short_key(&format!("{}:{mtime}", meta.len()));
        let tag = format!("{HODEI_REPO}:{key}");
        if image_exists(&tag) {
            return tag;
        }
        let started = Instant::now();
        let root = tempfile::tempdir().expect("rootfs dir");
        busybox_rootfs(root.path());
        let dest = root.path().join("usr/local/bin/hodei");
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        let stripped = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&binary)
            .arg(&dest)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(&binary, &dest).expect("copy hodei");
        }
        copy_libraries(&binary, root.path());
        remove_stale_hodei_images(&tag);
        import(root.path(), &tag);
        eprintln!(
            "[docker] built {tag} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tag
    })
}

/// A short stable hex key for `s` (not a security hash).
fn short_key(s: &str) -> String {
    // FNV-1a, 64 bits: enough to tell binaries apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Untags older hodei images (ignoring those still in use).
fn remove_stale_hodei_images(keep: &str) {
    let out = docker(&["images", HODEI_REPO, "--format", "{{.Repository}}:{{.Tag}}"]);
    for tag in String::from_utf8_lossy(&out.stdout).lines() {
        if tag != keep {
            let _ = docker(&["rmi", tag]);
        }
    }
}

/// A busybox root filesystem in `root`: `/bin/busybox`, a link per applet,
/// `/tmp` and `/workspace`.
fn busybox_rootfs(root: &Path) {
    let busybox = find_busybox();
    for dir in ["bin", "tmp", "etc", "workspace"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir rootfs");
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    copy_libraries(&busybox, root);
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet link");
        }
    }
    let mut passwd = std::fs::File::create(root.join("etc/passwd")).expect("passwd");
    writeln!(passwd, "root:x:0:0:root:/root:/bin/sh").expect("write passwd");
}

/// A busybox binary on this machine.
fn find_busybox() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"] {
        let path = PathBuf::from(candidate);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "the Docker tests build their images from busybox: install it \
         (apt-get install busybox-static; .ci/run does)"
    );
}

/// Copies the shared libraries `binary` needs (and the dynamic loader) to
/// the same paths under `root`. A static binary needs none.
fn copy_libraries(binary: &Path, root: &Path) {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    for lib in libs {
        let dest = root.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir lib dir");
        // Follows symlinks: the file lands under the name the binary asks for.
        std::fs::copy(&lib, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
}

/// `tar -C root -c . | docker import - tag`.
fn import(root: &Path, tag: &str) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let stdout = tar.stdout.take().expect("tar stdout");
    let env = format!("ENV PATH={IMAGE_PATH}");
    let import = Command::new("docker")
        .args(["import", "--change", &env, "-", tag])
        .stdin(stdout)
        .output()
        .expect("run docker import");
    let tar_status = tar.wait().expect("wait for tar");
    assert!(
        tar_status.success() && import.status.success(),
        "building {tag}: tar {tar_status}, docker import: {}",
        String::from_utf8_lossy(&import.stderr).trim()
    );
}

/// Polls `check` (async) every 50 ms until it returns `Some`, failing after
/// `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
