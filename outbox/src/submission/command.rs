//! One SMTP command line (without its line end) into a [`Command`].
//!
//! Lenient where clients are known to stray and nothing is lost by it (a space after `FROM:`,
//! a path without angle brackets, a source route, any case), strict where it matters (the
//! parameters, which must be known and well formed).

/// An ESMTP parameter: `KEY=VALUE` or `KEY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: Option<&'a str>,
}

/// A command the dialogue knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    /// `MAIL FROM:<path> params`; the path without brackets or source route (`""`: null).
    Mail {
        path: &'a str,
        params: Vec<Param<'a>>,
    },
    /// `RCPT TO:<path> params`.
    Rcpt {
        path: &'a str,
        params: Vec<Param<'a>>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    Starttls,
    Bdat,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
}

/// Why a line is no command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// A verb we do not know.
    Unknown,
    /// A known verb with bad arguments; the text says what to write.
    Syntax(&'static str),
    /// A bad parameter; the text says which and why.
    Param(String),
    /// An HTTP request line or header: a web page making the browser talk to us.
    Http,
}

/// HTTP methods: a browser that a web page points at the listener starts with one of these.
const HTTP_METHODS: [&str; 9] = [
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE",
];

/// Reads one command line.
pub(crate) fn parse(line: &str) -> Result<Command<'_>, Bad> {
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest),
        None => (line, ""),
    };
    if looks_like_http(verb, line) {
        return Err(Bad::Http);
    }
    let verb_is = |v: &str| verb.eq_ignore_ascii_case(v);
    let no_args = |cmd: Command<'static>| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Bad::Syntax("this command takes no arguments"))
        }
    };
    if verb_is("EHLO") || verb_is("HELO") {
        let domain = rest.trim();
        if domain.is_empty() {
            return Err(Bad::Syntax("write EHLO (or HELO) and your host name"));
        }
        return Ok(if verb_is("EHLO") {
            Command::Ehlo(domain)
        } else {
            Command::Helo(domain)
        });
    }
    if verb_is("MAIL") {
        let (path, params) = path_and_params(rest, "FROM:")
            .ok_or(Bad::Syntax("write MAIL FROM:<address> (or <> for none)"))?;
        return Ok(Command::Mail {
            path,
            params: params?,
        });
    }
    if verb_is("RCPT") {
        let (path, params) =
            path_and_params(rest, "TO:").ok_or(Bad::Syntax("write RCPT TO:<address>"))?;
        return Ok(Command::Rcpt {
            path,
            params: params?,
        });
    }
    if verb_is("AUTH") {
        let mut words = rest.split_whitespace();
        let mechanism = words
            .next()
            .ok_or(Bad::Syntax("write AUTH PLAIN [initial response]"))?;
        let initial = words.next();
        if words.next().is_some() {
            return Err(Bad::Syntax("write AUTH PLAIN [initial response]"));
        }
        return Ok(Command::Auth { mechanism, initial });
    }
    match () {
        () if verb_is("DATA") => no_args(Command::Data),
        () if verb_is("RSET") => no_args(Command::Rset),
        () if verb_is("QUIT") => no_args(Command::Quit),
        () if verb_is("STARTTLS") => no_args(Command::Starttls),
        // NOOP and HELP may carry an argument, which means nothing.
        () if verb_is("NOOP") => Ok(Command::Noop),
        () if verb_is("HELP") => Ok(Command::Help),
        () if verb_is("VRFY") => Ok(Command::Vrfy),
        () if verb_is("EXPN") => Ok(Command::Expn),
        () if verb_is("BDAT") => Ok(Command::Bdat),
        () => Err(Bad::Unknown),
    }
}

/// A request line (`POST / HTTP/1.1`) or a header line (`Host: ...`).
fn looks_like_http(verb: &str, line: &str) -> bool {
    HTTP_METHODS.iter().any(|m| verb.eq_ignore_ascii_case(m))
        || (verb.ends_with(':') && !verb.contains('<'))
        || line.ends_with(" HTTP/1.0")
        || line.ends_with(" HTTP/1.1")
}

type Params<'a> = Result<Vec<Param<'a>>, Bad>;

/// `FROM:<path> params` (or `TO:`): the path's address and the parameters; `None` when the
/// keyword or the path is missing.
fn path_and_params<'a>(rest: &'a str, keyword: &str) -> Option<(&'a str, Params<'a>)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start_matches(' ');
    let (path, after) = if let Some(inner) = rest.strip_prefix('<') {
        let close = closing_bracket(inner)?;
        (&inner[..close], &inner[close + 1..])
    } else {
        // No brackets (old clients): the address runs to the first space.
        let end = rest.find(' ').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        (&rest[..end], &rest[end..])
    };
    if !after.is_empty() && !after.starts_with(' ') {
        return None;
    }
    Some((strip_route(path), params(after)))
}

/// Where the `>` that closes a path is, skipping quoted strings of its local part.
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@a,@b:user@c` -> `user@c` (RFC 5321 says to accept a source route and ignore it).
fn strip_route(path: &str) -> &str {
    if path.starts_with('@')
        && let Some((_, addr)) = path.split_once(':')
    {
        return addr;
    }
    path
}

/// `KEY=VALUE KEY ...`: each key an esmtp-keyword, each value printable without `=`.
fn params(text: &str) -> Params<'_> {
    text.split(' ')
        .filter(|w| !w.is_empty())
        .map(|word| {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let keyword = |k: &str| {
                k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !keyword(key) {
                return Err(Bad::Param(format!("{word:?} is not a parameter")));
            }
            if value.is_some_and(|v| v.is_empty() || v.contains('=')) {
                return Err(Bad::Param(format!("parameter {key} has a bad value")));
            }
            Ok(Param { key, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(key: &'a str, value: Option<&'a str>) -> Param<'a> {
        Param { key, value }
    }

    #[test]
    fn commands_are_read_whatever_their_case() {
        assert_eq!(parse("ehlo laptop"), Ok(Command::Ehlo("laptop")));
        assert_eq!(parse("HELO laptop"), Ok(Command::Helo("laptop")));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("Quit"), Ok(Command::Quit));
        assert_eq!(parse("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(
            parse("AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN",
                initial: Some("AGFAYg==")
            })
        );
    }

    #[test]
    fn paths_are_read_as_clients_write_them() {
        for (line, path) in [
            ("MAIL FROM:<a@b.example>", "a@b.example"),
            ("mail from:<a@b.example>", "a@b.example"),
            ("MAIL FROM: <a@b.example>", "a@b.example"),
            ("MAIL FROM:a@b.example", "a@b.example"),
            ("MAIL FROM:<>", ""),
            (
                "MAIL FROM:<@relay.example,@x.example:a@b.example>",
                "a@b.example",
            ),
            (
                "MAIL FROM:<\"odd>name\"@b.example>",
                "\"odd>name\"@b.example",
            ),
        ] {
            match parse(line) {
                Ok(Command::Mail { path: p, params }) => {
                    assert_eq!(p, path, "{line}");
                    assert!(params.is_empty(), "{line}");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn parameters_are_split_and_checked() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS"),
            Ok(Command::Mail {
                path: "a@b.example",
                params: vec![
                    param("SIZE", Some("100")),
                    param("BODY", Some("8BITMIME")),
                    param("SMTPUTF8", None),
                    param("RET", Some("HDRS")),
                ]
            })
        );
        assert_eq!(
            parse("RCPT TO:<c@d.example>  NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example"),
            Ok(Command::Rcpt {
                path: "c@d.example",
                params: vec![
                    param("NOTIFY", Some("SUCCESS,FAILURE")),
                    param("ORCPT", Some("rfc822;c@d.example")),
                ]
            })
        );
        for bad in [
            "MAIL FROM:<a@b.example> SIZE=",
            "MAIL FROM:<a@b.example> =1",
            "MAIL FROM:<a@b.example> SI_ZE=1",
            "MAIL FROM:<a@b.example> ENVID=a=b",
        ] {
            assert!(matches!(parse(bad), Err(Bad::Param(_))), "{bad}");
        }
    }

    #[test]
    fn broken_commands_say_what_to_write() {
        for bad in [
            "MAIL",
            "MAIL TO:<a@b>",
            "MAIL FROM:<a@b",
            "MAIL FROM:<a@b>x",
            "RCPT <a@b>",
            "EHLO",
            "DATA now",
            "AUTH",
        ] {
            assert!(matches!(parse(bad), Err(Bad::Syntax(_))), "{bad}");
        }
        assert_eq!(parse("FOO bar"), Err(Bad::Unknown));
        assert_eq!(parse(""), Err(Bad::Unknown));
    }

    #[test]
    fn what_a_browser_sends_is_told_apart() {
        for line in [
            "POST / HTTP/1.1",
            "GET /index.html HTTP/1.0",
            "Host: 127.0.0.1:2525",
            "Content-Type: text/plain",
            "EHLO / HTTP/1.1",
        ] {
            assert_eq!(parse(line), Err(Bad::Http), "{line}");
        }
    }
}
