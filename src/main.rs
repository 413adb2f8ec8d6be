//! The `switchyard` command: run the proxy, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use log::{Level, LevelFilter, Log, Metadata, Record};
use switchyard::app::{self, RunOptions};
use switchyard::config::Config;
use switchyard::metrics::POOL_ACQUIRE_RACES;

/// jemalloc: fewer cycles per allocation than glibc's malloc on Pingora's allocation-heavy
/// request path, at a small idle footprint (measured with the load comparison script; see
/// the README).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Edge reverse proxy, load balancer and HTTP cache.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// The YAML config file.
    #[arg(short, long, default_value = "conf/switchyard.yaml", global = true)]
    config: PathBuf,
    /// Validate the config and exit: 0 when it is valid, 1 with the error when not.
    #[arg(long)]
    check: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade: start the new
    /// process with this flag, then send SIGQUIT to the old one).
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the example config with built-in demo origins on its loopback backend addresses.
    Demo,
}

/// The example config, used by `switchyard demo` when no config file is at the given path.
const EXAMPLE_CONFIG: &str = include_str!("../conf/switchyard.yaml");

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
fn init_logging() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    // The race is counted even when RUST_LOG hides errors.
    let max = inner.filter().max(LevelFilter::Error);
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let demo = matches!(cli.command, Some(Command::Demo));
    let built_in = demo && !cli.config.exists();
    let loaded = if built_in {
        Config::parse(EXAMPLE_CONFIG, "conf/switchyard.yaml (built in)")
    } else {
        Config::load(&cli.config)
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("switchyard: invalid config: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        println!("switchyard: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let options = RunOptions {
        demo,
        config_path: (!built_in).then(|| cli.config.clone()),
        upgrade: cli.upgrade,
    };
    match app::run(config, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::from(1)
        }
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
