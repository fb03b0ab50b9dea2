//! [`PeerIdentity`]: who a client proved to be with its certificate.

use rustls::pki_types::CertificateDer;

/// The identity a client proved during the TLS handshake with a certificate
/// chain that verified against the server's `--tls-client-ca`.
///
/// **Contract** (relied on by authentication and authorization): every
/// request that arrived over such a connection carries exactly one
/// `PeerIdentity` in its extensions (`http::Request::extensions()`; in a
/// tonic handler `tonic::Request::extensions()`, which keeps them). A
/// request carries none when the connection is plain HTTP, when TLS runs
/// without a client CA, or when the client presented no certificate (which
/// the `optional` and `workers` client-auth modes allow outside the HWP
/// service). A certificate that did not verify never gets this far: its
/// handshake is refused. A verified certificate without a name (no CN and no
/// DNS subject alternative name) is refused as well, so [`name`] is never
/// empty.
///
/// `hodei certs agent NAME` issues certificates whose CN is the worker name,
/// so an agent's `name` is its worker id.
///
/// [`name`]: PeerIdentity::name
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The subject's common name (CN) if it has one, else its first DNS
    /// subject alternative name. Never empty.
    pub name: String,
    /// Every DNS subject alternative name, in certificate order.
    pub dns_names: Vec<String>,
    /// SHA-256 of the DER certificate, 64 lower-case hex digits: names this
    /// one certificate (a renewed certificate has another fingerprint).
    pub fingerprint_sha256: String,
}

impl PeerIdentity {
    /// The identity of a client's end-entity certificate. `None` when the
    /// certificate cannot be parsed or names no one (no CN, no DNS name).
    /// Call only with a certificate rustls has verified: this reads names,
    /// it does not check signatures or validity.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        let dns_names: Vec<String> = parsed.valid_dns_names().map(str::to_string).collect();
        let name = common_name(parsed.subject())
            .filter(|cn| !cn.is_empty())
            .or_else(|| dns_names.first().cloned())?;
        Some(PeerIdentity {
            name,
            dns_names,
            fingerprint_sha256: sha256_hex(cert.as_ref()),
        })
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// DER tags used below.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;
/// The OID 2.5.4.3 (id-at-commonName), DER-encoded content.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// Reads one DER TLV from the front of `input`: (tag, content, rest).
/// Only low tag numbers and lengths up to 4 bytes: that is all a subject
/// name uses; anything else is `None`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The first common name in a DER `Name`'s content (the RDN sequence without
/// its outer SEQUENCE header, as webpki hands it out).
pub(crate) fn common_name(mut rdns: &[u8]) -> Option<String> {
    while !rdns.is_empty() {
        let (tag, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != TAG_SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = tlv(set)?;
            set = rest;
            if tag != TAG_SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(attribute)?;
            if tag != TAG_OID || oid != OID_COMMON_NAME {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            return match tag {
                TAG_UTF8_STRING | TAG_PRINTABLE_STRING | TAG_IA5_STRING => {
                    std::str::from_utf8(text).ok().map(str::to_string)
                }
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(cn: Option<&str>, dns: &[&str]) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Hodei");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn the_name_is_the_common_name() {
        let der = cert(Some("worker-7"), &["w7.example.net"]);
        let id = PeerIdentity::from_certificate(&der).expect("identity");
        assert_eq!(id.name, "worker-7");
        assert_eq!(id.dns_names, vec!["w7.example.net".to_string()]);
        assert_eq!(id.fingerprint_sha256, sha256_hex(der.as_ref()));
        assert_eq!(id.fingerprint_sha256.len(), 64);
    }

    #[test]
    fn without_a_common_name_the_first_dns_name_is_used() {
        let der = cert(None, &["a.example.net", "b.example.net"]);
        let id = PeerIdentity::from_certificate(&der).expect("identity");
        assert_eq!(id.name, "a.example.net");
        assert_eq!(id.dns_names.len(), 2);
    }

    #[test]
    fn a_certificate_naming_no_one_has_no_identity() {
        assert_eq!(PeerIdentity::from_certificate(&cert(None, &[])), None);
        assert_eq!(
            PeerIdentity::from_certificate(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }

    #[test]
    fn truncated_or_odd_names_are_rejected_without_panicking() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } }
        let good = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b',
        ];
        assert_eq!(common_name(&good).as_deref(), Some("ab"));
        for cut in 0..good.len() {
            assert_eq!(common_name(&good[..cut]), None, "cut at {cut}");
        }
        // Long-form lengths, a high tag number, a length beyond the input.
        assert_eq!(
            common_name(&[
                0x31, 0x81, 0x0b, 0x30, 0x09, 6, 3, 0x55, 4, 3, 0x13, 2, b'x', b'y'
            ])
            .as_deref(),
            Some("xy")
        );
        assert_eq!(common_name(&[0x1f, 0x01, 0x00]), None);
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        // A BMPString CN is not read.
        assert_eq!(
            common_name(&[0x31, 0x0b, 0x30, 0x09, 6, 3, 0x55, 4, 3, 0x1e, 2, 0, b'a']),
            None
        );
    }
}
