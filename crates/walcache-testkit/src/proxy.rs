//! A fault-injecting TCP proxy: latency, connection resets, a blackhole, and dropped Redis
//! pub/sub messages.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Bytes read from a socket at a time.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction (read but not yet written) before reading pauses.
const QUEUE: usize = 64;
/// Longest RESP line (simple string, error, number) before the stream is deemed not RESP.
const MAX_LINE: usize = 64 * 1024;
/// Longest RESP blob, Redis's default `proto-max-bulk-len`.
const MAX_BLOB: usize = 512 * 1024 * 1024;
/// Longest latency, so that release times cannot overflow.
const MAX_LATENCY: Duration = Duration::from_secs(24 * 60 * 60);
/// Deepest RESP nesting accepted.
const MAX_DEPTH: usize = 64;

/// A TCP proxy on a free loopback port that forwards every connection to one upstream address
/// and injects faults on demand: latency, connection resets, a blackhole, and dropped Redis
/// pub/sub messages.
///
/// It runs on its own thread with its own tokio runtime, so it can be used from synchronous
/// code and from any runtime, and a blocked caller does not stall it. Dropping it stops it and
/// closes every connection.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use walcache_testkit::{RedisServer, TcpProxy};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisServer::start()?;
/// let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into())?;
/// let client = redis::Client::open(proxy.redis_url())?;
/// proxy.set_latency(Duration::from_millis(20));
/// // ... every command through `client` now takes at least 40 ms ...
/// proxy.reset_all(); // and its connections fail
/// # Ok(())
/// # }
/// ```
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Counters of a [`TcpProxy`], from [`TcpProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted since the start.
    pub connections_accepted: u64,
    /// Connections currently open.
    pub connections_open: u64,
    /// Connections closed by [`TcpProxy::reset_all`].
    pub connections_reset: u64,
    /// Pub/sub message frames dropped by [`TcpProxy::set_drop_pubsub_messages`].
    pub pubsub_messages_dropped: u64,
    /// Bytes forwarded, both directions together.
    pub bytes_forwarded: u64,
    /// Bytes read and discarded by [`TcpProxy::set_blackhole`].
    pub bytes_discarded: u64,
    /// Connections on which the proxy met bytes that are not RESP and stopped parsing them
    /// (they are forwarded as they are, and pub/sub messages are no longer dropped there).
    pub resp_parse_errors: u64,
}

impl TcpProxy {
    /// Listens on a free `127.0.0.1` port and forwards each accepted connection to `upstream`.
    ///
    /// A connection whose upstream cannot be reached is closed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the port cannot be bound, [`Error::Spawn`] when the proxy's runtime or
    /// thread cannot be created.
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let bind_error = |e| Error::io("binding the TCP proxy's listener to", bind.to_string(), e);
        let listener = std::net::TcpListener::bind(bind).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let spawn_error = |source| Error::Spawn {
            program: "the TCP proxy's thread".to_owned(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(spawn_error)?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener).map_err(bind_error)?
        };
        let shared = Arc::new(Shared {
            upstream: Mutex::new(Some(upstream)),
            ..Shared::default()
        });
        let (stop, stopped) = oneshot::channel();
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, state) => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing its sockets.
                drop(runtime);
            })
            .map_err(spawn_error)?;
        Ok(TcpProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:{port}/`, for a proxy in front of a Redis server.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port())
    }

    /// Forwards connections accepted from now on to `upstream` (a failover behind a fixed
    /// address); open connections keep their upstream until they close or
    /// [`reset_all`](Self::reset_all).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = Some(upstream);
    }

    /// Delays every chunk of data, in both directions, by `latency` (`Duration::ZERO` for none;
    /// at most a day).
    ///
    /// Applies to data read after the call; order is preserved, so lowering the latency does not
    /// let new data overtake older, more delayed data.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = latency.min(MAX_LATENCY).as_nanos() as u64;
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Abruptly closes every open connection, on both sides (with a TCP RST: `SO_LINGER` 0),
    /// and returns how many there were. New connections are still accepted.
    ///
    /// Nothing read from a reset connection after this call returns is forwarded.
    pub fn reset_all(&self) -> usize {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for conn in &conns {
            conn.reset();
        }
        let count = conns.len();
        self.shared
            .resets
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// While on, connections are accepted but nothing is forwarded in either direction: bytes
    /// are read and discarded, like a network that silently drops packets, and connections stay
    /// open.
    ///
    /// When turned off, forwarding resumes for new data only. What was discarded is gone, so
    /// the connections that lost data are most likely out of step with their protocol (a Redis
    /// client waiting for replies that never come, or reading the wrong reply), and the proxy
    /// stops recognising pub/sub messages on them. Call [`TcpProxy::reset_all`] after a
    /// blackhole to make clients reconnect.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// Blackholes the connections open now, for good, as [`set_blackhole`](Self::set_blackhole)
    /// does, while new connections are forwarded normally: each of those connections is now
    /// *half-open*, its peer's kernel still acknowledging packets (keepalives included) but no
    /// data ever crossing again. Returns how many connections were frozen.
    pub fn blackhole_open_connections(&self) -> usize {
        let conns = lock(&self.shared.conns);
        for conn in conns.values() {
            conn.frozen.store(true, Ordering::SeqCst);
        }
        conns.len()
    }

    /// While on, drops Redis pub/sub messages going to subscribers.
    ///
    /// On connections whose client has sent a `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE`, whole
    /// `message`, `pmessage` and `smessage` frames from the server are dropped (RESP2 arrays,
    /// or RESP3 pushes once the connection has received a push); every other frame, such as
    /// subscription confirmations and pongs, is forwarded intact. Other connections are not
    /// affected.
    ///
    /// Replies are parsed as RESP on every connection whose client speaks RESP, which is to say
    /// whose first byte starts an array, as commands from Redis client libraries do (inline
    /// commands, and other protocols, are forwarded as they are). A connection on which the
    /// proxy then meets bytes that are not RESP is forwarded as is from then on (counted in
    /// [`ProxyStats::resp_parse_errors`]).
    pub fn set_drop_pubsub_messages(&self, on: bool) {
        self.shared.drop_pubsub.store(on, Ordering::Relaxed);
    }

    /// The proxy's counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections_accepted: get(&s.accepted),
            connections_open: get(&s.open),
            connections_reset: get(&s.resets),
            pubsub_messages_dropped: get(&s.dropped),
            bytes_forwarded: get(&s.forwarded),
            bytes_discarded: get(&s.discarded),
            resp_parse_errors: get(&s.parse_errors),
        }
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        lock(&self.shared.conns).clear();
    }
}

/// State shared by the handle and the proxy's thread.
#[derive(Default)]
struct Shared {
    /// Where accepted connections go (always set by `start`).
    upstream: Mutex<Option<SocketAddr>>,
    latency_nanos: AtomicU64,
    blackhole: AtomicBool,
    drop_pubsub: AtomicBool,
    accepted: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    discarded: AtomicU64,
    parse_errors: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One proxied connection, as seen by [`TcpProxy::reset_all`].
struct Conn {
    /// Duplicates of the client and upstream sockets' descriptors, to set `SO_LINGER` from any
    /// thread.
    sockets: [std::net::TcpStream; 2],
    reset: AtomicBool,
    cancel: Notify,
    /// The client speaks RESP: its first byte starts an array, as commands from every Redis
    /// client library do. Replies are parsed only then.
    resp: AtomicBool,
    /// The client has sent a (P|S)SUBSCRIBE.
    subscribed: AtomicBool,
    /// Blackholed for good by [`TcpProxy::blackhole_open_connections`].
    frozen: AtomicBool,
}

impl Conn {
    fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        for socket in &self.sockets {
            // With SO_LINGER 0, closing the last descriptor sends an RST at once (it does not
            // block, which is what tokio's deprecation warns about).
            #[allow(deprecated)]
            let rst = socket.try_clone().and_then(|dup| {
                tokio::net::TcpSocket::from_std_stream(dup).set_linger(Some(Duration::ZERO))
            });
            if rst.is_err() {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
        // Stores a permit if the task is not waiting yet.
        self.cancel.notify_one();
    }
}

/// Counts a connection as open and unregisters it when its task ends or is dropped.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.conns).remove(&self.id);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(upstream) = *lock(&shared.upstream) else {
                    continue;
                };
                tokio::spawn(connection(client, upstream, Arc::clone(&shared)));
            }
            // Out of descriptors, say: retry shortly rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Returns the stream (still registered with tokio) and a duplicate of its descriptor.
fn with_duplicate(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let stream = stream.into_std()?;
    let duplicate = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, duplicate))
}

async fn connection(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let _registration = Registration {
        shared: Arc::clone(&shared),
        id,
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok((mut client, client_dup)), Ok((mut server, server_dup))) =
        (with_duplicate(client), with_duplicate(server))
    else {
        return;
    };
    let conn = Arc::new(Conn {
        sockets: [client_dup, server_dup],
        reset: AtomicBool::new(false),
        cancel: Notify::new(),
        resp: AtomicBool::new(false),
        subscribed: AtomicBool::new(false),
        frozen: AtomicBool::new(false),
    });
    lock(&shared.conns).insert(id, Arc::clone(&conn));

    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let (to_server, for_server) = mpsc::channel(QUEUE);
    let (to_client, for_client) = mpsc::channel(QUEUE);
    let work = async {
        tokio::try_join!(
            read_side(client_read, to_server, &shared, &conn, Side::Client),
            write_side(server_write, for_server, &shared, &conn),
            read_side(server_read, to_client, &shared, &conn, Side::Server),
            write_side(client_write, for_client, &shared, &conn),
        )
    };
    tokio::select! {
        _ = work => {}
        () = conn.cancel.notified() => {}
    }
}

/// Which end a [`read_side`] reads from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Reads from one end, filters, and queues chunks with their release time for [`write_side`].
/// Returns at end of stream, which closes the queue.
async fn read_side(
    mut from: impl AsyncRead + Unpin,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    shared: &Shared,
    conn: &Conn,
    side: Side,
) -> io::Result<()> {
    let mut splitter = Splitter::new();
    // A RESP3 connection's pub/sub messages are pushes; arrays are ordinary replies there.
    let mut resp3 = false;
    let mut buf = vec![0; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let data = &buf[..n];
        if shared.blackhole.load(Ordering::Relaxed) || conn.frozen.load(Ordering::SeqCst) {
            shared.discarded.fetch_add(n as u64, Ordering::Relaxed);
            splitter.stop();
            continue;
        }
        let chunk = match side {
            Side::Client => {
                if !conn.resp.load(Ordering::SeqCst) && !splitter.stopped() {
                    if data[0] == b'*' {
                        conn.resp.store(true, Ordering::SeqCst);
                    } else {
                        splitter.stop(); // Not Redis, or inline commands: forward as is.
                    }
                }
                if !splitter.stopped() {
                    let invalid = splitter.feed(data, |_, head| {
                        if head.is_subscribe() {
                            conn.subscribed.store(true, Ordering::SeqCst);
                        }
                    });
                    if invalid.is_some() {
                        shared.parse_errors.fetch_add(1, Ordering::Relaxed);
                    } else if conn.subscribed.load(Ordering::SeqCst) {
                        splitter.stop(); // Nothing more to learn from the client.
                    }
                }
                data.to_vec()
            }
            Side::Server if splitter.stopped() => data.to_vec(),
            Side::Server if !conn.resp.load(Ordering::SeqCst) => {
                splitter.stop(); // The server spoke first: not Redis.
                data.to_vec()
            }
            Side::Server => {
                let mut out = Vec::with_capacity(n);
                let invalid = splitter.feed(data, |frame, head| {
                    resp3 |= head.push;
                    if head.is_pubsub_message(resp3)
                        && conn.subscribed.load(Ordering::SeqCst)
                        && shared.drop_pubsub.load(Ordering::Relaxed)
                    {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        out.extend_from_slice(frame);
                    }
                });
                if let Some(rest) = invalid {
                    shared.parse_errors.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&rest);
                }
                out
            }
        };
        if chunk.is_empty() {
            continue;
        }
        let latency = Duration::from_nanos(shared.latency_nanos.load(Ordering::Relaxed));
        if to.send((Instant::now() + latency, chunk)).await.is_err() {
            return Ok(()); // The writer failed; its error ends the connection.
        }
    }
}

/// Writes queued chunks to the other end once their release time has come; half-closes it
/// when the queue closes.
async fn write_side(
    mut to: impl AsyncWrite + Unpin,
    mut from: mpsc::Receiver<(Instant, Vec<u8>)>,
    shared: &Shared,
    conn: &Conn,
) -> io::Result<()> {
    while let Some((release, chunk)) = from.recv().await {
        if release > Instant::now() {
            tokio::time::sleep_until(release).await;
        }
        if conn.reset.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        to.write_all(&chunk).await?;
        shared
            .forwarded
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    to.shutdown().await
}

/// Cuts a byte stream into RESP frames, keeping an incomplete last frame until more arrives.
struct Splitter {
    pending: Vec<u8>,
    /// `pending` cannot hold a frame before it has this many bytes.
    needed: usize,
    stopped: bool,
}

impl Splitter {
    fn new() -> Self {
        Splitter {
            pending: Vec::new(),
            needed: 0,
            stopped: false,
        }
    }

    /// Stops parsing for good (the stream is no longer in step, or no longer of interest).
    fn stop(&mut self) {
        self.stopped = true;
        self.pending = Vec::new();
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    /// Appends `data` and calls `on_frame` with each complete frame and its [`Head`]. On bytes
    /// that are not RESP, stops for good and returns them with everything after them.
    fn feed(&mut self, data: &[u8], mut on_frame: impl FnMut(&[u8], Head<'_>)) -> Option<Vec<u8>> {
        self.pending.extend_from_slice(data);
        if self.pending.len() < self.needed {
            return None;
        }
        let mut start = 0;
        let invalid = loop {
            let rest = &self.pending[start..];
            match frame(rest) {
                Ok((len, head)) => {
                    on_frame(&rest[..len], head);
                    start += len;
                }
                Err(Stop::Incomplete(needed)) => {
                    self.needed = needed;
                    break false;
                }
                Err(Stop::Invalid(_)) => break true,
            }
        };
        if invalid {
            let rest = self.pending.split_off(start);
            self.stop();
            return Some(rest);
        }
        self.pending.drain(..start);
        None
    }
}

/// Why [`frame`] returned no frame.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The buffer starts a frame but does not hold all of it: it needs at least this many bytes.
    Incomplete(usize),
    /// The buffer does not start with a RESP frame.
    Invalid(&'static str),
}

/// What a frame is, as far as the proxy cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Head<'a> {
    /// The length of an array or push.
    len: Option<usize>,
    /// Its first element, when a simple or bulk string.
    first: Option<&'a [u8]>,
    /// A RESP3 push.
    push: bool,
}

impl Head<'_> {
    fn is_pubsub_message(&self, resp3: bool) -> bool {
        let (Some(len), Some(kind)) = (self.len, self.first) else {
            return false;
        };
        (self.push || !resp3)
            && match len {
                3 => {
                    kind.eq_ignore_ascii_case(b"message") || kind.eq_ignore_ascii_case(b"smessage")
                }
                4 => kind.eq_ignore_ascii_case(b"pmessage"),
                _ => false,
            }
    }

    fn is_subscribe(&self) -> bool {
        self.first.is_some_and(|name| {
            [&b"subscribe"[..], b"psubscribe", b"ssubscribe"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
        })
    }
}

/// Parses the frame at the start of `buf`: its length and [`Head`].
fn frame(buf: &[u8]) -> std::result::Result<(usize, Head<'_>), Stop> {
    let mut cursor = Cursor { buf, pos: 0 };
    let head = cursor.value(0)?;
    Ok((cursor.pos, head))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The rest of the line, without its CRLF.
    fn line(&mut self) -> std::result::Result<&'a [u8], Stop> {
        let rest = &self.buf[self.pos..];
        match rest.windows(2).take(MAX_LINE).position(|w| w == b"\r\n") {
            Some(end) => {
                self.pos += end + 2;
                Ok(&rest[..end])
            }
            None if rest.len() > MAX_LINE => Err(Stop::Invalid("line too long")),
            None => Err(Stop::Incomplete(self.buf.len() + 1)),
        }
    }

    /// A length: `None` for -1 (null).
    fn length(&mut self) -> std::result::Result<Option<usize>, Stop> {
        let line = self.line()?;
        if line == b"-1" {
            return Ok(None);
        }
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n <= MAX_BLOB)
            .map(Some)
            .ok_or(Stop::Invalid("bad length"))
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Head<'a>, Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid("nested too deeply"));
        }
        let Some(&kind) = self.buf.get(self.pos) else {
            return Err(Stop::Incomplete(self.pos + 1));
        };
        self.pos += 1;
        let other = Head::default();
        match kind {
            b'+' => {
                let s = self.line()?;
                Ok(Head {
                    first: Some(s),
                    ..other
                })
            }
            b'-' | b':' | b'_' | b'#' | b',' | b'(' => self.line().map(|_| other),
            b'$' | b'!' | b'=' => {
                let Some(len) = self.length()? else {
                    return Ok(other);
                };
                let end = self.pos + len + 2;
                if self.buf.len() < end {
                    return Err(Stop::Incomplete(end));
                }
                if &self.buf[end - 2..end] != b"\r\n" {
                    return Err(Stop::Invalid("blob without CRLF"));
                }
                let blob = &self.buf[self.pos..end - 2];
                self.pos = end;
                Ok(Head {
                    first: (kind == b'$').then_some(blob),
                    ..other
                })
            }
            b'*' | b'>' | b'~' | b'%' | b'|' => {
                let Some(len) = self.length()? else {
                    return Ok(other);
                };
                let items = if matches!(kind, b'%' | b'|') {
                    len * 2
                } else {
                    len
                };
                let mut first = None;
                for i in 0..items {
                    let item = self.value(depth + 1)?;
                    if i == 0 && item.len.is_none() {
                        first = item.first;
                    }
                }
                match kind {
                    b'*' | b'>' => Ok(Head {
                        len: Some(len),
                        first,
                        push: kind == b'>',
                    }),
                    // An attribute is followed by the value it describes: one frame together.
                    b'|' => self.value(depth + 1),
                    _ => Ok(other),
                }
            }
            _ => Err(Stop::Invalid("unknown RESP type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    const PMESSAGE: &[u8] = b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$1\r\nx\r\n";

    /// Feeds `input` in pieces cut at `cuts`, returning the frames and whether it was invalid.
    fn split_at(input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, bool) {
        let mut splitter = Splitter::new();
        let mut frames = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            if let Some(rest) = splitter.feed(&input[last..cut], |f, _| frames.push(f.to_vec())) {
                // The proxy forwards the rest of the stream as it is.
                frames.push([&rest[..], &input[cut..]].concat());
                return (frames, true);
            }
            last = cut;
        }
        (frames, false)
    }

    fn kinds() -> Vec<&'static [u8]> {
        vec![
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":-12\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$4\r\na\r\nb\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n:1\r\n*2\r\n$1\r\na\r\n*1\r\n+b\r\n",
            MESSAGE,
            PMESSAGE,
            b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$1\r\nx\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n#t\r\n_\r\n",
            b",1.5\r\n(12345678901234567890\r\n=7\r\ntxt:abc\r\n!3\r\nERR\r\n",
            b"|1\r\n+ttl\r\n:3\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n",
        ]
    }

    #[test]
    fn frames_split_at_every_byte_boundary_are_reassembled() {
        let input: Vec<u8> = kinds().concat();
        let whole = split_at(&input, &[]);
        assert!(!whole.1);
        assert_eq!(whole.0.concat(), input);
        for cut in 0..=input.len() {
            assert_eq!(split_at(&input, &[cut]), whole, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..input.len()).collect();
        assert_eq!(split_at(&input, &every_byte), whole);
    }

    #[test]
    fn frames_are_recognised() {
        let heads: Vec<(usize, Head<'_>)> =
            kinds().into_iter().map(|f| frame(f).unwrap()).collect();
        // "-ERR no" ... single frames; the multi-frame literals parse their first frame.
        assert_eq!(
            heads[0],
            (
                5,
                Head {
                    first: Some(&b"OK"[..]),
                    ..Head::default()
                }
            )
        );
        assert_eq!(heads[8].1.len, Some(2));
        assert_eq!(heads[8].1.first, None); // The first element is an array.
        let messages: Vec<bool> = heads
            .iter()
            .map(|(_, h)| h.is_pubsub_message(false))
            .collect();
        let expected = [9, 10, 11, 14];
        for (i, is) in messages.iter().enumerate() {
            assert_eq!(*is, expected.contains(&i), "frame {i}");
        }
        // Once RESP3, only pushes are messages.
        assert!(!frame(MESSAGE).unwrap().1.is_pubsub_message(true));
        assert!(frame(PMESSAGE).unwrap().1.is_pubsub_message(true));
        // A message with a wrong arity is not a message.
        assert!(!frame(b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n")
            .unwrap()
            .1
            .is_pubsub_message(false));
    }

    #[test]
    fn subscribe_commands_are_recognised() {
        let subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n";
        assert!(frame(subscribe).unwrap().1.is_subscribe());
        assert!(frame(b"*2\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n")
            .unwrap()
            .1
            .is_subscribe());
        assert!(frame(b"*2\r\n$10\r\nSSubscribe\r\n$1\r\nx\r\n")
            .unwrap()
            .1
            .is_subscribe());
        assert!(!frame(b"*1\r\n$4\r\nPING\r\n").unwrap().1.is_subscribe());
        assert_eq!(frame(b"*1\r\n$4\r\nPI"), Err(Stop::Incomplete(14)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [
            &b"hello world\r\n"[..],
            b"$5\r\nabcdefg\r\n",
            b"$x\r\n",
            b"*-2\r\n",
            b"$99999999999999999999\r\n",
            b"*2\r\n:1\r\n?\r\n",
            &[0xff; 10],
        ] {
            assert!(
                matches!(frame(garbage), Err(Stop::Invalid(_))),
                "{garbage:?}"
            );
            let (frames, invalid) = split_at(garbage, &[1]);
            assert!(invalid);
            assert_eq!(frames.concat(), garbage, "invalid bytes are handed back");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(matches!(frame(deep.as_bytes()), Err(Stop::Invalid(_))));
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(matches!(frame(&long), Err(Stop::Invalid(_))));
        // A valid frame before garbage is still a frame.
        let (frames, invalid) = split_at(b"+OK\r\n\x00junk", &[]);
        assert!(invalid);
        assert_eq!(frames, vec![b"+OK\r\n".to_vec(), b"\x00junk".to_vec()]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"*>%~|$!=+-:_#,(\r\n0123-?ab";
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = frame(&bytes);
            let _ = split_at(&bytes, &[len / 2]);
        }
    }
}
