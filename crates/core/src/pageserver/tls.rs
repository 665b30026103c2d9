//! TLS for page-server connections, with CRIU's options and CRIU's rules
//! (criu/tls.c, which uses GnuTLS), on rustls:
//!
//! - X.509 both ways: the server demands a client certificate, and each side
//!   checks the other's chain against its CA file (`--tls-cacert`; without
//!   it the system's trusted CAs and, if present, /etc/pki/CA/cacert.pem),
//!   and the revocation list (`--tls-cacrl`, else /etc/pki/CA/cacrl.pem if
//!   present).
//! - Each side presents `--tls-cert` / `--tls-key` (default
//!   /etc/pki/criu/cert.pem and /etc/pki/criu/private/key.pem), PEM.
//! - Names, unless `--tls-no-cn-verify`: the client checks the server's
//!   certificate against the `--address` it connects to; CRIU's server checks
//!   the client's certificate against *its own* `--address` when it has one
//!   (GnuTLS is handed `opts.addr` on both sides), and so does predump's, so
//!   that a setup that works with CRIU works here. Names are matched as GnuTLS
//!   matches them: an IP address against the iPAddress entries of the subject
//!   alternative names, a host name against their dNSName entries (with a
//!   leftmost `*`), or against the subject's CN when there are none.
//!
//! The chain, validity and revocation checks are webpki's (rustls's
//! verifiers). GnuTLS does not look at a certificate's extended key usage
//! when CRIU verifies a peer, and CRIU setups often use one certificate (made
//! with certtool's `tls_www_server`) on both ends; webpki would refuse it as
//! a client certificate. So a certificate refused for its purpose alone is
//! verified again, whole chain included, for the other TLS purpose, and
//! accepted if that passes.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::{Error, Result};

pub const DEFAULT_CACERT: &str = "/etc/pki/CA/cacert.pem";
pub const DEFAULT_CACRL: &str = "/etc/pki/CA/cacrl.pem";
pub const DEFAULT_CERT: &str = "/etc/pki/criu/cert.pem";
pub const DEFAULT_KEY: &str = "/etc/pki/criu/private/key.pem";

/// CRIU's `--tls*` options.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cacrl: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub no_cn_verify: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: impl fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// The trusted CAs: `--tls-cacert` alone, or the system's and CRIU's default file.
fn roots(o: &TlsOptions) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    let file = match &o.cacert {
        Some(f) => Some(f.clone()),
        None => {
            // As GnuTLS's system trust: whatever of it loads.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Some(PathBuf::from(DEFAULT_CACERT)).filter(|p| p.exists())
        }
    };
    if let Some(file) = file {
        let mut added = 0;
        for cert in read_certs(&file, "CA certificate")? {
            roots.add(cert).map_err(|e| {
                tls_error(format!(
                    "{}: a CA certificate is not usable: {e}",
                    file.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(tls_error(format!(
                "{}: no CA certificate in it",
                file.display()
            )));
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            "no trusted CA certificate: give one with --tls-cacert (CRIU's default, /etc/pki/CA/cacert.pem, is missing)",
        ));
    }
    Ok(Arc::new(roots))
}

fn read_certs(file: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let iter = CertificateDer::pem_file_iter(file).map_err(|e| {
        tls_error(format!(
            "cannot read the {what} file {}: {e}",
            file.display()
        ))
    })?;
    let certs: Vec<_> = iter
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_error(format!("{}: not a PEM {what} file: {e}", file.display())))?;
    Ok(certs)
}

fn crls(o: &TlsOptions) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let file = match &o.cacrl {
        Some(f) => f.clone(),
        None if Path::new(DEFAULT_CACRL).exists() => PathBuf::from(DEFAULT_CACRL),
        None => return Ok(Vec::new()),
    };
    CertificateRevocationListDer::pem_file_iter(&file)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_error(format!(
                "cannot read the revocation list {}: {e}",
                file.display()
            ))
        })
}

/// Our certificate chain and key.
fn identity(o: &TlsOptions) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert = o.cert.clone().unwrap_or_else(|| DEFAULT_CERT.into());
    let key = o.key.clone().unwrap_or_else(|| DEFAULT_KEY.into());
    let certs = read_certs(&cert, "certificate")?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
        tls_error(format!(
            "cannot read the private key {}: {e}",
            key.display()
        ))
    })?;
    Ok((certs, gnutls_sec1(key)))
}

/// GnuTLS (certtool 3.7, Debian 12) writes an EC private key's scalar as if
/// it were an INTEGER: 33 bytes with a leading zero when its top bit is set
/// (half of certtool's ECDSA keys), 31 or fewer when its top byte is zero (one
/// in 256). RFC 5915 wants exactly the curve's size, and ring refuses anything
/// else, so such a key is re-encoded at the curve's size; anything else is
/// left as it is.
fn gnutls_sec1(key: PrivateKeyDer<'static>) -> PrivateKeyDer<'static> {
    let PrivateKeyDer::Sec1(sec1) = &key else {
        return key;
    };
    match fit_scalar(sec1.secret_sec1_der()) {
        Some(fixed) => PrivateKeyDer::Sec1(fixed.into()),
        None => key,
    }
}

/// One DER tag-length-value at the front of `b`: (tag, value, bytes used).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        (
            rest[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize),
            2 + n,
        )
    };
    let value = b.get(head..head + len)?;
    Some((tag, value, head + len))
}

fn der_push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
}

/// The curve's size in bytes, from an ECPrivateKey's optional fields: the
/// `[1]` public key (an uncompressed point: 0x04, X, Y) or the `[0]` curve OID.
fn curve_bytes(mut fields: &[u8]) -> Option<usize> {
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    let mut by_oid = None;
    while let Some((tag, value, used)) = der_tlv(fields) {
        match der_tlv(value) {
            Some((0x03, bits, _)) if tag == 0xa1 && bits.len() > 2 && bits[1] == 0x04 => {
                return Some((bits.len() - 2) / 2);
            }
            Some((0x06, oid, _)) if tag == 0xa0 => {
                by_oid = [(P256, 32), (P384, 48), (P521, 66)]
                    .into_iter()
                    .find(|(o, _)| *o == oid)
                    .map(|(_, n)| n);
            }
            _ => {}
        }
        fields = &fields[used..];
    }
    by_oid
}

/// `ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING,
/// [0] parameters, [1] publicKey }` with the privateKey at the curve's size
/// (leading zeros removed or added), if it is not already.
fn fit_scalar(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, seq, used) = der_tlv(der)?;
    if tag != 0x30 || used != der.len() {
        return None;
    }
    let (vtag, _, vlen) = der_tlv(seq)?;
    let (ktag, scalar, klen) = der_tlv(&seq[vlen..])?;
    if vtag != 0x02 || ktag != 0x04 {
        return None;
    }
    let size = curve_bytes(&seq[vlen + klen..])?;
    let value = &scalar[scalar.iter().position(|&b| b != 0).unwrap_or(scalar.len())..];
    if scalar.len() == size || value.len() > size {
        return None;
    }
    let mut fitted = vec![0u8; size - value.len()];
    fitted.extend_from_slice(value);
    let mut body = seq[..vlen].to_vec();
    der_push(&mut body, 0x04, &fitted);
    body.extend_from_slice(&seq[vlen + klen..]);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_push(&mut out, 0x30, &body);
    Some(out)
}

/// Both of webpki's verifiers over the same trust: one per TLS purpose.
fn verifiers(o: &TlsOptions, provider: &Arc<CryptoProvider>) -> Result<Purposes> {
    let (roots, crls) = (roots(o)?, crls(o)?);
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .build()
        .map_err(|e| tls_error(format!("client certificate checks: {e}")))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| tls_error(format!("server certificate checks: {e}")))?;
    Ok(Purposes { client, server })
}

#[derive(Debug)]
struct Purposes {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

fn wrong_purpose(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )
    )
}

fn wrong_name(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl Purposes {
    /// The whole chain verified as a TLS server's (its name aside).
    fn as_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<(), rustls::Error> {
        // webpki checks the name last: asked for a name no certificate holds,
        // a "not valid for name" error means everything else passed.
        let nobody = ServerName::try_from("predump.invalid").expect("a valid name");
        match self
            .server
            .verify_server_cert(end_entity, intermediates, &nobody, ocsp, now)
        {
            Ok(_) => Ok(()),
            Err(e) if wrong_name(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The whole chain verified as a TLS client's.
    fn as_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<(), rustls::Error> {
        self.client
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }
}

/// A client's certificate: chain as webpki's, purpose as GnuTLS's (none).
#[derive(Debug)]
struct ClientAsGnutls(Purposes);

impl ClientCertVerifier for ClientAsGnutls {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // CRIU's server does not advertise its CAs either.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        match self.0.as_client(end_entity, intermediates, now) {
            Ok(()) => {}
            Err(e) if wrong_purpose(&e) => self.0.as_server(end_entity, intermediates, &[], now)?,
            Err(e) => return Err(e),
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.client.supported_verify_schemes()
    }
}

/// The server's configuration: a client certificate is required.
pub fn server_config(o: &TlsOptions) -> Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(ClientAsGnutls(verifiers(o, &provider)?));
    let (certs, key) = identity(o)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(format!("our certificate and key: {e}")))?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client's configuration, checking the server's certificate against
/// `peer_name` (the address connected to) unless `no_cn_verify`.
pub fn client_config(o: &TlsOptions, peer_name: &str) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(ServerAsGnutls {
        purposes: verifiers(o, &provider)?,
        name: (!o.no_cn_verify).then(|| peer_name.to_string()),
    });
    let (certs, key) = identity(o)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls_error(format!("our certificate and key: {e}")))?;
    // CRIU's client sends no server name.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The server name given to rustls (no SNI is sent; the name is checked by
/// [`ServerAsGnutls`]).
pub fn server_name(peer: &str) -> ServerName<'static> {
    match peer.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(peer.to_string())
            .unwrap_or_else(|_| ServerName::try_from("predump.invalid").expect("a valid name")),
    }
}

/// A server's certificate: chain as webpki's, purpose and name as GnuTLS's.
#[derive(Debug)]
struct ServerAsGnutls {
    purposes: Purposes,
    /// None: `--tls-no-cn-verify`.
    name: Option<String>,
}

impl ServerCertVerifier for ServerAsGnutls {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let p = &self.purposes;
        match p.as_server(end_entity, intermediates, ocsp_response, now) {
            Ok(()) => {}
            Err(e) if wrong_purpose(&e) => p.as_client(end_entity, intermediates, now)?,
            Err(e) => return Err(e),
        }
        if let Some(name) = &self.name {
            check_name(end_entity, name).map_err(|_| {
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.purposes
            .server
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.purposes
            .server
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.purposes.server.supported_verify_schemes()
    }
}

/// Whether `cert` names `name` as GnuTLS's `gnutls_x509_crt_check_hostname`
/// (3.6 and later) decides: an IP address only against iPAddress alternative
/// names; a host name against dNSName alternative names (case-insensitive, a
/// `*` allowed as the whole leftmost label), or, when the certificate has
/// none, against its subject's common name.
pub fn check_name(cert: &CertificateDer<'_>, name: &str) -> std::result::Result<(), String> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let sans: Vec<GeneralName<'_>> = match x.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subject alternative names: {e}")),
    };
    let subject = x.subject().to_string();
    let refuse = || format!("the certificate ({subject}) is not valid for {name}");
    if let Ok(ip) = name.parse::<IpAddr>() {
        let want: Vec<u8> = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let found = sans
            .iter()
            .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == want.as_slice()));
        return if found { Ok(()) } else { Err(refuse()) };
    }
    let dns: Vec<&str> = sans
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    let ok = if dns.is_empty() {
        x.subject()
            .iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
            .is_some_and(|cn| host_matches(cn, name))
    } else {
        dns.iter().any(|d| host_matches(d, name))
    };
    if ok {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// A certificate's host pattern against a host name: equal ignoring case and a
/// final dot, or `*.rest` matching exactly one leftmost label.
fn host_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(rest) => match h.split_once('.') {
            // A wildcard covers one label, and never a bare top-level domain.
            Some((label, hrest)) => !label.is_empty() && hrest == rest && rest.contains('.'),
            None => false,
        },
        None => p == h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ECPrivateKey: version 1, `scalar`, the P-256 OID, and a public
    /// key of `point` bytes (0x04 X Y) if any.
    fn ec_key(scalar: &[u8], point: Option<usize>) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x01];
        der_push(&mut body, 0x04, scalar);
        let mut oid = Vec::new();
        der_push(
            &mut oid,
            0x06,
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        );
        der_push(&mut body, 0xa0, &oid);
        if let Some(n) = point {
            let mut bits = vec![0x00, 0x04];
            bits.extend(std::iter::repeat_n(0x11, n - 1));
            let mut bit_string = Vec::new();
            der_push(&mut bit_string, 0x03, &bits);
            der_push(&mut body, 0xa1, &bit_string);
        }
        let mut der = Vec::new();
        der_push(&mut der, 0x30, &body);
        der
    }

    fn scalar_of(der: &[u8]) -> Vec<u8> {
        let (_, seq, _) = der_tlv(der).unwrap();
        let (_, _, vlen) = der_tlv(seq).unwrap();
        der_tlv(&seq[vlen..]).unwrap().1.to_vec()
    }

    #[test]
    fn a_gnutls_ec_key_is_refitted_to_the_curve_size_and_nothing_else() {
        // 33 bytes (a leading zero before a top bit), with a public key.
        let mut long = vec![0u8];
        long.extend_from_slice(&[0xff; 32]);
        let der = ec_key(&long, Some(65));
        let fixed = fit_scalar(&der).unwrap();
        assert_eq!(scalar_of(&fixed), vec![0xff; 32]);
        let tail = |d: &[u8]| {
            let (_, seq, _) = der_tlv(d).unwrap();
            let n = seq.len();
            seq[n - 80..].to_vec()
        };
        assert_eq!(tail(&fixed), tail(&der));
        // 31 bytes (the top byte was zero), known by the curve's OID alone.
        let short = vec![0x42; 31];
        let fixed = fit_scalar(&ec_key(&short, None)).unwrap();
        let mut want = vec![0u8];
        want.extend_from_slice(&short);
        assert_eq!(scalar_of(&fixed), want);
        // A key that is right already, or not an EC key at all, is left alone.
        assert_eq!(fit_scalar(&fixed), None);
        assert_eq!(fit_scalar(&ec_key(&[0x42; 32], Some(65))), None);
        assert_eq!(fit_scalar(&[0x30, 0x00]), None);
        assert_eq!(fit_scalar(&[0x30, 0x85, 0, 0]), None);
    }

    #[test]
    fn host_patterns_match_as_gnutls_does() {
        assert!(host_matches(
            "Page-Server.example.org",
            "page-server.EXAMPLE.org."
        ));
        assert!(host_matches("*.example.org", "a.example.org"));
        assert!(!host_matches("*.example.org", "a.b.example.org"));
        assert!(!host_matches("*.example.org", "example.org"));
        assert!(!host_matches("*.org", "example.org"));
        assert!(!host_matches("example.org", "example.com"));
    }
}
