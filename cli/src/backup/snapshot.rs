//! `sixfold snapshot create | list | delete`.
//!
//! A snapshot is a manifest in the archive: the volume's geometry, a consistency point (the
//! writer's VDL as the nodes last heard it, or, with no writer, the point every PG's archive
//! reaches) and, for each PG, the base image and runs that rebuild it there. Creating one pauses
//! nothing: it waits until every PG's archive reaches the point (seconds: the archivers upload
//! every second), then writes the manifest. Retention keeps every object a snapshot names.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use sixfold_archive::keys;
use sixfold_archive::manifest::{SnapshotManifest, SnapshotPg};
use sixfold_archive::points;
use sixfold_archive::ObjectError;
use sixfold_proto::{Lsn, PAGE_SIZE};

use super::{runtime, show_time, unix_micros, StoreArgs};

#[derive(Debug, Args)]
#[command(
    about = "Snapshots of a volume: create (no write pause), list, delete",
    long_about = "Snapshots of a volume. `create NAME` records a manifest in the backup store: \
                  the volume's size, a consistency point at or below the writer's VDL, the time, \
                  and for each PG the archived objects that rebuild it there. Writes go on \
                  meanwhile. `sixfold restore --from NAME` builds a new volume from it."
)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot of the volume now.
    Create {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// The volume.
        #[arg(long, default_value = "default")]
        volume: String,
        /// How long to wait for the archive to reach the consistency point.
        #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// List the volume's snapshots, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "default")]
        volume: String,
        /// Print JSON (one array of manifests) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (its objects go at the next retention pass unless still needed).
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "default")]
        volume: String,
    },
}

pub fn run(args: SnapshotArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match args.command {
            SnapshotCommand::Create {
                name,
                store,
                volume,
                wait,
            } => create(&name, &store, &volume, wait, tls).await,
            SnapshotCommand::List {
                store,
                volume,
                json,
            } => list(&store, &volume, json).await,
            SnapshotCommand::Delete {
                name,
                store,
                volume,
            } => delete(&name, &store, &volume).await,
        }
    })
}

async fn create(
    name: &str,
    args: &StoreArgs,
    volume: &str,
    wait: Duration,
    tls: &crate::tls::TlsArgs,
) -> anyhow::Result<()> {
    keys::check_snapshot_name(name).map_err(anyhow::Error::msg)?;
    let cluster = args.cluster()?;
    let security = args.security(tls)?;
    let objects = args.open(&cluster).await?;
    let manifest_key = keys::snapshot_key(volume, name);
    match objects.get(&manifest_key).await {
        Ok(_) => anyhow::bail!("snapshot {name} of volume {volume} already exists"),
        Err(ObjectError::NotFound { .. }) => {}
        Err(e) => return Err(e).context("look for an existing snapshot"),
    }
    let status = sixfold_blockdev::status::collect(&cluster, &security, volume)
        .await
        .context("ask the cluster for the volume's state")?;
    if let Some(error) = &status.metadata_error {
        anyhow::bail!("cannot read volume {volume}'s metadata: {error}");
    }
    if !status.exists {
        anyhow::bail!("volume {volume} does not exist");
    }
    let started = Instant::now();
    let catalogs = points::catalogs(&objects, volume).await?;
    // The point: the writer's VDL as the nodes last heard it; with no writer, how far every
    // PG's archive reaches.
    let target = match status.vdl {
        Some(vdl) if vdl > 0 => Lsn(vdl),
        _ => points::newest(&catalogs)
            .context("the volume has no writer and nothing archived yet")?,
    };
    println!("snapshot {name}: volume {volume} at LSN {target}, waiting for the archive");
    let pgs: Vec<u32> = status.pgs.iter().map(|p| p.pg).collect();
    let catalogs = loop {
        let catalogs = points::catalogs(&objects, volume).await?;
        let behind = pgs.iter().find(|pg| {
            catalogs
                .get(&sixfold_proto::PgId(**pg))
                .is_none_or(|c| !c.covers(target))
        });
        match behind {
            None => break catalogs,
            Some(pg) if started.elapsed() >= wait => {
                let reached = catalogs
                    .get(&sixfold_proto::PgId(*pg))
                    .map_or(0, |c| c.head().0);
                anyhow::bail!(
                    "PG {pg}'s archive reached only LSN {reached} of {target} within {}; is backup running? (see `sixfold status`)",
                    humantime::format_duration(wait)
                );
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let mut manifest_pgs = Vec::new();
    for pg in &pgs {
        let catalog = &catalogs[&sixfold_proto::PgId(*pg)];
        let plan = catalog
            .plan(target)
            .with_context(|| format!("plan PG {pg} at LSN {target}"))?;
        manifest_pgs.push(SnapshotPg {
            pg: *pg,
            base: plan.base.map(|l| l.0),
            runs: plan.runs.iter().map(|r| r.name()).collect(),
        });
    }
    // When the writer reached the point: the newest consistency point at or below it, from
    // the last run of each PG's plan (exact when the point is one of them).
    let mut reached: Option<(Lsn, u64)> = None;
    for (pg, manifest_pg) in pgs.iter().zip(&manifest_pgs) {
        let Some(last) = manifest_pg.runs.last().and_then(|r| keys::RunKey::parse(r)) else {
            continue;
        };
        let marks = points::run_marks(&objects, volume, sixfold_proto::PgId(*pg), &last).await?;
        for (vdl, time) in marks {
            if vdl <= target && reached.is_none_or(|(best, _)| vdl > best) {
                reached = Some((vdl, time));
            }
        }
    }
    let lsn_time_us = reached.map_or(0, |(_, time)| time);
    let manifest = SnapshotManifest {
        name: name.to_owned(),
        volume: volume.to_owned(),
        size_bytes: status.size_bytes,
        page_size: PAGE_SIZE as u32,
        lsn: target.0,
        created_unix_s: unix_micros(SystemTime::now()) / 1_000_000,
        lsn_time_us,
        pgs: manifest_pgs,
    };
    let body = serde_json::to_vec_pretty(&manifest).context("encode the manifest")?;
    objects
        .put(&manifest_key, Bytes::from(body))
        .await
        .context("write the snapshot manifest")?;
    println!(
        "snapshot {name}: volume {volume} at LSN {target}, {} PG(s), taken in {:.1} s",
        pgs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn list(args: &StoreArgs, volume: &str, json: bool) -> anyhow::Result<()> {
    let cluster = args.cluster()?;
    let objects = args.open(&cluster).await?;
    let manifests = sixfold_archive::manifest::snapshots(&objects, volume).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    if manifests.is_empty() {
        println!("volume {volume} has no snapshots");
        return Ok(());
    }
    println!("{:<24} {:>14} {:<26} {:>5}", "NAME", "LSN", "TAKEN", "PGS");
    for m in manifests {
        println!(
            "{:<24} {:>14} {:<26} {:>5}",
            m.name,
            m.lsn,
            show_time(m.created_unix_s * 1_000_000),
            m.pgs.len()
        );
    }
    Ok(())
}

async fn delete(name: &str, args: &StoreArgs, volume: &str) -> anyhow::Result<()> {
    keys::check_snapshot_name(name).map_err(anyhow::Error::msg)?;
    let cluster = args.cluster()?;
    let objects = args.open(&cluster).await?;
    let key = keys::snapshot_key(volume, name);
    match objects.get(&key).await {
        Ok(_) => {}
        Err(ObjectError::NotFound { .. }) => {
            anyhow::bail!("snapshot {name} of volume {volume} does not exist")
        }
        Err(e) => return Err(e).context("read the snapshot"),
    }
    objects.delete(&key).await?;
    println!("snapshot {name} of volume {volume} deleted");
    Ok(())
}
