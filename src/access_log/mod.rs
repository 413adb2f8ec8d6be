//! The access log: one line per finished request, written off the request path. A request
//! hands its [`Entry`] to a bounded channel and moves on; a writer thread formats (see
//! [`format`]) and writes the lines. When the writer falls behind, entries are dropped and
//! counted (`switchyard_access_log_dropped_total`): requests never wait for the log.

pub mod format;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

use crate::config::{AccessLog as Settings, LogTarget};

/// Entries waiting for the writer at most; more are dropped.
const CAPACITY: usize = 16 * 1024;

/// What the log knows of one request. Header values are taken as sent; the writer escapes
/// them. `Authorization` and `Cookie` are never taken.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub time: Option<SystemTime>,
    pub client_ip: Option<IpAddr>,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The raw query; the writer drops or masks it as configured.
    pub query: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    pub duration: Duration,
    /// The backend address of the last attempt.
    pub upstream: Option<String>,
    pub upstream_status: Option<u16>,
    pub upstream_ms: Option<f64>,
    /// The cache lookup result (hit, miss, …) on a caching route.
    pub cache: Option<&'static str>,
    pub encoding: Option<String>,
    pub route: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub tls_version: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// Why the request failed, when it did.
    pub error: Option<String>,
}

/// Changes the writer picks up between entries.
#[derive(Debug, Default)]
struct Control {
    settings: Mutex<Option<Arc<Settings>>>,
    reopen: AtomicBool,
}

/// The handle requests log through; cheap to call, never blocks.
#[derive(Debug)]
pub struct AccessLogger {
    tx: SyncSender<Box<Entry>>,
    control: Arc<Control>,
    dropped: IntCounter,
}

impl AccessLogger {
    /// Starts the writer thread with `settings`.
    pub fn start(settings: &Settings, dropped: IntCounter) -> AccessLogger {
        let (tx, rx) = sync_channel(CAPACITY);
        let control = Arc::new(Control::default());
        let writer = Writer {
            settings: Arc::new(settings.clone()),
            sink: open(settings),
            control: Arc::clone(&control),
            line: String::with_capacity(512),
        };
        let spawned = std::thread::Builder::new()
            .name("access log".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            log::error!("cannot start the access log writer: {e}; access log lines are dropped");
        }
        AccessLogger {
            tx,
            control,
            dropped,
        }
    }

    /// Queues `entry`; drops and counts it when the writer is behind.
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(Box::new(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Takes new settings (a reload): the writer reopens its target with them.
    pub fn configure(&self, settings: &Settings) {
        *self
            .control
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(settings.clone()));
        self.control.reopen.store(true, Ordering::Release);
    }

    /// Reopens a file log (after logrotate renamed it: SIGUSR1).
    pub fn reopen(&self) {
        self.control.reopen.store(true, Ordering::Release);
    }
}

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    Stderr(BufWriter<std::io::Stderr>),
    File(BufWriter<File>),
    None,
}

impl Sink {
    fn out(&mut self) -> Option<&mut dyn Write> {
        match self {
            Sink::Stdout(w) => Some(w),
            Sink::Stderr(w) => Some(w),
            Sink::File(w) => Some(w),
            Sink::None => None,
        }
    }
}

fn open(settings: &Settings) -> Sink {
    if !settings.enabled {
        return Sink::None;
    }
    match &settings.target {
        LogTarget::Stdout => Sink::Stdout(BufWriter::with_capacity(64 << 10, std::io::stdout())),
        LogTarget::Stderr => Sink::Stderr(BufWriter::with_capacity(64 << 10, std::io::stderr())),
        LogTarget::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => Sink::File(BufWriter::with_capacity(64 << 10, file)),
            Err(e) => {
                log::error!("cannot open the access log {}: {e}", path.display());
                Sink::None
            }
        },
    }
}

struct Writer {
    settings: Arc<Settings>,
    sink: Sink,
    control: Arc<Control>,
    line: String,
}

impl Writer {
    fn run(mut self, rx: Receiver<Box<Entry>>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(entry) => Some(entry),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.apply_control();
            if let Some(entry) = first {
                self.write(&entry);
                // Whatever else is waiting goes out in the same buffer, then one flush.
                while let Ok(entry) = rx.try_recv() {
                    self.write(&entry);
                }
            }
            if let Some(out) = self.sink.out() {
                if let Err(e) = out.flush() {
                    log::warn!("cannot write the access log: {e}");
                }
            }
        }
    }

    fn apply_control(&mut self) {
        if !self.control.reopen.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Some(out) = self.sink.out() {
            let _ = out.flush();
        }
        if let Some(settings) = self
            .control
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.settings = settings;
        }
        self.sink = open(&self.settings);
    }

    fn write(&mut self, entry: &Entry) {
        self.line.clear();
        format::line(&self.settings, entry, &mut self.line);
        self.line.push('\n');
        if let Some(out) = self.sink.out() {
            if let Err(e) = out.write_all(self.line.as_bytes()) {
                log::warn!("cannot write the access log: {e}");
            }
        }
    }
}
