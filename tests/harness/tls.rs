//! TLS handshakes with NATS servers' route and leaf ports, as another server of the
//! deployment would make them: checking the server's certificate against the
//! deployment's CA, and showing the deployment's certificate (or none).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// What a port does with a TLS client.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed and the server then sent this line (a route's `INFO`),
    /// or nothing within a second (a leaf port waits for the client's `CONNECT`).
    Accepted(Option<String>),
    /// The handshake, or the first read after it, failed (a missing client certificate
    /// shows there under TLS 1.3).
    Refused(String),
}

/// Connect to `addr` (`host:port`), expecting a certificate for `name`; `plain_info_first`: the port sends its `INFO`
/// in the clear before TLS (a leaf port; a route port starts with TLS). `tls_dir` holds
/// `ca.pem`, and with `client_certificate`, `server.pem` and `server-key.pem` to show.
pub async fn handshake(
    addr: &str,
    name: &str,
    tls_dir: &Path,
    client_certificate: bool,
    plain_info_first: bool,
) -> Outcome {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls_dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = if client_certificate {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(tls_dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(tls_dir.join("server-key.pem")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let mut tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{addr}: {e}"));
    if plain_info_first {
        // Byte by byte: nothing of the handshake may be read into a buffer here.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await.unwrap().unwrap();
            assert_eq!(n, 1, "{addr} closed before its INFO");
            line.push(byte[0]);
        }
        assert!(line.starts_with(b"INFO "), "{addr}: {}", String::from_utf8_lossy(&line));
    }
    let name = ServerName::try_from(name.to_string()).unwrap();
    let tls =
        match tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(Arc::new(config)).connect(name, tcp))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Outcome::Refused(e.to_string()),
            Err(_) => return Outcome::Refused("the handshake did not finish within 10 s".into()),
        };
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line)).await {
        Err(_) => Outcome::Accepted(None),
        Ok(Ok(0)) => Outcome::Refused("closed after the handshake".into()),
        Ok(Ok(_)) => Outcome::Accepted(Some(line)),
        Ok(Err(e)) => Outcome::Refused(e.to_string()),
    }
}
