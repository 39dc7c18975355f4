//! `sixfold restore`: a new volume at a snapshot, a time or an LSN, rebuilt by the storage nodes
//! from the archive (every PG in parallel, each node its own segment), mountable at once with no
//! log replay at the writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};
use sixfold_archive::keys;
use sixfold_archive::manifest::SnapshotManifest;
use sixfold_archive::{points, ObjectError};
use sixfold_blockdev::restore::{PgSource, RestoreEvent, RestoreRequest};
use sixfold_proto::{Lsn, PgId, PG_BYTES};
use sixfold_transport::Security;

use super::{runtime, show_time, unix_micros, StoreArgs};

#[derive(Debug, Args)]
#[command(
    about = "Build a new volume from the backup: at a snapshot, a time or an LSN",
    long_about = "Build a new volume from the backup at any consistency point inside the \
                  retention window: a snapshot (--from), the newest point reached at or before \
                  a time (--to-time, RFC 3339 such as 2026-11-26T10:00:00Z) or an LSN \
                  (--to-lsn). The nodes that will host the new volume's PGs rebuild them from \
                  the archived objects, all PGs in parallel. Mount it like any volume \
                  (`sixfold mount --volume NEWNAME`)."
)]
#[command(group(ArgGroup::new("point").required(true).args(["from", "to_time", "to_lsn"])))]
pub struct RestoreArgs {
    /// Restore a snapshot (see `sixfold snapshot list`).
    #[arg(long, value_name = "SNAPSHOT")]
    from: Option<String>,
    /// Restore the newest consistency point the writer had reached at this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    to_time: Option<SystemTime>,
    /// Restore this LSN.
    #[arg(long, value_name = "LSN")]
    to_lsn: Option<u64>,
    /// Name of the new volume (must not exist).
    #[arg(long, value_name = "NEWNAME")]
    volume: String,
    /// The volume whose backup to restore.
    #[arg(long, value_name = "VOLUME", default_value = "default")]
    source: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Per (PG, node) the bytes read and to read, and the PGs done.
type Progress = (HashMap<(PgId, String), (u64, u64)>, usize);

pub fn run(args: RestoreArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let security = args.store.security(tls)?;
    runtime()?.block_on(restore(args, security))
}

/// The source volume's size and PGs, from its metadata when the cluster still has it.
async fn source_meta(
    cluster: &sixfold_proto::cluster::ClusterConfig,
    security: &Security,
    source: &str,
) -> Option<(u64, Vec<PgId>)> {
    match sixfold_blockdev::status::collect(cluster, security, source).await {
        Ok(status) if status.exists => Some((
            status.size_bytes,
            status.pgs.iter().map(|p| PgId(p.pg)).collect(),
        )),
        _ => None,
    }
}

async fn restore(args: RestoreArgs, security: Security) -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = args.store.cluster()?;
    let objects = args.store.open(&cluster).await?;
    let source = args.source.as_str();
    sixfold_blockdev::validate_volume_name(&args.volume)?;
    // A new volume gets a fresh archive: objects of an older volume of that name would mix
    // with its own.
    if !objects.list(&format!("{}/", args.volume)).await?.is_empty() {
        anyhow::bail!(
            "the backup store {} already holds objects of a volume named {}; restore into another name",
            objects.describe(),
            args.volume
        );
    }
    let (target, time_us, size_bytes, pgs) = if let Some(name) = &args.from {
        keys::check_snapshot_name(name).map_err(anyhow::Error::msg)?;
        let key = keys::snapshot_key(source, name);
        let body = match objects.get(&key).await {
            Ok(body) => body,
            Err(ObjectError::NotFound { .. }) => anyhow::bail!(
                "snapshot {name} of volume {source} does not exist (see `sixfold snapshot list`)"
            ),
            Err(e) => return Err(e).context("read the snapshot manifest"),
        };
        let manifest: SnapshotManifest = serde_json::from_slice(&body)
            .with_context(|| format!("parse the snapshot manifest {key}"))?;
        let pgs = manifest
            .pgs
            .iter()
            .map(|p| PgSource {
                pg: PgId(p.pg),
                base: p.base.map(Lsn),
                runs: p.runs.clone(),
            })
            .collect();
        (
            Lsn(manifest.lsn),
            manifest.lsn_time_us,
            manifest.size_bytes,
            pgs,
        )
    } else {
        let catalogs = points::catalogs(&objects, source).await?;
        if catalogs.is_empty() {
            anyhow::bail!(
                "the backup store {} holds nothing of volume {source}",
                objects.describe()
            );
        }
        // Every PG the volume has must be in the backup (else it would come back as zeros).
        let meta = source_meta(&cluster, &security, source).await;
        if let Some((_, pgs)) = &meta {
            if let Some(missing) = pgs.iter().find(|pg| !catalogs.contains_key(pg)) {
                anyhow::bail!(
                    "PG {} of volume {source} has nothing in the backup store {} (is every node started with --backup?)",
                    missing.0,
                    objects.describe()
                );
            }
        }
        let describe_window = || points::describe_restorable(&catalogs);
        let (target, time_us) = match (args.to_lsn, args.to_time) {
            (Some(lsn), _) => {
                if points::newest(&catalogs).is_none_or(|newest| Lsn(lsn) > newest) {
                    anyhow::bail!(
                        "LSN {lsn} cannot be restored: it is beyond what the backup holds; {}",
                        describe_window()
                    );
                }
                // Restore points are consistency points: an LSN between two is taken down to
                // the one below it (a write request is never cut in the middle), where the
                // archive is whole between them.
                match points::point_at_or_below(&objects, source, &catalogs, Lsn(lsn)).await? {
                    Some((point, _)) if point < Lsn(lsn) && points::continuous_at(&catalogs, point).is_err() => {
                        anyhow::bail!(
                            "LSN {lsn} cannot be restored: it is outside the retention window; {}",
                            describe_window()
                        )
                    }
                    Some((point, reached)) => {
                        if point != Lsn(lsn) {
                            println!(
                                "LSN {lsn} is not a consistency point; restoring the newest one below it, LSN {point}"
                            );
                        }
                        (point, reached)
                    }
                    None if points::uncovered(&catalogs, Lsn(lsn)).is_some() => anyhow::bail!(
                        "LSN {lsn} cannot be restored: no consistency point at or below it is in the backup; {}",
                        describe_window()
                    ),
                    // Archived before consistency points were recorded with it (none known):
                    // the LSN as asked.
                    None => (Lsn(lsn), 0),
                }
            }
            (None, Some(time)) => {
                let wanted = unix_micros(time);
                match points::lsn_at_time(&objects, source, &catalogs, wanted).await? {
                    Some((lsn, reached)) => {
                        if let Err(pg) = points::continuous_at(&catalogs, lsn) {
                            anyhow::bail!(
                                "{} is outside the retention window: the backup of PG {} no longer holds the points after LSN {lsn}, so the volume as of then is unknown; {}",
                                show_time(wanted),
                                pg.0,
                                describe_window()
                            );
                        }
                        (lsn, reached)
                    }
                    None => anyhow::bail!(
                        "no consistency point at or before {} is in the backup of volume {source} (it is before the retention window, or before the volume was written); {}",
                        show_time(wanted),
                        describe_window()
                    ),
                }
            }
            (None, None) => anyhow::bail!("give --from, --to-time or --to-lsn"),
        };
        if let Some(pg) = points::uncovered(&catalogs, target) {
            anyhow::bail!(
                "LSN {target} cannot be restored: PG {} has no archived objects for it; {}",
                pg.0,
                describe_window()
            );
        }
        let mut pgs = Vec::new();
        for (pg, catalog) in &catalogs {
            let plan = catalog
                .plan(target)
                .with_context(|| format!("plan PG {} at LSN {target}", pg.0))?;
            pgs.push(PgSource {
                pg: *pg,
                base: plan.base,
                runs: plan.runs.iter().map(|r| r.name()).collect(),
            });
        }
        // With no metadata left (the source volume is gone), enough for every archived PG.
        let size = meta.map_or_else(
            || {
                catalogs
                    .keys()
                    .map(|pg| u64::from(pg.0) + 1)
                    .max()
                    .unwrap_or(1)
                    * PG_BYTES
            },
            |(size, _)| size,
        );
        (target, time_us, size, pgs)
    };
    let when = if time_us > 0 {
        format!(" (reached {})", show_time(time_us))
    } else {
        String::new()
    };
    println!(
        "restoring volume {source} at LSN {target}{when} into new volume {} ({} PG(s))",
        args.volume,
        pgs.len()
    );
    let request = RestoreRequest {
        source_volume: source.to_owned(),
        volume: args.volume.clone(),
        size_bytes,
        target,
        pgs,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} read by the nodes, {msg}",
        )
        .context("progress bar template")?,
    );
    let pg_total = request.pgs.len();
    bar.set_message(format!("PGs 0/{pg_total}"));
    let progress: Arc<Mutex<Progress>> = Arc::new(Mutex::new((HashMap::new(), 0)));
    let report = {
        let bar = bar.clone();
        let progress = progress.clone();
        sixfold_blockdev::restore::restore(&cluster, &security, &request, move |event| {
            let Ok(mut state) = progress.lock() else {
                return;
            };
            match event {
                RestoreEvent::Progress {
                    pg,
                    node,
                    bytes,
                    total,
                } => {
                    state.0.insert((pg, node), (bytes, total));
                    let (done, total) = state
                        .0
                        .values()
                        .fold((0, 0), |(d, t), (b, tt)| (d + b, t + tt));
                    bar.set_length(total);
                    bar.set_position(done);
                }
                RestoreEvent::PgDone { .. } => {
                    state.1 += 1;
                    bar.set_message(format!("PGs {}/{pg_total}", state.1));
                }
            }
        })
        .await
    };
    bar.finish_and_clear();
    let report = report.with_context(|| format!("restore into volume {}", args.volume))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "restored volume {} at LSN {target}: {} PG(s), {:.1} MiB read per copy, in {elapsed:.2} s",
        args.volume,
        report.pgs,
        report.bytes as f64 / f64::from(1 << 20),
    );
    Ok(())
}
