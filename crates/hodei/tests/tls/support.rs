//! Support for the TLS tests: a test PKI made with rcgen (including
//! certificates a real CA would never hand out: expired ones, ones from
//! another CA), and a `hodei server` whose log is kept in a file so that
//! tests can read why it refused a connection.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::common::{self, Client, wait_for};

/// Paths of a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn cert(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    pub fn key(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }
}

/// A CA whose files live in `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    pub cert: PathBuf,
}

const DAY: Duration = Duration::from_secs(86_400);

fn window(params: &mut CertificateParams, from: SystemTime, to: SystemTime) {
    params.not_before = from.into();
    params.not_after = to.into();
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        window(&mut params, now - DAY, now + 30 * DAY);
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        TestCa {
            issuer,
            dir: dir.to_path_buf(),
            cert,
        }
    }

    pub fn cert(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, file: &str) -> CertFiles {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        window(&mut params, now - DAY, now + 30 * DAY);
        self.issue(file, params)
    }

    /// A client certificate with CN `name`, valid from `from` to `to`.
    pub fn client_valid(&self, name: &str, from: SystemTime, to: SystemTime) -> CertFiles {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        window(&mut params, from, to);
        self.issue(&format!("client-{name}"), params)
    }

    /// A client certificate with CN `name`, valid now.
    pub fn client(&self, name: &str) -> CertFiles {
        let now = SystemTime::now();
        self.client_valid(name, now - DAY, now + 30 * DAY)
    }
}

/// A `hodei server` whose stderr (the log) goes to a file.
pub struct LoggedServer {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl LoggedServer {
    pub fn start(dir: &Path, extra: &[&str]) -> LoggedServer {
        let log = dir.join("server.log");
        let mut child = common::hodei()
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env("HODEI_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn hodei server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read server address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.contains("://"))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("server did not print its address: {line:?}; log:\n{log}")
            })
            .to_string();
        LoggedServer { child, url, log }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url.split("://").nth(1).expect("address")
    }

    pub fn log_text(&self) -> String {
        // The log has ANSI colours when a terminal is around; not here, but
        // strip escape codes anyway so that matches are on plain text.
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Waits for a log line containing every one of `needles`; returns it.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        wait_for(
            Duration::from_secs(20),
            &format!("a server log line with {needles:?}"),
            || async {
                self.log_text()
                    .lines()
                    .find(|line| needles.iter().all(|n| line.contains(n)))
                    .map(str::to_string)
            },
        )
        .await
    }

    /// A client with the admin token, trusting `ca`, presenting `identity`
    /// if given.
    pub fn client(&self, ca: &Path, identity: Option<&CertFiles>) -> Client {
        let identity_pem = identity.map(|files| {
            let mut pem = std::fs::read(&files.cert).expect("cert");
            pem.push(b'\n');
            pem.extend(std::fs::read(&files.key).expect("key"));
            pem
        });
        let tls = hodei_client::TlsOptions {
            ca_pem: Some(std::fs::read(ca).expect("ca")),
            identity_pem,
        };
        Client::with_tls(&self.url, &tls)
            .expect("client")
            .with_token(Some(common::admin_token().to_string()))
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
