//! sendmail mode: queue a message straight into the user's outbox (works while the agent is
//! down), durably. Exit codes follow sysexits(3), as mail clients expect.
//!
//! While an agent holds the outbox (its journal lock), sendmail appends the message to
//! `incoming/.spool` (`Outbox::submit`), which the agent watches with inotify and takes into
//! the queue: no D-Bus, one sync. Without an agent it queues straight into `queue/` and calls
//! `Wake`, which starts an installed agent through D-Bus activation. A client that queues
//! mail one process per message (cron, git send-email, a script) so pays for one durable
//! append and not for a bus connection and round trip.
//!
//! The other modes: `-bs` speaks the listener's SMTP dialogue on standard input and output
//! ([`crate::smtp_stdio`]), `-bp` (and the name `mailq`) prints the queue ([`crate::mailq`]),
//! `-q` asks the agent to flush.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use linkrelay_config::{Config, ConfigError};
use linkrelay_outbox::sendmail::{Args, Mode, parse_args, prepare};
use linkrelay_outbox::{Envelope, Outbox, OutboxError};

pub(crate) const EX_USAGE: u8 = 64;
pub(crate) const EX_NOUSER: u8 = 67;
pub(crate) const EX_UNAVAILABLE: u8 = 69;
pub(crate) const EX_SOFTWARE: u8 = 70;
pub(crate) const EX_TEMPFAIL: u8 = 75;
pub(crate) const EX_CONFIG: u8 = 78;

const HELP: &str = "\
usage: linkrelay sendmail [options] [recipient...] < message
       sendmail [options] [recipient...] < message
       sendmail -bs | sendmail -bp (or mailq) | sendmail -q

Queues the message in your linkrelay outbox; linkrelayd sends it through the relay that
matches the link that is up. Exits 0 only once the message is safely on disk.

  -t            take recipients from To:, Cc: and Bcc: (Bcc: is removed), plus any given
  -i, -oi       a line with a single dot does not end the message
  -f ADDR       envelope sender (also -r ADDR); default: the From: header
  -F NAME       full name for an added From: header
  -N DSN        never, or any of success,failure,delay: when to be told about delivery
  -R RET        full or hdrs: what a delivery notice returns of the message
  -V ENVID      your own id for the message, quoted in delivery notices
  -bm           read a message on standard input (the default)
  -bs           speak SMTP on standard input and output (as PHP and Alpine use it)
  -bp           print the queue, as mailq does
  -q            ask linkrelayd to send what is queued now
  --user NAME   queue for this linkrelay user instead of choosing by sender
  --config PATH the config to read users from
Other sendmail options that cron daemons and mail clients pass (-oem, -odb, -odi, -B8BITMIME,
-v, ...) are accepted and ignored; an unknown option is a usage error (64) naming it.
-N, -R and -V are passed on to relays that offer DSN.
Exit codes: 0 queued, 64 usage, 65 bad message, 67 no user for the sender, 69 agent not
running (-q), 75 try again (disk full, I/O), 78 config broken.";

pub(crate) fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sendmail: {msg}");
    ExitCode::from(code)
}

/// What the command line says beyond sendmail's own options.
pub(crate) struct Context {
    /// `--user`: every message goes to this user.
    pub(crate) user: Option<String>,
    pub(crate) config: Config,
}

/// Runs sendmail mode with `args` (without `argv[0]`).
pub fn main(args: Vec<String>) -> ExitCode {
    let mut user: Option<String> = None;
    let mut config_path: Option<PathBuf> = std::env::var_os("LINKRELAY_CONFIG").map(PathBuf::from);
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "--help-sendmail" => {
                println!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--user" => match it.next() {
                Some(u) => user = Some(u),
                None => return fail(EX_USAGE, "--user needs a value"),
            },
            "--config" => match it.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => return fail(EX_USAGE, "--config needs a value"),
            },
            _ => {
                if let Some(u) = a.strip_prefix("--user=") {
                    user = Some(u.to_string());
                } else if let Some(p) = a.strip_prefix("--config=") {
                    config_path = Some(PathBuf::from(p));
                } else {
                    rest.push(a);
                }
            }
        }
    }
    let parsed = match parse_args(rest) {
        Ok(p) => p,
        Err(e) => return fail(e.exit_code() as u8, e),
    };
    if parsed.mode == Mode::Flush {
        return flush();
    }
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, e),
    };
    let ctx = Context { user, config };
    match parsed.mode {
        Mode::Deliver => deliver(&ctx, &parsed),
        Mode::Smtp => crate::smtp_stdio::main(&ctx),
        Mode::Print => crate::mailq::main(&ctx.config),
        Mode::Flush => flush(),
    }
}

/// `-bm`: one message from standard input into the outbox.
fn deliver(ctx: &Context, parsed: &Args) -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        return fail(EX_TEMPFAIL, format!("cannot read the message: {e}"));
    }
    let (envelope, message) = match prepare(parsed, &input, &default_from()) {
        Ok(v) => v,
        Err(e) => return fail(e.exit_code() as u8, e),
    };
    let user = match ctx.user_for(&envelope.from) {
        Ok(u) => u,
        Err(why) => return fail(EX_NOUSER, why),
    };
    let outbox = match open_outbox(&user) {
        Ok(o) => o,
        Err((code, why)) => return fail(code, why),
    };
    let (id, woke) = match queue(&outbox, &envelope, &message) {
        Ok(queued) => queued,
        Err(e) => return fail(EX_TEMPFAIL, format!("message NOT queued: {e}")),
    };
    if woke {
        nudge(&user);
    }
    if std::env::var_os("LINKRELAY_VERBOSE").is_some() {
        eprintln!("sendmail: queued {id} for {user}");
    }
    ExitCode::SUCCESS
}

impl Context {
    /// The user mail from `sender` belongs to: `--user`, else by the `from` patterns.
    pub(crate) fn user_for(&self, sender: &str) -> Result<String, String> {
        if let Some(u) = &self.user {
            return match self.config.user(u) {
                Some(user) => Ok(user.name.to_string()),
                None => Err(format!("no [[user]] named {u:?} in the config")),
            };
        }
        match self.config.user_for_sender(sender) {
            Some(u) => Ok(u.name.to_string()),
            None => Err(format!(
                "no [[user]] has a `from` pattern matching {sender:?} and none is \
                 `default = true`; add one, or pass --user"
            )),
        }
    }
}

/// The outbox of `user`, or the exit code and message for why not.
pub(crate) fn open_outbox(user: &str) -> Result<Outbox, (u8, String)> {
    let Some(data_dir) = data_dir() else {
        return Err((
            EX_SOFTWARE,
            "cannot find the data directory: set XDG_DATA_HOME or HOME".into(),
        ));
    };
    Outbox::open(&data_dir.join(user)).map_err(|e| {
        (
            EX_TEMPFAIL,
            format!("cannot open the outbox of {user}: {e}"),
        )
    })
}

/// Where the outboxes are: `LINKRELAY_DATA_DIR`, else the XDG default.
pub(crate) fn data_dir() -> Option<PathBuf> {
    std::env::var_os("LINKRELAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(linkrelay_config::default_data_dir)
}

/// Queues one message durably: with an agent running, the fast way in (one durable append it
/// takes into the queue); without one, straight into the queue. Returns the id, and whether
/// the agent should be nudged (none held the outbox).
pub(crate) fn queue(
    outbox: &Outbox,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(String, bool), OutboxError> {
    if outbox.agent_holds_it() {
        outbox.submit(envelope, message).map(|id| (id, false))
    } else {
        outbox.enqueue(envelope, message).map(|id| (id, true))
    }
}

/// `-q`: asks the agent to send what is queued now (D-Bus activation starts an installed
/// one). The agent runs the queue; this only says "now".
fn flush() -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return fail(EX_SOFTWARE, "cannot start the tokio runtime");
    };
    let result = rt.block_on(async {
        let call = async {
            let conn = zbus::Connection::session().await?;
            let agent = linkrelay_dbus::agent::AgentProxy::new(&conn).await?;
            agent.flush("", false).await?;
            Ok::<_, zbus::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(10), call).await
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(
            EX_UNAVAILABLE,
            format!(
                "cannot ask linkrelayd to send the queue ({e}); is it running? (linkrelayd, or linkrelay install --user)"
            ),
        ),
        Err(_) => fail(EX_UNAVAILABLE, "linkrelayd did not answer within 10 s"),
    }
}

pub(crate) fn default_from() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    std::env::var("EMAIL").unwrap_or_else(|_| format!("{user}@{host}"))
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, String> {
    let render = |e: ConfigError| match e {
        ConfigError::Invalid(d) => format!("the config has errors:\n{d}"),
        other => other.to_string(),
    };
    if let Some(p) = explicit {
        return Config::load(&p).map_err(render);
    }
    match linkrelay_config::default_config_path() {
        Some(p) if p.exists() => Config::load(&p).map_err(render),
        _ => Ok(Config::embedded_default()),
    }
}

/// Tells the agent to look at the outbox now, starting it through D-Bus activation if it is
/// installed but not running. Best effort and bounded: the message is already safe, and an
/// agent finds it when it starts.
pub(crate) fn nudge(user: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let user = user.to_string();
    rt.block_on(async move {
        let call = async {
            let conn = zbus::Connection::session().await?;
            let agent = linkrelay_dbus::agent::AgentProxy::new(&conn).await?;
            agent.wake(&user).await?;
            Ok::<_, zbus::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), call).await;
    });
}
