//! The `switchyard` command: run the proxy, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::app::{self, RunOptions};
use switchyard::config::Config;

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

fn main() -> ExitCode {
    switchyard::logging::init();
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
