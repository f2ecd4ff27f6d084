//! The serving end of a session: the handshake, then the first request
//! handed to a router that knows the services (`crate::service`).
//! Whatever error ends the session also goes to the peer as one `Error`
//! message.

use crossbeam_channel::{Receiver, Sender};

use super::message::{Message, VERSION};
use super::{error_chain, RemoteError, WireError};

/// Serves one session over `requests` and `replies`: answers `Hello`,
/// then calls `route` with the session's first request. A peer that
/// closes before its first request ends the session cleanly.
///
/// # Errors
/// A version mismatch, or whatever `route` returns.
pub fn serve<E: WireError + From<RemoteError>>(
    requests: Receiver<Message>,
    replies: Sender<Message>,
    route: impl FnOnce(Message, &Receiver<Message>, &Sender<Message>) -> Result<(), E>,
) -> Result<(), E> {
    let result = (|| {
        match requests.recv() {
            Ok(Message::Hello { version }) => {
                send(&replies, Message::Hello { version: VERSION })?;
                if version != VERSION {
                    return Err(RemoteError::Version {
                        ours: VERSION,
                        theirs: version,
                    }
                    .into());
                }
            }
            Ok(other) => return Err(RemoteError::unexpected(other.name(), "Hello").into()),
            Err(_) => return Ok(()),
        }
        match requests.recv() {
            Ok(first) => route(first, &requests, &replies),
            Err(_) => Ok(()),
        }
    })();
    if let Err(e) = &result {
        let _ = replies.send(Message::Error {
            code: e.code() as u32,
            message: error_chain(e),
        });
    }
    result
}

/// Sends a reply; a closed reply stream means the peer is gone.
///
/// # Errors
/// [`RemoteError::Disconnected`].
pub fn send(replies: &Sender<Message>, m: Message) -> Result<(), RemoteError> {
    replies.send(m).map_err(|_| RemoteError::Disconnected {
        peer: "client".into(),
    })
}
