//! `linkrelay queue`: reads the agent's streamed listing (`StreamQueue`: JSON lines in a pipe)
//! and prints each message as it comes, so a queue of 100,000 messages is never whole in
//! memory on either side. The output is the same as from one `ListQueue` reply, which is
//! still used with an agent that does not know `StreamQueue`.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::OwnedFd;

use anyhow::anyhow;
use linkrelay_dbus::agent::{AgentProxy, MessageInfo, QueueLine};
use serde::Serialize;
use serde::ser::{Error as _, SerializeSeq, Serializer};

use crate::output;

/// Longest line accepted from the agent: a message with a great many recipients fits.
const MAX_LINE: u64 = 16 << 20;
/// Output buffer: stdout is line-buffered, one write per line would dominate.
const OUT_BUF: usize = 256 * 1024;

/// Prints the queue of `user` ("" = every user), as JSON or text.
pub async fn print(agent: &AgentProxy<'_>, user: &str, json: bool) -> anyhow::Result<()> {
    let fd = match agent.stream_queue(user).await {
        Ok(fd) => OwnedFd::from(fd),
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod" =>
        {
            // An agent from before StreamQueue.
            let list = agent.list_queue(user).await.map_err(crate::dbus_error)?;
            return print_all(&list, json);
        }
        Err(e) => return Err(crate::dbus_error(e)),
    };
    // Plain blocking reads: this process has nothing else to do meanwhile, and the bus
    // connection is not needed any more.
    let listing = Listing::new(File::from(fd));
    let mut out = BufWriter::with_capacity(OUT_BUF, std::io::stdout().lock());
    if json {
        write_json(&mut out, listing)?;
        out.write_all(b"\n")?;
    } else {
        let mut any = false;
        let mut text = String::new();
        for m in listing {
            let m = m?;
            any = true;
            text.clear();
            output::render_message(&mut text, &m);
            out.write_all(text.as_bytes())?;
        }
        if !any {
            out.write_all(output::EMPTY_QUEUE.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_all(list: &[MessageInfo], json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&output::queue_json(list))?
        );
    } else {
        print!("{}", output::render_queue(list));
    }
    Ok(())
}

/// Writes the listing as the pretty JSON array `queue_json` gives, element by element.
fn write_json(
    out: &mut impl Write,
    listing: impl Iterator<Item = anyhow::Result<MessageInfo>>,
) -> anyhow::Result<()> {
    let failure = RefCell::new(None);
    let array = JsonArray {
        items: RefCell::new(Some(listing)),
        failure: &failure,
    };
    let mut ser = serde_json::Serializer::pretty(out);
    match array.serialize(&mut ser) {
        Ok(()) => Ok(()),
        Err(e) => Err(failure.take().unwrap_or_else(|| anyhow!(e))),
    }
}

/// A JSON array serialised from an iterator as it yields (serde_json has no streaming
/// writer for arrays); an error of the iterator stops it and is kept in `failure`.
struct JsonArray<'a, I> {
    items: RefCell<Option<I>>,
    failure: &'a RefCell<Option<anyhow::Error>>,
}

impl<I: Iterator<Item = anyhow::Result<MessageInfo>>> Serialize for JsonArray<'_, I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(items) = self.items.borrow_mut().take() else {
            return Err(S::Error::custom("the listing was already written"));
        };
        let mut seq = serializer.serialize_seq(None)?;
        for m in items {
            match m {
                Ok(m) => seq.serialize_element(&output::MessageJson::from(&m))?,
                Err(e) => {
                    let text = e.to_string();
                    *self.failure.borrow_mut() = Some(e);
                    return Err(S::Error::custom(text));
                }
            }
        }
        seq.end()
    }
}

/// The messages of a `StreamQueue` pipe; an error for an error line, a bad line, or a stream
/// that ends without its end line (the agent stopped).
pub struct Listing<R> {
    reader: BufReader<R>,
    count: u64,
    done: bool,
}

impl<R: Read> Listing<R> {
    /// Reads the listing from `reader`.
    pub fn new(reader: R) -> Self {
        Listing {
            reader: BufReader::with_capacity(256 * 1024, reader),
            count: 0,
            done: false,
        }
    }

    fn fail(&mut self, e: anyhow::Error) -> Option<anyhow::Result<MessageInfo>> {
        self.done = true;
        Some(Err(e))
    }
}

impl<R: Read> Iterator for Listing<R> {
    type Item = anyhow::Result<MessageInfo>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        match (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
        {
            Err(e) => return self.fail(anyhow!("reading the listing from the agent: {e}")),
            Ok(0) => {
                return self.fail(anyhow!(
                    "the agent stopped before the listing was complete ({} messages read)",
                    self.count
                ));
            }
            Ok(_) if !line.ends_with(b"\n") => {
                return self.fail(anyhow!(
                    "the listing from the agent was cut short or has a line over {MAX_LINE} bytes"
                ));
            }
            Ok(_) => {}
        }
        match serde_json::from_slice::<QueueLine>(&line) {
            Ok(QueueLine::Message(m)) => {
                self.count += 1;
                Some(Ok(m))
            }
            Ok(QueueLine::End { count }) if count == self.count => {
                self.done = true;
                None
            }
            Ok(QueueLine::End { count }) => self.fail(anyhow!(
                "the agent listed {count} messages but {} arrived",
                self.count
            )),
            Ok(QueueLine::Error { name, message }) => {
                let short = name.rsplit('.').next().unwrap_or(&name).to_string();
                self.fail(anyhow!("{message} ({short})"))
            }
            Err(e) => self.fail(anyhow!(
                "an unreadable line in the listing from the agent: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkrelay_dbus::agent::RecipientInfo;

    fn msg(id: &str) -> MessageInfo {
        MessageInfo {
            id: id.into(),
            user: "bob".into(),
            folder: "queue".into(),
            from: "bob@example.org".into(),
            recipients: vec![RecipientInfo {
                addr: "x@dest.example".into(),
                state: "pending".into(),
                reply: String::new(),
            }],
            size: 4096,
            queued_at: 1_700_000_000,
            attempts: 0,
            next_attempt: 0,
            last_relay: String::new(),
            last_error: "a \"quoted\"\nline".into(),
            status: "held: no link".into(),
        }
    }

    fn stream(lines: &[QueueLine]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut out, l).unwrap();
            out.push(b'\n');
        }
        out
    }

    fn json_of(bytes: &[u8]) -> anyhow::Result<String> {
        let mut out = Vec::new();
        write_json(&mut out, Listing::new(bytes))?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn streamed_json_is_byte_for_byte_the_json_of_one_reply() {
        for n in [0, 1, 3] {
            let list: Vec<MessageInfo> = (0..n).map(|i| msg(&format!("1.{i}"))).collect();
            let mut lines: Vec<QueueLine> = list.iter().cloned().map(QueueLine::Message).collect();
            lines.push(QueueLine::End { count: n as u64 });
            let whole = serde_json::to_string_pretty(&output::queue_json(&list)).unwrap();
            assert_eq!(json_of(&stream(&lines)).unwrap(), whole, "{n} messages");
        }
    }

    #[test]
    fn an_error_line_a_cut_stream_and_a_wrong_count_are_errors() {
        let err = stream(&[
            QueueLine::Message(msg("1.1")),
            QueueLine::Error {
                name: "org.linkrelay.Agent1.Error.Io".into(),
                message: "reading queue/: EIO".into(),
            },
        ]);
        let e = json_of(&err).unwrap_err().to_string();
        assert_eq!(e, "reading queue/: EIO (Io)");

        let cut = stream(&[QueueLine::Message(msg("1.1"))]);
        let e = json_of(&cut).unwrap_err().to_string();
        assert!(e.contains("stopped before the listing was complete"), "{e}");
        let e = json_of(&cut[..cut.len() - 5]).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");

        let wrong = stream(&[QueueLine::Message(msg("1.1")), QueueLine::End { count: 2 }]);
        let e = json_of(&wrong).unwrap_err().to_string();
        assert!(e.contains("listed 2 messages but 1 arrived"), "{e}");

        let e = json_of(b"not json\n").unwrap_err().to_string();
        assert!(e.contains("unreadable line"), "{e}");
    }
}
