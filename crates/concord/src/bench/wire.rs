//! The bench's clients, each as thin as its protocol allows, so that the client's own
//! cost is alike for Concord and for its peers: HTTP/1.1 on one keep-alive connection
//! (as wrk does), RESP for Redis, and async-nats for NATS (key/value puts and Concord's
//! NATS API). One [`Conn`] per simulated client; [`Conn::call`] does one operation.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The payload of every write: 128 bytes, the same for Concord and its peers.
pub const VALUE: [u8; 128] = [b'v'; 128];

/// Longest a single operation may take before the run counts it as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one simulated client does, and where.
#[derive(Clone)]
pub enum Target {
    /// `PUT /v1/kv/bench/<key>?durability=..` to `addr` (host:port).
    HttpPut {
        addr: String,
        durability: &'static str,
    },
    /// `GET /v1/kv/bench/<key>` from `addr`.
    HttpGet {
        addr: String,
    },
    /// `POST /v1/docs/bench/<key>`: one `set` of a numbered field, one Automerge change.
    HttpDoc {
        addr: String,
    },
    /// Concord's NATS API: a request to `concord.api.<region>.kv.put`.
    NatsPut {
        url: String,
        region: String,
    },
    RedisSet {
        addr: String,
    },
    RedisGet {
        addr: String,
    },
    /// A JetStream key/value `put` into the bucket `bench`.
    NatsKvPut {
        url: String,
    },
}

/// One client's connection.
pub enum Conn {
    Http { stream: BufReader<TcpStream>, host: String, request: Request, buf: Vec<u8> },
    Redis { stream: BufReader<TcpStream>, set: bool, buf: Vec<u8> },
    Nats { client: async_nats::Client, subject: String },
    Kv { store: Box<kv::Store> },
}

#[derive(Clone, Copy)]
pub enum Request {
    Put(&'static str),
    Get,
    Doc,
}

/// What a Concord answer said that the bench uses.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    /// The `Concord-Token` header (HTTP only).
    pub token: Option<String>,
}

impl Target {
    /// Open one client's connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Ok(match self {
            Target::HttpPut { addr, durability } => http(addr, Request::Put(durability)).await?,
            Target::HttpGet { addr } => http(addr, Request::Get).await?,
            Target::HttpDoc { addr } => http(addr, Request::Doc).await?,
            Target::NatsPut { url, region } => {
                Conn::Nats { client: nats_connect(url).await?, subject: format!("concord.api.{region}.kv.put") }
            }
            Target::RedisSet { addr } => redis(addr, true).await?,
            Target::RedisGet { addr } => redis(addr, false).await?,
            Target::NatsKvPut { url } => {
                let client = nats_connect(url).await?;
                let js = async_nats::jetstream::new(client);
                Conn::Kv {
                    store: Box::new(js.get_key_value("bench").await.context("opening the key/value bucket bench")?),
                }
            }
        })
    }
}

/// Connect to NATS at `url`, with the credentials it carries (`nats://user:password@...`).
pub async fn nats_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers = concord_transport::address::parse(url).map_err(anyhow::Error::msg)?;
    let shown = concord_transport::address::redact(url);
    servers.options().connect(servers.urls).await.with_context(|| format!("connecting to {shown}"))
}

async fn http(addr: &str, request: Request) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(Conn::Http { stream: BufReader::new(stream), host: addr.to_string(), request, buf: Vec::with_capacity(512) })
}

async fn redis(addr: &str, set: bool) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(Conn::Redis { stream: BufReader::new(stream), set, buf: Vec::with_capacity(256) })
}

impl Conn {
    /// One operation on `key`; `token` is sent as `Concord-Token` (HTTP reads wait for
    /// it). An error answer is an `Ok` with its status: the caller counts it.
    pub async fn call(&mut self, key: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_inner(key, token)).await {
            Ok(r) => r,
            Err(_) => bail!("no answer within {CALL_TIMEOUT:?}"),
        }
    }

    async fn call_inner(&mut self, key: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        match self {
            Conn::Http { stream, host, request, buf } => http_call(stream, host, *request, buf, key, token).await,
            Conn::Redis { stream, set, buf } => redis_call(stream, *set, buf, key).await,
            Conn::Nats { client, subject } => {
                let mut headers = HeaderMap::new();
                headers.insert("Concord-Bucket", "bench");
                headers.insert("Concord-Key", key);
                headers.insert("Concord-Durability", "async");
                let reply = client
                    .request_with_headers(subject.clone(), headers, VALUE.to_vec().into())
                    .await
                    .context("NATS request")?;
                let status = reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Concord-Status"))
                    .and_then(|s| s.as_str().parse().ok())
                    .unwrap_or(0);
                Ok(Answer { status, token: None })
            }
            Conn::Kv { store } => {
                store.put(key, VALUE.to_vec().into()).await.context("key/value put")?;
                Ok(Answer { status: 200, token: None })
            }
        }
    }
}

async fn http_call(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    request: Request,
    buf: &mut Vec<u8>,
    key: &str,
    token: Option<&str>,
) -> anyhow::Result<Answer> {
    buf.clear();
    let session = token.map(|t| format!("Concord-Token: {t}\r\nConcord-Wait-Ms: 30000\r\n")).unwrap_or_default();
    let token_header = format!("{}{session}", crate::http::authorization_line());
    match request {
        Request::Put(durability) => {
            buf.extend_from_slice(
                format!(
                    "PUT /v1/kv/bench/{key}?durability={durability} HTTP/1.1\r\nHost: {host}\r\n{token_header}Content-Length: {}\r\n\r\n",
                    VALUE.len()
                )
                .as_bytes(),
            );
            buf.extend_from_slice(&VALUE);
        }
        Request::Get => buf.extend_from_slice(
            format!("GET /v1/kv/bench/{key} HTTP/1.1\r\nHost: {host}\r\n{token_header}\r\n").as_bytes(),
        ),
        Request::Doc => {
            let field = key.len() % 8;
            let body = format!(r#"{{"ops":[{{"op":"set","path":["f{field}"],"value":"{key}"}}]}}"#);
            buf.extend_from_slice(
                format!(
                    "POST /v1/docs/bench/{key} HTTP/1.1\r\nHost: {host}\r\n{token_header}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            buf.extend_from_slice(body.as_bytes());
        }
    }
    stream.get_mut().write_all(buf).await.context("sending the request")?;
    read_http_answer(stream, buf).await
}

/// Read one HTTP/1.1 response (a `Content-Length` body; Concord sends no other kind).
async fn read_http_answer(stream: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> anyhow::Result<Answer> {
    use tokio::io::AsyncBufReadExt;
    let mut answer = Answer::default();
    let mut length = 0usize;
    let mut first = true;
    loop {
        buf.clear();
        if stream.read_until(b'\n', buf).await? == 0 {
            bail!("the server closed the connection");
        }
        let line = std::str::from_utf8(buf).context("a header that is not UTF-8")?.trim_end();
        if first {
            answer.status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
            first = false;
            continue;
        }
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().context("Content-Length")?;
            } else if name.eq_ignore_ascii_case("concord-token") {
                answer.token = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked answers are not expected");
            }
        }
    }
    buf.resize(length, 0);
    stream.read_exact(buf).await.context("reading the body")?;
    Ok(answer)
}

async fn redis_call(
    stream: &mut BufReader<TcpStream>,
    set: bool,
    buf: &mut Vec<u8>,
    key: &str,
) -> anyhow::Result<Answer> {
    use tokio::io::AsyncBufReadExt;
    buf.clear();
    if set {
        buf.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n", key.len(), VALUE.len()).as_bytes());
        buf.extend_from_slice(&VALUE);
        buf.extend_from_slice(b"\r\n");
    } else {
        buf.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
    }
    stream.get_mut().write_all(buf).await.context("sending the command")?;
    buf.clear();
    if stream.read_until(b'\n', buf).await? == 0 {
        bail!("redis closed the connection");
    }
    match buf.first() {
        Some(b'+') => Ok(Answer { status: 200, token: None }),
        Some(b'$') => {
            let n: i64 =
                std::str::from_utf8(&buf[1..]).ok().and_then(|s| s.trim().parse().ok()).context("bulk length")?;
            if n < 0 {
                return Ok(Answer { status: 404, token: None });
            }
            let mut body = vec![0u8; n as usize + 2];
            stream.read_exact(&mut body).await?;
            Ok(Answer { status: 200, token: None })
        }
        _ => Ok(Answer { status: 500, token: None }),
    }
}
