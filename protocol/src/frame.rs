//! Frames: a fixed 16-byte header and a bincode payload.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SKF1"
//! 4       2     protocol version (little-endian)
//! 6       2     message kind (little-endian, see message::Kind)
//! 8       8     request id (little-endian)
//! 16      ...   bincode 2 (standard config) encoding of the Message
//! ```
//! A frame is at most [`MAX_FRAME`] bytes. Decoding is a pure function of the
//! bytes and never panics: every way a frame can be wrong is a [`FrameError`].
//! Receivers decode at once and never keep raw buffers (ipc-channel hands out
//! ~212 KB buffers even for tiny frames).

use thiserror::Error;

use crate::message::{Kind, Message, RequestId};

/// "SKF1".
pub const MAGIC: [u8; 4] = *b"SKF1";
/// Bumped on any incompatible change to the header or the messages.
pub const PROTOCOL_VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest frame accepted or produced.
pub const MAX_FRAME: usize = 64 * 1024;

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Shorter than a header.
    #[error("truncated frame: {len} bytes, a header alone is {HEADER_LEN}")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not a shmkline frame.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A protocol version this build does not speak.
    #[error(
        "unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION}): run coordinator and workers from the same build"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// An unknown message kind.
    #[error("unknown message kind {found}")]
    UnknownKind {
        /// The kind code found.
        found: u16,
    },
    /// The payload decodes to another kind than the header says.
    #[error("frame header says {header:?} but the payload is {payload:?}")]
    KindMismatch {
        /// Kind in the header.
        header: Kind,
        /// Kind of the payload.
        payload: Kind,
    },
    /// The payload is not a valid encoding.
    #[error("undecodable payload: {0}")]
    Payload(String),
    /// Bytes left over after the payload.
    #[error("{0} unexpected bytes after the payload")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes `message` as the frame for request `id`.
pub fn encode(id: RequestId, message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    frame.extend_from_slice(&(message.kind() as u16).to_le_bytes());
    frame.extend_from_slice(&id.0.to_le_bytes());
    bincode::serde::encode_into_std_write(message, &mut frame, config())
        .map_err(|e| FrameError::Payload(e.to_string()))?;
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: frame.len() });
    }
    Ok(frame)
}

/// Decodes one frame.
pub fn decode(bytes: &[u8]) -> Result<(RequestId, Message), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated { len: bytes.len() });
    }
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    let word = |range: std::ops::Range<usize>| &header[range];
    let magic: [u8; 4] = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let code = u16::from_le_bytes([header[6], header[7]]);
    let kind = Kind::from_code(code).ok_or(FrameError::UnknownKind { found: code })?;
    let mut id = [0u8; 8];
    id.copy_from_slice(word(8..16));
    let (message, used): (Message, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Payload(e.to_string()))?;
    if message.kind() != kind {
        return Err(FrameError::KindMismatch {
            header: kind,
            payload: message.kind(),
        });
    }
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    Ok((RequestId(u64::from_le_bytes(id)), message))
}
