//! NATS from the tests' side: connecting with the credentials a URL carries, and what
//! a port announces before anything is said to it.

use std::net::TcpStream;
use std::time::Duration;

/// Connect to NATS at `url` (comma-separated URLs), with the credentials written into
/// it (`nats://user:password@host:port`; the NATS library ignores them there).
pub async fn nats_connect(url: impl AsRef<str>) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = concord_transport::address::parse(url.as_ref()).expect("NATS URLs");
    servers.options().connect(servers.urls).await
}

/// The `INFO` a NATS port (client, route or leaf) sends first, as JSON: what it
/// requires of whoever connects (`tls_required`, `auth_required`).
pub fn nats_info(addr: &str) -> serde_json::Value {
    nats_info_or_nothing(addr).unwrap_or_else(|| panic!("{addr} sent no INFO"))
}

/// [`nats_info`], or `None` when the port sends no `INFO` line in the clear within 3 s
/// (a route port that takes TLS only waits for a handshake, then closes).
pub fn nats_info_or_nothing(addr: &str) -> Option<serde_json::Value> {
    use std::io::{BufRead, BufReader};
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    let json = line.strip_prefix("INFO ")?;
    Some(serde_json::from_str(json.trim()).unwrap())
}
