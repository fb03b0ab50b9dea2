//! `hodei certs`: a development CA, a server certificate and agent (client)
//! certificates, so that a TLS + mTLS setup is a few commands. Keys are
//! ECDSA P-256, written with mode 0600; certificates 0644.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

/// Subject of the CA `hodei certs init` makes; agent and server
/// certificates are issued in this name.
pub const CA_COMMON_NAME: &str = "Hodei development CA";
const ORGANIZATION: &str = "Hodei";

/// Names every server certificate is valid for.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Certificates start being valid a little in the past, for clock skew.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a development CA (ca.pem, ca-key.pem) and a server certificate
    /// signed by it (server.pem, server-key.pem).
    Init(InitArgs),
    /// Issue a new server certificate from the CA in --dir (e.g. to add a
    /// name or to renew it).
    Server(ServerCertArgs),
    /// Issue a client certificate for an agent, CN = its worker name
    /// (agent-NAME.pem, agent-NAME-key.pem), signed by the CA in --dir.
    Agent(AgentCertArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory for the files (made with mode 0700 when new).
    #[arg(long, default_value = "hodei-certs")]
    pub dir: PathBuf,
    /// Another DNS name or IP address of the server (localhost, 127.0.0.1
    /// and ::1 are always included); repeatable.
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// Days the server certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_days: u32,
    /// Replace files that exist (certificates issued by an old CA stop
    /// being accepted).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServerCertArgs {
    /// Directory with ca.pem and ca-key.pem; server.pem and server-key.pem
    /// are written there.
    #[arg(long, default_value = "hodei-certs")]
    pub dir: PathBuf,
    /// Another DNS name or IP address of the server; repeatable.
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Replace server.pem and server-key.pem if they exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct AgentCertArgs {
    /// The agent's worker name (`hodei agent --name`): the certificate's CN.
    pub name: String,
    /// Directory with ca.pem and ca-key.pem; the agent's files are written
    /// there.
    #[arg(long, default_value = "hodei-certs")]
    pub dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Replace the agent's files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// A validity window: from a little before `now` for `days` days.
fn validity(params: &mut CertificateParams, now: SystemTime, days: u32) {
    let from = now.checked_sub(BACKDATE).unwrap_or(now);
    params.not_before = OffsetDateTime::from(from);
    params.not_after = OffsetDateTime::from(now) + time::Duration::days(i64::from(days));
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The CA: may sign end-entity certificates only (path length 0).
pub fn ca_params(now: SystemTime, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, days);
    params
}

/// A server certificate for the default names plus `extra` (DNS names or
/// IP addresses).
pub fn server_params(
    extra: &[String],
    now: SystemTime,
    days: u32,
) -> anyhow::Result<CertificateParams> {
    let mut names: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    for san in extra {
        let san = san.trim();
        if san.is_empty() {
            bail!("--san must not be empty");
        }
        if !names.iter().any(|n| n == san) {
            names.push(san.to_string());
        }
    }
    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("invalid server name in {names:?}"))?;
    params.distinguished_name = name("hodei server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, days);
    Ok(params)
}

/// An agent's client certificate: CN = its worker name, client auth only.
pub fn agent_params(worker: &str, now: SystemTime, days: u32) -> anyhow::Result<CertificateParams> {
    hodei_core::spec::validate_worker_id(worker).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(worker);
    params.subject_alt_names = Vec::<SanType>::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, days);
    Ok(params)
}

/// A CA certificate and key, as written by `init` or read back.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    /// `cert` as PEM.
    pub cert_pem: String,
    pub key: KeyPair,
}

impl Ca {
    pub fn generate(now: SystemTime, days: u32) -> anyhow::Result<Ca> {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let cert = ca_params(now, days)
            .self_signed(&key)
            .context("cannot make the CA certificate")?;
        Ok(Ca {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Reads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Ca> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        let cert_pem = std::fs::read_to_string(&cert_path).with_context(|| {
            format!(
                "cannot read {} (run `hodei certs init` first)",
                cert_path.display()
            )
        })?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .with_context(|| format!("{} holds no PEM certificate", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} holds no usable private key", key_path.display()))?;
        Ok(Ca {
            cert,
            cert_pem,
            key,
        })
    }

    /// Signs `params` with a fresh key; checks the result chains to this CA
    /// for `usage`. Returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        params: &CertificateParams,
        usage: webpki::KeyUsage,
    ) -> anyhow::Result<(String, String)> {
        let issuer = Issuer::new(ca_params(SystemTime::now(), 1), &self.key);
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("cannot sign the certificate")?;
        // The issuer is rebuilt from hodei's CA parameters, not read from
        // ca.pem: make sure the result really chains to ca.pem.
        let anchor = webpki::anchor_from_trusted_cert(&self.cert)
            .context("ca.pem is not a usable CA certificate")?;
        let leaf = webpki::EndEntityCert::try_from(cert.der()).context("issued certificate")?;
        let at = params
            .not_before
            .max(OffsetDateTime::now_utc())
            .min(params.not_after);
        let at = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp().max(0) as u64));
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "the certificate does not verify against ca.pem ({e:?}); \
                 `hodei certs` signs only with a CA made by `hodei certs init` \
                 whose ca.pem and ca-key.pem belong together"
            )
        })?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `contents` to `path` with `mode`; refuses to replace a file
/// unless `force`. The mode is set at creation, so a key is never readable
/// by others, not even for a moment.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} exists; pass --force to replace it", path.display())
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    // An existing file keeps its old mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Refuses up front when any of `paths` exists (and not `force`), so that a
/// refused command writes nothing.
fn check_free(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for path in paths {
        if path.exists() {
            bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn write_server(
    ca: &Ca,
    dir: &Path,
    sans: &[String],
    days: u32,
    force: bool,
) -> anyhow::Result<()> {
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server-key.pem"));
    check_free(&[&cert_path, &key_path], force)?;
    let params = server_params(sans, SystemTime::now(), days)?;
    let (cert, key) = ca.issue(&params, webpki::KeyUsage::server_auth())?;
    write_file(&key_path, &key, KEY_MODE, force)?;
    write_file(&cert_path, &cert, CERT_MODE, force)?;
    let names: Vec<String> = params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::DnsName(n) => n.to_string(),
            SanType::IpAddress(ip) => ip.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    println!(
        "wrote {} and {} (server, valid {days} days for {})",
        cert_path.display(),
        key_path.display(),
        names.join(", ")
    );
    Ok(())
}

pub fn certs(args: CertsArgs) -> anyhow::Result<u8> {
    match args.command {
        CertsCommand::Init(args) => {
            let dir = &args.dir;
            let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
            let (server_path, server_key_path) =
                (dir.join("server.pem"), dir.join("server-key.pem"));
            check_free(
                &[&ca_path, &ca_key_path, &server_path, &server_key_path],
                args.force,
            )?;
            // Names are checked before anything is written.
            server_params(&args.sans, SystemTime::now(), args.days)?;
            make_dir(dir)?;
            let ca = Ca::generate(SystemTime::now(), args.ca_days)?;
            write_file(&ca_key_path, &ca.key.serialize_pem(), KEY_MODE, args.force)?;
            write_file(&ca_path, &ca.cert_pem, CERT_MODE, args.force)?;
            println!(
                "wrote {} and {} (CA, valid {} days)",
                ca_path.display(),
                ca_key_path.display(),
                args.ca_days
            );
            write_server(&ca, dir, &args.sans, args.days, args.force)?;
            let d = dir.display();
            println!(
                "\nnext:\n  \
                 hodei certs agent NAME --dir {d}\n  \
                 hodei server --tls-cert {d}/server.pem --tls-key {d}/server-key.pem --tls-client-ca {d}/ca.pem\n  \
                 hodei agent --server https://HOST:50051 --name NAME --tls-ca {d}/ca.pem --tls-cert {d}/agent-NAME.pem --tls-key {d}/agent-NAME-key.pem\n  \
                 hodei run --server https://HOST:50051 --tls-ca {d}/ca.pem -- echo hi\n\
                 keep {d}/ca-key.pem secret: whoever has it can make agents"
            );
        }
        CertsCommand::Server(args) => {
            let ca = Ca::load(&args.dir)?;
            write_server(&ca, &args.dir, &args.sans, args.days, args.force)?;
        }
        CertsCommand::Agent(args) => {
            let params = agent_params(&args.name, SystemTime::now(), args.days)?;
            let ca = Ca::load(&args.dir)?;
            let cert_path = args.dir.join(format!("agent-{}.pem", args.name));
            let key_path = args.dir.join(format!("agent-{}-key.pem", args.name));
            check_free(&[&cert_path, &key_path], args.force)?;
            let (cert, key) = ca.issue(&params, webpki::KeyUsage::client_auth())?;
            write_file(&key_path, &key, KEY_MODE, args.force)?;
            write_file(&cert_path, &cert, CERT_MODE, args.force)?;
            println!(
                "wrote {} and {} (agent {:?}, valid {} days)",
                cert_path.display(),
                key_path.display(),
                args.name,
                args.days
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).expect("time"))
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_for_their_purpose_only() {
        let now = SystemTime::now();
        let ca = Ca::generate(now, 30).expect("ca");
        let anchor = webpki::anchor_from_trusted_cert(&ca.cert).expect("anchor");
        let (agent_pem, _) = ca
            .issue(
                &agent_params("worker-1", now, 7).expect("params"),
                webpki::KeyUsage::client_auth(),
            )
            .expect("agent");
        let agent = CertificateDer::from_pem_slice(agent_pem.as_bytes()).expect("pem");
        let agent = webpki::EndEntityCert::try_from(&agent).expect("parse");
        let verify = |cert: &webpki::EndEntityCert<'_>, usage, at| {
            cert.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                at,
                usage,
                None,
                None,
            )
            .map(|_| ())
        };
        assert!(verify(&agent, webpki::KeyUsage::client_auth(), unix(now)).is_ok());
        assert!(verify(&agent, webpki::KeyUsage::server_auth(), unix(now)).is_err());
        // Valid for 7 days, not 8.
        let later = now + Duration::from_secs(8 * 86_400);
        assert!(verify(&agent, webpki::KeyUsage::client_auth(), unix(later)).is_err());

        let extra = vec!["hodei.example.net".to_string(), "10.1.2.3".to_string()];
        let (server_pem, _) = ca
            .issue(
                &server_params(&extra, now, 7).expect("params"),
                webpki::KeyUsage::server_auth(),
            )
            .expect("server");
        let server = CertificateDer::from_pem_slice(server_pem.as_bytes()).expect("pem");
        let server = webpki::EndEntityCert::try_from(&server).expect("parse");
        assert!(verify(&server, webpki::KeyUsage::server_auth(), unix(now)).is_ok());
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "hodei.example.net",
            "10.1.2.3",
        ] {
            let name = rustls_pki_types::ServerName::try_from(name).expect("name");
            assert!(
                server.verify_is_valid_for_subject_name(&name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_foreign_ca_key_is_refused() {
        let now = SystemTime::now();
        let ca = Ca::generate(now, 30).expect("ca");
        let other = Ca::generate(now, 30).expect("other");
        let mixed = Ca {
            cert: ca.cert.clone(),
            cert_pem: ca.cert_pem.clone(),
            key: other.key,
        };
        let err = mixed
            .issue(
                &agent_params("w", now, 7).expect("params"),
                webpki::KeyUsage::client_auth(),
            )
            .expect_err("mismatched CA key");
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn bad_names_are_refused() {
        let now = SystemTime::now();
        assert!(agent_params("../etc", now, 1).is_err());
        assert!(agent_params("", now, 1).is_err());
        assert!(server_params(&[" ".to_string()], now, 1).is_err());
    }

    #[test]
    fn keys_are_written_private_and_never_replaced_without_force() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write_file(&path, "secret", KEY_MODE, false).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_file(&path, "other", KEY_MODE, false).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&path, "new", KEY_MODE, true).expect("force");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
    }
}
