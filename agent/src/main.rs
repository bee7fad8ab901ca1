//! `linkrelayd`: the linkrelay agent.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// The doc comments below are the --help text, where `[agent]` and `[[link]]` name config
// sections, not items to link to.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use linkrelay_agent::logging;
use linkrelay_agent::{Options, RunError, ServeBus, run};
use linkrelay_config::{Config, ConfigError};

/// sysexits EX_TEMPFAIL: another agent holds the data directory. The systemd unit
/// (`linkrelay install --user`) lists it in `RestartPreventExitStatus=`, so that a unit that
/// finds another agent in charge is not restarted every few seconds.
const EX_TEMPFAIL: u8 = 75;
/// sysexits EX_CONFIG.
const EX_CONFIG: u8 = 78;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BusArg {
    Session,
    System,
}

/// Sends each user's outgoing mail through the SMTP relay that matches the network link that
/// is up.
///
/// linkrelayd follows NetworkManager (system bus), or without it the kernel's default route
/// (netlink; see [agent] source), matches the link against the [[link]] rules
/// of its config, publishes each user's route on D-Bus as org.linkrelay.Agent, and flushes the
/// users' outboxes (queued by `linkrelay sendmail`) through the matching relays. Mail is never
/// bounced because of routing: a relay that refuses us on this link leaves the mail queued.
///
/// Runs in the foreground and logs to stderr (RUST_LOG=debug for more; under systemd, in the
/// journal's format). As a systemd `Type=notify` service it reports readiness once its bus name
/// is claimed and pings the watchdog (`WatchdogSec=`); `linkrelay install --user` writes the
/// unit and the D-Bus activation file. SIGHUP reloads the config; a broken config keeps the old
/// one running. Without a config file it starts on an embedded default (link detection and
/// D-Bus work; mail is held: no relays).
#[derive(Debug, Parser)]
#[command(name = "linkrelayd", version)]
struct Args {
    /// Config file [default: $XDG_CONFIG_HOME/linkrelay/config.toml]
    #[arg(long, short, env = "LINKRELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the outboxes live [default: $XDG_DATA_HOME/linkrelay]
    #[arg(long, env = "LINKRELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Which bus to serve org.linkrelay.Agent on
    #[arg(long, value_enum, default_value = "session")]
    bus: BusArg,
    /// Check the config and exit (0 when fine, 78 with the problems)
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(logging::style_from_env());

    let (config, config_path) = match load_config(args.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("linkrelayd: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check {
        println!("config ok");
        for note in &config.notes {
            println!("{note}");
        }
        return ExitCode::SUCCESS;
    }
    for note in &config.notes {
        tracing::info!("{note}");
    }
    match start(args, config, config_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linkrelayd: {e:#}");
            match e.downcast_ref::<RunError>() {
                Some(RunError::DataDirBusy(_)) => ExitCode::from(EX_TEMPFAIL),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The config named on the command line (must exist), else the default path if it exists, else
/// the embedded default.
fn load_config(explicit: Option<PathBuf>) -> Result<(Config, Option<PathBuf>), String> {
    let render = |e: ConfigError| match e {
        ConfigError::Invalid(d) => format!("the config has errors:\n{d}"),
        other => other.to_string(),
    };
    if let Some(path) = explicit {
        return Config::load(&path).map(|c| (c, Some(path))).map_err(render);
    }
    match linkrelay_config::default_config_path() {
        Some(path) if path.exists() => Config::load(&path).map(|c| (c, Some(path))).map_err(render),
        _ => {
            tracing::info!(
                "no config file; using the embedded default (no relays: mail is held). Write one with `linkrelay config init`."
            );
            Ok((Config::embedded_default(), None))
        }
    }
}

fn start(args: Args, config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => linkrelay_config::default_data_dir().context(
            "cannot find a data directory: set XDG_DATA_HOME or HOME, or pass --data-dir",
        )?,
    };
    let opts = Options {
        config_path,
        data_dir,
        bus: match args.bus {
            BusArg::Session => ServeBus::Session,
            BusArg::System => ServeBus::System,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(opts, config))?;
    Ok(())
}
