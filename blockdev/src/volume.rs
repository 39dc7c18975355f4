//! `Volume`: the single writer of a volume. Public entry points: open, read, write, flush, grow,
//! close. The write and read paths live in `write.rs` and `read.rs`.
//!
//! Contract (docs/SEMANTICS.md): a write returns before it is durable, like a write into a disk's
//! volatile cache; `flush` returns only once every write that returned before it is at write
//! quorum (VDL passed its records), and never returns `Ok` otherwise: with fewer than four
//! segments of a PG reachable it waits, and once the writer is fenced it fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sixfold_proto::membership::Membership;
use sixfold_proto::wire::{PgPlacement, VolumeMeta};
use sixfold_proto::{placement, Epoch, Lsn, PgId, PAGE_SIZE, VOLUME_BYTES_MAX};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cache::PageCache;
use crate::clients::Clients;
use crate::error::VolumeError;
use crate::ledger::Ledger;
use crate::open::PgNodes;
use crate::shared::{PgQueue, Progress, Shared, State};
use crate::{meta, open, sender, OpenOptions};

/// LSN allocation limit: records the writer may have beyond VDL (each up to a page: 64 MiB).
pub const LAL: u64 = 16_384;

/// A mounted volume: the single writer of its volume.
pub struct Volume {
    pub(crate) shared: Arc<Shared>,
}

/// A snapshot of the writer's progress, for logs and tests.
#[derive(Debug, Clone)]
pub struct VolumeStats {
    pub epoch: Epoch,
    pub vcl: Lsn,
    pub vdl: Lsn,
    pub last_allocated: Lsn,
    pub dirty_pages: usize,
    pub clean_pages: usize,
    pub pgs: usize,
    pub size_bytes: u64,
    /// How long opening (and recovering) the volume took.
    pub open_duration: Duration,
}

pub fn validate_volume_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Invalid(format!(
            "volume name {name:?} must be 1-255 characters of A-Z a-z 0-9 . _ -, not starting with a dot"
        )))
    }
}

/// A random id for this writer's metadata puts (see `VolumeMeta.writer`).
pub(crate) fn writer_id() -> u64 {
    sixfold_proto::random_u64()
}

fn check_size(volume: &str, size_bytes: u64) -> Result<(), VolumeError> {
    if size_bytes > VOLUME_BYTES_MAX {
        return Err(VolumeError::TooLarge {
            volume: volume.to_owned(),
            requested: size_bytes,
            max: VOLUME_BYTES_MAX,
        });
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(PAGE_SIZE as u64) {
        return Err(VolumeError::Invalid(format!(
            "volume size {size_bytes} must be a non-zero multiple of {PAGE_SIZE} bytes"
        )));
    }
    Ok(())
}

impl Volume {
    /// Opens the volume (creating it when it does not exist), becoming its writer (epoch bump),
    /// and recovers every PG's chain tail.
    pub async fn open(options: OpenOptions) -> Result<Arc<Volume>, VolumeError> {
        let started = Instant::now();
        let name = options.volume.clone();
        validate_volume_name(&name)?;
        let clients = Arc::new(Clients::new(options.security.clone()));
        // The cluster's node list: where each PG's nodes are (made from the cluster file on
        // first use).
        let list = crate::nodes::for_lookup(&clients, &options.cluster)
            .await
            .map_err(|error| VolumeError::Cluster {
                volume: name.clone(),
                unreachable: error.is_unreachable(),
                detail: error.to_string(),
            })?;
        let mut meta = match meta::read(&clients, &options.cluster, &name).await? {
            Some(meta) => {
                if meta.page_size as usize != PAGE_SIZE {
                    return Err(VolumeError::Meta {
                        volume: name,
                        detail: format!("page size {} is not {PAGE_SIZE}", meta.page_size),
                    });
                }
                if meta.restoring {
                    return Err(VolumeError::Meta {
                        volume: name,
                        detail: "is a restore that did not finish (run `sixfold restore` \
                                 again with another volume name)"
                            .into(),
                    });
                }
                meta
            }
            None => {
                check_size(&name, options.create_size_bytes)?;
                info!(volume = %name, size_bytes = options.create_size_bytes, "creating volume");
                VolumeMeta {
                    name: name.clone(),
                    size_bytes: options.create_size_bytes,
                    page_size: PAGE_SIZE as u32,
                    epoch: 0,
                    version: 0,
                    pgs: Vec::new(),
                    writer: 0,
                    restoring: false,
                }
            }
        };
        if options.read_only && meta.version == 0 {
            return Err(VolumeError::Meta {
                volume: name,
                detail: "does not exist (a read-only mount does not create it)".into(),
            });
        }
        if !options.read_only {
            meta::next_version(&mut meta, true)?;
            meta.writer = writer_id();
            meta::claim(&clients, &options.cluster, &mut meta)
                .await
                .map_err(|error| {
                    let advice = " (becoming the writer needs 4 of 6; with 3 reachable, \
                                  `sixfold mount --read-only` can still read the volume)";
                    match error {
                        VolumeError::Meta { volume, detail } => VolumeError::Meta {
                            volume,
                            detail: format!("{detail}{advice}"),
                        },
                        VolumeError::MetaUnreachable {
                            volume,
                            answered,
                            needed,
                            detail,
                        } => VolumeError::MetaUnreachable {
                            volume,
                            answered,
                            needed,
                            detail: format!("{detail}{advice}"),
                        },
                        other => other,
                    }
                })?;
        }
        let epoch = Epoch(meta.epoch);
        let recovered = open::recover_all(&clients, &meta, &list, epoch, options.read_only).await?;
        let max_seen = recovered
            .iter()
            .map(|r| r.max_lsn_seen.max(r.tail))
            .max()
            .unwrap_or(Lsn::ZERO);
        let start = crate::recovery::new_start(max_seen, LAL).ok_or_else(|| VolumeError::Meta {
            volume: name.clone(),
            detail: format!(
                "a segment reported LSN {}, which leaves no room for new records: a node is \
                 corrupt or hostile",
                max_seen.0
            ),
        })?;
        let mut ledger = Ledger::new(start, LAL);
        let mut pgs = HashMap::new();
        for pg in &recovered {
            ledger.add_pg(pg.pg, pg.tail, pg.nodes.membership.clone(), pg.scls.clone());
            pgs.insert(
                pg.pg,
                PgQueue::new(&pg.nodes, &list, &pg.scls, pg.truncations.clone()),
            );
        }
        let clean_pages = (options.cache_bytes / PAGE_SIZE as u64).max(16) as usize;
        let state = State {
            ledger,
            cache: PageCache::new(clean_pages),
            size_bytes: meta.size_bytes,
            pgs,
            fenced: false,
            closed: false,
            read_only: options.read_only,
            push_to: Lsn::ZERO,
            vdl_time_us: crate::shared::unix_micros(),
            read_routing: Default::default(),
        };
        let (progress, _) = watch::channel(Progress {
            vdl: start,
            fenced: false,
            closed: false,
        });
        let size_bytes = meta.size_bytes;
        let pg_count = meta.pgs.len();
        let shared = Arc::new(Shared {
            volume: name.clone(),
            cluster: options.cluster,
            clients,
            appends: crate::append_conn::AppendConns::new(options.security.clone()),
            epoch,
            az: options.az,
            state: std::sync::Mutex::new(state),
            progress,
            meta: tokio::sync::Mutex::new(meta),
            open_duration: started.elapsed(),
        });
        if !options.read_only {
            for pg in &recovered {
                sender::spawn_senders(&shared, pg.pg, &pg.nodes.membership.nodes());
            }
        }
        info!(
            volume = %name, %epoch, size_bytes, pgs = pg_count, start_lsn = %start,
            recovery_ms = started.elapsed().as_millis() as u64,
            "volume open"
        );
        Ok(Arc::new(Volume { shared }))
    }

    pub fn name(&self) -> &str {
        &self.shared.volume
    }

    /// Current size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().size_bytes
    }

    pub fn stats(&self) -> VolumeStats {
        let state = self.shared.lock();
        VolumeStats {
            epoch: self.shared.epoch,
            vcl: state.ledger.vcl(),
            vdl: state.ledger.vdl(),
            last_allocated: state.ledger.last_allocated(),
            dirty_pages: state.cache.dirty_pages(),
            clean_pages: state.cache.clean_pages(),
            pgs: state.pgs.len(),
            size_bytes: state.size_bytes,
            open_duration: self.shared.open_duration,
        }
    }

    /// Returns once every write before it is at write quorum (VDL passed it). Waits while a PG has
    /// fewer than four segments acknowledging; never returns `Ok` early.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        if self.shared.lock().read_only {
            return Ok(()); // nothing was written
        }
        let mut progress = self.shared.progress.subscribe();
        let target = {
            let mut state = self.shared.lock();
            let target = state.ledger.last_allocated();
            state.push(target);
            target
        };
        let started = Instant::now();
        let mut next_report = Duration::from_secs(10);
        loop {
            let current = *progress.borrow_and_update();
            if current.fenced {
                return Err(self.fenced_error());
            }
            if current.vdl >= target {
                return Ok(());
            }
            if current.closed {
                return Err(VolumeError::Closed);
            }
            match tokio::time::timeout(Duration::from_secs(1), progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(VolumeError::Closed),
                Err(_) => {
                    if started.elapsed() >= next_report {
                        next_report += Duration::from_secs(10);
                        warn!(
                            volume = %self.shared.volume, vdl = %current.vdl, %target,
                            waited_s = started.elapsed().as_secs(),
                            "flush waiting for write quorum: {}", self.quorum_report()
                        );
                    }
                }
            }
        }
    }

    /// Which PGs lack a write quorum, for the flush-waiting log line.
    fn quorum_report(&self) -> String {
        let state = self.shared.lock();
        let mut lines = Vec::new();
        for (pg, queue) in &state.pgs {
            let down: Vec<&str> = queue
                .segments
                .iter()
                .filter(|s| !s.up)
                .map(|s| s.addr.as_str())
                .collect();
            if !down.is_empty() {
                lines.push(format!(
                    "{pg}: {} of 6 segments unreachable ({})",
                    down.len(),
                    down.join(", ")
                ));
            }
        }
        if lines.is_empty() {
            "segments are slow or catching up".into()
        } else {
            lines.join("; ")
        }
    }

    /// Fails when the volume is open read-only.
    pub fn check_read_only(&self) -> Result<(), VolumeError> {
        if self.shared.lock().read_only {
            return Err(VolumeError::ReadOnly {
                volume: self.shared.volume.clone(),
            });
        }
        Ok(())
    }

    /// Fails when the writer was fenced by a newer one or closed, or the volume is read-only;
    /// otherwise `Ok` at once.
    pub fn check_writable(&self) -> Result<(), VolumeError> {
        self.check_read_only()?;
        let state = self.shared.lock();
        if state.fenced {
            return Err(self.fenced_error());
        }
        if state.closed {
            return Err(VolumeError::Closed);
        }
        Ok(())
    }

    pub(crate) fn fenced_error(&self) -> VolumeError {
        VolumeError::Fenced {
            volume: self.shared.volume.clone(),
            epoch: self.shared.epoch,
        }
    }

    /// Grows the volume online to `size_bytes` (never shrinks).
    pub async fn grow(&self, size_bytes: u64) -> Result<(), VolumeError> {
        self.check_read_only()?;
        check_size(&self.shared.volume, size_bytes)?;
        let mut meta = self.shared.meta.lock().await;
        if size_bytes < meta.size_bytes {
            return Err(VolumeError::Shrink {
                volume: self.shared.volume.clone(),
                size_bytes: meta.size_bytes,
                requested: size_bytes,
            });
        }
        if size_bytes == meta.size_bytes {
            return Ok(());
        }
        let mut next = meta.clone();
        next.size_bytes = size_bytes;
        meta::next_version(&mut next, false)?;
        meta::write(&self.shared.clients, &self.shared.cluster, &next).await?;
        *meta = next;
        self.shared.lock().size_bytes = size_bytes;
        info!(volume = %self.shared.volume, size_bytes, "volume grown");
        Ok(())
    }

    /// Makes sure `pg` is allocated: placed on six nodes and recorded in the metadata at a write
    /// quorum before its first record is made.
    pub(crate) async fn ensure_pg(&self, pg: PgId) -> Result<(), VolumeError> {
        if self.shared.lock().ledger.has_pg(pg) {
            return Ok(());
        }
        let mut meta = self.shared.meta.lock().await;
        if self.shared.lock().ledger.has_pg(pg) {
            return Ok(());
        }
        // Placed on the active nodes of the cluster's node list as it is now (nodes added
        // since the mount count).
        let list = crate::nodes::current(&self.shared.clients, &self.shared.cluster)
            .await
            .map_err(|error| VolumeError::Cluster {
                volume: self.shared.volume.clone(),
                unreachable: error.is_unreachable(),
                detail: error.to_string(),
            })?;
        let too_few = || VolumeError::Meta {
            volume: self.shared.volume.clone(),
            detail: "the cluster has too few AZs with 2 active nodes to place a PG".into(),
        };
        let ids = placement::place_ids(&list, &placement::pg_key(&self.shared.volume, pg.0))
            .ok_or_else(too_few)?;
        let membership = Membership::new(ids).map_err(|_| too_few())?;
        let addrs = membership
            .nodes()
            .iter()
            .filter_map(|n| list.get(*n).map(|r| (*n, r.addr.clone())))
            .collect();
        let nodes = PgNodes { membership, addrs };
        // Create the six segments in this epoch (at a write quorum) before the PG is recorded.
        open::recover_pg(
            &self.shared.clients,
            &self.shared.volume,
            pg,
            nodes.clone(),
            self.shared.epoch,
            false,
        )
        .await?;
        let mut next = meta.clone();
        next.pgs.push(PgPlacement {
            pg: pg.0,
            nodes: nodes.addresses(),
            membership_epoch: 0,
            membership: Some(nodes.membership.to_wire()),
        });
        meta::next_version(&mut next, false)?;
        meta::write(&self.shared.clients, &self.shared.cluster, &next).await?;
        *meta = next;
        {
            let mut state = self.shared.lock();
            state
                .ledger
                .add_pg(pg, Lsn::ZERO, nodes.membership.clone(), BTreeMap::new());
            let queue = PgQueue::new(&nodes, &list, &BTreeMap::new(), Vec::new());
            state.pgs.insert(pg, queue);
            state.trim_retained();
        }
        sender::spawn_senders(&self.shared, pg, &nodes.membership.nodes());
        info!(volume = %self.shared.volume, %pg, membership = %nodes.membership, nodes = ?nodes.addresses(), "allocated PG");
        Ok(())
    }

    /// Flushes and stops the writer's background tasks.
    pub async fn close(&self) -> Result<(), VolumeError> {
        let flushed = self.flush().await;
        if flushed.is_ok() {
            sender::final_heartbeats(&self.shared).await;
        }
        let mut state = self.shared.lock();
        state.closed = true;
        for queue in state.pgs.values() {
            for link in &queue.segments {
                link.wake.notify_one();
            }
        }
        self.shared.publish(&state);
        drop(state);
        info!(volume = %self.shared.volume, stats = ?self.stats(), "volume closed");
        flushed
    }
}
