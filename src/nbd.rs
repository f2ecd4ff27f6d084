//! The Network Block Device protocol, both sides.
//!
//! - [`proto`]: constants and message encodings shared by both sides.
//! - [`client`]: the client (handshake, checked replies, pipelined reads,
//!   block status) and NBD URIs; [`source`]: an export as a backup source;
//!   [`qemu`]: `qemu-img info` and the private `qemu-nbd`; [`convert`]:
//!   restoring into qcow2 and other image formats.
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
