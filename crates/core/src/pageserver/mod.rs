//! CRIU's page server, both ends: pre-dumps streamed to another host.
//!
//! - [`wire`]: the protocol as data (headers in both layouts, commands, replies),
//!   no I/O;
//! - [`link`]: TCP sockets that wait in `poll`, abortable from another thread and
//!   with timeouts;
//! - [`client`]: `predump pre-dump|dump --page-server`'s end, as CRIU's client;
//! - [`sender`]: one process's pages through a client, as a drain's output;
//! - [`server`]: `predump page-server`, which stores what a client sends as
//!   CRIU's page server does;
//! - [`transport`]: how a connection's bytes reach the images (splice, or TLS);
//! - [`spool`]: the server's writer thread, splicing page data into the images
//!   while the next data is received;
//! - [`tls`]: CRIU's `--tls*` options on rustls, names checked as GnuTLS does.

pub mod client;
pub mod link;
pub mod sender;
pub mod server;
pub mod spool;
pub mod tls;
pub mod transport;
pub mod wire;

pub use server::{PagemapReport, Server, ServerOptions, ServerReport};
