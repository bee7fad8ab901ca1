//! `linkrelay-bench`: measures linkrelay and its peers in one run, on one 4 KB message, against
//! one Postfix smtp-sink on 127.0.0.1, and prints a Markdown table of medians and ratios with
//! the targets of docs/benchmarks.md. Run it through `bench/run` (which installs the peers and builds the
//! release binaries); `--smoke` runs every measurement with tiny counts (seconds) and proves
//! only that the bench works.

mod env;
mod floor;
mod ours;
mod peers;
mod procfs;
mod seed;
mod stats;
mod submit;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::env::{Settings, Sink, TlsSink, message};
use crate::stats::{median, quantile};
use crate::table::{Better, Row, Target};

/// Benchmarks linkrelay side by side with smtp-source, msmtp, msmtpq, nullmailer and Postfix.
#[derive(Debug, Parser)]
#[command(name = "linkrelay-bench")]
struct Args {
    /// Tiny counts, one repetition: checks that everything runs, measures nothing
    #[arg(long)]
    smoke: bool,
    /// Where nullmailer's .deb was extracted (bench/install-deps does it)
    #[arg(long, value_name = "DIR")]
    nullmailer: PathBuf,
    /// Where msmtp-mta's .deb (msmtpd) was extracted (bench/install-deps does it)
    #[arg(long, value_name = "DIR")]
    msmtpd: PathBuf,
    /// Also write the table (with date and machine) to this file
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Skip the peers (linkrelay only)
    #[arg(long)]
    no_peers: bool,
    /// Run only these groups (comma-separated): flush (with the TLS rows), peers, enqueue,
    /// submit, reaction, idle, scale, big. smtp-source always runs, and the disk's floor
    /// whenever a durable row does.
    #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
    only: Vec<String>,
    /// Repetitions (default 5; smoke 1)
    #[arg(long)]
    reps: Option<usize>,
    /// Messages per flush run for one user (default 2000; four users get half each)
    #[arg(long)]
    flush_n: Option<usize>,
    /// Messages queued for the scale rows (default 100000)
    #[arg(long)]
    scale_n: Option<usize>,
}

/// A measurement's result, or why it failed (kept for the notes; the run then fails).
struct Tally {
    errors: Vec<String>,
}

impl Tally {
    fn take<T>(&mut self, what: &str, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("bench: {what} failed: {e:#}");
                self.errors.push(format!("{what}: {e:#}"));
                None
            }
        }
    }
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn reps<T>(n: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    (0..n).map(|_| f()).collect()
}

fn med(v: &Option<Vec<f64>>) -> Option<f64> {
    v.as_ref().and_then(|v| median(v))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.0} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let debian = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem}, Linux {}, Debian {}",
        kernel.trim(),
        debian.trim()
    )
}

/// The TLS rows' figures (msg/s per repetition): linkrelay's flush of one user and msmtp,
/// each over STARTTLS and over implicit TLS, through stunnel in front of the sink.
#[derive(Default)]
struct TlsFigures {
    starttls: Option<Vec<f64>>,
    implicit: Option<Vec<f64>>,
    msmtp_starttls: Option<Vec<f64>>,
    msmtp_implicit: Option<Vec<f64>>,
}

async fn tls_figures(
    s: &Settings,
    t: &mut Tally,
    work: &Path,
    port: u16,
    peers: bool,
) -> TlsFigures {
    let mut f = TlsFigures::default();
    let Some(tls) = t.take("tls sink", TlsSink::start(work, port)) else {
        return f;
    };
    f.starttls = t.take(
        "linkrelay flush, STARTTLS",
        ours::flush_tls(s, tls.starttls, "starttls", &tls.ca).await,
    );
    f.implicit = t.take(
        "linkrelay flush, implicit TLS",
        ours::flush_tls(s, tls.implicit, "tls", &tls.ca).await,
    );
    // The peers of these rows run with them (`--only flush` included), on a quarter of the
    // slow peers' count: msmtp's every STARTTLS message waits 200 ms for stunnel.
    if peers {
        let n = (s.peer_n / 4).max(1);
        let msg = message();
        let msmtp = |port, starttls| {
            reps(s.reps.min(3), || {
                peers::msmtp_tls(work, port, starttls, &tls.ca, n, &msg)
            })
        };
        f.msmtp_starttls = t.take("msmtp, STARTTLS", msmtp(tls.starttls, true));
        f.msmtp_implicit = t.take("msmtp, implicit TLS", msmtp(tls.implicit, false));
    }
    f
}

async fn run(args: Args) -> anyhow::Result<(String, Vec<String>)> {
    let mut s = if args.smoke {
        Settings::smoke()
    } else {
        Settings::full()
    };
    if let Some(r) = args.reps {
        s.reps = r.max(1);
    }
    if let Some(n) = args.flush_n {
        s.flush_n = n.max(1);
        s.flush4_n = (n / 2).max(1);
    }
    if let Some(n) = args.scale_n {
        s.scale_n = n.max(2);
        s.scale_flush_n = s.scale_flush_n.min(s.scale_n - 1);
    }
    let mut t = Tally { errors: Vec::new() };
    let work = tempfile::Builder::new()
        .prefix("linkrelay-bench-")
        .tempdir()?;
    let sink = Sink::start()?;
    let port = sink.port;
    let msg = message();
    let on = |group: &str| args.only.is_empty() || args.only.iter().any(|g| g == group);
    let peers = !args.no_peers && on("peers");
    let slow_reps = s.reps.min(3);

    progress("smtp-source, concurrency 1 and 4");
    let src1 = t.take(
        "smtp-source c1",
        reps(s.reps, || peers::smtp_source(port, 1, s.source_n)),
    );
    let src4 = t.take(
        "smtp-source c4",
        reps(s.reps, || peers::smtp_source(port, 4, 4 * s.source_n)),
    );

    // The disk's floor is measured right before each durable group and bounds that group's
    // rows: the disk moves by several times within minutes on a shared machine.
    let mut floors = Vec::new();
    let mut floor_for = |group: &str, t: &mut Tally| {
        if !on(group) {
            return None;
        }
        progress(&format!(
            "the disk's floor before {group}: 4 KB appends + fdatasync, 1, 4 and 32 a call"
        ));
        let f = t.take("floor", floor::measure(&s, work.path()));
        floors.extend(f);
        f
    };

    let floor_flush = floor_for("flush", &mut t);
    progress("linkrelay flush, 1 user and 4 users");
    let flush = if on("flush") {
        t.take("linkrelay flush", ours::flush(&s, port).await)
    } else {
        None
    };
    progress("flush over TLS (stunnel in front of the sink): linkrelay, msmtp");
    let tls = if on("flush") {
        tls_figures(&s, &mut t, work.path(), port, !args.no_peers).await
    } else {
        TlsFigures::default()
    };

    let (mut msmtp_direct, mut msmtpq_enq, mut msmtpq_flush) = (None, None, None);
    let (mut nm_inject, mut nm_send) = (None, None);
    let mut postfix = None;
    let mut pf_enq = None;
    if peers {
        progress("msmtp, msmtpq");
        if let Some(m) = t.take("msmtp setup", peers::Msmtp::new(work.path(), port)) {
            msmtp_direct = t.take("msmtp", reps(slow_reps, || m.direct(s.peer_n, &msg)));
            let mut enq = Vec::new();
            let mut fl = Vec::new();
            for _ in 0..slow_reps {
                if let Some(v) = t.take("msmtpq enqueue", m.enqueue(s.peer_n, &msg)) {
                    enq.push(v);
                }
                if let Some(v) = t.take("msmtpq -r", m.flush()) {
                    fl.push(v);
                }
            }
            msmtpq_enq = Some(enq);
            msmtpq_flush = Some(fl);
        }
        progress("nullmailer");
        if let Some(n) = t.take(
            "nullmailer setup",
            peers::Nullmailer::new(&args.nullmailer, work.path(), port, &msg),
        ) {
            let mut inj = Vec::new();
            let mut snd = Vec::new();
            for _ in 0..slow_reps {
                if let Some(v) = t.take("nullmailer-inject", n.inject(s.peer_n)) {
                    inj.push(v);
                }
                if let Some(v) = t.take("nullmailer-send", n.send()) {
                    snd.push(v);
                }
            }
            nm_inject = Some(inj);
            nm_send = Some(snd);
        }
        progress("Postfix sendmail");
        postfix = t.take("postfix setup", peers::Postfix::new(work.path(), port));
        if let Some(pf) = postfix.as_mut()
            && t.take("postfix start", pf.start()).is_some()
        {
            pf_enq = t.take(
                "postfix sendmail",
                reps(slow_reps, || pf.enqueue(s.peer_n, &msg)),
            );
            // Restart, so that idle is master + qmgr + pickup as after boot.
            pf.stop();
            t.take("postfix restart", pf.start());
        }
    }

    let floor_enq = floor_for("enqueue", &mut t);
    progress("linkrelay sendmail, agent sending and agent holding");
    let enq = if on("enqueue") {
        t.take("linkrelay sendmail", ours::enqueue(&s, port).await)
    } else {
        None
    };
    progress("submit over SMTP: linkrelay, Postfix's smtpd, msmtpd -> msmtpq");
    let (mut sub_ours, mut sub_pf, mut sub_msmtpd) = (None, None, None);
    let floor_sub = floor_for("submit", &mut t);
    if on("submit") {
        sub_ours = t.take("submit, linkrelay", submit::ours(&s, port).await);
        // The peers of these rows run with them (`--only submit` included).
        if !args.no_peers {
            sub_pf = t.take(
                "submit, Postfix smtpd",
                submit::postfix(&s, work.path(), port),
            );
            sub_msmtpd = t.take(
                "submit, msmtpd -> msmtpq",
                submit::msmtpd(&s, &args.msmtpd, work.path()),
            );
        }
    }
    progress("reaction");
    let reaction = if on("reaction") {
        t.take("reaction", ours::reaction(&s).await)
    } else {
        None
    };
    progress(&format!("idle for {:?}", s.idle));
    let pf_pids = postfix
        .as_ref()
        .and_then(|p| p.pids().ok())
        .unwrap_or_default();
    let idle = if on("idle") {
        t.take("idle", ours::idle(&s, port, &pf_pids).await)
    } else {
        None
    };
    if let Some(mut pf) = postfix.take() {
        pf.stop();
    }
    let floor_scale = floor_for("scale", &mut t);
    progress(&format!("scale: {} messages queued", s.scale_n));
    let scale = if on("scale") {
        t.take("scale", ours::scale(&s, port).await)
    } else {
        None
    };

    progress(&format!("one message of {} MiB", s.big_message >> 20));
    let big = if on("big") {
        t.take("big message", ours::big(&s, port).await)
    } else {
        None
    };

    // ---- the table ----
    let src1_m = med(&src1);
    let src4_m = med(&src4);
    let flush1 = flush.as_ref().and_then(|f| median(&f.one));
    let flush4 = flush.as_ref().and_then(|f| median(&f.four));
    let mut rows = Vec::new();
    let floor = floor::Floor::median_of(&floors);
    let single = |f: Option<floor::Floor>| f.map(|f| f.single);
    let group4 = |f: Option<floor::Floor>| f.map(|f| f.group4);
    const SINGLE: &str = "1 append";
    const GROUP4: &str = "group commit of 4";
    for (label, v) in [
        (
            "the disk's floor: 4 KB append + fdatasync, 1 record a call",
            single(floor),
        ),
        (
            "the disk's floor: group commit of 4 (4 x 4 KB, 1 fdatasync)",
            group4(floor),
        ),
        (
            "the disk's floor: group commit of 32 (32 x 4 KB, 1 fdatasync)",
            floor.map(|f| f.group32),
        ),
    ] {
        rows.push(Row::new(label, "records/s", Better::Higher, v));
    }
    let mut r = Row::new("flush, 1 user, durable", "msg/s", Better::Higher, flush1)
        .floor(SINGLE, single(floor_flush))
        .peer("smtp-source -s 1 (no queue)", src1_m);
    if peers {
        r = r
            .peer("nullmailer-send", med(&nm_send))
            .peer("msmtpq -r", med(&msmtpq_flush))
            .peer("msmtp, 1 process/msg", med(&msmtp_direct));
    }
    if let Some(v) = single(floor_flush) {
        r = r.target(Target::AtLeast(0.8 * v), "80% of the single-append floor");
    }
    rows.push(r);
    for (label, mine, theirs) in [
        (
            "flush, 1 user, STARTTLS, durable",
            med(&tls.starttls),
            med(&tls.msmtp_starttls),
        ),
        (
            "flush, 1 user, implicit TLS, durable",
            med(&tls.implicit),
            med(&tls.msmtp_implicit),
        ),
    ] {
        let mut r = Row::new(label, "msg/s", Better::Higher, mine)
            .floor(SINGLE, single(floor_flush))
            .peer("plaintext flush, 1 user", flush1);
        if !args.no_peers {
            r = r.peer("msmtp over the same TLS, 1 process/msg", theirs);
        }
        if let Some(v) = flush1 {
            r = r.target(Target::AtLeast(0.5 * v), "50% of the plaintext flush");
        }
        rows.push(r);
    }
    let mut r = Row::new(
        "flush, 4 users at once, durable",
        "msg/s",
        Better::Higher,
        flush4,
    )
    .floor(GROUP4, group4(floor_flush))
    .peer("smtp-source -s 4", src4_m);
    if let Some(v) = src4_m {
        r = r.target(Target::AtLeast(v / 2.0), "50% of smtp-source -s 4");
    }
    rows.push(r);

    let (enq_on, enq_off) = match &enq {
        Some((a, b)) => (median(a), median(b)),
        None => (None, None),
    };
    let mut r = Row::new(
        "enqueue, `linkrelay sendmail`, 1 process/msg, agent sending",
        "msg/s",
        Better::Higher,
        enq_on,
    )
    .floor(SINGLE, single(floor_enq));
    if peers {
        r = r
            .peer("nullmailer-inject", med(&nm_inject))
            .peer("Postfix sendmail", med(&pf_enq))
            .peer("msmtpq (relay down)", med(&msmtpq_enq));
    }
    r = match med(&nm_inject) {
        Some(v) if 2.5 * v > 600.0 => {
            r.target(Target::AtLeast(2.5 * v), "2.5x nullmailer-inject, and 600")
        }
        Some(_) => r.target(Target::AtLeast(600.0), "and 2.5x nullmailer-inject"),
        None => r.target(Target::AtLeast(600.0), ""),
    };
    rows.push(r);
    rows.push(
        Row::new(
            "enqueue, `linkrelay sendmail`, agent holding (no link)",
            "msg/s",
            Better::Higher,
            enq_off,
        )
        .floor(SINGLE, single(floor_enq))
        .target(Target::AtLeast(500.0), ""),
    );

    for (label, pick, four) in [
        (
            "submit over SMTP, one session reused, durable",
            (|r: &submit::Rates| median(&r.one)) as fn(&submit::Rates) -> Option<f64>,
            false,
        ),
        (
            "submit over SMTP, 4 sessions, durable",
            |r| median(&r.four),
            true,
        ),
    ] {
        let mine = sub_ours.as_ref().and_then(|f| pick(&f.rates));
        let theirs = sub_pf.as_ref().and_then(pick);
        let mut r = Row::new(label, "msg/s", Better::Higher, mine).floor(
            if four { GROUP4 } else { SINGLE },
            if four {
                group4(floor_sub)
            } else {
                single(floor_sub)
            },
        );
        if !args.no_peers {
            r = r
                .peer("Postfix smtpd -> cleanup -> queue", theirs)
                .peer("msmtpd -> msmtpq", sub_msmtpd.as_ref().and_then(pick));
        }
        if !four {
            r = r.target(Target::AtLeast(2000.0), "");
        }
        if let Some(v) = theirs {
            r = r.target(Target::AtLeast(2.0 * v), "2x Postfix's smtpd");
        }
        if let Some(f) = &sub_ours {
            r = r.note(format!(
                "append + fdatasync of 4 KB on this disk during the run: {:.2} ms",
                f.fdatasync_ms
            ));
        }
        rows.push(r);
    }
    rows.push(
        Row::new(
            "submission: agent memory per idle session",
            "KiB",
            Better::Lower,
            sub_ours.as_ref().map(|f| f.idle_session_kib),
        )
        .target(Target::Below(64.0), ""),
    );

    let (routed, accepted) = match &reaction {
        Some((a, b)) => (Some(a.clone()), Some(b.clone())),
        None => (None, None),
    };
    let p90 = |v: &Option<Vec<f64>>| {
        v.as_ref()
            .and_then(|v| quantile(v, 0.9))
            .map(|x| format!("p90 {x:.1} ms, {} samples", v.as_ref().map_or(0, Vec::len)))
            .unwrap_or_default()
    };
    rows.push(
        Row::new(
            "NM PropertiesChanged -> RouteChanged, p50",
            "ms",
            Better::Lower,
            med(&routed),
        )
        .target(Target::Below(5.0), "")
        .note(p90(&routed)),
    );
    rows.push(
        Row::new(
            "link up -> first message accepted, p50",
            "ms",
            Better::Lower,
            med(&accepted),
        )
        .target(Target::Below(50.0), "")
        .note(p90(&accepted)),
    );
    rows.push(
        Row::new(
            "link up -> first message accepted, p90",
            "ms",
            Better::Lower,
            accepted.as_ref().and_then(|v| quantile(v, 0.9)),
        )
        .target(Target::Below(50.0), "")
        .note(
            accepted
                .as_ref()
                .map(|v| format!("{} samples", v.len()))
                .unwrap_or_default(),
        ),
    );

    let ((rss, wake), (pf_rss, pf_wake)) = match idle {
        Some(((a, b), (c, d))) => ((Some(mib(a)), Some(b)), (Some(mib(c)), Some(d))),
        None => ((None, None), (None, None)),
    };
    let has_pf = !pf_pids.is_empty();
    let mut r = Row::new("idle RSS", "MiB", Better::Lower, rss);
    if has_pf {
        r = r.peer("Postfix master+qmgr+pickup", pf_rss);
    }
    rows.push(r.target(Target::Below(6.0), ""));
    let mut r = Row::new(
        &format!("idle wake-ups (context switches over {:?})", s.idle),
        "/min",
        Better::Lower,
        wake,
    );
    if has_pf {
        r = r.peer("Postfix master+qmgr+pickup", pf_wake);
    }
    rows.push(r.target(Target::Below(1.0), "none while idle"));
    rows.push(Row::new(
        "RSS after the flush runs, idle",
        "MiB",
        Better::Lower,
        flush.as_ref().map(|f| mib(f.rss_after_kib)),
    ));

    let n = s.scale_n;
    let sc = scale.as_ref();
    rows.push(
        Row::new(
            &format!("{n} queued: start-up to ready"),
            "s",
            Better::Lower,
            sc.and_then(|x| median(&x.startup)),
        )
        .target(Target::Below(1.0), ""),
    );
    rows.push(
        Row::new(
            &format!("{n} queued: `linkrelay queue --json` one user"),
            "s",
            Better::Lower,
            sc.and_then(|x| median(&x.queue_json)),
        )
        .target(Target::Below(0.3), ""),
    );
    rows.push(
        Row::new(
            &format!("{n} queued: agent peak RSS"),
            "MiB",
            Better::Lower,
            sc.map(|x| mib(x.peak_kib)),
        )
        .target(Target::Below(64.0), ""),
    );
    let mut r = Row::new(
        &format!("{n} queued: flush, 1 user"),
        "msg/s",
        Better::Higher,
        sc.map(|x| x.flush),
    )
    .floor(SINGLE, single(floor_scale));
    if let Some(f) = flush1 {
        r = r.target(Target::AtLeast(0.9 * f), "90% of the empty-queue flush");
    }
    if let Some(x) = sc {
        r = r.note(format!(
            "steady rate over {} messages; the first was accepted {:.2} s after the link came up",
            s.scale_flush_n, x.first_sent
        ));
    }
    rows.push(r);

    let size = format!("{} MiB", s.big_message >> 20);
    rows.push(
        Row::new(
            &format!("{size} message: `linkrelay sendmail` peak RSS"),
            "MiB",
            Better::Lower,
            big.as_ref().map(|b| mib(b.sendmail_kib)),
        )
        .target(Target::Below(32.0), "")
        .note("queued while the agent runs: straight to queue/, written as it is read"),
    );
    rows.push(
        Row::new(
            &format!("{size} message: agent peak RSS, taking it in and sending it"),
            "MiB",
            Better::Lower,
            big.as_ref().map(|b| mib(b.agent_kib)),
        )
        .target(Target::Below(32.0), ""),
    );

    let mut text = table::render(&rows);
    if s.smoke {
        text.push_str("\n(smoke run: tiny counts, figures mean nothing)\n");
    }
    drop(sink);
    Ok((text, t.errors))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = args.out.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let date = Command::date();
    match rt.block_on(run(args)) {
        Ok((table, errors)) => {
            let header = format!("{date}; {}\n\n", machine());
            print!("{header}{table}");
            if let Some(path) = out
                && let Err(e) = std::fs::write(&path, format!("{header}{table}"))
            {
                eprintln!("bench: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("bench: {} measurement(s) failed:", errors.len());
                for e in errors {
                    eprintln!("  {e}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Small helpers around external commands.
struct Command;

impl Command {
    /// The date and time now, as `date -u` prints it.
    fn date() -> String {
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}
