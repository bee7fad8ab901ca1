//! Delivery.
pub mod backoff;
pub mod dropwatch;
pub mod flusher;
pub mod memory;
pub mod outcome;
pub mod password;
pub mod plaintext;
pub mod secrets;
pub mod smtp;
pub mod tls_hint;
