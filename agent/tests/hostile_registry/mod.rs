//! A tiny hostile registry on 127.0.0.1:0 for pull tests: it speaks just
//! enough HTTP/1.1 for the agent's client (one request per connection) and
//! answers each request as the test's route says: trickling bytes, lying
//! about lengths, endless chunked bodies.
#![allow(dead_code)] // each test crate uses a different subset
#![allow(clippy::unwrap_used)] // test support: a panic is the failure report

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Writes the body bytes at an offset into a buffer.
pub type Fill = Arc<dyn Fn(u64, &mut [u8]) + Send + Sync>;

/// How a body is sent.
pub enum Payload {
    /// All at once, with its Content-Length.
    Bytes(Vec<u8>),
    /// One byte per interval, with the true Content-Length.
    Trickle(Vec<u8>, Duration),
    /// `Content-Length: announced`, then these bytes, then silence.
    Announce(u64, Vec<u8>),
    /// Chunked transfer: `count` chunks of `chunk`, no length announced.
    Chunked(Vec<u8>, usize),
    /// `len` bytes made by `fill(offset, buf)`, with Content-Length, in 64 KiB writes.
    Generated(u64, Fill),
}

/// One answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Payload,
}

impl Reply {
    pub fn ok(body: Payload) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body,
        }
    }

    pub fn not_found() -> Self {
        Self {
            status: 404,
            headers: vec![("Content-Type", "application/json".into())],
            body: Payload::Bytes(
                br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#.to_vec(),
            ),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

type Route = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// A running hostile registry; stops when dropped.
pub struct Hostile {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    heads: Arc<Mutex<Vec<String>>>,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Serves `route(method, path)` for every request (`GET /v2/` included:
    /// answer it with a `WWW-Authenticate` challenge to ask for a token).
    pub async fn start(route: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        let route: Arc<Route> = Arc::new(route);
        let (reqs, hs, wr) = (requests.clone(), heads.clone(), written.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (route, reqs, hs, wr) = (route.clone(), reqs.clone(), hs.clone(), wr.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &*route, &reqs, &hs, &wr).await;
                });
            }
        });
        Self {
            addr,
            requests,
            heads,
            written,
            task,
        }
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The request line and headers of every request so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Body bytes the server managed to hand to the socket.
    pub fn body_bytes_written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut conn: TcpStream,
    route: &Route,
    requests: &Mutex<Vec<String>>,
    heads: &Mutex<Vec<String>>,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut byte).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    requests.lock().unwrap().push(format!("{method} {path}"));
    heads.lock().unwrap().push(text.clone().into_owned());
    let reply = route(&method, &path);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match &reply.body {
        Payload::Bytes(b) | Payload::Trickle(b, _) => {
            out.push_str(&format!("Content-Length: {}\r\n", b.len()))
        }
        Payload::Announce(n, _) | Payload::Generated(n, _) => {
            out.push_str(&format!("Content-Length: {n}\r\n"))
        }
        Payload::Chunked(..) => out.push_str("Transfer-Encoding: chunked\r\n"),
    }
    out.push_str("\r\n");
    conn.write_all(out.as_bytes()).await?;
    if method == "HEAD" {
        return conn.shutdown().await;
    }
    let count = |n: usize| {
        written.fetch_add(n as u64, Ordering::SeqCst);
    };
    match reply.body {
        Payload::Bytes(b) => {
            conn.write_all(&b).await?;
            count(b.len());
        }
        Payload::Trickle(b, every) => {
            for one in b.chunks(1) {
                conn.write_all(one).await?;
                conn.flush().await?;
                count(1);
                tokio::time::sleep(every).await;
            }
        }
        Payload::Announce(_, b) => {
            conn.write_all(&b).await?;
            count(b.len());
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Payload::Chunked(chunk, n) => {
            for _ in 0..n {
                conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                conn.write_all(&chunk).await?;
                conn.write_all(b"\r\n").await?;
                count(chunk.len());
            }
            conn.write_all(b"0\r\n\r\n").await?;
        }
        Payload::Generated(len, fill) => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut offset = 0u64;
            while offset < len {
                let n = usize::try_from((len - offset).min(buf.len() as u64)).unwrap();
                fill(offset, &mut buf[..n]);
                conn.write_all(&buf[..n]).await?;
                count(n);
                offset += n as u64;
            }
        }
    }
    conn.shutdown().await
}
