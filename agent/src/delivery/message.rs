//! A queued message as a session sends it. A small one is read whole, in one read; a larger one
//! stays in its file and is read a piece at a time as it goes out, so that a 100 MB message
//! costs the agent a few pieces of it, not its size (it once cost twice its size).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// How much of a message is read (and then written) at a time; messages up to this size are
/// read whole.
pub const PIECE: usize = 64 * 1024;

/// A message's bytes, ready to be sent.
#[derive(Debug)]
pub struct Message {
    body: Body,
    /// The size of the message.
    size: u64,
    /// The size of its data: the message without its final line end, which is the one
    /// before the data's closing dot (see [`data_len`]).
    data_len: u64,
    /// Whether a byte is outside ASCII (BODY=8BITMIME).
    eight_bit: bool,
}

#[derive(Debug)]
enum Body {
    Memory(Vec<u8>),
    File(Arc<File>),
}

/// How much of a message of `size` bytes ending with `tail` (its last two bytes, or fewer) is
/// data: the message ends with CR LF, and the data's end (`CR LF . CR LF`) brings its own. Sent
/// whole, every message would reach the relay with an empty line added (a patch, a signed part,
/// changed).
pub fn data_len(size: u64, tail: &[u8]) -> u64 {
    if tail.ends_with(b"\r\n") {
        size - 2
    } else if tail.ends_with(b"\n") {
        size - 1
    } else {
        size
    }
}

impl Message {
    /// A message already in memory.
    pub fn in_memory(bytes: Vec<u8>) -> Message {
        let size = bytes.len() as u64;
        let tail = &bytes[bytes.len().saturating_sub(2)..];
        Message {
            data_len: data_len(size, tail),
            size,
            eight_bit: !bytes.is_ascii(),
            body: Body::Memory(bytes),
        }
    }

    /// Takes the message in `file`: a small one is read now; a larger one is looked through
    /// once for 8-bit bytes (on tokio's blocking pool: a big file must not hold up the
    /// runtime's thread) and read again as it is sent.
    pub async fn open(mut file: File) -> io::Result<Message> {
        let size = file.metadata()?.len();
        if size <= PIECE as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut file).take(PIECE as u64).read_to_end(&mut bytes)?;
            return Ok(Message::in_memory(bytes));
        }
        tokio::task::spawn_blocking(move || scan(file, size)).await?
    }

    /// The message's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes of it are sent as data (all but its final line end).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Whether it has bytes outside ASCII.
    pub fn is_8bit(&self) -> bool {
        self.eight_bit
    }

    /// The piece of the data at `offset`: at most [`PIECE`] bytes, read into `buf` when the
    /// message is in its file; empty at the end.
    pub async fn piece<'a>(&'a self, offset: u64, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        let len = (self.data_len.saturating_sub(offset)).min(PIECE as u64) as usize;
        match &self.body {
            Body::Memory(bytes) => {
                let start = (offset as usize).min(bytes.len());
                Ok(&bytes[start..start + len.min(bytes.len() - start)])
            }
            Body::File(file) => {
                let file = file.clone();
                let mut piece = std::mem::take(buf);
                piece.resize(len, 0);
                *buf = tokio::task::spawn_blocking(move || {
                    file.read_exact_at(&mut piece, offset).map(|()| piece)
                })
                .await??;
                Ok(&buf[..])
            }
        }
    }
}

/// A larger message left in its file: its size, 8-bit or not, and how it ends.
fn scan(file: File, size: u64) -> io::Result<Message> {
    let mut buf = vec![0; PIECE];
    let mut offset = 0;
    let mut eight_bit = false;
    let mut tail = Vec::with_capacity(2);
    while offset < size {
        let n = (size - offset).min(PIECE as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        eight_bit = eight_bit || !buf[..n].is_ascii();
        offset += n as u64;
        if offset == size {
            tail.extend_from_slice(&buf[n.saturating_sub(2)..n]);
        }
    }
    Ok(Message {
        data_len: data_len(size, &tail),
        size,
        eight_bit,
        body: Body::File(Arc::new(file)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All the data of `m`, piece by piece, and the largest piece.
    async fn data(m: &Message) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut largest = 0;
        loop {
            let piece = m.piece(out.len() as u64, &mut buf).await.unwrap();
            if piece.is_empty() {
                return (out, largest);
            }
            largest = largest.max(piece.len());
            out.extend_from_slice(piece);
        }
    }

    #[test]
    fn the_final_line_end_is_left_to_the_data_terminator() {
        assert_eq!(data_len(6, b"\r\n"), 4);
        assert_eq!(data_len(4, b"b\n"), 3);
        assert_eq!(data_len(6, b"nd"), 6);
        assert_eq!(data_len(1, b"\n"), 0);
        assert_eq!(data_len(0, b""), 0);
    }

    #[tokio::test]
    async fn a_message_in_its_file_reads_as_the_same_data_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        for (size, eight_bit) in [
            (10, false),
            (PIECE, true),
            (PIECE * 3 + 7, false),
            (PIECE * 2 + 1, true),
        ] {
            let mut bytes: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            if eight_bit {
                bytes[size / 2] = 0xC3;
            }
            bytes.extend_from_slice(b"\r\n");
            let path = dir.path().join(format!("m{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let m = Message::open(File::open(&path).unwrap()).await.unwrap();
            assert_eq!(m.size(), bytes.len() as u64);
            assert_eq!(m.is_8bit(), eight_bit, "{size}");
            let (got, largest) = data(&m).await;
            assert_eq!(got, &bytes[..bytes.len() - 2], "{size}");
            assert!(largest <= PIECE);
            let in_memory = Message::in_memory(bytes.clone());
            assert_eq!(data(&in_memory).await.0, got);
        }
    }
}
