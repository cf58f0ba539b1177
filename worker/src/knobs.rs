//! TEST-ONLY fault knobs, read from the environment at start, in builds with
//! the `testing` feature only (a release build has the no-op [`Knobs`] at
//! the end and reads no variable). They exist so the test suite can prove
//! the coordinator's retry and fault handling work.
//!
//! * `SHMKLINE_TEST_DROP=KIND:N[,KIND:N...]`: silently ignore the first N
//!   frames of each KIND (e.g. `ADD_TRADER:2`), as if they were lost.
//! * `SHMKLINE_TEST_DROP_REPLY=KIND:N[,...]`: carry out the request but do not
//!   send the first N replies of each KIND (e.g. `ACK:1`), as if the answer
//!   were lost: the coordinator re-sends, and the worker sees a duplicate.
//! * `SHMKLINE_TEST_MALFORMED=1`: with READY, send the coordinator one frame
//!   that is not a shmkline frame (bad magic: a foreign peer).
//! * `SHMKLINE_TEST_MALFORMED=payload`: with READY, send one frame with a
//!   valid header whose payload does not decode (what a bug in this build
//!   would send).

#[cfg(not(feature = "testing"))]
pub use off::Knobs;
#[cfg(feature = "testing")]
pub use on::Knobs;

#[cfg(feature = "testing")]
mod on {
    use std::collections::HashMap;

    use anyhow::{Context, Result, bail};
    use ipc_channel::ipc::IpcBytesSender;
    use protocol::message::Kind;

    /// The knobs in force.
    #[derive(Debug, Default)]
    pub struct Knobs {
        drop: HashMap<Kind, u32>,
        drop_reply: HashMap<Kind, u32>,
        /// Send one undecodable frame with READY.
        malformed: Option<Malformed>,
    }

    #[derive(Debug, Clone, Copy)]
    enum Malformed {
        /// Not a frame at all.
        Foreign,
        /// A valid header, a payload that does not decode.
        Payload,
    }

    impl Knobs {
        /// Reads the knobs; a malformed knob is an error, not ignored.
        pub fn from_env() -> Result<Self> {
            let knobs = Knobs {
                drop: parse("SHMKLINE_TEST_DROP")?,
                drop_reply: parse("SHMKLINE_TEST_DROP_REPLY")?,
                malformed: match std::env::var("SHMKLINE_TEST_MALFORMED").as_deref() {
                    Ok("1") => Some(Malformed::Foreign),
                    Ok("payload") => Some(Malformed::Payload),
                    Ok(other) => bail!("SHMKLINE_TEST_MALFORMED={other:?}: write 1 or payload"),
                    Err(_) => None,
                },
            };
            if !knobs.drop.is_empty() || !knobs.drop_reply.is_empty() || knobs.malformed.is_some() {
                tracing::warn!(?knobs, "TEST-ONLY fault knobs are set");
            }
            Ok(knobs)
        }

        /// Whether to drop this incoming frame (counting it down).
        pub fn drop_frame(&mut self, kind: Kind) -> bool {
            count_down(&mut self.drop, kind)
        }

        /// Sends the malformed frame asked for, once, as READY goes out.
        pub fn after_ready(&mut self, out: &IpcBytesSender) -> Result<()> {
            let bytes = match self.malformed.take() {
                None => return Ok(()),
                Some(Malformed::Foreign) => b"this is not a frame".to_vec(),
                Some(Malformed::Payload) => {
                    let mut frame = protocol::frame::encode(
                        protocol::message::RequestId(0),
                        &protocol::message::Message::Signals(Vec::new()),
                    )?;
                    frame.truncate(protocol::frame::HEADER_LEN);
                    frame.extend_from_slice(&[0xff; 12]);
                    frame
                }
            };
            out.send(&bytes).context("sending the malformed frame")
        }

        /// Whether to drop this outgoing reply (counting it down).
        pub fn drop_reply(&mut self, kind: Kind) -> bool {
            count_down(&mut self.drop_reply, kind)
        }
    }

    fn count_down(counts: &mut HashMap<Kind, u32>, kind: Kind) -> bool {
        match counts.get_mut(&kind) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Parses `KIND:N[,KIND:N...]` from the variable `var`, if set.
    fn parse(var: &str) -> Result<HashMap<Kind, u32>> {
        let mut counts = HashMap::new();
        let Ok(spec) = std::env::var(var) else {
            return Ok(counts);
        };
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (kind, n) = item
                .split_once(':')
                .with_context(|| format!("{var} item {item:?}: write KIND:N"))?;
            let Some(kind) = Kind::from_name(kind) else {
                bail!("{var}: unknown message kind {kind:?}");
            };
            let n: u32 = n
                .parse()
                .with_context(|| format!("{var}: {n:?} is not a count"))?;
            counts.insert(kind, n);
        }
        Ok(counts)
    }
}

/// Release builds: no knob, nothing read from the environment.
#[cfg(not(feature = "testing"))]
mod off {
    use anyhow::Result;
    use ipc_channel::ipc::IpcBytesSender;
    use protocol::message::Kind;

    /// No knobs.
    #[derive(Debug, Default)]
    pub struct Knobs;

    impl Knobs {
        /// Nothing to read.
        pub fn from_env() -> Result<Self> {
            Ok(Self)
        }

        /// Never drops a frame.
        pub fn drop_frame(&mut self, _: Kind) -> bool {
            false
        }

        /// Sends nothing.
        pub fn after_ready(&mut self, _: &IpcBytesSender) -> Result<()> {
            Ok(())
        }

        /// Never drops a reply.
        pub fn drop_reply(&mut self, _: Kind) -> bool {
            false
        }
    }
}
