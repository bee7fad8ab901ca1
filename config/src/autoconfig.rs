//! The autoconfig format (`config-v1.1.xml`, Thunderbird's, served by providers and the ISP
//! database) and the submission servers it lists: what `linkrelay setup` learns from a
//! provider. Pure, and fuzzed (`fuzz/fuzz_targets/autoconfig.rs`): the document comes from the
//! network. The caller caps its size before parsing.
//!
//! roxmltree refuses a document with a DTD, so no entity can expand into a huge one.

/// How a server secures the connection; servers without TLS are never proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// STARTTLS (usually port 587).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Implicit,
}

impl Tls {
    /// The config's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Starttls => "starttls",
            Tls::Implicit => "tls",
        }
    }
}

/// A submission server as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: Tls,
    /// The login the provider says to use, if any.
    pub username: Option<String>,
}

/// Whether `host` is a DNS host name (letters, digits and hyphens in dot-separated labels of at
/// most 63 characters, 253 in all) or an IP address.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Why an autoconfig document gives no server to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed XML, or not an autoconfig document.
    #[error("malformed autoconfig XML: {0}")]
    Malformed(String),
    /// It lists SMTP servers, but only ones that speak without TLS.
    #[error(
        "it points only to a plaintext SMTP server ({0}, socketType plain): linkrelay never \
         sends a password or mail over a connection without TLS"
    )]
    PlaintextOnly(String),
    /// It lists no SMTP server.
    #[error("it names no SMTP server (outgoingServer type=\"smtp\")")]
    NoSmtp,
}

/// The SMTP servers of `xml`, in the document's order, for `address` (its placeholders
/// `%EMAILADDRESS%`, `%EMAILLOCALPART%` and `%EMAILDOMAIN%` filled in). Servers without TLS are
/// left out; if that leaves none, [`XmlError::PlaintextOnly`].
pub fn smtp_servers(xml: &str, address: &str) -> Result<Vec<Server>, XmlError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "clientConfig" {
        return Err(XmlError::Malformed(format!(
            "the root element is <{}>, not <clientConfig>",
            root.tag_name().name()
        )));
    }
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let fill = |s: &str| {
        s.replace("%EMAILADDRESS%", address)
            .replace("%EMAILLOCALPART%", local)
            .replace("%EMAILDOMAIN%", domain)
    };
    let mut servers = Vec::new();
    let mut plain = None;
    for node in root.descendants().filter(|n| {
        n.has_tag_name("outgoingServer")
            && n.attribute("type")
                .is_some_and(|t| t.eq_ignore_ascii_case("smtp"))
    }) {
        let child = |name: &str| {
            node.children()
                .find(|c| c.has_tag_name(name))
                .and_then(|c| c.text())
                .map(|t| t.trim().to_string())
        };
        let host = fill(&child("hostname").unwrap_or_default());
        if !valid_host(&host) {
            return Err(XmlError::Malformed(format!("{host:?} is not a host name")));
        }
        let port = child("port").unwrap_or_default();
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(XmlError::Malformed(format!(
                    "port {port:?} of {host} is not a port"
                )));
            }
        };
        let tls = match child("socketType")
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_str()
        {
            "SSL" | "TLS" => Tls::Implicit,
            "STARTTLS" => Tls::Starttls,
            _ => {
                plain.get_or_insert(format!("{host}:{port}"));
                continue;
            }
        };
        let auth = child("authentication").unwrap_or_default();
        let username = (!auth.eq_ignore_ascii_case("none"))
            .then(|| child("username").map(|u| fill(&u)))
            .flatten()
            .filter(|u| !u.is_empty());
        servers.push(Server {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
            tls,
            username,
        });
    }
    match (servers.is_empty(), plain) {
        (false, _) => Ok(servers),
        (true, Some(host)) => Err(XmlError::PlaintextOnly(host)),
        (true, None) => Err(XmlError::NoSmtp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_label_by_label() {
        for ok in [
            "smtp.isp-a.example",
            "a.b",
            "xn--bcher-kva.example.",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "-a.example",
            "a-.example",
            "a..b",
            "a b.example",
            "smtp.x.example;rm",
            &"a".repeat(64),
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    fn doc(servers: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="isp-a.example">
    <domain>isp-a.example</domain>
    <incomingServer type="imap"><hostname>imap.isp-a.example</hostname><port>993</port><socketType>SSL</socketType></incomingServer>
    {servers}
  </emailProvider>
</clientConfig>"#
        )
    }

    #[test]
    fn the_smtp_servers_come_in_order_with_the_address_filled_in() {
        let xml = doc(
            "<outgoingServer type=\"smtp\"><hostname>smtp.%EMAILDOMAIN%</hostname><port>587</port>\
             <socketType>STARTTLS</socketType><authentication>password-cleartext</authentication>\
             <username>%EMAILLOCALPART%</username></outgoingServer>\
             <outgoingServer type=\"smtp\"><hostname>smtp.isp-a.example</hostname><port>465</port>\
             <socketType>SSL</socketType><authentication>none</authentication></outgoingServer>",
        );
        let servers = smtp_servers(&xml, "alice@isp-a.example").unwrap();
        assert_eq!(
            servers,
            [
                Server {
                    host: "smtp.isp-a.example".into(),
                    port: 587,
                    tls: Tls::Starttls,
                    username: Some("alice".into()),
                },
                Server {
                    host: "smtp.isp-a.example".into(),
                    port: 465,
                    tls: Tls::Implicit,
                    username: None,
                },
            ]
        );
    }

    #[test]
    fn a_plaintext_server_is_left_out_and_alone_it_is_an_error() {
        let plain = "<outgoingServer type=\"smtp\"><hostname>smtp.isp-a.example</hostname>\
                     <port>25</port><socketType>plain</socketType></outgoingServer>";
        assert_eq!(
            smtp_servers(&doc(plain), "a@isp-a.example"),
            Err(XmlError::PlaintextOnly("smtp.isp-a.example:25".into()))
        );
        let both = format!(
            "{plain}<outgoingServer type=\"smtp\"><hostname>smtp.isp-a.example</hostname>\
             <port>465</port><socketType>SSL</socketType></outgoingServer>"
        );
        assert_eq!(
            smtp_servers(&doc(&both), "a@isp-a.example").unwrap()[0].port,
            465
        );
    }

    #[test]
    fn malformed_and_hostile_documents_are_errors() {
        for (xml, why) in [
            ("<clientConfig><emailProvider>", "unclosed"),
            ("not xml at all", "text"),
            ("<html><body>Not Found</body></html>", "another document"),
            (
                "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><clientConfig>&lol2;</clientConfig>",
                "a DTD with entities",
            ),
        ] {
            assert!(
                matches!(
                    smtp_servers(xml, "a@b.example"),
                    Err(XmlError::Malformed(_))
                ),
                "{why}"
            );
        }
        let bad_host = doc(
            "<outgoingServer type=\"smtp\"><hostname>smtp.x.example; rm -rf /</hostname>\
             <port>587</port><socketType>STARTTLS</socketType></outgoingServer>",
        );
        assert!(
            matches!(smtp_servers(&bad_host, "a@b.example"), Err(XmlError::Malformed(m)) if m.contains("not a host name"))
        );
        let bad_port = doc(
            "<outgoingServer type=\"smtp\"><hostname>smtp.x.example</hostname>\
             <port>70000</port><socketType>STARTTLS</socketType></outgoingServer>",
        );
        assert!(
            matches!(smtp_servers(&bad_port, "a@b.example"), Err(XmlError::Malformed(m)) if m.contains("not a port"))
        );
        assert_eq!(smtp_servers(&doc(""), "a@b.example"), Err(XmlError::NoSmtp));
    }
}
