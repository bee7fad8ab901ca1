//! Reading the config file: never blocking, never by the size a file claims, and invalid
//! UTF-8 reported where it is.
//!
//! The agent reloads on SIGHUP from its event loop: an `open` that waits (a FIFO with no
//! writer) would leave D-Bus and SIGTERM unanswered, and a read by the size `fstat` gives (a
//! sparse file of 64 GiB) would abort it. So the file is opened without blocking, must be a
//! regular file, and at most [`MAX_CONFIG_SIZE`] bytes are read.

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use crate::diag::{ConfigError, Diagnostic, Diagnostics, line_col};

/// The largest config file read: far more than any real one (the starter is 5 KiB).
pub const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// The text of the config file at `path`.
pub(crate) fn config_text(path: &Path) -> Result<String, ConfigError> {
    let io_error = |source: io::Error| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = regular_file_bytes(path).map_err(io_error)?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        // Everything before the bad byte is text: that is where the position is counted.
        let before = String::from_utf8_lossy(&bytes[..valid]);
        let (line, col) = line_col(&before, valid);
        ConfigError::Invalid(Diagnostics(vec![Diagnostic {
            path: path.to_path_buf(),
            line,
            col,
            message: format!("the file is not valid UTF-8 (byte 0x{:02x})", bytes[valid]),
            help: Some("save the file as UTF-8".into()),
        }]))
    })
}

/// The bytes of the regular file at `path`, opened without blocking; refuses anything else
/// and anything larger than [`MAX_CONFIG_SIZE`].
fn regular_file_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", describe(kind)),
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > MAX_CONFIG_SIZE {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn too_large(size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("it is {size} bytes, larger than the {MAX_CONFIG_SIZE} bytes a config may have"),
    )
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "a FIFO",
        FileType::Directory => "a directory",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "it",
    }
}
