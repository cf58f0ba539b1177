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
//!
//! Two bounds guard the decoder, because bincode's `with_limit` does not
//! count the bytes it reads but the memory a decode *claims*: every integer
//! its full width (a one-byte varint of a `u64` claims 8), every string its
//! length. So the input is bounded by [`MAX_FRAME`] bytes and the claims by
//! [`MAX_DECODE_CLAIM`]: no payload byte claims more than 8, so every frame
//! the encoder produces decodes, and no frame, however hostile, makes the
//! decoder allocate more than 512 KiB.
//!
//! A burst of signals goes out as [`encode_signals`] packs it: in order, in as
//! many SIGNALS frames as it needs, each signal encoded once.

use thiserror::Error;

use crate::message::{Kind, Message, RequestId, Signal};

/// "SKF1".
pub const MAGIC: [u8; 4] = *b"SKF1";
/// Bumped on any incompatible change to the header or the messages.
pub const PROTOCOL_VERSION: u16 = 4;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest frame accepted or produced.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most memory a decode may claim (see the module doc): 8 bytes per input
/// byte at most, so every frame of at most [`MAX_FRAME`] bytes is admitted.
pub const MAX_DECODE_CLAIM: usize = 8 * MAX_FRAME;

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

impl FrameError {
    /// Whether the header was a valid header of this build (magic, version,
    /// a known kind), so the sender speaks this protocol and the payload's
    /// failure is a bug on one side, not a foreign peer.
    pub fn is_payload_error(&self) -> bool {
        matches!(
            self,
            FrameError::Payload(_) | FrameError::KindMismatch { .. } | FrameError::TrailingBytes(_)
        )
    }
}

/// The kind a frame's header names, if it is long enough to name one.
pub fn header_kind(bytes: &[u8]) -> Option<Kind> {
    let code = u16::from_le_bytes([*bytes.get(6)?, *bytes.get(7)?]);
    Kind::from_code(code)
}

/// Encoding needs no limit: its output is measured against [`MAX_FRAME`].
fn encode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_CLAIM>()
}

fn header(frame: &mut Vec<u8>, kind: Kind, id: RequestId) {
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    frame.extend_from_slice(&(kind as u16).to_le_bytes());
    frame.extend_from_slice(&id.0.to_le_bytes());
}

/// Encodes `message` as the frame for request `id`.
pub fn encode(id: RequestId, message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(64);
    header(&mut frame, message.kind(), id);
    bincode::serde::encode_into_std_write(message, &mut frame, encode_config())
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
    let (message, used): (Message, usize) =
        bincode::serde::decode_from_slice(payload, decode_config())
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

/// A signal whose encoding alone exceeds a frame. Traders are checked for
/// this when they are loaded or added ([`crate::trader::TraderSpec::compile`]),
/// so it means a bug or a trader that escaped the check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "a signal of trader {trader} takes {bytes} bytes, more than a frame holds ({MAX_SIGNAL} bytes)"
)]
pub struct SignalTooLarge {
    /// Its position in the batch: the signals before it were framed.
    pub index: usize,
    /// Its trader.
    pub trader: String,
    /// Its encoded size.
    pub bytes: usize,
}

/// Room for the varint of a batch's length, at most.
const COUNT_VARINT: usize = 9;
/// Room for the varint of the message's variant index, at most.
const VARIANT_VARINT: usize = 5;
/// The largest encoded signal a SIGNALS frame holds on its own.
pub const MAX_SIGNAL: usize = MAX_FRAME - HEADER_LEN - VARIANT_VARINT - COUNT_VARINT;

/// The encoded size of `signal` on its own, as a SIGNALS frame carries it.
pub fn signal_len(signal: &Signal) -> usize {
    bincode::serde::encode_to_vec(signal, encode_config()).map_or(usize::MAX, |v| v.len())
}

/// Encodes `signals`, in order, into as few SIGNALS frames as hold them
/// (each at most [`MAX_FRAME`] bytes), appended to `frames` and numbered
/// from `*next_id + 1` on. Each signal is encoded once; a frame is exactly
/// what [`encode`] makes of `Message::Signals` with the same signals. A
/// signal too large for any frame stops the packing there: the frames of
/// the signals before it are in `frames`.
pub fn encode_signals(
    next_id: &mut u64,
    signals: &[Signal],
    frames: &mut Vec<Vec<u8>>,
) -> Result<(), SignalTooLarge> {
    // The payload of `Message::Signals(v)` is the variant index, the length
    // of `v`, then each signal: an empty batch shows the prefix.
    let empty = bincode::serde::encode_to_vec(Message::Signals(Vec::new()), encode_config())
        .unwrap_or_default();
    let prefix = &empty[..empty.len().saturating_sub(1)];
    let mut encoded = Vec::new();
    let mut ends = Vec::with_capacity(signals.len());
    let mut result = Ok(());
    for (index, signal) in signals.iter().enumerate() {
        let start = encoded.len();
        let fits = bincode::serde::encode_into_std_write(signal, &mut encoded, encode_config())
            .is_ok_and(|n| n <= MAX_SIGNAL);
        if !fits {
            result = Err(SignalTooLarge {
                index,
                trader: signal.trader.clone(),
                bytes: signal_len(signal),
            });
            encoded.truncate(start);
            break;
        }
        ends.push(encoded.len());
    }
    let room = MAX_FRAME - HEADER_LEN - prefix.len() - COUNT_VARINT;
    let (mut first, mut from) = (0, 0);
    while first < ends.len() {
        // The longest run of signals from `first` whose bytes fit a frame.
        let mut last = first;
        while last + 1 < ends.len() && ends[last + 1] - from <= room {
            last += 1;
        }
        let to = ends[last];
        *next_id += 1;
        let mut frame = Vec::with_capacity(HEADER_LEN + prefix.len() + COUNT_VARINT + to - from);
        header(&mut frame, Kind::Signals, RequestId(*next_id));
        frame.extend_from_slice(prefix);
        let count = (last + 1 - first) as u64;
        // Cannot fail: a Vec grows as needed.
        let _ = bincode::encode_into_std_write(count, &mut frame, encode_config());
        frame.extend_from_slice(&encoded[from..to]);
        frames.push(frame);
        first = last + 1;
        from = to;
    }
    result
}
