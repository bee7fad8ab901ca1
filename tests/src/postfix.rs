//! Real ISP relays: one Postfix instance with one `smtpd` listener per ISP, inside a network
//! namespace, with its own config and queue directories in a temporary directory.
//!
//! Each listener relays only for clients from its own network (`mynetworks` per listener in
//! master.cf) and refuses everyone else with Postfix's own `554 5.7.1 <rcpt>: Relay access
//! denied`. Both offer STARTTLS with a test CA generated at start ([`TestCa`]); the listener of
//! a [`Listener::auth_user`] requires TLS and SASL AUTH, checked by Dovecot (Postfix's usual
//! SASL partner) against a passwd-file. Postfix relays what it accepts to Postfix's
//! `smtp-sink` on the namespace's loopback, which writes every message to a file:
//! [`PostfixRelays::delivered`] reads them back.
//!
//! [`PostfixRelays::start_on_loopback`] runs the same on this machine's loopback, without a
//! namespace (the OAuth2 tests: the provider, the agent and `linkrelay login` all meet there),
//! and [`Passdb::OAuth2`] has Dovecot check bearer tokens (XOAUTH2, OAUTHBEARER) by
//! introspection at an OAuth2 provider instead of passwords.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::{self, NetNs};

use crate::run::run;

/// The port smtp-sink listens on, on the ISP namespace's loopback.
const SINK_PORT: u16 = 2525;

/// How Dovecot checks the logins of the listeners that want AUTH.
#[derive(Debug, Clone)]
pub enum Passdb {
    /// A passwd-file of each such listener's `auth_user` (AUTH PLAIN and LOGIN).
    PasswdFile,
    /// Bearer tokens (AUTH XOAUTH2 and OAUTHBEARER), each checked by a POST to this RFC 7662
    /// introspection URL (with the introspecting client's credentials in it); the token's
    /// `sub` must be the user name the client logs in as.
    OAuth2 {
        /// e.g. `http://dovecot:secret@127.0.0.1:PORT/token/introspection`
        introspection_url: String,
    },
}

/// One ISP's relay: a `smtpd` listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Short name, used as Postfix's `syslog_name` (e.g. "isp-a").
    pub name: String,
    /// The host name Postfix puts in its banner and `Received:` header (e.g.
    /// "smtp.isp-a.example"): how a test tells which relay took a message.
    pub hostname: String,
    /// Address to listen on (must exist in the namespace).
    pub addr: String,
    /// Port.
    pub port: u16,
    /// The customers' network (`mynetworks`), e.g. "192.0.2.0/24".
    pub network: String,
    /// `Some((user, password))`: require STARTTLS and AUTH as this user, and relay only for
    /// authenticated customers.
    pub auth_user: Option<(String, String)>,
}

/// A test certificate authority and one server certificate it signed, made with the openssl
/// command line.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate (PEM): what a client must trust.
    pub ca_pem: PathBuf,
    /// The server certificate (PEM).
    pub cert_pem: PathBuf,
    /// The server's private key (PEM).
    pub key_pem: PathBuf,
}

impl TestCa {
    /// Generates a CA and a server certificate for `sans` ("IP:192.0.2.1", "DNS:x.example")
    /// in `dir`. Both expire in two days.
    pub fn generate(dir: &Path, sans: &[String]) -> anyhow::Result<TestCa> {
        let ca_key = dir.join("ca.key");
        let ca_pem = dir.join("ca.pem");
        let key_pem = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert_pem = dir.join("server.pem");
        let ext = dir.join("server.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_pem)
            .args(["-days", "2", "-subj", "/CN=linkrelay test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))?;
        run(Command::new("openssl")
            .args(["req", "-new"])
            .args(ec)
            .arg("-keyout")
            .arg(&key_pem)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", "/CN=linkrelay test relay"]))?;
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_pem)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert_pem))?;
        Ok(TestCa {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }
}

/// One message as it left Postfix (what smtp-sink wrote).
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The file smtp-sink wrote.
    pub file: PathBuf,
    /// Envelope sender (without `<>`).
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// The message as Postfix passed it on: its `Received:` header, then what our agent sent.
    pub data: Vec<u8>,
}

impl Delivered {
    /// The message as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The host name in Postfix's own `Received: ... by HOST (Postfix)` header: which relay
    /// took the message from us.
    pub fn relay(&self) -> String {
        let header = self.postfix_received();
        header
            .split_whitespace()
            .skip_while(|w| *w != "by")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// Postfix's `Received:` header (unfolded), the first header of [`Delivered::data`].
    pub fn postfix_received(&self) -> String {
        let (header, _) = split_first_header(&self.data);
        String::from_utf8_lossy(header).replace(['\n', '\t'], " ")
    }

    /// What the relay received from us: [`Delivered::data`] without Postfix's `Received:`.
    pub fn as_sent(&self) -> &[u8] {
        split_first_header(&self.data).1
    }

    /// The value of the first header `name` of the message as sent (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(self.as_sent()).into_owned();
        let head = text.split("\n\n").next().unwrap_or_default();
        let mut lines = head.lines().peekable();
        let prefix = format!("{}:", name.to_ascii_lowercase());
        while let Some(line) = lines.next() {
            if line.to_ascii_lowercase().starts_with(&prefix) {
                let mut value = line[prefix.len()..].trim().to_string();
                while let Some(next) = lines.peek() {
                    if next.starts_with([' ', '\t']) {
                        value.push(' ');
                        value.push_str(next.trim());
                        lines.next();
                    } else {
                        break;
                    }
                }
                return Some(value);
            }
        }
        None
    }
}

/// Splits off the first header (with its continuation lines).
fn split_first_header(data: &[u8]) -> (&[u8], &[u8]) {
    let mut end = 0;
    loop {
        match data[end..].iter().position(|b| *b == b'\n') {
            None => return (data, &[]),
            Some(i) => {
                end += i + 1;
                if !matches!(data.get(end), Some(b' ' | b'\t')) {
                    return (&data[..end], &data[end..]);
                }
            }
        }
    }
}

/// Parses one smtp-sink dump file: its `X-...` lines, its own `Received:` header, the message.
fn parse_dump(file: &Path, bytes: &[u8]) -> Delivered {
    let mut rest = bytes;
    let mut mail_from = String::new();
    let mut rcpts = Vec::new();
    loop {
        let (line, after) = split_first_header(rest);
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if let Some(v) = text.strip_prefix("X-Mail-Args: ") {
            mail_from = first_angle(v);
        } else if let Some(v) = text.strip_prefix("X-Rcpt-Args: ") {
            rcpts.push(first_angle(v));
        } else if text.starts_with("X-") {
        } else if text.starts_with("Received:") && text.contains("smtp-sink") {
            rest = after;
            break;
        } else {
            break;
        }
        rest = after;
    }
    // smtp-sink writes one newline more after the message's last line.
    let data = rest.strip_suffix(b"\n").unwrap_or(rest);
    Delivered {
        file: file.to_path_buf(),
        mail_from,
        rcpts,
        data: data.to_vec(),
    }
}

fn first_angle(v: &str) -> String {
    v.split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// A running Postfix (+ Dovecot, + smtp-sink) inside a namespace. The namespace's drop kills
/// what is left; [`Drop`] stops Postfix politely first.
pub struct PostfixRelays {
    dir: PathBuf,
    conf: PathBuf,
    sink: PathBuf,
    /// `None` on this machine's loopback.
    ns_name: Option<String>,
    sink_port: u16,
    /// smtp-sink, killed on drop (a namespace's end would not reach it on the loopback).
    sink_child: Option<std::process::Child>,
    /// The test CA whose certificate the relays present.
    pub ca: TestCa,
}

impl PostfixRelays {
    /// Writes the configuration into `dir` (which must be reachable by the `postfix` and
    /// `nobody` users) and starts Postfix, Dovecot (when a listener wants AUTH) and smtp-sink
    /// inside `ns`, whose addresses must already be up.
    pub fn start(ns: &NetNs, dir: &Path, listeners: &[Listener]) -> anyhow::Result<Self> {
        Self::start_in(Some(ns.name()), dir, listeners, &Passdb::PasswdFile)
    }

    /// The same on this machine's loopback (the listeners' addresses are 127.0.0.1, on ports
    /// of the caller's choosing), with `passdb` checking logins. Needs root, as Postfix does.
    pub fn start_on_loopback(
        dir: &Path,
        listeners: &[Listener],
        passdb: &Passdb,
    ) -> anyhow::Result<Self> {
        Self::start_in(None, dir, listeners, passdb)
    }

    fn start_in(
        ns_name: Option<&str>,
        dir: &Path,
        listeners: &[Listener],
        passdb: &Passdb,
    ) -> anyhow::Result<Self> {
        let command = |program: &str| match ns_name {
            Some(ns) => netns::command_in(ns, program),
            None => Command::new(program),
        };
        let sink_port = match ns_name {
            Some(_) => SINK_PORT,
            None => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        for tool in [
            "/usr/sbin/postfix",
            "/usr/sbin/smtp-sink",
            "/usr/sbin/dovecot",
        ] {
            if !Path::new(tool).exists() {
                bail!("{tool} is missing: run scripts/install-test-deps");
            }
        }
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("etc");
        let queue = dir.join("spool");
        let data = dir.join("data");
        let sink = dir.join("sink");
        let dovecot = dir.join("dovecot");
        for d in [&conf, &queue, &data, &sink, &dovecot] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        run(Command::new("chown").arg("postfix").arg(&data))?;
        // smtp-sink drops privileges to nobody and writes here.
        std::fs::set_permissions(&sink, std::fs::Permissions::from_mode(0o777))?;

        let mut sans: Vec<String> = listeners.iter().map(|l| format!("IP:{}", l.addr)).collect();
        sans.extend(listeners.iter().map(|l| format!("DNS:{}", l.hostname)));
        let ca = TestCa::generate(dir, &sans)?;

        let d = dir.display();
        let auth_socket = dovecot.join("auth");
        let mut inet: Vec<&str> = listeners.iter().map(|l| l.addr.as_str()).collect();
        inet.push("127.0.0.1");
        inet.dedup();
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
meta_directory = /etc/postfix
maillog_file = {d}/postfix.log
maillog_file_prefixes = {d}
myhostname = isp.example
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = {inet}
inet_protocols = ipv4
# What a listener accepts goes on to smtp-sink, which writes it to a file for the test.
relayhost = [127.0.0.1]:{sink_port}
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
# Pass the message on as we sent it (smtp-sink speaks 8BITMIME anyway).
disable_mime_output_conversion = yes
smtpd_banner = $myhostname ESMTP
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth}
smtpd_sasl_authenticated_header = yes
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
",
            inet = inet.join(", "),
            cert = ca.cert_pem.display(),
            key = ca.key_pem.display(),
            auth = auth_socket.display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf)?;

        let mut master = String::new();
        for l in listeners {
            master.push_str(&format!(
                "{addr}:{port} inet n - n - - smtpd\n  -o syslog_name={name}\n  -o myhostname={host}\n  -o mynetworks={net}\n",
                addr = l.addr,
                port = l.port,
                name = l.name,
                host = l.hostname,
                net = l.network,
            ));
            match &l.auth_user {
                None => master.push_str(
                    "  -o smtpd_tls_security_level=may\n  -o smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination\n",
                ),
                Some(_) => {
                    // Relay only for authenticated clients from the ISP's own network: others
                    // fall through to reject_unauth_destination ("Relay access denied").
                    let cidr = conf.join(format!("{}-clients.cidr", l.name));
                    std::fs::write(&cidr, format!("{} permit_sasl_authenticated\n", l.network))?;
                    master.push_str(&format!(
                        "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_tls_auth_only=yes\n  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_relay_restrictions=check_client_access,cidr:{},reject_unauth_destination\n",
                        cidr.display()
                    ));
                }
            }
        }
        master.push_str(MASTER_SERVICES);
        std::fs::write(conf.join("master.cf"), master)?;

        let users: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.auth_user.as_ref())
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        let relays = PostfixRelays {
            dir: dir.to_path_buf(),
            conf: conf.clone(),
            sink: sink.clone(),
            ns_name: ns_name.map(str::to_owned),
            sink_port,
            sink_child: None,
            ca,
        };
        let mut relays = relays;
        let (mechanisms, passdb_conf) = match passdb {
            Passdb::PasswdFile => {
                std::fs::write(dovecot.join("users"), users.concat())?;
                (
                    "plain login",
                    format!("  driver = passwd-file\n  args = scheme=PLAIN {d}/dovecot/users\n"),
                )
            }
            Passdb::OAuth2 { introspection_url } => {
                let file = dovecot.join("oauth2.conf.ext");
                std::fs::write(
                    &file,
                    format!(
                        "introspection_mode = post\nintrospection_url = {introspection_url}\nforce_introspection = yes\nusername_attribute = sub\nactive_attribute = active\nactive_value = true\n"
                    ),
                )?;
                (
                    "xoauth2 oauthbearer",
                    format!(
                        "  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n",
                        file.display()
                    ),
                )
            }
        };
        if !users.is_empty() {
            std::fs::write(
                dovecot.join("dovecot.conf"),
                format!(
                    "base_dir = {d}/dovecot/run
state_dir = {d}/dovecot/state
log_path = {d}/dovecot.log
protocols =
ssl = no
auth_mechanisms = {mechanisms}
passdb {{
{passdb_conf}}}
service auth {{
  unix_listener {auth} {{
    mode = 0666
  }}
}}
",
                    auth = auth_socket.display()
                ),
            )?;
            daemon(
                command("/usr/sbin/dovecot")
                    .arg("-c")
                    .arg(dovecot.join("dovecot.conf")),
                &dir.join("dovecot.start.log"),
            )
            .context("starting dovecot")?;
        }
        let sink_log = std::fs::File::create(dir.join("smtp-sink.log"))?;
        // smtp-sink daemonizes nothing: it runs until the namespace is torn down.
        let sink_child = command("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", "-d"])
            .arg(format!("{}/%M.", sink.display()))
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("50")
            .stdin(Stdio::null())
            .stdout(sink_log.try_clone()?)
            .stderr(sink_log)
            .spawn()
            .context("starting smtp-sink")?;
        relays.sink_child = Some(sink_child);
        daemon(
            command("/usr/sbin/postfix")
                .arg("-c")
                .arg(&conf)
                .arg("start"),
            &dir.join("postfix.start.log"),
        )
        .with_context(|| format!("starting postfix; its log:\n{}", relays.log()))?;
        relays.wait_listening(listeners)?;
        Ok(relays)
    }

    fn wait_listening(&self, listeners: &[Listener]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.command("ss").arg("-ltnH").output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let want = listeners
                .iter()
                .map(|l| format!("{}:{}", l.addr, l.port))
                .chain([format!("127.0.0.1:{}", self.sink_port)]);
            let missing: Vec<String> = want.filter(|w| !text.contains(w.as_str())).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not listening on {missing:?}; postfix log:\n{}\nsmtp-sink log:\n{}",
                    self.log(),
                    std::fs::read_to_string(self.dir.join("smtp-sink.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `program`, to run where Postfix runs.
    fn command(&self, program: &str) -> Command {
        match &self.ns_name {
            Some(ns) => netns::command_in(ns, program),
            None => Command::new(program),
        }
    }

    /// Postfix's log (and Dovecot's), for failure reports.
    pub fn log(&self) -> String {
        let postfix = std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default();
        let dovecot = std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default();
        format!("{postfix}\n--- dovecot ---\n{dovecot}")
    }

    /// Every message Postfix passed on so far, oldest first.
    pub fn delivered(&self) -> Vec<Delivered> {
        let mut files = Vec::new();
        collect_files(&self.sink, &mut files);
        let mut out: Vec<(std::time::SystemTime, Delivered)> = files
            .into_iter()
            .filter_map(|f| {
                let bytes = std::fs::read(&f).ok()?;
                let mtime = std::fs::metadata(&f).and_then(|m| m.modified()).ok()?;
                Some((mtime, parse_dump(&f, &bytes)))
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, d)| d).collect()
    }

    /// Messages passed on whose `Subject:` is `subject`.
    pub fn with_subject(&self, subject: &str) -> Vec<Delivered> {
        self.delivered()
            .into_iter()
            .filter(|d| d.header("subject").as_deref() == Some(subject))
            .collect()
    }

    /// How many lines of Postfix's log contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        std::fs::read_to_string(self.dir.join("postfix.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// How many messages sit in Postfix's own queue (accepted but not passed on yet,
    /// including any bounce it made): the files under its queue directories.
    pub fn queued(&self) -> usize {
        ["maildrop", "incoming", "active", "deferred", "hold"]
            .iter()
            .map(|q| {
                let mut files = Vec::new();
                collect_files(&self.dir.join("spool").join(q), &mut files);
                files.len()
            })
            .sum()
    }
}

impl Drop for PostfixRelays {
    fn drop(&mut self) {
        let _ = self
            .command("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut sink) = self.sink_child.take() {
            let _ = sink.kill();
            let _ = sink.wait();
        }
        let dovecot_pid = std::fs::read_to_string(self.dir.join("dovecot/run/master.pid"));
        if let Ok(pid) = dovecot_pid.unwrap_or_default().trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Runs a command that starts a daemon: its output goes to `log` (a pipe would stay open in
/// the daemon, and waiting for its end would never return).
fn daemon(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The rest of master.cf: Postfix's standard services, none chrooted (the queue is in a
/// temporary directory), plus postlogd for `maillog_file`.
const MASTER_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
