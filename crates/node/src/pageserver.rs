//! The page server's binding: listen (synchronous: a bind is quick), then serve
//! one client on a thread of its own, abortable from JavaScript.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use predump_core::pageserver::client::ClientOptions;
use predump_core::pageserver::link::Abort;
use predump_core::pageserver::sender::ServerPages;
use predump_core::pageserver::wire::{DstKind, Format};
use predump_core::pageserver::{Server, ServerOptions, ServerReport};
use predump_core::predump::PagesDest;

use crate::{js_error, on_own_thread};

#[napi(object)]
pub struct PageServerListen {
    /// An IPv4 or IPv6 address; absent: every IPv4 address (as CRIU).
    pub address: Option<String>,
    /// 0: a port the kernel picks.
    pub port: u32,
    /// TLS with CRIU's options (absent: plain TCP).
    pub tls: Option<TlsOptions>,
}

/// CRIU's `--tls-*` options; absent paths are CRIU's defaults.
#[napi(object)]
pub struct TlsOptions {
    pub cacert: Option<String>,
    pub cacrl: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub no_cn_verify: Option<bool>,
}

impl TlsOptions {
    pub(crate) fn to_core(&self) -> predump_core::pageserver::tls::TlsOptions {
        predump_core::pageserver::tls::TlsOptions {
            cacert: self.cacert.as_ref().map(PathBuf::from),
            cacrl: self.cacrl.as_ref().map(PathBuf::from),
            cert: self.cert.as_ref().map(PathBuf::from),
            key: self.key.as_ref().map(PathBuf::from),
            no_cn_verify: self.no_cn_verify.unwrap_or(false),
        }
    }
}

#[napi(object)]
pub struct PageServerServe {
    /// The images directory (must exist; its `parent` link is the parent).
    pub dir: String,
    /// How long one read may wait for the client, in ms (absent: no limit).
    pub timeout_ms: Option<u32>,
}

/// One pagemap received.
#[napi(object)]
pub struct ReceivedPagemap {
    /// "process" or "shmem".
    pub kind: String,
    pub id: f64,
    pub pagemap_file: String,
    pub pages_file: String,
    pub pages_id: u32,
    pub has_parent: bool,
    pub entries: f64,
    pub pages_present: f64,
    pub pages_parent: f64,
    pub pages_lazy: f64,
}

/// What a page-server session did. Times in microseconds.
#[napi(object)]
pub struct PageServerReport {
    pub local: String,
    pub peer: Option<String>,
    /// "criu-4.1" (24-byte headers) or "criu-4.2" (32); absent: only a close came.
    pub format: Option<String>,
    pub tls: bool,
    pub pagemaps: Vec<ReceivedPagemap>,
    pub bytes_received: f64,
    pub page_bytes: f64,
    pub time_us: f64,
    pub write_us: f64,
    pub warnings: Vec<String>,
}

/// A page server listening for its one client.
#[napi]
pub struct PageServer {
    server: Mutex<Option<Server>>,
    abort: Abort,
    address: String,
    port: u32,
}

#[napi]
impl PageServer {
    /// Listens (throws with `code` if the address cannot be used).
    #[napi(factory)]
    pub fn listen(env: Env, options: PageServerListen) -> Result<PageServer> {
        let port = u16::try_from(options.port).map_err(|_| {
            Error::new(
                Status::InvalidArg,
                format!("port {} is not a TCP port", options.port),
            )
        })?;
        let tls = options.tls.as_ref().map(TlsOptions::to_core);
        let server = Server::listen(options.address.as_deref(), port, tls.as_ref())
            .map_err(|e| js_error(&env, &e))?;
        let local = server.local_addr();
        Ok(PageServer {
            abort: server.abort_handle(),
            address: local.ip().to_string(),
            port: local.port() as u32,
            server: Mutex::new(Some(server)),
        })
    }

    /// The address listened on.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// The port listened on (the kernel's choice for 0).
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for one client and stores what it sends; rejects with `code` on
    /// failure, the images of the session removed. Callable once.
    #[napi(ts_return_type = "Promise<PageServerReport>")]
    pub fn serve<'env>(&self, env: &'env Env, options: PageServerServe) -> Result<Object<'env>> {
        let server = self
            .server
            .lock()
            .map_err(|_| Error::from_reason("page server state poisoned"))?
            .take()
            .ok_or_else(|| Error::from_reason("this page server has served already"))?;
        let options = ServerOptions {
            dir: PathBuf::from(options.dir),
            timeout: options
                .timeout_ms
                .map(|ms| Duration::from_millis(ms as u64)),
        };
        on_own_thread(env, move || server.serve(&options).map(report))
    }

    /// Stops waiting (for the client, or for its data): `serve` then rejects
    /// with EINTERRUPTED. A server that never served closes its port now.
    #[napi]
    pub fn abort(&self) {
        self.abort.abort();
        if let Ok(mut unserved) = self.server.lock() {
            unserved.take();
        }
    }
}

fn report(r: ServerReport) -> PageServerReport {
    PageServerReport {
        local: r.local.to_string(),
        peer: r.peer.map(|p| p.to_string()),
        format: r.format.map(|f| f.name().to_string()),
        tls: r.tls,
        pagemaps: r
            .pagemaps
            .into_iter()
            .map(|p| ReceivedPagemap {
                kind: match p.dst.kind {
                    DstKind::Process => "process",
                    DstKind::Shmem => "shmem",
                }
                .to_string(),
                id: p.dst.id as f64,
                pagemap_file: p.pagemap_file,
                pages_file: p.pages_file,
                pages_id: p.pages_id,
                has_parent: p.has_parent,
                entries: p.entries as f64,
                pages_present: p.pages_present as f64,
                pages_parent: p.pages_parent as f64,
                pages_lazy: p.pages_lazy as f64,
            })
            .collect(),
        bytes_received: r.bytes_received as f64,
        page_bytes: r.page_bytes as f64,
        time_us: r.time.as_secs_f64() * 1e6,
        write_us: r.write_time.as_secs_f64() * 1e6,
        warnings: r.warnings,
    }
}

/// Where `preDumpToServer` sends the pages.
#[napi(object)]
pub struct PageServerClient {
    pub address: String,
    pub port: u32,
    /// "criu-4.2" (32-byte headers: CRIU 4.2 and later, predump) or "criu-4.1"
    /// (24-byte headers: CRIU up to 4.1).
    pub format: String,
    pub tls: Option<TlsOptions>,
    /// How long a connect or any wait for the server may take, in ms.
    pub timeout_ms: u32,
}

/// What was sent, besides the pre-dump's own report.
#[napi(object)]
pub struct PageServerSent {
    /// The server's parent images hold this process's pagemap.
    pub has_parent: bool,
    /// The pagemap as sent: [vaddr, nrPages, flags] triples, flat, in order.
    pub entries: Float64Array,
    pub headers: f64,
    pub page_bytes: f64,
    pub bytes_sent: f64,
    pub send_us: f64,
    /// From the connect to the server's answer to PS_IOV_CLOSE.
    pub session_us: f64,
}

/// The client's options from JavaScript's, checked.
pub(crate) fn client_options(server: PageServerClient) -> Result<ClientOptions> {
    let format = Format::from_name(&server.format).ok_or_else(|| {
        Error::new(
            Status::InvalidArg,
            format!(
                "unknown page-server header format '{}': use criu-4.2 or criu-4.1",
                server.format
            ),
        )
    })?;
    let port = u16::try_from(server.port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| {
            Error::new(
                Status::InvalidArg,
                format!("port {} is not a TCP port", server.port),
            )
        })?;
    Ok(ClientOptions {
        address: server.address,
        port,
        format,
        tls: server.tls.as_ref().map(TlsOptions::to_core),
        timeout: Duration::from_millis(server.timeout_ms.max(1) as u64),
    })
}

#[napi(object)]
pub struct PreDumpSentReport {
    pub report: crate::PreDumpReport,
    pub sent: PageServerSent,
}

/// A pre-dump whose pages go to a page server (`imagesDir` is not used): the
/// connection and PS_IOV_PARENT come before the target is touched, so that a
/// server that cannot be reached leaves it alone. A server without parent
/// images makes the pre-dump copy every page.
#[napi(ts_return_type = "Promise<PreDumpSentReport>")]
pub fn pre_dump_to_server<'env>(
    env: &'env Env,
    options: crate::PreDumpOptions,
    server: PageServerClient,
    progress: Option<&crate::Progress>,
) -> Result<Object<'env>> {
    let client = client_options(server)?;
    let crate::Planned {
        pid,
        mode,
        mut tracking,
        config,
    } = crate::plan(options)?;
    let progress = progress.map(|p| p.inner.clone());
    on_own_thread(env, move || {
        let started = Instant::now();
        let abort = Abort::new()?;
        let mut sp = ServerPages::connect(&client, &abort, pid)?;
        if !sp.has_parent() {
            // Nothing can be left to a parent the server does not have.
            tracking.parent = None;
        }
        let report = predump_core::predump::pre_dump_to(
            pid,
            &mut PagesDest::Server(&mut sp),
            mode,
            &config,
            &tracking,
            progress.as_deref(),
        )?;
        let stats = sp.stats();
        let entries: Vec<f64> = sp
            .sent()
            .iter()
            .flat_map(|&(v, n, f)| [v as f64, n as f64, f as f64])
            .collect();
        Ok(PreDumpSentReport {
            report: crate::report(report),
            sent: PageServerSent {
                has_parent: sp.has_parent(),
                entries: Float64Array::new(entries),
                headers: stats.headers as f64,
                page_bytes: stats.page_bytes as f64,
                bytes_sent: stats.bytes_sent as f64,
                send_us: stats.send_time.as_secs_f64() * 1e6,
                session_us: started.elapsed().as_secs_f64() * 1e6,
            },
        })
    })
}
