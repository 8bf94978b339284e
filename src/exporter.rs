//! The HTTP endpoint of `gilscope serve`: answers Prometheus scrapes of /metrics from any local
//! client, hostile ones included. Owns sockets, limits, deadlines and content negotiation;
//! knows nothing of targets or sampling (a closure makes the page).
//!
//! What any client may cost, whatever it sends (docs/RELIABILITY.md lists what was tried):
//! - one thread for the whole endpoint (a Tokio current-thread runtime), never one a client;
//! - at most [`MAX_CONNECTIONS`] connections (fewer under a low RLIMIT_NOFILE: an eighth of
//!   it, so the sampler keeps its file descriptors); when that many are open the oldest is
//!   closed to keep a place for the next, so a scraper is answered however many idle or slow
//!   connections are open;
//! - a request head of at most [`MAX_HEAD`] bytes (431 beyond), complete within
//!   [`HEAD_DEADLINE`] of the connection opening or the previous answer ending;
//! - an answer that cannot be written for [`WRITE_STALL`] closes the connection, so a client
//!   that pipelines requests and never reads holds one answer, not a queue of them;
//! - the page is made at most once per [`PAGE_REUSE`] per format, so a flood of requests does
//!   not keep the metrics locked away from the sampler, and connections answered with the
//!   same page share it rather than hold a copy each.
//!
//! The endpoint never ends silently: if it stops for any reason but `stop`, the reason is
//! kept for [`Running::join`] and `stop` is raised, so that serve ends with it as an error.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, VARY};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};
use crate::formats::metrics::Exposition;

/// The most connections open at once, whatever RLIMIT_NOFILE allows.
pub const MAX_CONNECTIONS: usize = 256;
/// The fewest, however low RLIMIT_NOFILE is.
const MIN_CONNECTIONS: usize = 4;
/// The longest request head (request line and headers) read; longer ones are answered 431.
/// Also the most request bytes read ahead of the one being answered.
pub const MAX_HEAD: usize = 16 * 1024;
/// A request head must be complete this long after the connection opens or the previous
/// answer ends (slow and idle connections are closed after it).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// A connection whose answer makes no progress for this long is closed.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// A page is made again only when the last one of its format is older than this.
pub const PAGE_REUSE: Duration = Duration::from_millis(100);
/// How often the endpoint looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long to wait before accepting again when no file descriptor can be had.
const NO_FILES_PAUSE: Duration = Duration::from_millis(50);

/// A bound listening socket, not yet answering.
pub struct Endpoint {
    listener: std::net::TcpListener,
    address: SocketAddr,
}

/// The endpoint's thread, answering until `stop` or a failure.
pub struct Running {
    thread: std::thread::JoinHandle<()>,
    failure: Arc<Mutex<Option<String>>>,
}

/// Makes the page of a format; called at most once per [`PAGE_REUSE`] per format.
type Render = dyn Fn(Exposition) -> String + Send + Sync;

struct Page {
    render: Box<Render>,
    made: Mutex<Vec<(Exposition, Instant, Bytes)>>,
}

impl Endpoint {
    /// Listen on `address` (port 0: any free port). Errors say why, with a hint.
    pub fn bind(address: SocketAddr) -> Result<Endpoint> {
        let listen_error = |source| Error::Listen { address, source };
        let listener = std::net::TcpListener::bind(address).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let address = listener.local_addr().map_err(listen_error)?;
        Ok(Endpoint { listener, address })
    }

    /// Where it listens (with the port chosen when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Answer scrapes on a thread of its own with the pages `render` makes, until `stop` is
    /// raised. `log` hears what a user should know (running out of file descriptors).
    pub fn spawn<F>(self, render: F, stop: Arc<AtomicBool>, log: fn(&str)) -> Result<Running>
    where
        F: Fn(Exposition) -> String + Send + Sync + 'static,
    {
        let failure = Arc::new(Mutex::new(None));
        let page = Arc::new(Page {
            render: Box::new(render),
            made: Mutex::new(Vec::new()),
        });
        let limit = connection_limit(open_file_limit());
        let thread = {
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("gilscope-http".into())
                .spawn(move || {
                    let listener = self.listener;
                    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(listener, page, limit, &stop, log)
                    }));
                    let why = match ended {
                        Ok(Ok(())) => return,
                        Ok(Err(why)) => why,
                        Err(panic) => format!("it panicked: {}", panic_message(&panic)),
                    };
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    stop.store(true, Ordering::Relaxed);
                })
                .map_err(|e| Error::Internal(format!("cannot start the HTTP thread: {e}")))?
        };
        Ok(Running { thread, failure })
    }
}

impl Running {
    /// Wait for the thread to end (raise the stop flag first); its failure, if any.
    pub fn join(self) -> std::result::Result<(), String> {
        let failure = self.failure.clone();
        let _ = self.thread.join();
        let why = failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match why {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// An eighth of the file descriptors at most: the sampler needs two per target thread.
fn connection_limit(open_files: u64) -> usize {
    usize::try_from(open_files / 8)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The endpoint's life: a current-thread runtime accepting until `stop`.
fn run(
    listener: std::net::TcpListener,
    page: Arc<Page>,
    limit: usize,
    stop: &AtomicBool,
    log: fn(&str),
) -> std::result::Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start its runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot watch the listening socket: {e}"))?;
        let accepting = accept(listener, page, limit, log);
        let stopped = async {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(STOP_POLL).await;
            }
        };
        first_of(accepting, stopped).await
    })
}

/// Run two futures until the first ends: the accept loop's result, or Ok once stopped.
async fn first_of<A, S>(accepting: A, stopped: S) -> std::result::Result<(), String>
where
    A: Future<Output = std::result::Result<(), String>>,
    S: Future<Output = ()>,
{
    let mut accepting = std::pin::pin!(accepting);
    let mut stopped = std::pin::pin!(stopped);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = accepting.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        stopped.as_mut().poll(cx).map(|()| Ok(()))
    })
    .await
}

/// The open connections, oldest first (ids grow), each with its task.
type Connections = Arc<Mutex<std::collections::BTreeMap<u64, tokio::task::JoinHandle<()>>>>;

/// Removes a connection from the open ones when its task ends, however it ends.
struct Open {
    id: u64,
    connections: Connections,
}

impl Drop for Open {
    fn drop(&mut self) {
        lock(&self.connections).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Close the oldest connection and wait until its socket is closed; false if there is none.
async fn close_oldest(connections: &Connections) -> bool {
    let oldest = lock(connections).pop_first();
    match oldest {
        Some((_, connection)) => {
            connection.abort();
            // Ends once the task's future, and with it the socket, has been dropped.
            let _ = connection.await;
            true
        }
        None => false,
    }
}

/// Accept connections for ever, at most `limit` open; Err only if the listening socket fails.
async fn accept(
    listener: tokio::net::TcpListener,
    page: Arc<Page>,
    limit: usize,
    log: fn(&str),
) -> std::result::Result<(), String> {
    let connections: Connections = Arc::default();
    let mut next_id = 0u64;
    let mut said_no_files = false;
    loop {
        // A place for the next connection, whose file descriptor is then within the limit.
        while lock(&connections).len() >= limit {
            close_oldest(&connections).await;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_out_of_files(&e) => {
                if !said_no_files {
                    log(&format!(
                        "the metrics endpoint ran out of file descriptors ({e}, limit {}): \
                         closing the oldest connections to accept new ones",
                        open_file_limit()
                    ));
                    said_no_files = true;
                }
                if !close_oldest(&connections).await {
                    tokio::time::sleep(NO_FILES_PAUSE).await;
                }
                continue;
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(format!("cannot accept connections: {e}")),
        };
        next_id += 1;
        let open = Open {
            id: next_id,
            connections: connections.clone(),
        };
        let task = tokio::spawn(serve_connection(stream, page.clone(), open));
        // On a current-thread runtime the task cannot have run (and ended) yet.
        lock(&connections).insert(next_id, task);
        // Let the connections just accepted read their requests before the next accept, so
        // that a flood of new connections cannot close a scraper's before it is answered.
        tokio::task::yield_now().await;
    }
}

fn is_out_of_files(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors of one connection that accept(2) reports (see its man page): the next may work.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
        )
    )
}

/// Answer the requests of one connection until it closes, breaks a limit or a deadline.
async fn serve_connection(stream: tokio::net::TcpStream, page: Arc<Page>, _open: Open) {
    // The answer goes out in one write; do not let Nagle hold its tail.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Stalling::new(stream));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let answer = answer(&request, &page);
        std::future::ready(Ok::<_, Infallible>(answer))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        // `printf 'GET /metrics HTTP/1.0\r\n\r\n' | nc -N HOST PORT` closes its side once
        // the request is sent: it must still get its answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service)
        .await;
}

/// The answer to one request: the page for GET and HEAD of /metrics, 405 for other methods
/// there, 404 elsewhere.
fn answer(request: &Request<Incoming>, page: &Page) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: gilscope serves /metrics only\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics answers GET and HEAD only\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let accept: Vec<&[u8]> = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let format = negotiate(&accept);
    let mut response = Response::new(Full::new(page.get(format)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(VARY, HeaderValue::from_static("Accept"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Page {
    /// The page in `format`, made again only if the last one is older than PAGE_REUSE.
    fn get(&self, format: Exposition) -> Bytes {
        let now = Instant::now();
        let mut made = lock(&self.made);
        if let Some((_, _, text)) = made
            .iter()
            .find(|(f, at, _)| *f == format && now.duration_since(*at) < PAGE_REUSE)
        {
            return text.clone();
        }
        let text = Bytes::from((self.render)(format));
        made.retain(|(f, _, _)| *f != format);
        made.push((format, now, text.clone()));
        text
    }
}

/// The format a scraper asked for in its Accept headers: the offered one with the highest
/// quality (the most specific range that matches it decides), OpenMetrics on a tie or when
/// nothing offered is acceptable (as Prometheus's own client libraries fall back to a
/// default rather than answer 406). Unreadable headers count as absent.
pub fn negotiate(accept: &[&[u8]]) -> Exposition {
    let ranges: Vec<MediaRange> = accept
        .iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .filter_map(MediaRange::parse)
        .collect();
    if ranges.is_empty() {
        return Exposition::OpenMetrics;
    }
    let quality = |format: Exposition| {
        ranges
            .iter()
            .filter_map(|range| Some((range.matches(format)?, range.quality)))
            .max_by_key(|&(specificity, _)| specificity)
            .map_or(0.0, |(_, quality)| quality)
    };
    let (open_metrics, text) = (
        quality(Exposition::OpenMetrics),
        quality(Exposition::PrometheusText),
    );
    if text > open_metrics {
        Exposition::PrometheusText
    } else {
        Exposition::OpenMetrics
    }
}

/// One media range of an Accept header: `type/subtype; version=...; q=...`.
struct MediaRange {
    kind: String,
    subtype: String,
    version: Option<String>,
    quality: f32,
}

impl MediaRange {
    fn parse(text: &str) -> Option<MediaRange> {
        let mut parts = text.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let mut range = MediaRange {
            kind: kind.trim().to_ascii_lowercase(),
            subtype: subtype.trim().to_ascii_lowercase(),
            version: None,
            quality: 1.0,
        };
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => range.quality = value.parse::<f32>().ok()?.clamp(0.0, 1.0),
                "version" => range.version = Some(value.to_string()),
                _ => {}
            }
        }
        Some(range)
    }

    /// How specifically this range names `format` (higher is more), None if it excludes it.
    fn matches(&self, format: Exposition) -> Option<u8> {
        let (kind, subtype) = format.media_type();
        let specificity = match (self.kind.as_str(), self.subtype.as_str()) {
            ("*", "*") => 0,
            (k, "*") if k == kind => 1,
            (k, s) if k == kind && s == subtype => 2,
            _ => return None,
        };
        match &self.version {
            None => Some(specificity),
            Some(v) if specificity == 2 && format.versions().contains(&v.as_str()) => Some(3),
            Some(_) if specificity < 2 => Some(specificity),
            Some(_) => None,
        }
    }
}

/// A stream whose writes fail once they have made no progress for WRITE_STALL: a client that
/// stops reading loses its connection instead of holding an answer for ever.
struct Stalling {
    stream: tokio::net::TcpStream,
    stall: Pin<Box<tokio::time::Sleep>>,
    stalled: bool,
}

impl Stalling {
    fn new(stream: tokio::net::TcpStream) -> Stalling {
        Stalling {
            stream,
            stall: Box::pin(tokio::time::sleep(WRITE_STALL)),
            stalled: false,
        }
    }

    /// Pass a write's outcome on; a pending one starts (or checks) the stall deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = false;
            return outcome;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = tokio::time::Instant::now() + WRITE_STALL;
            self.stall.as_mut().reset(deadline);
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(accept: &str) -> Exposition {
        negotiate(&[accept.as_bytes()])
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        use Exposition::{OpenMetrics, PrometheusText};
        assert_eq!(negotiate(&[]), OpenMetrics);
        assert_eq!(chosen("text/plain; version=0.0.4"), PrometheusText);
        assert_eq!(chosen("text/plain"), PrometheusText);
        assert_eq!(chosen("TEXT/Plain;Version=\"0.0.4\""), PrometheusText);
        assert_eq!(chosen("text/*"), PrometheusText);
        assert_eq!(chosen("*/*"), OpenMetrics);
        assert_eq!(chosen("application/json"), OpenMetrics);
        assert_eq!(chosen("text/plain; version=9.9"), OpenMetrics);
        assert_eq!(chosen("text/plain; version=0.0.4; q=0"), OpenMetrics);
        assert_eq!(chosen("text/plain; q=nonsense"), OpenMetrics);
        assert_eq!(
            chosen("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            OpenMetrics
        );
        assert_eq!(
            chosen("application/openmetrics-text; version=0.0.1; q=0.2, text/plain; version=0.0.4; q=0.8"),
            PrometheusText
        );
        // The most specific range decides: text/plain;q=0 outweighs */*.
        assert_eq!(chosen("*/*, text/plain; q=0"), OpenMetrics);
        assert_eq!(chosen("*/*;q=0.1, text/plain;q=0.5"), PrometheusText);
        // Several Accept headers are one list; one that is not UTF-8 is ignored.
        assert_eq!(
            negotiate(&[b"\xff\xfe", b"application/json", b"text/plain"]),
            PrometheusText
        );
    }

    #[test]
    fn the_connection_limit_leaves_most_file_descriptors_to_the_sampler() {
        assert_eq!(connection_limit(128), 16);
        assert_eq!(connection_limit(1024), 128);
        assert_eq!(connection_limit(20_000), MAX_CONNECTIONS);
        assert_eq!(connection_limit(10), MIN_CONNECTIONS);
        assert_eq!(connection_limit(u64::MAX), MAX_CONNECTIONS);
    }

    /// A listening socket that fails ends the endpoint loudly: the failure is kept, logged
    /// and the stop flag raised, so that serve ends with an error instead of serving nothing.
    #[test]
    fn a_failed_listening_socket_stops_serve_with_its_reason() {
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let same_socket = endpoint.listener.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let running = endpoint
            .spawn(|_| String::new(), stop.clone(), |_| {})
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!stop.load(Ordering::Relaxed));
        // shutdown(2) on a listening socket makes accept(2) fail with EINVAL.
        // SAFETY: shutdown(2) on a descriptor this test owns.
        let shut = unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&same_socket),
                libc::SHUT_RDWR,
            )
        };
        assert_eq!(shut, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(stop.load(Ordering::Relaxed), "the stop flag was not raised");
        let why = running.join().unwrap_err();
        assert!(why.contains("cannot accept connections"), "{why}");
    }

    #[test]
    fn a_page_is_made_at_most_once_per_reuse_period_and_format_and_shared() {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let page = Page {
            render: Box::new(move |format| {
                counter.fetch_add(1, Ordering::Relaxed);
                format!("{format:?}")
            }),
            made: Mutex::new(Vec::new()),
        };
        for _ in 0..100 {
            assert_eq!(page.get(Exposition::OpenMetrics), "OpenMetrics");
            assert_eq!(page.get(Exposition::PrometheusText), "PrometheusText");
        }
        assert_eq!(made.load(Ordering::Relaxed), 2);
        // Answers share the page: no copy per connection.
        assert_eq!(
            page.get(Exposition::OpenMetrics).as_ptr(),
            page.get(Exposition::OpenMetrics).as_ptr()
        );
        std::thread::sleep(PAGE_REUSE);
        page.get(Exposition::OpenMetrics);
        assert_eq!(made.load(Ordering::Relaxed), 3);
    }
}
