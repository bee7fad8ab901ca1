//! Printing that never panics: `println!` and `eprintln!` panic when the stream is a pipe
//! whose reader is gone (EPIPE), and the process then exits 101. For `sendmail` that is
//! worse than noise: a message already queued would look failed, and the client may send
//! it again. What cannot be written is dropped; the exit code says what happened.

use std::fmt::Display;
use std::io::Write;

/// Writes `text` and a newline to stderr, ignoring errors.
pub fn err(text: impl Display) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Writes `text` and a newline to stdout, ignoring errors.
pub fn out(text: impl Display) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// `println!` that never panics (see the module).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::say::out(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (see the module).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::say::err(format_args!($($arg)*))
    };
}
