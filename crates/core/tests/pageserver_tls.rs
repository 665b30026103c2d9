//! The page server over TLS, with certificates made by GnuTLS's certtool as a
//! CRIU user makes them (Debian package gnutls-bin; .ci/run installs it):
//! a recorded CRIU 4.2 stream over TLS is stored as over TCP; GnuTLS's own
//! client (gnutls-cli, the library CRIU's TLS is) is served; and every
//! certificate CRIU's GnuTLS would refuse is refused, leaving nothing stored.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use predump_core::image::pagemap::Pagemap;
use predump_core::pageserver::tls::{self, TlsOptions};
use predump_core::pageserver::{Server, ServerOptions, ServerReport};

fn reference_stream() -> Vec<u8> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = [
        std::env::var_os("PREDUMP_CRIU_REFERENCE").map(PathBuf::from),
        Some(here.join("../../../shared/criu-reference")),
        Some(PathBuf::from("/work/shared/criu-reference")),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.join("page-server-4.2/wire/s1-predump"))
    .find(|p| p.is_dir())
    .expect("shared/criu-reference next to the project");
    std::fs::read(dir.join("client-to-server.bin")).unwrap()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "predump-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn certtool(dir: &Path, args: &[&str]) {
    let out = Command::new("certtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("certtool (Debian package gnutls-bin) is installed");
    assert!(
        out.status.success(),
        "certtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and certificates signed by it, made with certtool from `template`s.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let pki = Pki {
            dir: TempDir::new(tag),
        };
        pki.key("ca");
        std::fs::write(
            pki.path("ca.tmpl"),
            format!("cn = \"predump test CA {tag}\"\nca\ncert_signing_key\nexpiration_days = 2\n"),
        )
        .unwrap();
        certtool(
            &pki.dir.0,
            &[
                "--generate-self-signed",
                "--load-privkey",
                "ca.key",
                "--template",
                "ca.tmpl",
                "--outfile",
                "ca.pem",
            ],
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn key(&self, name: &str) {
        let key = format!("{name}.key");
        certtool(
            &self.dir.0,
            &["--generate-privkey", "--key-type=ecdsa", "--outfile", &key],
        );
    }

    /// `name.pem` / `name.key`, signed by this CA, with template lines `lines`.
    fn cert(&self, name: &str, lines: &str) -> TlsOptions {
        self.key(name);
        self.sign(name, lines)
    }

    /// `name.pem` for the key already at `name.key`, signed by this CA.
    fn sign(&self, name: &str, lines: &str) -> TlsOptions {
        let tmpl = format!("{name}.tmpl");
        std::fs::write(self.path(&tmpl), format!("{lines}\nexpiration_days = 2\n")).unwrap();
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        certtool(
            &self.dir.0,
            &[
                "--generate-certificate",
                "--load-privkey",
                &key,
                "--load-ca-certificate",
                "ca.pem",
                "--load-ca-privkey",
                "ca.key",
                "--template",
                &tmpl,
                "--outfile",
                &pem,
            ],
        );
        TlsOptions {
            cacert: Some(self.path("ca.pem")),
            cacrl: None,
            cert: Some(self.path(&pem)),
            key: Some(self.path(&key)),
            no_cn_verify: false,
        }
    }
}

/// A certificate for both ends of a loopback connection, as CRIU's test
/// setup uses one.
const LOOPBACK: &str =
    "cn = \"page server\"\nip_address = \"127.0.0.1\"\ntls_www_server\ntls_www_client\nsigning_key";
/// A certificate as the usual certtool recipe makes it: a host name in the CN,
/// no alternative names, TLS server use only.
const CN_ONLY: &str = "cn = \"localhost\"\ntls_www_server\nsigning_key\nencryption_key";

struct Running {
    port: u16,
    done: std::thread::JoinHandle<predump_core::Result<ServerReport>>,
    dir: TempDir,
}

fn serve(server_tls: &TlsOptions) -> Running {
    let dir = TempDir::new("images");
    let server = Server::listen(Some("127.0.0.1"), 0, Some(server_tls)).unwrap();
    let port = server.local_addr().port();
    let options = ServerOptions {
        dir: dir.0.clone(),
        timeout: Some(Duration::from_secs(30)),
    };
    let done = std::thread::spawn(move || server.serve(&options));
    Running { port, done, dir }
}

/// Sends `stream` over TLS as a client configured with `client_tls`, checking
/// the server's certificate against `name`; returns the replies.
fn send_tls(
    port: u16,
    client_tls: &TlsOptions,
    name: &str,
    stream: &[u8],
) -> std::io::Result<Vec<u8>> {
    let config: Arc<rustls::ClientConfig> = tls::client_config(client_tls, name).unwrap();
    let conn = rustls::ClientConnection::new(config, tls::server_name(name)).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(stream)?;
    s.flush()?;
    // The three replies of a pre-dump (PARENT, OPEN2, CLOSE), then goodbye as
    // CRIU's client says it (close_notify), then the server's.
    let mut replies = vec![0u8; 9];
    s.read_exact(&mut replies)?;
    s.conn.send_close_notify();
    s.flush()?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(replies)
}

fn stored(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_recorded_criu_stream_over_tls_is_stored_as_over_tcp() {
    let pki = Pki::new("ok");
    let both = pki.cert("both", LOOPBACK);
    let r = serve(&both);
    let stream = reference_stream();
    let replies = send_tls(r.port, &both, "127.0.0.1", &stream).unwrap();
    assert_eq!(replies, [0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let report = r.done.join().unwrap().unwrap();
    assert!(report.tls);
    assert_eq!(report.page_bytes, 487 * 4096);
    let file = r.dir.0.join("pagemap-9740.img");
    let map = Pagemap::decode(&std::fs::read(&file).unwrap(), "pagemap").unwrap();
    assert_eq!((map.pages_id, map.entries.len()), (65537, 35));
}

/// A key certtool wrote for a P-256 scalar whose top byte is zero (one key in
/// 256): its privateKey is 31 bytes, which ring refuses as it stands. A test
/// key, made for this test and used nowhere else.
const SHORT_SCALAR_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHYCAQEEH2v896sLJjfMKsUICArQnGvpdrDYv89vAEmZ8QOWxNqgCgYIKoZIzj0D
AQehRANCAAQl4PiMCFClz8Qet4NfRz9OiUZbwGxtKUIfTZc6Uk+k/ttJEFPTb2nS
gdhyCsxeKZh2foUUN2RdR4c62dem6qrx
-----END EC PRIVATE KEY-----
";

#[test]
fn a_certtool_key_with_a_short_scalar_is_loaded() {
    let pki = Pki::new("short");
    std::fs::write(pki.path("short.key"), SHORT_SCALAR_KEY).unwrap();
    let short = pki.sign("short", LOOPBACK);
    let r = serve(&short);
    let replies = send_tls(r.port, &short, "127.0.0.1", &reference_stream()).unwrap();
    assert_eq!(replies, [0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(r.done.join().unwrap().unwrap().tls);
}

#[test]
fn gnutls_own_client_is_served() {
    let pki = Pki::new("gnutls");
    let both = pki.cert("both", LOOPBACK);
    let r = serve(&both);
    // gnutls-cli: GnuTLS 3.7 with its default priorities, as Debian's criu.
    let mut cli = Command::new("gnutls-cli")
        .args([
            "--x509cafile",
            "ca.pem",
            "--x509certfile",
            "both.pem",
            "--x509keyfile",
            "both.key",
        ])
        .args(["-p", &r.port.to_string(), "127.0.0.1"])
        .current_dir(&pki.dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gnutls-cli (Debian package gnutls-bin) is installed");
    cli.stdin
        .take()
        .unwrap()
        .write_all(&reference_stream())
        .unwrap();
    let out = cli.wait_with_output().unwrap();
    let report = r.done.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.tls);
    assert_eq!(report.pagemaps[0].pages_present, 487);
    // gnutls-cli prints its own messages around what the server sent.
    let shown = String::from_utf8_lossy(&out.stdout);
    let banner = "Simple Client Mode:\n\n";
    let at = shown.find(banner).expect("gnutls-cli's banner") + banner.len();
    assert_eq!(&out.stdout[at..at + 9], &[0; 9], "{shown}");
}

#[test]
fn certificates_gnutls_would_refuse_are_refused_and_nothing_is_stored() {
    let pki = Pki::new("refuse");
    let both = pki.cert("both", LOOPBACK);
    let cn_only = pki.cert("cn", CN_ONLY);
    let other_ca = Pki::new("stranger");
    let stranger = other_ca.cert("x", LOOPBACK);
    let stream = reference_stream();

    // The server does not trust the client's CA.
    let r = serve(&both);
    let client = TlsOptions {
        cacert: both.cacert.clone(),
        ..stranger.clone()
    };
    assert!(send_tls(r.port, &client, "127.0.0.1", &stream).is_err());
    let e = r.done.join().unwrap().unwrap_err();
    assert_eq!(e.code(), "ETLS", "{e}");
    assert!(e.to_string().contains("handshake"), "{e}");
    assert!(stored(&r.dir.0).is_empty());

    // The client does not trust the server's: its handshake fails, and so
    // does the server's.
    let r = serve(&TlsOptions {
        cacert: both.cacert.clone(),
        ..stranger.clone()
    });
    let e = send_tls(r.port, &both, "127.0.0.1", &stream).unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert_eq!(r.done.join().unwrap().unwrap_err().code(), "ETLS");

    // A name mismatch: the client connects to 127.0.0.1 but the server's
    // certificate names localhost (in its CN); an IP is matched against
    // alternative names only, as GnuTLS >= 3.6 does.
    let r = serve(&TlsOptions {
        no_cn_verify: true,
        ..cn_only.clone()
    });
    let e = send_tls(r.port, &both, "127.0.0.1", &stream).unwrap_err();
    assert!(e.to_string().contains("NotValidForName"), "{e}");
    let _ = r.done.join();
    // ... and --tls-no-cn-verify accepts it.
    let r = serve(&TlsOptions {
        no_cn_verify: true,
        ..cn_only.clone()
    });
    let client = TlsOptions {
        no_cn_verify: true,
        ..both.clone()
    };
    assert_eq!(
        send_tls(r.port, &client, "127.0.0.1", &stream)
            .unwrap()
            .len(),
        9
    );
    assert!(r.done.join().unwrap().unwrap().tls);

    // CRIU's server checks a client's certificate against its own --address.
    let r = serve(&both);
    let _ = send_tls(r.port, &cn_only, "127.0.0.1", &stream);
    let e = r.done.join().unwrap().unwrap_err();
    assert_eq!(e.code(), "ETLS");
    assert!(e.to_string().contains("not valid for 127.0.0.1"), "{e}");
    assert!(e.to_string().contains("--tls-no-cn-verify"), "{e}");
    assert!(stored(&r.dir.0).is_empty());
}

#[test]
fn names_are_matched_as_gnutls_matches_them() {
    let pki = Pki::new("names");
    pki.cert("cn", CN_ONLY);
    pki.cert("both", LOOPBACK);
    pki.cert(
        "dns",
        "cn = \"localhost\"\ndns_name = \"*.pageserver.test\"\nsigning_key",
    );
    let der = |name: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(pki.path(&format!("{name}.pem"))).unwrap()
    };
    // No alternative names: a host name is matched against the CN.
    assert!(tls::check_name(&der("cn"), "localhost").is_ok());
    assert!(tls::check_name(&der("cn"), "LOCALHOST.").is_ok());
    assert!(tls::check_name(&der("cn"), "other").is_err());
    assert!(tls::check_name(&der("cn"), "127.0.0.1").is_err());
    // An IP only against iPAddress names; a host name still against the CN
    // when there is no dNSName (as GnuTLS).
    assert!(tls::check_name(&der("both"), "127.0.0.1").is_ok());
    assert!(tls::check_name(&der("both"), "::1").is_err());
    assert!(tls::check_name(&der("both"), "page server").is_ok());
    // With a dNSName, the CN is not looked at; a wildcard covers one label.
    assert!(tls::check_name(&der("dns"), "a.pageserver.test").is_ok());
    assert!(tls::check_name(&der("dns"), "a.b.pageserver.test").is_err());
    assert!(tls::check_name(&der("dns"), "localhost").is_err());
}

#[test]
fn a_server_only_certificate_is_accepted_from_a_client_as_gnutls_does() {
    // certtool's tls_www_server alone, used on both ends (common in CRIU
    // setups): GnuTLS does not look at the purpose; webpki would refuse it.
    let pki = Pki::new("purpose");
    let cn_only = pki.cert("cn", CN_ONLY);
    let r = serve(&TlsOptions {
        no_cn_verify: true,
        ..cn_only.clone()
    });
    let replies = send_tls(r.port, &cn_only, "localhost", &reference_stream()).unwrap();
    assert_eq!(replies.len(), 9);
    assert!(r.done.join().unwrap().unwrap().tls);
}

#[test]
fn unreadable_tls_files_are_said_before_listening() {
    let missing = TlsOptions {
        cacert: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let e = Server::listen(Some("127.0.0.1"), 0, Some(&missing))
        .err()
        .unwrap();
    assert_eq!(e.code(), "ETLS");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    let pki = Pki::new("files");
    let both = pki.cert("both", LOOPBACK);
    let swapped = TlsOptions {
        key: both.cert.clone(),
        ..both.clone()
    };
    let e = Server::listen(Some("127.0.0.1"), 0, Some(&swapped))
        .err()
        .unwrap();
    assert_eq!(e.code(), "ETLS");
    assert!(e.to_string().contains("private key"), "{e}");
}

#[test]
fn predumps_client_over_tls_reaches_predumps_server_and_gnutls_own_server() {
    use predump_core::pageserver::client::{Client, ClientOptions};
    use predump_core::pageserver::link::Abort;
    use predump_core::pageserver::wire::{Dst, Format};
    let pki = Pki::new("client");
    let both = pki.cert("both", LOOPBACK);
    let options = |port| ClientOptions {
        address: "127.0.0.1".into(),
        port,
        format: Format::Criu42,
        tls: Some(both.clone()),
        timeout: Duration::from_secs(30),
    };
    // predump's server.
    let r = serve(&both);
    let mut client = Client::connect(&options(r.port), &Abort::new().unwrap()).unwrap();
    let dst = Dst::process(7);
    assert!(!client.parent(dst).unwrap());
    assert!(!client.open(dst).unwrap());
    client
        .pages(
            dst,
            0x1000,
            predump_core::pageserver::wire::PE_PRESENT,
            &vec![3u8; 8192],
        )
        .unwrap();
    client.close().unwrap();
    let report = r.done.join().unwrap().unwrap();
    assert!(report.tls);
    assert_eq!(
        std::fs::read(r.dir.0.join("pages-65537.img")).unwrap(),
        vec![3u8; 8192]
    );

    // gnutls-serv, requiring and verifying our certificate: the handshake
    // completes on our side (we accepted its certificate) and it says it
    // trusts ours (stdout line-buffered with stdbuf, to be read as it comes).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serv = Command::new("stdbuf")
        .args(["-oL", "gnutls-serv", "--echo", "-p", &port.to_string()])
        .args([
            "--x509cafile",
            "ca.pem",
            "--x509certfile",
            "both.pem",
            "--x509keyfile",
            "both.key",
        ])
        .args(["--require-client-cert", "--verify-client-cert"])
        .current_dir(&pki.dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gnutls-serv (Debian package gnutls-bin) is installed");
    // It says on stderr when it listens.
    let mut err = std::io::BufReader::new(serv.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "{line}");
    let client = Client::connect(&options(port), &Abort::new().unwrap());
    let mut out = std::io::BufReader::new(serv.stdout.take().unwrap());
    let mut status = String::new();
    while !status.starts_with("- Status:") {
        status.clear();
        if std::io::BufRead::read_line(&mut out, &mut status).unwrap() == 0 {
            break;
        }
    }
    drop(client);
    let _ = serv.kill();
    let _ = serv.wait();
    assert!(
        status.contains("The certificate is trusted"),
        "gnutls-serv said: {status}"
    );
}

/// More page data than the server's decrypted buffers hold at once (4 of
/// 1 MiB), in ranges that do not fill them evenly: every buffer is reused
/// while its earlier bytes may still be on their way into the image, and the
/// image holds exactly what was sent.
#[test]
fn tls_page_data_larger_than_the_servers_buffers_is_stored_exactly() {
    use predump_core::pageserver::client::{Client, ClientOptions};
    use predump_core::pageserver::link::Abort;
    use predump_core::pageserver::wire::{Dst, Format, PE_PRESENT};
    let pki = Pki::new("bulk");
    let both = pki.cert("both", LOOPBACK);
    let r = serve(&both);
    let options = ClientOptions {
        address: "127.0.0.1".into(),
        port: r.port,
        format: Format::Criu42,
        tls: Some(both.clone()),
        timeout: Duration::from_secs(30),
    };
    let mut client = Client::connect(&options, &Abort::new().unwrap()).unwrap();
    let dst = Dst::process(7);
    assert!(!client.parent(dst).unwrap());
    assert!(!client.open(dst).unwrap());
    let mut want = Vec::new();
    let mut at = 0x10000u64;
    for (i, pages) in [1536u64, 5, 700, 1].into_iter().enumerate() {
        let data: Vec<u8> = (0..pages * 4096)
            .map(|b| (b / 4096 * 7 + b % 251 + i as u64) as u8)
            .collect();
        client.pages(dst, at, PE_PRESENT, &data).unwrap();
        want.extend_from_slice(&data);
        at += (pages + 3) * 4096;
    }
    client.close().unwrap();
    let report = r.done.join().unwrap().unwrap();
    assert_eq!(report.pagemaps[0].pages_present, 1536 + 5 + 700 + 1);
    let got = std::fs::read(r.dir.0.join("pages-65537.img")).unwrap();
    assert!(got == want, "the image differs from what was sent");
}
