//! Logging: env_logger as configured by `RUST_LOG`, with Pingora's benign pool race counted
//! and kept out of the ERROR log.

use std::sync::atomic::Ordering;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::metrics::POOL_ACQUIRE_RACES;

/// Where and what Pingora logs, at ERROR, each time its connection pool could not take over a
/// pooled upstream connection because the connection's idle-watch task had not let go of it
/// yet. The request then opens a new connection: a benign race, nothing an operator can act on.
const POOL_RACE_TARGET: &str = "pingora_core::connectors";
const POOL_RACE_MESSAGE: &str = "failed to acquire reusable stream";

/// env_logger with one exception: Pingora's pool race line is counted
/// (`switchyard_upstream_pool_acquire_races_total`) and logged at DEBUG instead of ERROR. Every
/// other record of that target, ERRORs included, passes through unchanged. (env_logger can set
/// levels per target only, which would hide the module's other errors.)
struct Logger<L> {
    inner: L,
}

impl<L: Log> Logger<L> {
    fn is_pool_race(record: &Record<'_>) -> bool {
        record.level() == Level::Error
            && record.target() == POOL_RACE_TARGET
            && match record.args().as_str() {
                Some(text) => text == POOL_RACE_MESSAGE,
                None => record.args().to_string() == POOL_RACE_MESSAGE,
            }
    }
}

impl<L: Log> Log for Logger<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
            || (metadata.level() == Level::Error && metadata.target() == POOL_RACE_TARGET)
    }

    fn log(&self, record: &Record<'_>) {
        if !Self::is_pool_race(record) {
            self.inner.log(record);
            return;
        }
        POOL_ACQUIRE_RACES.fetch_add(1, Ordering::Relaxed);
        let demoted = Record::builder()
            .level(Level::Debug)
            .target(record.target())
            .args(*record.args())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.inner.enabled(demoted.metadata()) {
            self.inner.log(&demoted);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` as usual (default `info`).
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    // The race is counted even when RUST_LOG hides errors.
    let max = inner.filter().max(LevelFilter::Error);
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Level, String)>>);

    impl Log for Recorder {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= Level::Info
        }
        fn log(&self, record: &Record<'_>) {
            if self.enabled(record.metadata()) {
                let line = (record.level(), record.args().to_string());
                self.0.lock().unwrap().push(line);
            }
        }
        fn flush(&self) {}
    }

    fn emit(logger: &Logger<Recorder>, target: &str, message: &str) {
        logger.log(
            &Record::builder()
                .level(Level::Error)
                .target(target)
                .args(format_args!("{message}"))
                .build(),
        );
    }

    #[test]
    fn the_pool_race_is_counted_and_kept_out_of_the_error_log() {
        let logger = Logger {
            inner: Recorder::default(),
        };
        let before = POOL_ACQUIRE_RACES.load(Ordering::Relaxed);
        emit(&logger, POOL_RACE_TARGET, POOL_RACE_MESSAGE);
        emit(&logger, POOL_RACE_TARGET, "connection refused");
        emit(&logger, "pingora_proxy", POOL_RACE_MESSAGE);
        assert_eq!(POOL_ACQUIRE_RACES.load(Ordering::Relaxed) - before, 1);
        let logged = logger.inner.0.lock().unwrap().clone();
        assert_eq!(
            logged,
            vec![
                (Level::Error, "connection refused".to_string()),
                (Level::Error, POOL_RACE_MESSAGE.to_string()),
            ],
            "other errors of the target, and the message from elsewhere, stay errors"
        );
        assert!(logger.enabled(
            &Metadata::builder()
                .level(Level::Error)
                .target(POOL_RACE_TARGET)
                .build()
        ));
    }
}
