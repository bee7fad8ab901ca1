//! The dialogue as a table: what a client sends, the codes it gets back, what is submitted.

use super::*;
use crate::dsn::{Notify, Ret};

/// Mail from `*@bob.example` is bob's, from `stranger@nowhere.example` nobody's, the rest
/// alice's; the token is `s3cret`.
struct TestPolicy;

impl Policy for TestPolicy {
    fn user_for_sender(&self, sender: &str) -> Result<String, String> {
        if sender.ends_with("@bob.example") {
            Ok("bob".into())
        } else if sender == "stranger@nowhere.example" {
            Err("no [[user]] has a `from` pattern matching \"stranger@nowhere.example\"".into())
        } else {
            Ok("alice".into())
        }
    }

    fn token_matches(&self, password: &str) -> bool {
        password == "s3cret"
    }
}

const MESSAGE: &str = "From: a@bob.example\r\nTo: c@d.example\r\nSubject: hi\r\n\r\nHello.\r\n";

/// What a session did with some input.
struct Transcript {
    /// Every reply line, in order.
    lines: Vec<String>,
    submitted: Vec<Submission>,
    closed: bool,
}

impl Transcript {
    /// The reply codes, in order (continuation lines of EHLO count once).
    fn codes(&self) -> Vec<u16> {
        self.lines
            .iter()
            .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Feeds `input` in pieces of `chunk` bytes; each submission is answered with `commit`.
fn run_with(
    peer: Peer,
    limits: Limits,
    input: &[u8],
    chunk: usize,
    commit: impl Fn(usize) -> Committed,
) -> Transcript {
    let mut s = Session::new("test.host", limits, peer);
    let mut out = Vec::new();
    let mut submitted = Vec::new();
    let mut pieces = input.chunks(chunk.max(1));
    let closed = loop {
        match s.next(&TestPolicy) {
            Step::Read => {
                out.extend_from_slice(s.output());
                s.clear_output();
                match pieces.next() {
                    Some(piece) => s.input(piece),
                    None => break false,
                }
            }
            Step::Submit(sub) => {
                submitted.push(sub);
                s.committed(commit(submitted.len()));
            }
            Step::Close => {
                out.extend_from_slice(s.output());
                break true;
            }
        }
    };
    let text = String::from_utf8(out).unwrap();
    Transcript {
        lines: text.split_terminator("\r\n").map(str::to_owned).collect(),
        submitted,
        closed,
    }
}

fn run(input: &str) -> Transcript {
    run_with(
        Peer::Owner,
        Limits::default(),
        input.as_bytes(),
        4096,
        |n| Committed::Queued(format!("id{n}")),
    )
}

fn session_of(commands: &[&str]) -> String {
    let mut text: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
    text = text.replace("<MESSAGE>\r\n", &format!("{MESSAGE}.\r\n"));
    text
}

#[test]
fn a_whole_session_queues_the_message_for_the_senders_user() {
    let t = run(&session_of(&[
        "EHLO laptop",
        "MAIL FROM:<a@bob.example>",
        "RCPT TO:<c@d.example>",
        "DATA",
        "<MESSAGE>",
        "QUIT",
    ]));
    assert_eq!(
        t.codes(),
        [220, 250, 250, 250, 354, 250, 221],
        "{}",
        t.text()
    );
    assert!(
        t.text().contains("250 2.0.0 Ok: queued as id1"),
        "{}",
        t.text()
    );
    assert!(t.closed);
    let sub = &t.submitted[0];
    assert_eq!(sub.user, "bob");
    assert_eq!(sub.envelope.from, "a@bob.example");
    assert_eq!(sub.envelope.recipients, ["c@d.example"]);
    assert_eq!(sub.envelope.dsn, None);
    let text = String::from_utf8(sub.message.clone()).unwrap();
    assert!(text.contains("Subject: hi\r\n"), "{text}");
    assert!(
        text.contains("Message-ID: <"),
        "a Message-ID is added: {text}"
    );
    assert!(text.ends_with("\r\n\r\nHello.\r\n"), "{text}");
}

#[test]
fn ehlo_offers_what_desktop_clients_look_for() {
    let t = run("EHLO laptop\r\n");
    assert_eq!(
        t.lines[1..],
        [
            "250-test.host",
            "250-PIPELINING",
            "250-SIZE 26214400",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-ENHANCEDSTATUSCODES",
            "250-DSN",
            "250 AUTH PLAIN",
        ]
    );
}

#[test]
fn a_pipelined_session_in_any_pieces_gets_the_same_replies() {
    let input = session_of(&[
        "EHLO laptop",
        "MAIL FROM:<a@bob.example> SIZE=80 BODY=8BITMIME",
        "RCPT TO:<c@d.example>",
        "RCPT TO:<e@f.example>",
        "DATA",
        "<MESSAGE>",
        "MAIL FROM:<x@y.example>",
        "RCPT TO:<c@d.example>",
        "DATA",
        "<MESSAGE>",
        "QUIT",
    ]);
    for chunk in [1, 5, 13, 4096] {
        let t = run_with(
            Peer::Owner,
            Limits::default(),
            input.as_bytes(),
            chunk,
            |n| Committed::Queued(format!("id{n}")),
        );
        assert_eq!(
            t.codes(),
            [220, 250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221],
            "chunk {chunk}: {}",
            t.text()
        );
        assert_eq!(t.submitted.len(), 2);
        assert_eq!(t.submitted[1].user, "alice");
    }
}

#[test]
fn dsn_parameters_are_stored_with_the_envelope() {
    let t = run(&session_of(&[
        "EHLO laptop",
        "MAIL FROM:<a@bob.example> RET=HDRS ENVID=QQ+2B1",
        "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@d.example",
        "RCPT TO:<e@f.example>",
        "DATA",
        "<MESSAGE>",
    ]));
    assert_eq!(
        t.codes(),
        [220, 250, 250, 250, 250, 354, 250],
        "{}",
        t.text()
    );
    let dsn = t.submitted[0].envelope.dsn.clone().unwrap();
    assert_eq!(dsn.ret, Some(Ret::Hdrs));
    assert_eq!(dsn.envid.as_deref(), Some("QQ+1"));
    assert_eq!(dsn.recipients.len(), 1, "only the recipient that asked");
    assert_eq!(
        dsn.recipients[0].notify,
        Some(Notify {
            success: true,
            failure: true,
            delay: false
        })
    );
    assert_eq!(
        dsn.recipients[0].orcpt.as_ref().unwrap().addr,
        "c+x@d.example"
    );
    let params: Vec<String> = dsn
        .rcpt_params("c@d.example")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        params,
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;c+2Bx@d.example"]
    );
}

#[test]
fn each_bad_command_gets_the_reply_the_rfcs_give_it() {
    let hello = "EHLO laptop";
    let mail = "MAIL FROM:<a@bob.example>";
    let rcpt = "RCPT TO:<c@d.example>";
    let table: &[(&[&str], u16, &str)] = &[
        (&[mail], 503, "5.5.1 Send EHLO"),
        (&[hello, rcpt], 503, "5.5.1 Send MAIL"),
        (&[hello, "DATA"], 503, "5.5.1 Send MAIL"),
        (&[hello, mail, "DATA"], 554, "5.5.1 No valid recipients"),
        (
            &[hello, mail, mail],
            503,
            "5.5.1 A message is already started",
        ),
        (&[hello, "FOO"], 500, "5.5.2 Command not recognized"),
        (&[hello, "MAIL TO:<x@y>"], 501, "5.5.4 Syntax"),
        (
            &[hello, "MAIL FROM:<a@bob.example> FOO=1"],
            555,
            "5.5.4 MAIL parameter FOO",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> RET=ALL"],
            501,
            "5.5.4 RET=ALL",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> RET=FULL RET=HDRS"],
            555,
            "5.5.4",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> ENVID=a+zz"],
            501,
            "5.5.4 ENVID",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> BODY=BINARYMIME"],
            555,
            "5.5.4",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> SIZE=big"],
            501,
            "5.5.4 SIZE=big",
        ),
        (
            &[hello, "MAIL FROM:<a@bob.example> SIZE=99999999999"],
            552,
            "5.3.4",
        ),
        (&[hello, "MAIL FROM:<no-at-sign>"], 553, "5.1.7"),
        (&[hello, "MAIL FROM:<rené@bob.example>"], 553, "5.6.7"),
        (
            &[hello, "MAIL FROM:<stranger@nowhere.example>"],
            550,
            "5.7.1 no [[user]]",
        ),
        (&[hello, mail, "RCPT TO:<postmaster>"], 553, "5.1.3"),
        (&[hello, mail, "RCPT TO:<>"], 553, "5.1.3"),
        (
            &[hello, mail, "RCPT TO:<c@d.example> NOTIFY=NEVER,DELAY"],
            501,
            "5.5.4 NOTIFY",
        ),
        (
            &[hello, mail, "RCPT TO:<c@d.example> ORCPT=c@d.example"],
            501,
            "5.5.4 ORCPT",
        ),
        (
            &[hello, mail, "RCPT TO:<c@d.example> SIZE=1"],
            555,
            "5.5.4 RCPT parameter",
        ),
        (&[hello, "STARTTLS"], 502, "5.5.1 STARTTLS is not offered"),
        (&[hello, "BDAT 10 LAST"], 502, "5.5.1"),
        (&[hello, "EXPN list"], 502, "5.5.1"),
        (&[hello, "VRFY bob"], 252, "2.5.0"),
        (&[hello, "AUTH LOGIN"], 504, "5.5.4 Only AUTH PLAIN"),
        (&["HELO laptop", "AUTH PLAIN"], 503, "5.5.1 Send EHLO"),
        (&[hello, "AUTH PLAIN !!!!"], 501, "5.5.2 Cannot decode"),
        (&[hello, "RSET", "NOOP", "HELP"], 214, "2.0.0"),
    ];
    for (commands, code, text) in table {
        let t = run(&session_of(commands));
        let last = t.lines.last().unwrap();
        assert_eq!(t.codes().last(), Some(code), "{commands:?}: {}", t.text());
        assert!(last.contains(text), "{commands:?}: {last:?} lacks {text:?}");
        assert!(t.submitted.is_empty(), "{commands:?}");
    }
}

#[test]
fn a_message_with_bare_line_ends_or_nul_is_refused_and_the_session_goes_on() {
    for (data, code) in [
        ("Subject: x\r\n\r\nbare\nLF\r\n.\r\n", 550),
        ("Subject: x\r\n\r\nbare\rCR\r\n.\r\n", 550),
        (
            "Subject: x\r\n\r\nsmuggled\n.\r\nMAIL FROM:<x@y.example>\r\n.\r\n",
            550,
        ),
        ("Subject: x\r\n\r\nnul\0byte\r\n.\r\n", 554),
        ("no header section at all\r\n.\r\n", 554),
    ] {
        let input = format!(
            "EHLO laptop\r\nMAIL FROM:<a@bob.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n{data}NOOP\r\n"
        );
        let t = run(&input);
        assert_eq!(
            t.codes(),
            [220, 250, 250, 250, 354, code, 250],
            "{data:?}: {}",
            t.text()
        );
        assert!(t.submitted.is_empty(), "{data:?} was submitted");
    }
}

#[test]
fn a_message_over_the_limit_is_refused_with_552() {
    let limits = Limits {
        max_message_size: 100,
        ..Limits::default()
    };
    let body = "x".repeat(1000);
    let input = format!(
        "EHLO laptop\r\nMAIL FROM:<a@bob.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: big\r\n\r\n{body}\r\n.\r\nQUIT\r\n"
    );
    let t = run_with(Peer::Owner, limits, input.as_bytes(), 64, |_| {
        Committed::Queued("x".into())
    });
    assert_eq!(
        t.codes(),
        [220, 250, 250, 250, 354, 552, 221],
        "{}",
        t.text()
    );
    assert!(t.text().contains("250-SIZE 100"));
    assert!(
        t.text()
            .contains("552 5.3.4 Message size exceeds the limit of 100 bytes")
    );
    assert!(t.submitted.is_empty());
}

#[test]
fn a_full_disk_gets_452_and_an_error_451() {
    let input = session_of(&[
        "EHLO laptop",
        "MAIL FROM:<a@bob.example>",
        "RCPT TO:<c@d.example>",
        "DATA",
        "<MESSAGE>",
        "MAIL FROM:<a@bob.example>",
        "RCPT TO:<c@d.example>",
        "DATA",
        "<MESSAGE>",
    ]);
    let t = run_with(
        Peer::Owner,
        Limits::default(),
        input.as_bytes(),
        4096,
        |n| {
            if n == 1 {
                Committed::NoSpace
            } else {
                Committed::Failed("EIO\nbad".into())
            }
        },
    );
    assert_eq!(
        t.codes(),
        [220, 250, 250, 250, 354, 452, 250, 250, 354, 451],
        "{}",
        t.text()
    );
    assert!(t.text().contains("452 4.3.1 Insufficient system storage"));
    assert!(
        t.text().contains("(EIO bad)"),
        "a reason stays on one line: {}",
        t.text()
    );
}

#[test]
fn recipients_are_capped_and_duplicates_dropped() {
    let limits = Limits {
        max_recipients: 2,
        ..Limits::default()
    };
    let input = session_of(&[
        "EHLO laptop",
        "MAIL FROM:<a@bob.example>",
        "RCPT TO:<one@d.example>",
        "RCPT TO:<ONE@d.example>",
        "RCPT TO:<two@d.example>",
        "RCPT TO:<three@d.example>",
        "DATA",
        "<MESSAGE>",
    ]);
    let t = run_with(Peer::Owner, limits, input.as_bytes(), 4096, |_| {
        Committed::Queued("x".into())
    });
    assert_eq!(
        t.codes(),
        [220, 250, 250, 250, 250, 250, 452, 354, 250],
        "{}",
        t.text()
    );
    assert!(t.text().contains("452 4.5.3 Too many recipients"));
    assert_eq!(
        t.submitted[0].envelope.recipients,
        ["one@d.example", "two@d.example"]
    );
}

#[test]
fn smtputf8_lets_addresses_be_utf8() {
    let t = run(&session_of(&[
        "EHLO laptop",
        "MAIL FROM:<rené@bob.example> SMTPUTF8",
        "RCPT TO:<jürgen@d.example>",
        "DATA",
        "<MESSAGE>",
    ]));
    assert_eq!(t.codes(), [220, 250, 250, 250, 354, 250], "{}", t.text());
    assert_eq!(t.submitted[0].envelope.recipients, ["jürgen@d.example"]);
}

#[test]
fn an_overlong_command_line_is_dropped_as_it_comes_and_answered_once() {
    let limits = Limits {
        max_line: 64,
        ..Limits::default()
    };
    let input = format!("EHLO laptop\r\nNOOP {}\r\nNOOP\r\n", "x".repeat(100_000));
    let mut s = Session::new("h", limits, Peer::Owner);
    let mut most = 0;
    for piece in input.as_bytes().chunks(1000) {
        s.input(piece);
        assert!(matches!(s.next(&TestPolicy), Step::Read));
        most = most.max(s.buffered());
    }
    assert!(most < 4096, "the session held {most} bytes of one line");
    let text = String::from_utf8(s.output().to_vec()).unwrap();
    assert!(
        text.contains("500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"),
        "{text}"
    );
}

#[test]
fn junk_is_answered_until_too_many_errors_close_the_session() {
    let limits = Limits {
        max_errors: 3,
        ..Limits::default()
    };
    let input: &[u8] = b"EHLO x\r\nFOO\r\nBAR\0\r\n\xff\xfe\r\nNOOP\r\n";
    let t = run_with(Peer::Owner, limits, input, 4096, |_| {
        Committed::Queued("x".into())
    });
    assert_eq!(t.codes(), [220, 250, 500, 500, 500, 421], "{}", t.text());
    assert!(t.closed);
    assert!(t.text().contains("Bare CR or NUL"));
    assert!(t.text().contains("not UTF-8"));
}

#[test]
fn a_web_page_talking_through_the_browser_is_cut_off_at_its_first_line() {
    let input = "POST / HTTP/1.1\r\nHost: 127.0.0.1:2525\r\nContent-Type: text/plain\r\n\r\n\
                 EHLO x\r\nMAIL FROM:<a@bob.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n";
    let t = run(input);
    assert_eq!(t.codes(), [220, 421], "{}", t.text());
    assert!(t.closed);
}

#[test]
fn another_uid_gets_530_and_the_session_ends() {
    let peer = Peer::Other {
        uid: 65534,
        owner: 1000,
    };
    let t = run_with(
        peer,
        Limits::default(),
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n",
        4096,
        |_| Committed::Queued("x".into()),
    );
    assert_eq!(t.codes(), [220, 530], "{}", t.text());
    assert!(
        t.text()
            .contains("530 5.7.0 This linkrelay serves uid 1000 only; you are uid 65534")
    );
    assert!(t.closed);
}

#[test]
fn an_unknown_peer_must_authenticate_with_the_token() {
    let run_as_unknown = |input: &str| {
        run_with(
            Peer::Unknown,
            Limits::default(),
            input.as_bytes(),
            4096,
            |_| Committed::Queued("x".into()),
        )
    };
    // base64("\0me\0s3cret") and base64("\0me\0wrong")
    let good = "AG1lAHMzY3JldA==";
    let bad = "AG1lAHdyb25n";
    let t = run_as_unknown("EHLO x\r\nMAIL FROM:<a@bob.example>\r\n");
    assert_eq!(t.codes(), [220, 250, 530], "{}", t.text());
    let t = run_as_unknown(&format!(
        "EHLO x\r\nAUTH PLAIN {bad}\r\nMAIL FROM:<a@bob.example>\r\n"
    ));
    assert_eq!(t.codes(), [220, 250, 535, 530], "{}", t.text());
    let t = run_as_unknown(&format!(
        "EHLO x\r\nAUTH PLAIN {good}\r\nMAIL FROM:<a@bob.example>\r\nAUTH PLAIN {good}\r\n"
    ));
    assert_eq!(t.codes(), [220, 250, 235, 250, 503], "{}", t.text());
    // Without an initial response, the next line is the response; * cancels.
    let t = run_as_unknown(&format!(
        "EHLO x\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n{good}\r\n"
    ));
    assert_eq!(t.codes(), [220, 250, 334, 501, 334, 235], "{}", t.text());
}

#[test]
fn the_owner_may_log_in_with_any_password() {
    let t = run("EHLO x\r\nAUTH PLAIN AG1lAHdyb25n\r\nMAIL FROM:<a@bob.example>\r\n");
    assert_eq!(t.codes(), [220, 250, 235, 250], "{}", t.text());
}

#[test]
fn a_client_that_leaves_mid_data_submits_nothing() {
    let input = "EHLO x\r\nMAIL FROM:<a@bob.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: half\r\n\r\nand th";
    let mut s = Session::new("h", Limits::default(), Peer::Owner);
    s.input(input.as_bytes());
    assert!(matches!(s.next(&TestPolicy), Step::Read));
    assert!(s.in_data());
    s.end_of_input();
    assert!(matches!(s.next(&TestPolicy), Step::Close));
}

#[test]
fn a_timeout_says_421_and_ends_the_session() {
    let mut s = Session::new("h", Limits::default(), Peer::Owner);
    s.clear_output();
    s.timed_out();
    assert_eq!(s.output(), b"421 4.4.2 h Timeout exceeded; closing\r\n");
    assert!(matches!(s.next(&TestPolicy), Step::Close));
}

#[test]
fn commands_may_end_with_a_bare_lf() {
    let t = run("EHLO x\nNOOP\nQUIT\n");
    assert_eq!(t.codes(), [220, 250, 250, 221], "{}", t.text());
}

#[test]
fn base64_decodes_what_clients_send_and_refuses_the_rest() {
    assert_eq!(
        session::base64_decode("AG1lAHMzY3JldA==").unwrap(),
        b"\0me\0s3cret"
    );
    assert_eq!(session::base64_decode("YQ==").unwrap(), b"a");
    assert_eq!(session::base64_decode("YWI=").unwrap(), b"ab");
    assert_eq!(session::base64_decode("YWJj").unwrap(), b"abc");
    for bad in ["YQ=", "Y===", "YQ==YQ==", "Y!Jj", "YWJ"] {
        assert!(session::base64_decode(bad).is_none(), "{bad:?}");
    }
}
