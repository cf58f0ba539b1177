//! A running instance's owned resources: the runtime directory and lock, and
//! the store segment. Dropping an [`Instance`] releases all of them, in order.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result, bail};
use protocol::InstanceName;
use protocol::store::{StoreConfig, StoreCreateError, StoreReader, StoreWriter};

use crate::runtime::Runtime;

/// The coordinator's side of one instance.
#[derive(Debug)]
pub struct Instance {
    // Field order is drop order: unlink the segment, then remove the runtime
    // directory, then release the lock.
    /// The store, written only through this.
    pub store: SharedStore,
    /// The lock and runtime directory.
    pub runtime: Runtime,
}

impl Instance {
    /// Takes the instance lock and creates a fresh store segment. A segment of
    /// the same name can only be a leftover of a dead coordinator (we hold the
    /// lock), so it is unlinked and recreated, and the log says so.
    pub fn start(name: &InstanceName, config: &StoreConfig) -> Result<Self> {
        let runtime = Runtime::acquire(name)?;
        let store = match StoreWriter::create(name, config) {
            Err(StoreCreateError::AlreadyExists { name: segment }) => {
                let previous = StoreReader::open(name)
                    .ok()
                    .map(|r| (r.writer_pid(), r.generation()));
                tracing::warn!(
                    %segment,
                    stale_writer_pid = ?previous.map(|p| p.0),
                    stale_generation = ?previous.map(|p| p.1),
                    "reclaiming stale segment left by a coordinator that is gone (the instance lock was free): unlinking and recreating it"
                );
                StoreWriter::unlink_stale(name)
                    .with_context(|| format!("unlinking stale segment {segment}"))?;
                StoreWriter::create(name, config)?
            }
            Err(e @ StoreCreateError::NoSpace { .. }) => {
                // Nothing was created; the runtime directory goes with `runtime`.
                let rings: Vec<String> = config
                    .rings
                    .iter()
                    .map(|(i, n)| format!("{i}={n}"))
                    .collect();
                bail!(
                    "{e} (the capacities are --max-symbols {} and, per interval, --candles-per-series {}; --intervals chooses the intervals)",
                    config.symbols,
                    rings.join(",")
                );
            }
            other => other?,
        };
        tracing::info!(
            segment = store.name(),
            size_bytes = store.size_bytes(),
            generation = format_args!("{:#018x}", store.generation()),
            runtime_dir = %runtime.dir().display(),
            "store created"
        );
        Ok(Self {
            store: store.into(),
            runtime,
        })
    }
}

/// The store writer, shared between the coordinator loop and a live feed's
/// thread (which writes each message the moment it arrives). One writer at a
/// time: the lock is held for one message or one batch, never across network I/O.
#[derive(Debug, Clone)]
pub struct SharedStore(Arc<Mutex<StoreWriter>>);

impl From<StoreWriter> for SharedStore {
    fn from(store: StoreWriter) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }
}

impl SharedStore {
    /// The writer. A panic while it was held cannot leave the segment torn
    /// for readers (a slot mid-write reads as `Stalled`, and the next write
    /// of that slot completes it), so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, StoreWriter> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
