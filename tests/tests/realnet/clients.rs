//! Real mail clients on linkrelay's sendmail entry (the `linkrelay` binary called as
//! `sendmail`): what each one hands over must reach the ISP's Postfix intact: headers, 8-bit
//! body, attachments; and a `Bcc:` must not reach the wire.

use std::path::Path;

use linkrelay_tests::postfix::Delivered;
use linkrelay_tests::run::run_with_input;
use linkrelay_tests::twoisp::{HOST_A, TwoIsp};
use mailparse::{MailHeaderMap, ParsedMail};

use crate::{eventually, on_isp_a, postfix_idle};

const BODY: &str = "Grüße aus dem Netz — ein 8-bit Text.\nZeile zwei: ÄÖÜ äöü ß €, 日本語.\n";

/// Bytes 0..=255 several times, so that every byte value must survive base64.
fn attachment() -> Vec<u8> {
    (0..2000u32).map(|i| (i * 7 % 256) as u8).collect()
}

/// Waits for the only message this test sends to leave Postfix, and returns it.
async fn the_one_delivered(t: &TwoIsp) -> Delivered {
    eventually("a message left Postfix", || {
        !t.relays.delivered().is_empty()
    })
    .await;
    eventually("sent/ has it", || {
        t.world.outbox_entries("me", "sent").len() == 1
    })
    .await;
    postfix_idle(t).await;
    let all = t.relays.delivered();
    assert_eq!(all.len(), 1, "exactly one message: {all:#?}");
    let d = all.into_iter().next().expect("one");
    assert_eq!(d.relay(), HOST_A);
    d
}

fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(*b);
    }
    out
}

/// What the relay got is byte for byte what sendmail queued (line ends aside: SMTP's CRLF,
/// smtp-sink's LF).
fn assert_transported_unchanged(t: &TwoIsp, d: &Delivered) {
    let sent = t.world.outbox_entries("me", "sent");
    let queued = std::fs::read(
        t.world
            .data_dir
            .join("me/sent")
            .join(&sent[0])
            .join("message.eml"),
    )
    .expect("the queued message");
    assert!(
        crlf_to_lf(&queued) == crlf_to_lf(d.as_sent()),
        "the relay got something else than what was queued:\n--- queued ---\n{}\n--- relay ---\n{}",
        String::from_utf8_lossy(&queued),
        String::from_utf8_lossy(d.as_sent())
    );
}

fn parse(d: &Delivered) -> ParsedMail<'_> {
    mailparse::parse_mail(d.as_sent()).expect("the relay got a parseable message")
}

fn header(m: &ParsedMail<'_>, name: &str) -> String {
    m.headers.get_first_value(name).unwrap_or_default()
}

/// The text part and the attachment of a multipart message, with the checks every client's
/// message must pass: the body as written, sent as 8-bit; the attachment byte for byte.
fn assert_text_and_attachment(m: &ParsedMail<'_>, raw: &[u8], filename: &str) {
    assert_eq!(m.ctype.mimetype, "multipart/mixed");
    let text = m
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/plain")
        .expect("a text part");
    assert_eq!(text.get_body().expect("text").trim_end(), BODY.trim_end());
    assert!(
        header(text, "Content-Transfer-Encoding").eq_ignore_ascii_case("8bit"),
        "the body went as 8-bit"
    );
    assert!(
        String::from_utf8_lossy(raw).contains("Grüße aus dem Netz"),
        "8-bit bytes reached the relay as they were"
    );
    let att = m
        .subparts
        .iter()
        .find(|p| {
            p.get_content_disposition()
                .params
                .get("filename")
                .is_some_and(|f| f == filename)
        })
        .expect("the attachment");
    assert_eq!(att.get_body_raw().expect("attachment bytes"), attachment());
}

fn write_attachment(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("messwerte.bin");
    std::fs::write(&path, attachment()).expect("attachment");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_nail_mail_s_with_an_attachment() {
    let t = on_isp_a().await;
    let file = write_attachment(t.dir());
    let mut cmd = t.user_command("s-nail");
    cmd.env("MAILRC", "/dev/null")
        .arg("-n")
        .arg("-S")
        .arg(format!("mta={}", t.sendmail_path().display()))
        .args(["-S", "mime-encoding=8bit"])
        .args(["-S", "ttycharset=utf-8", "-S", "sendcharsets=utf-8"])
        .args(["-r", "Bob Beispiel <bob@bob.example>"])
        .args(["-s", "Grüße von s-nail"])
        .arg("-a")
        .arg(&file)
        .arg("carol@dest.example");
    run_with_input(&mut cmd, BODY.as_bytes()).unwrap();

    let d = the_one_delivered(&t).await;
    assert_eq!(d.mail_from, "bob@bob.example");
    assert_eq!(d.rcpts, ["carol@dest.example"]);
    let m = parse(&d);
    assert_eq!(header(&m, "Subject"), "Grüße von s-nail");
    assert_eq!(header(&m, "From"), "Bob Beispiel <bob@bob.example>");
    assert_eq!(header(&m, "To"), "carol@dest.example");
    assert!(header(&m, "User-Agent").starts_with("s-nail"));
    assert_text_and_attachment(&m, d.as_sent(), "messwerte.bin");
    assert_transported_unchanged(&t, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neomutt_in_batch_mode_with_an_attachment() {
    let t = on_isp_a().await;
    let file = write_attachment(t.dir());
    let muttrc = t.dir().join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set sendmail=\"{} -oem -oi\"
set from=\"Bob Beispiel <bob@bob.example>\"
set use_from=yes
set envelope_from=yes
set charset=\"utf-8\"
set send_charset=\"utf-8\"
set allow_8bit=yes
set record=\"\"
set folder=\"{}\"
",
            t.sendmail_path().display(),
            t.dir().display()
        ),
    )
    .unwrap();
    let mut cmd = t.user_command("neomutt");
    cmd.arg("-n")
        .arg("-F")
        .arg(&muttrc)
        .args(["-s", "Grüße von neomutt"])
        .arg("-a")
        .arg(&file)
        .args(["--", "carol@dest.example"]);
    run_with_input(&mut cmd, BODY.as_bytes()).unwrap();

    let d = the_one_delivered(&t).await;
    assert_eq!(d.mail_from, "bob@bob.example");
    assert_eq!(d.rcpts, ["carol@dest.example"]);
    let m = parse(&d);
    assert_eq!(header(&m, "Subject"), "Grüße von neomutt");
    assert_eq!(header(&m, "From"), "Bob Beispiel <bob@bob.example>");
    assert_text_and_attachment(&m, d.as_sent(), "messwerte.bin");
    assert_transported_unchanged(&t, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_send_email_with_sendmail_cmd() {
    let t = on_isp_a().await;
    let repo = t.dir().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut cmd = t.user_command("git");
        cmd.current_dir(&repo)
            .args([
                "-c",
                "user.name=Bob Beispiel",
                "-c",
                "user.email=bob@bob.example",
            ])
            .args(args);
        run_with_input(&mut cmd, b"").unwrap()
    };
    git(&["init", "-q", "."]);
    std::fs::write(
        repo.join("GRUSS.txt"),
        "Grüße aus git — ÄÖÜ ß\n.\n..leading dots\n",
    )
    .unwrap();
    git(&["add", "GRUSS.txt"]);
    git(&[
        "commit",
        "-q",
        "-m",
        "Grüße: add a greeting\n\nWith a body line: café.",
    ]);
    git(&["format-patch", "-q", "-1", "-o", "out"]);
    let patch_name = std::fs::read_dir(repo.join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .expect("a patch");
    git(&[
        "send-email",
        &format!("--sendmail-cmd={}", t.sendmail_path().display()),
        "--from=Bob Beispiel <bob@bob.example>",
        "--to=carol@dest.example",
        "--suppress-cc=all",
        "--confirm=never",
        "--no-chain-reply-to",
        &patch_name.display().to_string(),
    ]);

    let d = the_one_delivered(&t).await;
    assert_eq!(d.mail_from, "bob@bob.example");
    assert_eq!(d.rcpts, ["carol@dest.example"]);
    let m = parse(&d);
    assert_eq!(header(&m, "Subject"), "[PATCH] Grüße: add a greeting");
    assert_eq!(header(&m, "From"), "Bob Beispiel <bob@bob.example>");
    assert!(header(&m, "X-Mailer").starts_with("git-send-email"));
    // The patch body (after its headers) arrives exactly as format-patch wrote it: a patch
    // that does not apply is worse than no patch.
    let patch = std::fs::read(&patch_name).unwrap();
    let patch_body = split_body(&patch);
    let got_body = split_body(d.as_sent());
    assert!(
        crlf_to_lf(got_body) == crlf_to_lf(patch_body),
        "the patch changed on the way:\n--- format-patch ---\n{}\n--- relay ---\n{}",
        String::from_utf8_lossy(patch_body),
        String::from_utf8_lossy(got_body)
    );
    assert!(
        String::from_utf8_lossy(got_body).contains("+Grüße aus git — ÄÖÜ ß\n+.\n+..leading dots")
    );
    assert_transported_unchanged(&t, &d);
}

fn split_body(message: &[u8]) -> &[u8] {
    let lf = message.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => &message[a.min(b)..],
        (Some(a), None) | (None, Some(a)) => &message[a..],
        (None, None) => &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_style_sendmail_t_keeps_bcc_off_the_wire() {
    let t = on_isp_a().await;
    let message = "From: Cron Daemon <root@laptop.example>\n\
To: carol@dest.example\n\
Cc: Dave <dave@dest.example>\n\
Bcc: audit@hidden.example\n\
Subject: Cron <root@laptop> /usr/local/bin/sicherung\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=UTF-8\n\
Content-Transfer-Encoding: 8bit\n\
X-Cron-Env: <SHELL=/bin/sh>\n\
\n\
Sicherung fertig: 3 Dateien, 0 Fehler ✓\n\
.\n\
a line with a single dot above, and this one stays too\n";
    // How cronie calls it (MAILCMD): sendmail -FCronDaemon -i -odi -oem -oi -t -f USER.
    let mut cmd = t.user_command("sendmail");
    cmd.args(["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t"])
        .args(["-f", "root@laptop.example"]);
    run_with_input(&mut cmd, message.as_bytes()).unwrap();

    let d = the_one_delivered(&t).await;
    assert_eq!(d.mail_from, "root@laptop.example");
    let mut rcpts = d.rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "audit@hidden.example",
            "carol@dest.example",
            "dave@dest.example"
        ],
        "Bcc recipients are in the envelope"
    );
    let text = d.text();
    assert!(
        !text.to_ascii_lowercase().contains("bcc:") && !text.contains("audit@hidden.example"),
        "Bcc must not reach the wire:\n{text}"
    );
    let m = parse(&d);
    assert_eq!(
        header(&m, "Subject"),
        "Cron <root@laptop> /usr/local/bin/sicherung"
    );
    assert_eq!(header(&m, "Cc"), "Dave <dave@dest.example>");
    assert_eq!(header(&m, "X-Cron-Env"), "<SHELL=/bin/sh>");
    assert_eq!(
        m.get_body().unwrap().replace("\r\n", "\n"),
        "Sicherung fertig: 3 Dateien, 0 Fehler ✓\n.\na line with a single dot above, and this one stays too\n"
    );
    assert_transported_unchanged(&t, &d);
}
