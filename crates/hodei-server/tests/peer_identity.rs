//! The `PeerIdentity` contract, in process over real TLS on loopback: a
//! request over a connection with a verified client certificate carries the
//! certificate's identity in its extensions; one without carries none (and
//! a header cannot put one there); HWP-style routes wrapped in
//! `RequirePeerIdentity` refuse anonymous calls with UNAUTHENTICATED; both
//! HTTP/2 and HTTP/1.1 are negotiated; a refused handshake does not stop
//! the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use hodei_server::tls::{
    ClientAuth, ClientCertSettings, PeerIdentity, RequirePeerIdentity, TlsListener, TlsSettings,
    server_config, tls_peer,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate; returns (certificate PEM, key PEM, DER).
    fn issue(&self, params: CertificateParams, name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem()).expect("write");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn client(&self, cn: &str) -> (reqwest::Identity, Vec<u8>) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key, der) = self.issue(params, cn);
        let identity =
            reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).expect("identity");
        (identity, der)
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    hodei_server::tls::sha256_hex(bytes)
}

/// `who`: the request's identity as the handlers see it.
async fn who(req: Request) -> String {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    match req.extensions().get::<PeerIdentity>() {
        Some(p) => format!("{} {} {remote}", p.name, p.fingerprint_sha256),
        None => format!("anonymous {remote}"),
    }
}

async fn start(pki: &Pki, mode: ClientAuth) -> String {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    pki.issue(params, "server");
    let settings = TlsSettings {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        client: Some(ClientCertSettings {
            ca: pki.path("ca.pem"),
            mode,
        }),
    };
    let config = server_config(&settings).await.expect("tls config");
    let hwp = tower::service_fn(|_req: Request| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("served")))
    });
    let app = axum::Router::new().route("/who", get(who)).route_service(
        "/hwp.WorkerService/{*method}",
        RequirePeerIdentity::new(hwp, true),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener = TlsListener::new(tcp, config).expect("listener");
    tokio::spawn(hodei_server::serve::serve(
        listener,
        app,
        tls_peer,
        std::future::pending(),
    ));
    format!("https://{addr}")
}

fn client(ca: &Path, identity: Option<reqwest::Identity>, http1: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("ca")).expect("ca");
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

#[tokio::test]
async fn handlers_see_the_verified_identity_and_only_that() {
    let pki = Pki::new();
    let base = start(&pki, ClientAuth::Workers).await;
    let ca = pki.path("ca.pem");
    let (identity, der) = pki.client("worker-9");

    let with_cert = client(&ca, Some(identity), false);
    let resp = with_cert
        .get(format!("{base}/who"))
        .send()
        .await
        .expect("who");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let text = resp.text().await.expect("text");
    assert_eq!(
        text,
        format!("worker-9 {} 127.0.0.1", hex_sha256(&der)),
        "handler's view"
    );
    let resp = with_cert
        .post(format!("{base}/hwp.WorkerService/Attach"))
        .send()
        .await
        .expect("hwp");
    assert_eq!(resp.text().await.expect("text"), "served");

    // No certificate: no identity, whatever the headers say, and HWP says no.
    let anonymous = client(&ca, None, true);
    let resp = anonymous
        .get(format!("{base}/who"))
        .header("x-peer-identity", "worker-9")
        .send()
        .await
        .expect("who");
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.text().await.expect("text"), "anonymous 127.0.0.1");
    let resp = anonymous
        .post(format!("{base}/hwp.WorkerService/Attach"))
        .send()
        .await
        .expect("hwp");
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("16"),
        "UNAUTHENTICATED"
    );
    assert_ne!(resp.text().await.expect("text"), "served");
}

#[tokio::test]
async fn a_refused_handshake_does_not_stop_the_server() {
    let pki = Pki::new();
    let base = start(&pki, ClientAuth::All).await;
    let ca = pki.path("ca.pem");
    let rogue = Pki::new();
    let (rogue_identity, _) = rogue.client("intruder");
    for _ in 0..3 {
        let err = client(&ca, Some(rogue_identity.clone()), false)
            .get(format!("{base}/who"))
            .send()
            .await
            .expect_err("a certificate from another CA");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
        let err = client(&ca, None, false)
            .get(format!("{base}/who"))
            .send()
            .await
            .expect_err("no certificate in `all` mode");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
    let (identity, _) = pki.client("after");
    let text = client(&ca, Some(identity), false)
        .get(format!("{base}/who"))
        .send()
        .await
        .expect("who")
        .text()
        .await
        .expect("text");
    assert!(text.starts_with("after "), "{text}");
}
