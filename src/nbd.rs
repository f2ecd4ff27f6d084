//! The Network Block Device protocol, both sides.
//!
//! - [`proto`]: constants and message encodings shared by both sides.
//!
//! The server (`diskdelta nbd`: snapshots as exports) and the client (NBD
//! sources: `nbd://` and `nbd+unix://` URIs, qemu-nbd for qcow2, qemu dirty
//! bitmaps) are built on it.

pub mod client;
pub mod convert;
pub mod proto;
pub mod qemu;
pub mod server;
pub mod source;
