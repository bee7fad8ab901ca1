//! The peers, from Debian's packages, against the same smtp-sink and the same message:
//! Postfix's smtp-source (the ceiling, no durability), msmtp (one process per message, no
//! queue), msmtpq (msmtp's queue script), nullmailer (extracted from its .deb, run in a
//! private mount namespace since it conflicts with postfix as a package) and Postfix itself
//! (a private instance with its own config and queue directories, no inet listeners).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::env::{RCPT, free_port, sender, write_mode};
use crate::procfs;
use linkrelay_tests::run::{run, run_with_input};

/// Where msmtpq lives in Debian's msmtp package.
const MSMTPQ: &str = "/usr/libexec/msmtp/msmtpq/msmtpq";

/// smtp-source with session reuse (`-d`), `sessions` at once, `n` 4 KB messages: msg/s.
pub fn smtp_source(port: u16, sessions: usize, n: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    run(Command::new("/usr/sbin/smtp-source")
        .args(["-d", "-s", &sessions.to_string(), "-m", &n.to_string()])
        .args([
            "-l",
            "4096",
            "-M",
            "bench.localdomain",
            "-f",
            &sender(1),
            "-t",
            RCPT,
        ])
        .arg(format!("127.0.0.1:{port}")))?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// msmtp over TLS to the TLS sink at `port` (`starttls`: STARTTLS, else TLS from the first
/// byte), checking the certificate against `ca`; one process per message: msg/s.
pub fn msmtp_tls(
    work: &Path,
    port: u16,
    starttls: bool,
    ca: &Path,
    n: usize,
    msg: &[u8],
) -> anyhow::Result<f64> {
    let rc = work.join(format!("msmtprc-tls-{port}"));
    write_mode(
        &rc,
        &format!(
            "defaults\nauth off\ntls on\ntls_trust_file {}\ntls_starttls {}\n\n\
             account default\nhost 127.0.0.1\nport {port}\ndomain bench.localdomain\nfrom {}\n",
            ca.display(),
            if starttls { "on" } else { "off" },
            sender(1)
        ),
        0o600,
    )?;
    let t = Instant::now();
    for _ in 0..n {
        run_with_input(
            Command::new("msmtp")
                .arg("-C")
                .arg(&rc)
                .args(["-f", &sender(1), RCPT]),
            msg,
        )?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// msmtp and msmtpq with private homes (`~/.msmtprc`) and queue.
pub struct Msmtp {
    online: PathBuf,
    offline: PathBuf,
    queue: PathBuf,
    log: PathBuf,
}

impl Msmtp {
    /// Lays out a home whose msmtprc points at the sink, and one whose msmtprc points at a
    /// closed port (so that msmtpq queues instead of sending).
    pub fn new(work: &Path, port: u16) -> anyhow::Result<Msmtp> {
        let dir = work.join("msmtp");
        let m = Msmtp {
            online: dir.join("home-online"),
            offline: dir.join("home-offline"),
            queue: dir.join("queue"),
            log: dir.join("msmtpq.log"),
        };
        let closed = free_port()?;
        for (home, p) in [(&m.online, port), (&m.offline, closed)] {
            std::fs::create_dir_all(home)?;
            write_mode(
                &home.join(".msmtprc"),
                &format!(
                    "defaults\nauth off\ntls off\n\naccount default\nhost 127.0.0.1\nport {p}\n\
                     domain bench.localdomain\nfrom {}\n",
                    sender(1)
                ),
                0o600,
            )?;
        }
        std::fs::create_dir_all(&m.queue)?;
        Ok(m)
    }

    /// `program` run as msmtp and msmtpq run here: with the online home (its msmtprc sends to
    /// the sink) or the offline one (a closed port), and the private queue.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, online: bool) -> Command {
        self.cmd(program, online)
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>, online: bool) -> Command {
        let mut c = Command::new(program);
        c.env("HOME", if online { &self.online } else { &self.offline })
            .env("MSMTPQ_Q", &self.queue)
            .env("MSMTPQ_LOG", &self.log)
            .env("EMAIL_CONN_TEST", "x")
            .env("EMAIL_QUEUE_QUIET", "t");
        c
    }

    /// msmtp, one process per message, straight to the sink: msg/s.
    pub fn direct(&self, n: usize, msg: &[u8]) -> anyhow::Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            run_with_input(self.cmd("msmtp", true).args(["-f", &sender(1), RCPT]), msg)?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    /// Messages in msmtpq's queue.
    pub fn queued(&self) -> usize {
        std::fs::read_dir(&self.queue)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".mail"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// msmtpq while the relay is unreachable (the message is queued), one process per
    /// message: msg/s.
    pub fn enqueue(&self, n: usize, msg: &[u8]) -> anyhow::Result<f64> {
        let before = self.queued();
        let t = Instant::now();
        for _ in 0..n {
            run_with_input(self.cmd(MSMTPQ, false).args(["-f", &sender(1), RCPT]), msg)?;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        ensure!(
            self.queued() == before + n,
            "msmtpq queued {} of {n}",
            self.queued() - before
        );
        Ok(rate)
    }

    /// `msmtpq --q-mgmt -r` (msmtp-queue -r) over what is queued: msg/s.
    pub fn flush(&self) -> anyhow::Result<f64> {
        let n = self.queued();
        ensure!(n > 0, "nothing queued for msmtpq to flush");
        let t = Instant::now();
        run(self.cmd(MSMTPQ, true).args(["--q-mgmt", "-r"]))?;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        ensure!(
            self.queued() == 0,
            "msmtpq -r left {} queued",
            self.queued()
        );
        Ok(rate)
    }
}

/// The shell that runs nullmailer in a private mount namespace: the extracted package's /usr
/// over the system's (overlay), our /etc/nullmailer over /etc (overlay), our spool (on the
/// same disk as every other queue of the bench) bound over /var/spool.
const NULLMAILER_NS: &str = r#"set -e
X=$1; W=$2; MODE=$3; N=$4; MSG=$5; FROM=$6; RCPT=$7
mount -t overlay overlay -o lowerdir=$X/usr:/usr /usr
mount -t overlay overlay -o lowerdir=$W/etc:/etc /etc
mount --bind $W/spool /var/spool
Q=/var/spool/nullmailer/queue
case $MODE in
inject)
    t0=$(date +%s%N); i=0
    while [ $i -lt $N ]; do nullmailer-inject -f "$FROM" "$RCPT" < "$MSG"; i=$((i+1)); done
    t1=$(date +%s%N); echo $((t1-t0)) ;;
send)
    t0=$(date +%s%N)
    nullmailer-send >/dev/null 2>&1 & p=$!
    while :; do set -- $Q/*; [ -e "$1" ] || break; sleep 0.005; done
    t1=$(date +%s%N); kill $p; wait $p 2>/dev/null || true; echo $((t1-t0)) ;;
esac
"#;

/// nullmailer, extracted from Debian's .deb into `root`.
pub struct Nullmailer {
    root: PathBuf,
    work: PathBuf,
    msg: PathBuf,
}

impl Nullmailer {
    /// Lays out its config (remote: the sink) and spool (owned by `mail`, as its setuid
    /// nullmailer-queue wants).
    pub fn new(root: &Path, work: &Path, port: u16, msg: &[u8]) -> anyhow::Result<Nullmailer> {
        ensure!(
            root.join("usr/sbin/nullmailer-send").exists(),
            "nullmailer is not extracted at {} (run bench/install-deps)",
            root.display()
        );
        let w = work.join("nullmailer");
        std::fs::create_dir_all(w.join("etc/nullmailer"))?;
        std::fs::write(
            w.join("etc/nullmailer/remotes"),
            format!("127.0.0.1 smtp --port={port}\n"),
        )?;
        std::fs::write(w.join("etc/mailname"), "bench.localdomain\n")?;
        for d in ["queue", "tmp", "failed"] {
            std::fs::create_dir_all(w.join("spool/nullmailer").join(d))?;
        }
        let trigger = w.join("spool/nullmailer/trigger");
        if !trigger.exists() {
            run(Command::new("mkfifo").arg(&trigger))?;
        }
        run(Command::new("chown")
            .args(["-R", "mail:mail"])
            .arg(w.join("spool/nullmailer")))?;
        std::fs::write(w.join("ns.sh"), NULLMAILER_NS)?;
        let m = w.join("message.txt");
        std::fs::write(&m, msg)?;
        Ok(Nullmailer {
            root: root.to_path_buf(),
            work: w,
            msg: m,
        })
    }

    fn ns(&self, mode: &str, n: usize) -> anyhow::Result<Duration> {
        let out = run(Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh"])
            .arg(self.work.join("ns.sh"))
            .arg(&self.root)
            .arg(&self.work)
            .arg(mode)
            .arg(n.to_string())
            .arg(&self.msg)
            .arg(sender(1))
            .arg(RCPT))?;
        let ns: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("nullmailer timing")?;
        Ok(Duration::from_nanos(ns))
    }

    fn queued(&self) -> usize {
        std::fs::read_dir(self.work.join("spool/nullmailer/queue"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// nullmailer-inject, one process per message: msg/s.
    pub fn inject(&self, n: usize) -> anyhow::Result<f64> {
        let before = self.queued();
        let t = self.ns("inject", n)?;
        ensure!(
            self.queued() == before + n,
            "nullmailer queued {} of {n}",
            self.queued() - before
        );
        Ok(n as f64 / t.as_secs_f64())
    }

    /// nullmailer-send until the queue is empty: msg/s.
    pub fn send(&self) -> anyhow::Result<f64> {
        let n = self.queued();
        ensure!(n > 0, "nothing queued for nullmailer-send");
        let t = self.ns("send", n)?;
        ensure!(
            self.queued() == 0,
            "nullmailer-send left {} queued",
            self.queued()
        );
        Ok(n as f64 / t.as_secs_f64())
    }
}

/// A private Postfix instance: its own config and queue directories, no inet listeners,
/// relaying everything to the sink.
pub struct Postfix {
    config: PathBuf,
    spool: PathBuf,
    running: bool,
}

impl Postfix {
    /// Writes the instance's main.cf and master.cf (copied from /etc/postfix) and creates its
    /// queue directories.
    pub fn new(work: &Path, port: u16) -> anyhow::Result<Postfix> {
        Postfix::build(work, port, None)
    }

    /// The same, with smtpd listening on `127.0.0.1:smtpd` (the submission rows; no reverse
    /// lookups of the client).
    pub fn with_smtpd(work: &Path, port: u16, smtpd: u16) -> anyhow::Result<Postfix> {
        Postfix::build(work, port, Some(smtpd))
    }

    fn build(work: &Path, port: u16, smtpd: Option<u16>) -> anyhow::Result<Postfix> {
        let dir = work.join("postfix");
        let config = dir.join("etc");
        let spool = dir.join("spool");
        let data = dir.join("data");
        for d in [&config, &spool, &data] {
            std::fs::create_dir_all(d)?;
        }
        for f in ["master.cf", "dynamicmaps.cf", "postfix-files"] {
            let from = Path::new("/etc/postfix").join(f);
            if from.exists() {
                std::fs::copy(&from, config.join(f))?;
            }
        }
        for d in ["postfix-files.d", "dynamicmaps.cf.d"] {
            std::fs::create_dir_all(config.join(d))?;
        }
        let listeners = match smtpd {
            None => "master_service_disable = inet\n".to_owned(),
            Some(p) => {
                // Debian's `smtp inet` line (port 25) becomes ours.
                let master = std::fs::read_to_string(config.join("master.cf"))?;
                let master: String = master
                    .lines()
                    .map(|l| {
                        if l.starts_with("smtp ") && l.contains(" inet ") {
                            format!("127.0.0.1:{p} inet n - y - - smtpd\n")
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                std::fs::write(config.join("master.cf"), master)?;
                "smtpd_peername_lookup = no\n".to_owned()
            }
        };
        std::fs::write(
            config.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {}\ndata_directory = {}\n\
                 inet_interfaces = loopback-only\ninet_protocols = ipv4\n{listeners}\
                 mydestination =\nmyhostname = bench.localdomain\nrelayhost = [127.0.0.1]:{port}\n\
                 smtp_tls_security_level = none\nmaillog_file_prefixes = {}\nmaillog_file = {}\n",
                spool.display(),
                data.display(),
                dir.display(),
                dir.join("maillog").display()
            ),
        )?;
        run(Command::new("chown").arg("postfix").arg(&data))?;
        run(Command::new("postfix")
            .arg("-c")
            .arg(&config)
            .args(["post-install", "create-missing"]))?;
        Ok(Postfix {
            config,
            spool,
            running: false,
        })
    }

    /// `postfix start`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        run(Command::new("postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("start"))?;
        self.running = true;
        Ok(())
    }

    /// `postfix stop`.
    pub fn stop(&mut self) {
        if self.running {
            let _ = Command::new("postfix")
                .arg("-c")
                .arg(&self.config)
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The master's pid and its children's.
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let text = std::fs::read_to_string(self.spool.join("pid/master.pid"))
            .context("reading Postfix's master.pid")?;
        let master: u32 = text.trim().parse().context("master.pid")?;
        let mut pids = vec![master];
        pids.extend(procfs::children(master));
        Ok(pids)
    }

    /// Postfix's sendmail, one process per message (pickup and qmgr take each to the sink
    /// meanwhile): msg/s.
    pub fn enqueue(&self, n: usize, msg: &[u8]) -> anyhow::Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            run_with_input(
                Command::new("/usr/sbin/sendmail")
                    .env("MAIL_CONFIG", &self.config)
                    .args(["-i", "-f", &sender(1), RCPT]),
                msg,
            )?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}
