//! Keeping a copy of an image up to date over SSH (`diskdelta sync`).
//!
//! - [`frame`]: the byte framing of the protocol.
//! - [`message`]: the protocol's messages.

pub mod frame;
pub mod message;
