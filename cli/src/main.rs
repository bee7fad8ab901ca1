//! `linkrelay`: the command line of the linkrelay agent, and a sendmail-compatible entry.
//!
//! Every verb but `sendmail` and `config` asks the running agent over D-Bus; the CLI holds no
//! logic beyond enqueueing and formatting.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// Doc comments on clap types are the --help text, where `[[link]]` and `[default: ...]` are
// words for the user, not links.
#![allow(rustdoc::broken_intra_doc_links)]

// First: the other modules use its macros.
#[macro_use]
mod say;

mod connect;
mod edit;
mod install;
mod login;
mod mailq;
mod output;
mod panel;
mod queue;
mod relay;
mod routes;
mod sendmail;
mod setup;
mod smtp_stdio;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use linkrelay_config::{Config, ConfigError};
use linkrelay_dbus::agent::{AGENT_BUS_NAME, AgentProxy};
use serde_json::json;

/// sysexits EX_UNAVAILABLE: the agent is not running.
const EX_UNAVAILABLE: u8 = 69;
/// sysexits EX_CONFIG.
const EX_CONFIG: u8 = 78;
/// sysexits EX_TEMPFAIL: `flush --wait` ended with mail its route holds.
const EX_TEMPFAIL: u8 = 75;

/// Query and steer linkrelayd, the agent that sends your mail through the SMTP relay of the
/// network link that is up; and queue mail (`linkrelay sendmail`, or this binary called as
/// `sendmail`).
#[derive(Debug, Parser)]
#[command(name = "linkrelay", version, propagate_version = true)]
struct Cli {
    /// Talk to a system-wide agent on the system bus instead of the session bus
    #[arg(long, global = true)]
    system: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Show the link, each user's route (or why mail is held), the override and queue counts
    Status(StatusArgs),
    /// Follow the agent's events (route changes, sent, deferred, failed, refusals) until ^C
    Watch(JsonFlag),
    /// Override the router: pretend a link is up, or force a relay
    Override(OverrideArgs),
    /// Send queued mail now, ignoring retry delays
    Flush(FlushArgs),
    /// List queued and failed messages with each recipient's state and why they wait
    Queue(QueueArgs),
    /// Make a queued message due now, or put a failed message back in the queue
    Retry {
        /// Message id (see `linkrelay queue`)
        id: String,
    },
    /// Delete a queued, failed or sent message for good
    Drop {
        /// Message id (see `linkrelay queue`, or a directory name in sent/)
        id: String,
    },
    /// Remove the sent mail that [outbox] keep_sent and keep_sent_size no longer keep (the
    /// agent does it by itself, at most once an hour)
    Prune(PruneArgs),
    /// Make the agent re-read its config (a broken file keeps the running config)
    Reload,
    /// Try a relay from the link that is up, as the agent would use it, without sending: EHLO,
    /// STARTTLS, AUTH, then MAIL FROM and RCPT TO and RSET. Exits 0 when it would relay for us
    TestRelay(TestRelayArgs),
    /// Print the password of the submission listener (AUTH PLAIN), making one if there is
    /// none. Only clients the kernel cannot name need it: your own programs are known by their
    /// uid and need no password
    Token {
        /// Replace the token with a new one (clients using the old one must be told)
        #[arg(long)]
        renew: bool,
    },
    /// Find the submission server of an address (autoconfig, the ISP database, SRV and MX
    /// records, guesses), have the agent try it from this link, and propose the config for it
    Setup(setup::SetupArgs),
    /// Routes learnt per link: what each relay answered on each link, and the [[link]] rules
    /// and routes that follow from it
    #[command(subcommand)]
    Routes(RoutesVerb),
    /// Log in to a relay's OAuth2 provider (Gmail, Microsoft 365, ...) and keep the refresh
    /// token in the desktop keyring (or the relay's token_file)
    Login(LoginArgs),
    /// Forget a relay's OAuth2 refresh token (and revoke it at the provider when it can)
    Logout(LogoutArgs),
    /// Check, create or locate the config file
    #[command(subcommand)]
    Config(ConfigVerb),
    /// Install the systemd user unit and the D-Bus activation file for linkrelayd
    Install(InstallArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page linkrelay(1), or write it and one page per verb into a directory
    Man {
        /// Write linkrelay.1 and linkrelay-VERB.1 into this directory instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Queue a message like sendmail(8): reads the message on stdin. Run `linkrelay sendmail
    /// --help-sendmail` for the options.
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail options and recipients
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    /// Several lines for people
    Text,
    /// JSON for scripts (the same as --json)
    Json,
    /// A Waybar custom module's JSON (text, tooltip, class, alt)
    Waybar,
    /// One plain line for panels and prompts
    Line,
}

#[derive(Debug, ClapArgs)]
struct StatusArgs {
    /// Print JSON instead of text (the same as --format json)
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// How to print it
    #[arg(long, value_enum)]
    format: Option<StatusFormat>,
    /// With --format waybar or line: keep running and print a new line at every change
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, ClapArgs)]
struct TestRelayArgs {
    /// The [[relay]] name
    name: String,
    /// Envelope sender to try [default: an address of a user routed through it, else <>]
    #[arg(long, value_name = "ADDR")]
    from: Option<String>,
    /// Recipient to try [default: postmaster@example.com, a domain no relay delivers itself]
    #[arg(long, value_name = "ADDR")]
    to: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
struct LoginArgs {
    /// The [[relay]] name
    relay: String,
    /// Log in with a code typed in any browser (RFC 8628 device grant)
    #[arg(long, conflicts_with = "browser")]
    device: bool,
    /// Log in in this machine's browser (authorization code with PKCE, loopback redirect)
    #[arg(long)]
    browser: bool,
    /// The config file [default: $XDG_CONFIG_HOME/linkrelay/config.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
struct LogoutArgs {
    /// The [[relay]] name
    relay: String,
    /// The config file [default: $XDG_CONFIG_HOME/linkrelay/config.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
struct InstallArgs {
    /// Install for your user: the unit into ~/.config/systemd/user, the D-Bus service file into
    /// ~/.local/share/dbus-1/services (following XDG_CONFIG_HOME and XDG_DATA_HOME)
    #[arg(long, required = true)]
    user: bool,
    /// The linkrelayd to run [default: the one beside this linkrelay, else the one on PATH]
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Print the files and where they would go; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Remove the files instead
    #[arg(long, conflicts_with = "dry_run")]
    remove: bool,
}

#[derive(Debug, ClapArgs)]
struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
#[group(required = true, multiple = false)]
struct OverrideTarget {
    /// Act as if this [[link]] rule matched the link that is up
    #[arg(long, value_name = "NAME")]
    link: Option<String>,
    /// Send every user's mail through this relay
    #[arg(long, value_name = "NAME")]
    relay: Option<String>,
    /// Remove the override
    #[arg(long)]
    clear: bool,
}

#[derive(Debug, ClapArgs)]
struct OverrideArgs {
    #[command(flatten)]
    target: OverrideTarget,
    /// How long the override lasts (e.g. 30m, 2h); default: until cleared
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

#[derive(Debug, ClapArgs)]
struct FlushArgs {
    /// Only this user's outbox
    #[arg(long)]
    user: Option<String>,
    /// Wait until the flush is over and report what was sent
    #[arg(long)]
    wait: bool,
    /// When mail is held for want of a link with a relay, first ask NetworkManager to bring up
    /// a saved connection that has one (implies --wait)
    #[arg(long)]
    connect: bool,
    /// With --connect: how long to wait for the connection to carry a route
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
struct PruneArgs {
    /// Only this user's sent mail
    #[arg(long)]
    user: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
struct QueueArgs {
    /// Only this user's outbox
    #[arg(long)]
    user: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RoutesVerb {
    /// Per link seen, the relays that accepted there and those that refused; proposes the
    /// [[link]] rules and routes that follow (a relay that logs in is offered only to the
    /// users already sending through it, or to all while none does)
    Suggest {
        /// Write the proposal into the config (shown as a diff first) and reload the agent
        #[arg(long)]
        apply: bool,
        /// Print JSON instead of text
        #[arg(long, conflicts_with = "apply")]
        json: bool,
        /// The config file [default: the agent's, else $XDG_CONFIG_HOME/linkrelay/config.toml]
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Test every configured relay from the link that is up (nothing is sent), so that the
    /// agent learns which accept us here
    Probe {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigVerb {
    /// Check a config file; prints every problem as file:line:col with a fix
    Check {
        /// The file [default: $XDG_CONFIG_HOME/linkrelay/config.toml]
        path: Option<PathBuf>,
    },
    /// Write a commented starter config
    Init {
        /// Where [default: $XDG_CONFIG_HOME/linkrelay/config.toml]
        path: Option<PathBuf>,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Print where the config file is looked for
    Path,
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let called_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("linkrelay")
        .to_string();
    if called_as == "sendmail" || called_as.starts_with("sendmail.") {
        argv.remove(0);
        return sendmail::main(argv);
    }
    if called_as == "mailq" {
        argv[0] = "-bp".to_owned();
        return sendmail::main(argv);
    }
    let cli = Cli::parse();
    if let Verb::Sendmail { args } = cli.verb {
        return sendmail::main(args);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            errln!("linkrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.verb {
        Verb::Config(c) => return config_verb(c),
        Verb::Install(a) => return install_verb(a),
        Verb::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "linkrelay",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Man { dir } => return man_verb(dir.as_deref()),
        Verb::Token { renew } => {
            let dir = sendmail::data_dir()
                .context("cannot find the data directory: set XDG_DATA_HOME or HOME")?;
            println!("{}", linkrelay_outbox::token::token(&dir, *renew)?);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match &cli.verb {
        Verb::Login(a) => {
            let flow = match (a.device, a.browser) {
                (true, _) => Some(linkrelay_config::LoginFlow::Device),
                (_, true) => Some(linkrelay_config::LoginFlow::Browser),
                _ => None,
            };
            let path = config_path(a.config.clone())?;
            runtime.block_on(login::login(&path, &a.relay, flow, cli.system))?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Logout(a) => {
            let path = config_path(a.config.clone())?;
            runtime.block_on(login::logout(&path, &a.relay))?;
            Ok(ExitCode::SUCCESS)
        }
        _ => runtime.block_on(agent_verb(cli)),
    }
}

/// `path`, or the default config path.
fn config_path(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    path.or_else(linkrelay_config::default_config_path)
        .context("no config path: pass --config, or set XDG_CONFIG_HOME or HOME")
}

fn config_verb(verb: &ConfigVerb) -> anyhow::Result<ExitCode> {
    let default = linkrelay_config::default_config_path();
    match verb {
        ConfigVerb::Path => {
            let p = default.context("neither XDG_CONFIG_HOME nor HOME is set")?;
            outln!("{}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        ConfigVerb::Check { path } => {
            let path = path
                .clone()
                .or(default)
                .context("no config path: pass one, or set XDG_CONFIG_HOME or HOME")?;
            match Config::load(&path) {
                Ok(c) => {
                    outln!(
                        "{}: ok ({} links, {} relays, {} users)",
                        path.display(),
                        c.links.len(),
                        c.relays.len(),
                        c.users.len()
                    );
                    outln!("{}", c.agent.source.describe_fields());
                    for note in &c.notes {
                        outln!("{note}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(ConfigError::Invalid(d)) => {
                    errln!("{d}");
                    Ok(ExitCode::from(EX_CONFIG))
                }
                Err(e) => {
                    errln!("linkrelay: {e}");
                    Ok(ExitCode::from(EX_CONFIG))
                }
            }
        }
        ConfigVerb::Init { path, force } => {
            let path = path
                .clone()
                .or(default)
                .context("no config path: pass one, or set XDG_CONFIG_HOME or HOME")?;
            if path.exists() && !force {
                bail!("{} exists; pass --force to overwrite it", path.display());
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, linkrelay_config::STARTER_CONFIG)
                .with_context(|| format!("cannot write {}", path.display()))?;
            outln!(
                "wrote {}; edit it, then `linkrelay config check` and `linkrelay reload`",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn install_verb(a: &InstallArgs) -> anyhow::Result<ExitCode> {
    let plan = install::plan(install::find_agent(a.agent.clone())?)?;
    if a.dry_run {
        println!("# {}\n{}", plan.unit_path.display(), plan.unit);
        println!("# {}\n{}", plan.dbus_path.display(), plan.dbus);
        return Ok(ExitCode::SUCCESS);
    }
    if a.remove {
        for p in [&plan.unit_path, &plan.dbus_path] {
            if install::remove_file(p)? {
                println!("removed {}", p.display());
            }
        }
        println!(
            "Next: systemctl --user disable --now {} && systemctl --user daemon-reload",
            install::UNIT_NAME
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (path, text) in [(&plan.unit_path, &plan.unit), (&plan.dbus_path, &plan.dbus)] {
        let what = match install::write_file(path, text)? {
            install::Written::Created => "wrote",
            install::Written::Updated => "updated",
            install::Written::Unchanged => "unchanged",
        };
        println!("{what} {}", path.display());
    }
    println!("Both start {}.", plan.agent.display());
    print!("{}", install::next_steps(&plan));
    Ok(ExitCode::SUCCESS)
}

/// Sections of linkrelay(1) that the clap definition does not hold.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
0 on success; 1 on errors (and from \fBtest\-relay\fR when the relay would not relay for us);
69 (EX_UNAVAILABLE) when linkrelayd is not running and cannot be started;
78 (EX_CONFIG) for a broken config (\fBconfig check\fR, \fBreload\fR).
\fBsendmail\fR exits with sendmail(8)'s sysexits codes.
.SH FILES
.TP
\fI$XDG_CONFIG_HOME/linkrelay/config.toml\fR
The config (\fB~/.config/linkrelay/config.toml\fR); \fBlinkrelay config init\fR writes a starter.
.TP
\fI$XDG_DATA_HOME/linkrelay/USER/\fR
Each user's outbox: queue/, failed/, sent/, new/ (\fB~/.local/share/linkrelay/\fR).
.TP
\fI~/.config/systemd/user/linkrelayd.service\fR
The systemd user unit \fBlinkrelay install \-\-user\fR writes.
.TP
\fI~/.local/share/dbus\-1/services/org.linkrelay.Agent.service\fR
D\-Bus activation: the first call starts the agent.
.SH ENVIRONMENT
.TP
\fBDBUS_SESSION_BUS_ADDRESS\fR, \fBDBUS_SYSTEM_BUS_ADDRESS\fR
Where linkrelayd is reached (session bus; \fB\-\-system\fR for the system bus) and where NetworkManager is.
.TP
\fBXDG_CONFIG_HOME\fR, \fBXDG_DATA_HOME\fR
Where the config and the outboxes are.
"#;

fn man_verb(dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    let main_page = || -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        out.extend_from_slice(MAN_EXTRA.as_bytes());
        Ok(out)
    };
    let Some(dir) = dir else {
        std::io::Write::write_all(&mut std::io::stdout(), &main_page()?)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("linkrelay.1".to_string(), main_page()?)];
    for sub in cmd.get_subcommands() {
        let name = format!("linkrelay-{}", sub.get_name());
        let mut out = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut out)?;
        pages.push((format!("{name}.1"), out));
    }
    for (file, out) in pages {
        let path = dir.join(file);
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the bus and makes sure the agent is there, starting it through D-Bus activation
/// when it is installed (`linkrelay install --user`), with a message that says what to do when
/// it is not.
async fn connect(system: bool) -> anyhow::Result<Result<zbus::Connection, String>> {
    connect_with(system, true).await
}

/// [`connect()`], starting the agent through D-Bus activation only when `activate` says so.
async fn connect_with(
    system: bool,
    activate: bool,
) -> anyhow::Result<Result<zbus::Connection, String>> {
    let which = if system { "system" } else { "session" };
    let conn = match agent_bus(system).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(format!(
                "cannot connect to the {which} bus ({e}); linkrelayd publishes itself there"
            )));
        }
    };
    Ok(ensure_agent(&conn, system, activate).await?.map(|()| conn))
}

/// A connection to the bus the agent serves on: this session's (or the system) bus, unless
/// the lock of the data directory says that the agent that runs serves on another bus of
/// that kind (started from another session: a desktop's and an ssh `dbus-run-session`'s):
/// then that one, so that every verb reaches the one agent that holds the outboxes.
pub async fn agent_bus(system: bool) -> zbus::Result<zbus::Connection> {
    if let Some(address) = agent_elsewhere(system)
        && let Ok(conn) = zbus::connection::Builder::address(address.as_str())
            .build()
            .await
    {
        return Ok(conn);
    }
    if system {
        zbus::Connection::system().await
    } else {
        zbus::Connection::session().await
    }
}

/// The address of the bus the running agent serves on, when it is not this process's bus
/// of that kind.
fn agent_elsewhere(system: bool) -> Option<String> {
    let data_dir = std::env::var_os("LINKRELAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(linkrelay_config::default_data_dir)?;
    let owner = linkrelay_outbox::holder(&data_dir)??;
    let (kind, ours) = if system {
        ("system", linkrelay_dbus::address::system_bus_address())
    } else {
        ("session", linkrelay_dbus::address::session_bus_address())
    };
    (owner.bus == kind && owner.address != ours).then_some(owner.address)
}

/// Whether the agent is on `conn`'s bus, starting it through D-Bus activation when it is
/// installed (`linkrelay install --user`) and `activate` says so; else what to do about it.
async fn ensure_agent(
    conn: &zbus::Connection,
    system: bool,
    activate: bool,
) -> anyhow::Result<Result<(), String>> {
    let which = if system { "system" } else { "session" };
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::try_from(AGENT_BUS_NAME)?;
    if dbus.name_has_owner(name.clone()).await? {
        return Ok(Ok(()));
    }
    let activatable = activate
        && dbus
            .list_activatable_names()
            .await?
            .iter()
            .any(|n| n.as_str() == AGENT_BUS_NAME);
    if activatable {
        // The bus starts it (through systemd when the unit is installed) and answers once the
        // agent owns its name, which it claims only when its state is real.
        let start = zbus::names::WellKnownName::try_from(AGENT_BUS_NAME)?;
        return Ok(match dbus.start_service_by_name(start, 0).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "linkrelayd is not running on the {which} bus and D-Bus activation could not start it ({e}); \
                 see `journalctl --user -u linkrelayd`, or run `linkrelayd` in a terminal to see why"
            )),
        });
    }
    Ok(Err(format!(
        "linkrelayd is not running on the {which} bus ({AGENT_BUS_NAME} has no owner); \
         start it with `linkrelayd{}` (or `systemctl --user start linkrelayd`), \
         or run `linkrelay install --user` once so that it starts by itself",
        if system { " --bus system" } else { "" }
    )))
}

fn dbus_error(e: zbus::Error) -> anyhow::Error {
    match &e {
        zbus::Error::MethodError(name, Some(text), _) => {
            let short = name.as_str().rsplit('.').next().unwrap_or(name.as_str());
            anyhow!("{text} ({short})")
        }
        _ => anyhow!(e),
    }
}

async fn agent_verb(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Verb::Status(StatusArgs {
        format: Some(f @ (StatusFormat::Waybar | StatusFormat::Line)),
        follow,
        ..
    }) = &cli.verb
    {
        let f = match f {
            StatusFormat::Waybar => panel::PanelFormat::Waybar,
            _ => panel::PanelFormat::Line,
        };
        return panel::run(cli.system, f, *follow).await;
    }
    let conn = match connect(cli.system).await? {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("linkrelay: {msg}");
            return Ok(ExitCode::from(EX_UNAVAILABLE));
        }
    };
    let agent = AgentProxy::new(&conn).await?;
    match cli.verb {
        Verb::Status(f) => {
            if f.follow {
                bail!("--follow goes with --format waybar or --format line");
            }
            let s = output::Status::read(&agent).await.map_err(dbus_error)?;
            if f.json || f.format == Some(StatusFormat::Json) {
                println!("{}", serde_json::to_string_pretty(&s.to_json())?);
            } else {
                print!("{}", s.render());
            }
        }
        Verb::Watch(f) => watch(&conn, &agent, f.json).await?,
        Verb::Override(o) => {
            let secs = o.duration.map(|d| d.as_secs().max(1)).unwrap_or(0);
            if o.target.clear {
                agent.clear_override().await.map_err(dbus_error)?;
                println!("override cleared");
            } else if let Some(link) = o.target.link {
                agent
                    .set_override("link", &link, secs)
                    .await
                    .map_err(dbus_error)?;
                println!(
                    "override: acting as if link {link} were up{}",
                    output::for_text(secs)
                );
            } else if let Some(relay) = o.target.relay {
                agent
                    .set_override("relay", &relay, secs)
                    .await
                    .map_err(dbus_error)?;
                println!(
                    "override: sending through relay {relay}{}",
                    output::for_text(secs)
                );
            }
        }
        Verb::Flush(f) => {
            let user = f.user.unwrap_or_default();
            // With --wait the reply comes when the flush is over (zbus sets no call timeout).
            let results = if f.connect {
                let u = (!user.is_empty()).then_some(user.as_str());
                connect::connect_and_flush(&agent, u, f.timeout, f.json).await?
            } else {
                agent.flush(&user, f.wait).await.map_err(dbus_error)?
            };
            let waited = f.wait || f.connect;
            // Read after the flush: the routes it ended under.
            let routes = agent.routes().await.unwrap_or_default();
            let flushed = output::flushed(&results, &routes);
            if f.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&output::flush_json(&flushed))?
                );
            } else {
                print!("{}", output::flush_text(&flushed, waited));
            }
            if waited && flushed.iter().any(output::Flushed::held_back) {
                return Ok(ExitCode::from(EX_TEMPFAIL));
            }
        }
        Verb::Queue(q) => queue::print(&agent, &q.user.unwrap_or_default(), q.json).await?,
        Verb::Retry { id } => {
            // Whose message it is, before it may be sent and gone (an older agent cannot say).
            let user = agent.message_user(&id).await.ok();
            agent.retry(&id).await.map_err(dbus_error)?;
            let routes = agent.routes().await.unwrap_or_default();
            println!("{}", output::retry_text(&id, user.as_deref(), &routes));
        }
        Verb::Drop { id } => {
            agent.drop(&id).await.map_err(dbus_error)?;
            println!("{id}: deleted");
        }
        Verb::TestRelay(t) => {
            let result = agent
                .test_relay(
                    &t.name,
                    t.from.as_deref().unwrap_or(""),
                    t.to.as_deref().unwrap_or(""),
                )
                .await
                .map_err(dbus_error)?;
            if t.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&relay::to_json(&result))?
                );
            } else {
                print!("{}", relay::render(&result));
            }
            if result.may_relay != "yes" {
                return Ok(ExitCode::FAILURE);
            }
        }
        Verb::Prune(p) => {
            let results = agent
                .prune(&p.user.unwrap_or_default())
                .await
                .map_err(dbus_error)?;
            if p.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&output::prune_json(&results))?
                );
            } else {
                print!("{}", output::prune_text(&results));
            }
        }
        Verb::Routes(r) => return routes_verb(&agent, r).await,
        Verb::Setup(a) => return setup::run(&agent, a).await,
        Verb::Reload => match agent.reload().await {
            Ok(()) => {
                println!("config reloaded");
                for line in agent.config_not_in_force().await.unwrap_or_default() {
                    println!("not in force: {line}");
                }
            }
            Err(e) => {
                eprintln!("linkrelay: {:#}", dbus_error(e));
                return Ok(ExitCode::from(EX_CONFIG));
            }
        },
        Verb::Config(_)
        | Verb::Login(_)
        | Verb::Logout(_)
        | Verb::Sendmail { .. }
        | Verb::Install(_)
        | Verb::Completions { .. }
        | Verb::Man { .. }
        | Verb::Token { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The config file the agent runs on, else `explicit`, else the default path.
async fn config_file(agent: &AgentProxy<'_>, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    match agent.config_path().await {
        Ok(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => linkrelay_config::default_config_path()
            .context("no config path: pass --config, or set XDG_CONFIG_HOME or HOME"),
    }
}

/// After the config file changed: the agent reloads it, or says why not.
async fn reload_after_write(agent: &AgentProxy<'_>) -> anyhow::Result<ExitCode> {
    match agent.reload().await {
        Ok(()) => {
            println!("linkrelayd reloaded the config");
            for line in agent.config_not_in_force().await.unwrap_or_default() {
                println!("not in force: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "linkrelay: the agent did not take the new config: {:#}",
                dbus_error(e)
            );
            Ok(ExitCode::from(EX_CONFIG))
        }
    }
}

async fn routes_verb(agent: &AgentProxy<'_>, verb: RoutesVerb) -> anyhow::Result<ExitCode> {
    match verb {
        RoutesVerb::Probe { json } => {
            let config =
                Config::load(&config_file(agent, None).await?).map_err(|e| anyhow!("{e}"))?;
            let mut results = Vec::new();
            for r in &config.relays {
                let t = agent
                    .test_relay(&r.name, "", "")
                    .await
                    .map_err(dbus_error)?;
                if !json {
                    println!("{}", routes::probe_line(&t));
                }
                results.push(t);
            }
            if json {
                let all: Vec<_> = results.iter().map(relay::to_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if results.is_empty() {
                println!("no [[relay]] in the config: `linkrelay setup ADDRESS` finds one");
            } else {
                println!("Nothing was sent. `linkrelay routes suggest` shows what follows.");
            }
            Ok(ExitCode::SUCCESS)
        }
        RoutesVerb::Suggest {
            apply,
            json,
            config,
        } => {
            let path = config_file(agent, config).await?;
            let text = edit::read_or_empty(&path)?;
            let config = Config::parse(&text, &path).map_err(|e| anyhow!("{e}"))?;
            let history = agent.link_history().await.map_err(dbus_error)?;
            let s = routes::suggest(&config, &history);
            if json {
                println!("{}", serde_json::to_string_pretty(&routes::to_json(&s))?);
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", routes::render(&s, output::unix_now()));
            let new = routes::apply(&text, &path, &s)?;
            let diff = edit::diff(&text, &new, &path);
            if diff.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            if !apply {
                println!("\nProposed change (write it with --apply):\n{diff}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("\n{diff}");
            edit::write_checked(&path, &new)?;
            println!("wrote {}", path.display());
            reload_after_write(agent).await
        }
    }
}

async fn watch(conn: &zbus::Connection, agent: &AgentProxy<'_>, json: bool) -> anyhow::Result<()> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(AGENT_BUS_NAME)
        .path(linkrelay_dbus::agent::AGENT_PATH)
        .build()?;
    let mut stream = zbus::MessageStream::for_match_rule(rule, conn, None).await?;
    // Start with where things stand, so a watcher never has to guess.
    let status = output::Status::read(agent).await.map_err(dbus_error)?;
    if json {
        println!("{}", json!({"event": "status", "status": status.to_json()}));
    } else {
        print!("{}", status.render());
    }
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if let Some(line) = output::event_line(&msg, json) {
            println!("{line}");
        }
    }
    Ok(())
}
