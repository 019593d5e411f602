//! A raw HTTP/1.1 upstream on port 0 that records exactly what it received.
//!
//! Each connection is read as a byte stream and split into requests the way a strict
//! origin server would (httparse for the head, `Content-Length` or chunked framing
//! for the body). Every request is kept with its raw bytes, so a test can assert
//! that the upstream saw exactly the requests the gateway authorised — a smuggled
//! request would show up as an extra entry. Bytes that do not parse as a request are
//! kept as an entry with `garbage` set. Each request is answered `200` with a small
//! JSON body; the connection stays open for the gateway's pool.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Request method.
    pub method: String,
    /// Request target (path and query) exactly as sent.
    pub target: String,
    /// Header lines in order: name as sent, raw value bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// Both `Content-Length` and `Transfer-Encoding`, several different
    /// `Content-Length`s, or a `Transfer-Encoding` other than `chunked`.
    pub ambiguous_framing: bool,
    /// The bytes did not parse as a request (the connection was closed after them).
    pub garbage: bool,
    /// The connection closed in the middle of this request (e.g. the gateway aborted
    /// a body it could not finish): what arrived is in `raw`.
    pub truncated: bool,
    /// The raw bytes of this request (head and body).
    pub raw: Vec<u8>,
}

impl Seen {
    /// Values of header `name` (case-insensitive), as text.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// The recording upstream; stops when dropped.
pub struct Recorder {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, sink.clone()));
            }
        });
        Recorder { addr, seen, task }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far, and forgets it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Everything received so far, after letting in-flight bytes arrive.
    pub async fn settle_and_take(&self) -> Vec<Seen> {
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.take()
    }
}

enum Parsed {
    Incomplete,
    Garbage,
    Request(Box<Seen>, usize),
}

async fn serve(mut stream: TcpStream, sink: Arc<Mutex<Vec<Seen>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse(&buf) {
            Parsed::Request(seen, used) => {
                let body = format!(
                    "{{\"target\":{}}}",
                    serde_json::Value::String(seen.target.clone())
                );
                sink.lock().unwrap().push(*seen);
                buf.drain(..used);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Parsed::Garbage => {
                sink.lock().unwrap().push(Seen {
                    garbage: true,
                    raw: buf,
                    ..Seen::default()
                });
                return;
            }
            Parsed::Incomplete => {}
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    sink.lock().unwrap().push(Seen {
                        truncated: true,
                        raw: buf,
                        ..Seen::default()
                    });
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(_) => return Parsed::Garbage,
    };
    let mut seen = Seen {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        ..Seen::default()
    };
    let lengths: Vec<&Vec<u8>> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v)
        .collect();
    let te: Vec<&Vec<u8>> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v)
        .collect();
    let distinct_lengths = {
        let mut l = lengths.clone();
        l.dedup();
        l.len()
    };
    seen.ambiguous_framing = (!lengths.is_empty() && !te.is_empty())
        || distinct_lengths > 1
        || te.len() > 1
        || te.iter().any(|v| !v.eq_ignore_ascii_case(b"chunked"));
    let rest = &buf[head_len..];
    let body_end = if !te.is_empty() {
        match dechunk(rest) {
            Some(Ok((used, body))) => {
                seen.body = body;
                used
            }
            Some(Err(())) => return Parsed::Garbage,
            None => return Parsed::Incomplete,
        }
    } else if let Some(v) = lengths.first() {
        let Some(n) = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        else {
            return Parsed::Garbage;
        };
        if rest.len() < n {
            return Parsed::Incomplete;
        }
        seen.body = rest[..n].to_vec();
        n
    } else {
        0
    };
    let used = head_len + body_end;
    seen.raw = buf[..used].to_vec();
    Parsed::Request(Box::new(seen), used)
}

/// Decodes a chunked body: `None` if incomplete, `Err` if malformed, else the bytes
/// consumed (including the last chunk and trailers) and the body.
fn dechunk(mut b: &[u8]) -> Option<Result<(usize, Vec<u8>), ()>> {
    let start = b.len();
    let mut body = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[..line_end]).ok();
        let size_text = line.map(|l| l.split(';').next().unwrap_or("").trim());
        let Some(size) = size_text.and_then(|s| usize::from_str_radix(s, 16).ok()) else {
            return Some(Err(()));
        };
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = b.windows(2).position(|w| w == b"\r\n")?;
                b = &b[end + 2..];
                if end == 0 {
                    return Some(Ok((start - b.len(), body)));
                }
            }
        }
        if b.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&b[..size]);
        if &b[size..size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        b = &b[size + 2..];
    }
}

/// Sends `request` on a fresh connection to `addr` (`http://host:port` or
/// `host:port`) and returns everything the gateway answered until it closed the
/// connection or `within` passed.
pub async fn exchange(addr: &str, request: &[u8], within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .expect("connect to gateway");
    s.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// The status codes of every response in `answer`, in order (counts status lines).
pub fn statuses(answer: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(answer);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}
