//! Where and how the agent logs: to stderr, in the form that suits whoever reads it.
//!
//! - On a terminal: tracing's usual lines (time, level, target, message, `key=value` fields),
//!   in colour unless `NO_COLOR` is set.
//! - To a file or pipe: the same without colour codes.
//! - To the journal (systemd connects stderr to journald and says so in `JOURNAL_STREAM`):
//!   no timestamps (journald adds its own) and no colour codes; each line starts with its
//!   syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald
//!   turns into the entry's PRIORITY, so `journalctl --user -u linkrelayd -p warning` works.
//!   The `key=value` fields stay in the message text.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// A person's terminal: timestamps, colours.
    Terminal,
    /// A file or a pipe: timestamps, no colours.
    Plain,
    /// journald: priority prefixes, no timestamps, no colours.
    Journal,
}

/// Decides the style from `JOURNAL_STREAM` and what stderr is.
///
/// `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected; it only counts if
/// stderr is still that stream (a child whose stderr was redirected inherits the variable).
pub fn style_from_env() -> LogStyle {
    let stderr = std::io::stderr();
    let journal = std::env::var("JOURNAL_STREAM").ok();
    let stat = rustix::fs::fstat(&stderr).ok();
    // dev_t and ino_t are u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    let ours = stat.map(|s| (s.st_dev as u64, s.st_ino as u64));
    style_for(journal.as_deref(), ours, stderr.is_terminal())
}

/// [`style_from_env`] as a pure function: `journal_stream` is the variable's value, `stderr`
/// the (device, inode) of stderr.
fn style_for(journal_stream: Option<&str>, stderr: Option<(u64, u64)>, tty: bool) -> LogStyle {
    let parsed = journal_stream.and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((
            dev.trim().parse::<u64>().ok()?,
            ino.trim().parse::<u64>().ok()?,
        ))
    });
    match (parsed, stderr) {
        (Some(j), Some(s)) if j == s => LogStyle::Journal,
        _ if tty => LogStyle::Terminal,
        _ => LogStyle::Plain,
    }
}

/// The syslog priority of a tracing level, as sd-daemon(3) prefixes use it.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// lettre's connection module, which logs every SMTP line it writes at debug level, AUTH
/// included (the password in base64).
const LETTRE_CONNECTION: &str = "lettre::transport::smtp::client";

/// `RUST_LOG` (default `info`), with lettre's connection module capped at `info`.
///
/// `RUST_LOG` is read as a list of `target=level` directives and levels (`debug`,
/// `info,linkrelay_agent::delivery=trace`): tracing-subscriber's [`Targets`], not its
/// `EnvFilter`, whose span and field filters need a regex engine the agent would carry (and
/// keep in memory) for nobody. One that does not parse is reported and `info` is used.
///
/// The agent no longer sends through lettre's connection module: it speaks SMTP itself
/// ([`crate::delivery::wire`]) and never logs the lines it writes, only the relays' replies, at
/// `trace`; lettre only formats the commands and checks the addresses. The cap stays so that
/// no later use of lettre's connection (say, by a dependency) can log a secret, even at
/// `RUST_LOG=trace` (docs/security.md).
fn filter(rust_log: Option<&str>) -> Targets {
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let targets = match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => default(),
        Some(v) => v.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("linkrelayd: RUST_LOG={v:?} is not a list of target=level ({e}); using info");
            default()
        }),
    };
    targets.with_target(LETTRE_CONNECTION, LevelFilter::INFO)
}

/// Installs the global subscriber: `RUST_LOG` (default `info`, lettre's connection module
/// capped; see `filter` for why), stderr, in `style`.
pub fn init(style: LogStyle) {
    use tracing_subscriber::prelude::*;
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match style {
        LogStyle::Terminal => registry.with(layer).init(),
        LogStyle::Plain => registry.with(layer.with_ansi(false)).init(),
        LogStyle::Journal => {
            let inner = tracing_subscriber::fmt::format()
                .without_time()
                .with_level(false)
                .with_ansi(false);
            registry
                .with(layer.with_ansi(false).event_format(JournalFormat(inner)))
                .init()
        }
    }
}

/// Prefixes each event with `<priority>` and lets `F` write the rest.
struct JournalFormat<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_only_when_stderr_is_the_stream_systemd_named() {
        let s = Some((2049, 77));
        assert_eq!(style_for(Some("2049:77"), s, false), LogStyle::Journal);
        assert_eq!(style_for(Some("2049:77"), s, true), LogStyle::Journal);
        // Inherited by a process whose stderr went elsewhere.
        assert_eq!(style_for(Some("2049:78"), s, false), LogStyle::Plain);
        assert_eq!(style_for(Some("2049:78"), s, true), LogStyle::Terminal);
        // Garbage and absence.
        assert_eq!(style_for(Some("journal"), s, false), LogStyle::Plain);
        assert_eq!(style_for(Some(""), s, true), LogStyle::Terminal);
        assert_eq!(style_for(None, s, false), LogStyle::Plain);
        assert_eq!(style_for(Some("2049:77"), None, false), LogStyle::Plain);
    }

    #[test]
    fn rust_log_sets_levels_and_lettres_connection_stays_capped_at_info() {
        let lettre = "lettre::transport::smtp::client::connection";
        let agent = "linkrelay_agent::delivery::wire";
        // (RUST_LOG, target, level, shown)
        let table: &[(Option<&str>, &str, Level, bool)] = &[
            (None, agent, Level::INFO, true),
            (None, agent, Level::DEBUG, false),
            (Some(""), agent, Level::INFO, true),
            (Some("debug"), agent, Level::DEBUG, true),
            (Some("debug"), "zbus", Level::TRACE, false),
            (Some("debug,zbus=info"), "zbus::conn", Level::DEBUG, false),
            (Some("debug,zbus=info"), agent, Level::DEBUG, true),
            (Some("linkrelay_agent=trace"), agent, Level::TRACE, true),
            (Some("linkrelay_agent=trace"), "zbus", Level::ERROR, false),
            (Some("linkrelay_agent=loud"), agent, Level::INFO, true),
            (Some("linkrelay_agent=loud"), agent, Level::DEBUG, false),
            (Some("trace"), lettre, Level::DEBUG, false),
            (Some("trace"), lettre, Level::INFO, true),
            (Some("trace,lettre=trace"), lettre, Level::DEBUG, false),
        ];
        for &(rust_log, target, level, shown) in table {
            assert_eq!(
                filter(rust_log).would_enable(target, &level),
                shown,
                "RUST_LOG={rust_log:?}: {target} at {level}"
            );
        }
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
