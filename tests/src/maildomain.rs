//! What `linkrelay setup` asks the network, served for real inside a test network namespace:
//! dnsmasq answers DNS (host addresses, SRV and MX records) and a small Python server answers
//! HTTPS (and plain HTTP) with a certificate from a test CA: autoconfig documents, an ISP
//! database, redirects, whatever a test puts in its [`Site`].
//!
//! Both listen on one address of the namespace (port 53, and ports 443 and 80) and are killed
//! on drop (and with the namespace in any case). Names outside the zones a test gives are
//! answered "no such domain" (`local=/example/`, `local=/test/`), never passed on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::NetNs;
use crate::tls::TestCa;

/// The web server: routes by scheme, host and path (no query) from a JSON file.
const WEB_SERVER: &str = r#"
import http.server, json, ssl, sys, threading
addr, routes_file, cert, key = sys.argv[1:5]
routes = json.load(open(routes_file))
class Handler(http.server.BaseHTTPRequestHandler):
    scheme = "http"
    def do_GET(self):
        host = self.headers.get("Host", "").split(":")[0]
        route = routes.get(self.scheme + "://" + host + self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route.get("body", "").encode()
        self.send_response(route.get("status", 200))
        if "location" in route:
            self.send_header("Location", route["location"])
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Https(Handler):
    scheme = "https"
plain = http.server.ThreadingHTTPServer((addr, 80), Handler)
tls = http.server.ThreadingHTTPServer((addr, 443), Https)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
tls.socket = context.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
tls.serve_forever()
"#;

/// What the servers answer: DNS lines for dnsmasq and web pages by URL.
#[derive(Debug, Default, Clone)]
pub struct Site {
    dns: Vec<String>,
    pages: BTreeMap<String, serde_json::Value>,
    names: Vec<String>,
}

impl Site {
    /// Nothing yet.
    pub fn new() -> Site {
        Site::default()
    }

    /// `name` has address `ip` (and the web server's certificate covers it).
    pub fn host(mut self, name: &str, ip: &str) -> Site {
        self.dns.push(format!("host-record={name},{ip}"));
        self.names.push(name.to_string());
        self
    }

    /// An SRV record `name` pointing at `target:port`.
    pub fn srv(mut self, name: &str, target: &str, port: u16) -> Site {
        self.dns
            .push(format!("srv-host={name},{target},{port},0,0"));
        self
    }

    /// An MX record of `domain` naming `exchange`.
    pub fn mx(mut self, domain: &str, exchange: &str) -> Site {
        self.dns.push(format!("mx-host={domain},{exchange},10"));
        self
    }

    /// `url` (scheme, host and path) answers 200 with `body`.
    pub fn page(mut self, url: &str, body: &str) -> Site {
        self.pages
            .insert(url.to_string(), serde_json::json!({ "body": body }));
        self
    }

    /// `url` answers `302 Found` to `location`.
    pub fn redirect(mut self, url: &str, location: &str) -> Site {
        self.pages.insert(
            url.to_string(),
            serde_json::json!({ "status": 302, "location": location }),
        );
        self
    }
}

/// An autoconfig document (config-v1.1.xml) with one SMTP server.
pub fn autoconfig_xml(domain: &str, host: &str, port: u16, socket: &str, username: &str) -> String {
    let auth = if username.is_empty() {
        "<authentication>none</authentication>".to_string()
    } else {
        format!(
            "<authentication>password-cleartext</authentication><username>{username}</username>"
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="{domain}">
    <domain>{domain}</domain>
    <outgoingServer type="smtp">
      <hostname>{host}</hostname>
      <port>{port}</port>
      <socketType>{socket}</socketType>
      {auth}
    </outgoingServer>
  </emailProvider>
</clientConfig>
"#
    )
}

/// dnsmasq and the web server, running in a namespace.
pub struct DomainServers {
    dnsmasq: Child,
    web: Child,
    dir: PathBuf,
    /// The CA that signed the web server's certificate (PEM file): what a client must trust.
    pub ca_pem: PathBuf,
}

impl DomainServers {
    /// Starts both on `addr` in `ns` (the address must be up there), with their files in
    /// `dir`, serving `site`; waits until they listen.
    pub fn start(ns: &NetNs, addr: &str, dir: &Path, site: &Site) -> anyhow::Result<DomainServers> {
        for tool in ["/usr/sbin/dnsmasq", "/usr/bin/python3"] {
            if !Path::new(tool).exists() {
                bail!("{tool} is missing: run scripts/install-test-deps");
            }
        }
        std::fs::create_dir_all(dir)?;
        let ca = TestCa::new("linkrelay setup test CA")?;
        let ca_pem = dir.join("web-ca.pem");
        ca.write_pem(&ca_pem)?;
        let names: Vec<&str> = site.names.iter().map(String::as_str).collect();
        let (cert, key) = ca.server_pem(&names)?;
        std::fs::write(dir.join("web-cert.pem"), cert)?;
        std::fs::write(dir.join("web-key.pem"), key)?;
        std::fs::write(
            dir.join("routes.json"),
            serde_json::to_string_pretty(&site.pages)?,
        )?;
        std::fs::write(dir.join("web.py"), WEB_SERVER)?;
        let conf = format!(
            "no-resolv\nno-hosts\nno-poll\nkeep-in-foreground\npid-file=\nlisten-address={addr}\nbind-interfaces\nport=53\nlocal=/example/\nlocal=/test/\nlog-queries\nlog-facility=-\n{}\n",
            site.dns.join("\n")
        );
        std::fs::write(dir.join("dnsmasq.conf"), conf)?;
        let log = |name: &str| -> anyhow::Result<std::fs::File> {
            Ok(std::fs::File::create(dir.join(name))?)
        };
        let dns_log = log("dnsmasq.log")?;
        let dnsmasq = ns
            .command("/usr/sbin/dnsmasq")
            .arg(format!(
                "--conf-file={}",
                dir.join("dnsmasq.conf").display()
            ))
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone()?)
            .stderr(dns_log)
            .spawn()
            .context("starting dnsmasq")?;
        let web_log = log("web.log")?;
        let web = ns
            .command("/usr/bin/python3")
            .arg(dir.join("web.py"))
            .arg(addr)
            .arg(dir.join("routes.json"))
            .arg(dir.join("web-cert.pem"))
            .arg(dir.join("web-key.pem"))
            .stdin(Stdio::null())
            .stdout(web_log.try_clone()?)
            .stderr(web_log)
            .spawn()
            .context("starting the web server")?;
        let mut servers = DomainServers {
            dnsmasq,
            web,
            dir: dir.to_path_buf(),
            ca_pem,
        };
        servers.wait_listening(ns, addr)?;
        Ok(servers)
    }

    fn wait_listening(&mut self, ns: &NetNs, addr: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tcp = ns.command("ss").arg("-ltnH").output()?;
            let udp = ns.command("ss").arg("-lunH").output()?;
            let tcp = String::from_utf8_lossy(&tcp.stdout).into_owned();
            let udp = String::from_utf8_lossy(&udp.stdout).into_owned();
            let up = [":443 ", ":80 ", ":53 "]
                .iter()
                .all(|p| tcp.contains(&format!("{addr}{p}")))
                && udp.contains(&format!("{addr}:53 "));
            if up {
                return Ok(());
            }
            let exited = [
                ("dnsmasq", self.dnsmasq.try_wait()?),
                ("the web server", self.web.try_wait()?),
            ];
            if let Some((name, Some(status))) = exited.iter().find(|(_, s)| s.is_some()) {
                bail!("{name} exited with {status}:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "dnsmasq and the web server did not listen on {addr}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both servers' logs (dnsmasq logs every query).
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        format!(
            "===== dnsmasq =====\n{}\n===== web server =====\n{}",
            read("dnsmasq.log"),
            read("web.log")
        )
    }
}

impl Drop for DomainServers {
    fn drop(&mut self) {
        for child in [&mut self.dnsmasq, &mut self.web] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
