//! sendmail mode: queue a message straight into the user's outbox (works while the agent is
//! down), durably. Exit codes follow sysexits(3), as mail clients expect.
//!
//! While an agent holds the outbox (the data directory's `.agent.lock`), sendmail appends the message to
//! `incoming/.spool` (`Outbox::submit`), which the agent watches with inotify and takes into
//! the queue: no D-Bus, one sync. Without an agent it queues straight into `queue/` and calls
//! `Wake`, which starts an installed agent through D-Bus activation. A client that queues
//! mail one process per message (cron, git send-email, a script) so pays for one durable
//! append and not for a bus connection and round trip.
//!
//! The message is read as a stream: the header section (at most 1 MiB) is parsed, and the
//! body is normalised as it is read. A message over 1 MiB does not go through the spool: it
//! is written straight into `queue/` as it is read (the agent watches `queue/` too), so that
//! sendmail's memory does not grow with the message (a 100 MiB message: under 14 MiB).
//!
//! The other modes: `-bs` speaks the listener's SMTP dialogue on standard input and output
//! ([`crate::smtp_stdio`]), `-bp` (and the name `mailq`) prints the queue ([`crate::mailq`]),
//! `-q` asks the agent to flush.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use linkrelay_config::{Config, ConfigError};
use linkrelay_outbox::sendmail::{Args, Mode, ReadError, parse_args, prepare_stream};
use linkrelay_outbox::{Envelope, Limits, Outbox, OutboxError};

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
pub(crate) const EX_SOFTWARE: u8 = 70;
pub(crate) const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

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
Other sendmail options that cron daemons and mail clients pass (-oem, -odb, -odi,
-B8BITMIME, -v, ...) are accepted and ignored; an unknown option is a usage error (64)
naming it. -N, -R and -V are passed on to relays that offer DSN.
A local name (root, alice: no @domain, as cron writes them) stands for your own address, the
first `from` address without wildcards of your [[user]] (docs/clients.md).
Exit codes: 0 queued, 64 usage, 65 bad message (or larger than [outbox]
max_message_size), 67 no user for the sender, 69 agent not running (-q), 75 try again
(disk full, I/O), 78 config broken.";

pub(crate) fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    errln!("sendmail: {msg}");
    ExitCode::from(code)
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
                outln!("{HELP}");
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
    match parsed.mode {
        Mode::Deliver => {}
        Mode::Flush => return flush(),
        Mode::Smtp | Mode::Print => {
            let config = match load_config(config_path) {
                Ok(c) => c,
                Err(e) => return fail(EX_CONFIG, e),
            };
            if parsed.mode == Mode::Print {
                return crate::mailq::main(&config);
            }
            return crate::smtp_stdio::main(&Context { user, config });
        }
    }
    let mut input = std::io::stdin().lock();
    let result = queue_message(&parsed, &mut input, user, config_path);
    // Read what the client still writes (after a lone dot, or after an error), so that it
    // does not fail on a closed pipe: sendmail reads it all too.
    let _ = std::io::copy(&mut input, &mut std::io::sink());
    match result {
        Ok((id, user)) => {
            if std::env::var_os("LINKRELAY_VERBOSE").is_some() {
                errln!("sendmail: queued {id} for {user}");
            }
            ExitCode::SUCCESS
        }
        Err((code, text)) => fail(code, text),
    }
}

/// Reads the message from `input` and queues it for its user; the id and the user, or the
/// exit code and what to say.
fn queue_message(
    parsed: &Args,
    input: &mut impl Read,
    user: Option<String>,
    config_path: Option<PathBuf>,
) -> Result<(String, String), (u8, String)> {
    // Loaded first for the address local names stand for; its error counts only after the
    // message is read, as before.
    let config = load_config(config_path);
    let mut parsed = parsed.clone();
    parsed.local_names = config
        .as_ref()
        .ok()
        .and_then(|c| local_address(c, user.as_deref()));
    let mut message = match prepare_stream(&parsed, input, &default_from()) {
        Ok(m) => m,
        Err(ReadError::Io(e)) => {
            return Err((EX_TEMPFAIL, format!("cannot read the message: {e}")));
        }
        Err(ReadError::Message(e)) => return Err((e.exit_code() as u8, e.to_string())),
    };
    let envelope = message.envelope.clone();
    let config = config.map_err(|e| (EX_CONFIG, e))?;
    let user = match user {
        Some(u) => match config.user(&u) {
            Some(u) => u.name.clone(),
            None => {
                return Err((EX_NOUSER, format!("no [[user]] named {u:?} in the config")));
            }
        },
        None => match config.user_for_sender(&envelope.from) {
            Some(u) => u.name.clone(),
            None => {
                return Err((
                    EX_NOUSER,
                    format!(
                        "no [[user]] has a `from` pattern matching {:?} and none is `default = true`; \
                         add one, or pass --user",
                        envelope.from
                    ),
                ));
            }
        },
    };
    let data_dir = std::env::var_os("LINKRELAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(linkrelay_config::default_data_dir)
        .ok_or_else(|| {
            (
                EX_SOFTWARE,
                "cannot find the data directory: set XDG_DATA_HOME or HOME".to_owned(),
            )
        })?;
    let limits = Limits {
        max_message_size: config.outbox.max_message_size,
    };
    let outbox = Outbox::open(&data_dir.join(&user))
        .map_err(|e| {
            (
                EX_TEMPFAIL,
                format!("cannot open the outbox of {user}: {e}"),
            )
        })?
        .with_limits(limits);
    // With an agent running, the fast way in (one durable file it takes into the queue);
    // without one, straight into the queue, then a nudge that starts an installed agent.
    let agent = outbox.agent_holds_it();
    let id = match queue(&outbox, &envelope, &mut message, agent) {
        Ok(id) => id,
        Err(e @ OutboxError::TooLarge { .. }) => {
            return Err((EX_DATAERR, format!("message NOT queued: {e}")));
        }
        Err(e) => return Err((EX_TEMPFAIL, format!("message NOT queued: {e}"))),
    };
    if !agent {
        nudge(&user);
    }
    Ok((id, user.to_string()))
}

/// The address a local name (`root`, `alice`: no `@domain`, as cron writes them) stands for:
/// the first `from` address without wildcards of `--user`'s user, else of the default user
/// (`default = true`, or the only one). Mail from cron so reaches your own mailbox through
/// your relay, as nullmailer's `adminaddr` does.
fn local_address(config: &Config, user: Option<&str>) -> Option<String> {
    let user = match user {
        Some(name) => config.user(name)?,
        None => config.default_user()?,
    };
    user.from
        .iter()
        .find(|f| f.contains('@') && !f.contains(['*', '?', '[']))
        .cloned()
}

/// Messages up to this size are read whole: with an agent running they go through its spool
/// (one append and one sync). A larger one is written to the queue as it is read, so that
/// sendmail's memory does not grow with the message.
const INLINE_MAX: u64 = 1024 * 1024;

/// Queues `message` in `outbox`: through the spool when an agent holds the outbox and the
/// message is small, else straight into the queue.
fn queue(
    outbox: &Outbox,
    envelope: &Envelope,
    message: &mut impl Read,
    agent: bool,
) -> Result<String, OutboxError> {
    let mut start = Vec::new();
    message
        .take(INLINE_MAX + 1)
        .read_to_end(&mut start)
        .map_err(|e| OutboxError::Io {
            context: "reading the message".into(),
            source: e,
        })?;
    if start.len() as u64 > INLINE_MAX {
        return outbox.enqueue_from(envelope, &mut start.chain(message));
    }
    if agent {
        let max = outbox.limits().max_message_size;
        if start.len() as u64 > max {
            return Err(OutboxError::TooLarge { max });
        }
        outbox.submit(envelope, &start)
    } else {
        outbox.enqueue(envelope, &start)
    }
}

/// What `-bs` needs beyond the dialogue: `--user`, and the config.
pub(crate) struct Context {
    /// `--user`: every message goes to this user.
    pub(crate) user: Option<String>,
    pub(crate) config: Config,
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

    /// The outbox of `user`, with the config's limits.
    pub(crate) fn outbox(&self, user: &str) -> Result<Outbox, String> {
        let data_dir =
            data_dir().ok_or("cannot find the data directory: set XDG_DATA_HOME or HOME")?;
        let limits = Limits {
            max_message_size: self.config.outbox.max_message_size,
        };
        Outbox::open(&data_dir.join(user))
            .map(|o| o.with_limits(limits))
            .map_err(|e| format!("cannot open the outbox of {user}: {e}"))
    }
}

/// Where the outboxes are: `LINKRELAY_DATA_DIR`, else the XDG default.
pub(crate) fn data_dir() -> Option<PathBuf> {
    std::env::var_os("LINKRELAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(linkrelay_config::default_data_dir)
}

/// Queues a message held whole (`-bs`): through the spool when an agent holds the outbox,
/// else straight into the queue. Returns the id, and whether the agent should be nudged.
pub(crate) fn queue_whole(
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
                "cannot ask linkrelayd to send the queue ({e}); is it running? \
                 (linkrelayd, or linkrelay install --user)"
            ),
        ),
        Err(_) => fail(EX_UNAVAILABLE, "linkrelayd did not answer within 10 s"),
    }
}

fn default_from() -> String {
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
