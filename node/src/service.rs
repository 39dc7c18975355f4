//! The gRPC service: validates each request ([`crate::request`]), calls the store, and turns the
//! outcome into a response or a status ([`StoreError::to_status`], the one place errors become
//! gRPC codes). Holds no state of its own; never panics on any input.

use sixfold_archive::ObjectStore;
use sixfold_proto::collision::Ballot;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::storage_node_server::StorageNode;
use sixfold_proto::wire::{
    AppendRequest, AppendResponse, ChangeMembershipRequest, ChangeMembershipResponse, DataKeyState,
    FetchPagesRequest, FetchPagesResponse, FetchRecordsRequest, FetchRecordsResponse,
    GetNodeListRequest, GetNodeListResponse, GetVolumeMetaRequest, GetVolumeMetaResponse,
    NodeStatusRequest, NodeStatusResponse, OpenSegmentRequest, OpenSegmentResponse, PageImage,
    PromiseMembershipRequest, PromiseMembershipResponse, PutNodeListRequest, PutNodeListResponse,
    PutPgMembershipRequest, PutPgMembershipResponse, PutVolumeMetaRequest, PutVolumeMetaResponse,
    ReadPageRequest, ReadPageResponse, RestoreSegmentProgress, RestoreSegmentRequest,
    RotateKeysRequest, RotateKeysResponse, SegmentRef, SegmentStateRequest, SegmentStateResponse,
    SegmentStatus, VolumeWriterState,
};
use sixfold_proto::{Epoch, Lsn, PageId, PgId};
use sixfold_transport::Role;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::access;
use crate::appender::Source;
use crate::error::StoreError;
use crate::index::Mark;
use crate::members::ChangeMode;
use crate::request;
use crate::store::Store;

pub struct Service {
    store: Store,
    az: String,
    /// The backup store (None: backup off, restores refused).
    objects: Option<ObjectStore>,
    restores: crate::restore::RestoreSlots,
}

impl Service {
    pub fn new(store: Store, az: String, objects: Option<ObjectStore>) -> Service {
        Service {
            store,
            az,
            objects,
            restores: crate::restore::RestoreSlots::default(),
        }
    }
}

/// Logs a refused request (a malformed one is a client bug: warn; fencing and a segment that is
/// behind are normal in failover and catch-up) and turns it into its status.
fn status(method: &'static str, e: StoreError) -> Status {
    match &e {
        StoreError::InvalidArgument(_) => warn!(method, "invalid request: {e}"),
        StoreError::Fenced { .. } => info!(method, "request refused: {e}"),
        _ => debug!(method, "request refused: {e}"),
    }
    e.to_status()
}

fn page_in_pg(pg: PgId, page: u64) -> Result<PageId, StoreError> {
    let page = PageId(page);
    if !pg.contains(page) {
        return Err(StoreError::InvalidArgument(format!(
            "{page} is not in {pg}"
        )));
    }
    Ok(page)
}

/// Batches of one append stream hardened concurrently (their answers still go out in order).
pub const APPEND_STREAM_IN_FLIGHT_MAX: usize = 16;

/// Validates one batch, hardens it and answers the segment's SCL.
pub(crate) async fn append_one(
    store: &Store,
    request: AppendRequest,
) -> Result<AppendResponse, Status> {
    let prepared = (|| {
        let key = request::segment_key(request.segment.as_ref())?;
        let epoch = Epoch(request.epoch);
        let records = request::prepare_records(&key, Some(epoch), &request.records)?;
        let peers = request::peers(&request.peers)?;
        let addr = request::segment_addr(&request.segment_addr)?;
        let truncations = request::truncations(&request.truncations)?;
        request::history_not_newer(&truncations, epoch)?;
        let membership = request::membership(request.membership.as_ref())?;
        Ok::<_, StoreError>((key, epoch, records, peers, addr, truncations, membership))
    })();
    let (key, epoch, records, peers, addr, truncations, membership) =
        prepared.map_err(|e| status("Append", e))?;
    // A segment that was away while this writer (or an earlier one) recovered the PG drops the
    // records that recovery truncated before it acknowledges anything of this writer's.
    store
        .learn_truncations(&key, &truncations, Some(epoch))
        .await
        .map_err(|e| status("Append", e))?;
    let source = Source::Writer {
        epoch,
        peers,
        writer_vcl: Lsn(request.writer_vcl),
        writer_vdl: Lsn(request.writer_vdl),
        pgcl: Lsn(request.pgcl),
        fold_limit: Lsn(request.fold_limit),
        mark: Mark {
            vdl: Lsn(request.writer_vdl),
            pgcl: Lsn(request.pgcl),
            time_us: request.writer_vdl_time_us,
        },
        addr,
        membership,
    };
    let scl = store
        .append(key, source, records)
        .await
        .map_err(|e| status("Append", e))?;
    Ok(AppendResponse { scl: scl.0 })
}

/// An append stream on which no batch arrives for this long is ended (cleanly: its writer opens
/// a new one with its next batch), so that streams left open cost nothing for ever.
pub const APPEND_STREAM_IDLE_MAX: Duration = Duration::from_secs(300);
/// An append stream whose client takes no answer for this long is ended: a writer gives up on
/// an answer after 10 s, so a client that stopped reading holds no task and no batch longer.
pub const APPEND_STREAM_STALL_MAX: Duration = Duration::from_secs(30);

/// Serves one append stream: each batch is handed to the store as it arrives (so that several
/// share a group commit), and the answers go back in arrival order. The first refused batch
/// ends the stream with its status; so does a broken inbound stream. A stream without progress
/// ends too: no batch for `idle`, or an answer its client does not take within `stall`.
async fn serve_append_stream<S>(
    store: Store,
    mut inbound: S,
    responses: mpsc::Sender<Result<AppendResponse, Status>>,
    idle: Duration,
    stall: Duration,
) where
    S: Stream<Item = Result<AppendRequest, Status>> + Unpin,
{
    let (order, mut in_order) =
        mpsc::channel::<JoinHandle<Result<AppendResponse, Status>>>(APPEND_STREAM_IN_FLIGHT_MAX);
    let responder = tokio::spawn(async move {
        while let Some(batch) = in_order.recv().await {
            let answer = batch
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("append task failed: {e}"))));
            let refused = answer.is_err();
            match tokio::time::timeout(stall, responses.send(answer)).await {
                Ok(Ok(())) if !refused => {}
                Ok(_) => return,
                Err(_) => {
                    warn!("append stream ended: its client took no answer for {stall:?}");
                    return;
                }
            }
        }
    });
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, inbound.next()) => next,
            // The responder stopped (a refusal, a client gone or not reading): stop reading.
            () = order.closed() => break,
        };
        match next {
            Ok(Some(Ok(request))) => {
                let store = store.clone();
                let batch = tokio::spawn(async move { append_one(&store, request).await });
                if order.send(batch).await.is_err() {
                    break; // the responder stopped: the stream is over
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!("append stream ended: {e}");
                break;
            }
            Err(_) => {
                debug!("append stream ended: no batch for {idle:?}");
                break;
            }
        }
    }
    drop(order);
    let _ = responder.await;
}

impl Service {
    /// A collision-recovery round must be run by a node of the cluster (as this node's copy
    /// of the node list has it): a round named after no node could outbid every real driver's
    /// for good. (Who may call at all is issue 16's mutual TLS.)
    fn check_round(
        &self,
        key: &crate::index::SegmentKey,
        ballot: Ballot,
    ) -> Result<(), StoreError> {
        if !ballot.is_classic() {
            return Err(StoreError::InvalidArgument(format!(
                "segment {key}: {ballot} is not a collision-recovery round (numbered 1 to 2^62, \
                 naming its driver)"
            )));
        }
        match self.store.node_list() {
            Some(list) if list.get(ballot.driver).is_none() => {
                Err(StoreError::InvalidArgument(format!(
                    "segment {key}: {ballot} names {}, which is not in the cluster's node list",
                    ballot.driver
                )))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl StorageNode for Service {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        append_one(&self.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendStreamStream = ReceiverStream<Result<AppendResponse, Status>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let inbound = request.into_inner();
        let (responses, stream) = mpsc::channel(APPEND_STREAM_IN_FLIGHT_MAX);
        tokio::spawn(serve_append_stream(
            self.store.clone(),
            inbound,
            responses,
            APPEND_STREAM_IDLE_MAX,
            APPEND_STREAM_STALL_MAX,
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn read_page(
        &self,
        request: Request<ReadPageRequest>,
    ) -> Result<Response<ReadPageResponse>, Status> {
        let request = request.into_inner();
        let key =
            request::segment_key(request.segment.as_ref()).map_err(|e| status("ReadPage", e))?;
        let page = page_in_pg(key.pg, request.page).map_err(|e| status("ReadPage", e))?;
        let history = request::truncations(&request.truncations)
            .and_then(|list| {
                // A reader's history is never newer than its epoch (when it names one).
                if request.epoch > 0 {
                    request::history_not_newer(&list, Epoch(request.epoch))?;
                }
                Ok(list)
            })
            .map_err(|e| status("ReadPage", e))?;
        let (data, scl) = self
            .store
            .read_page_for(
                &key,
                page,
                Lsn(request.read_lsn),
                Lsn(request.required_scl),
                &history,
            )
            .await
            .map_err(|e| status("ReadPage", e))?;
        Ok(Response::new(ReadPageResponse {
            data: data.into(),
            scl: scl.0,
        }))
    }

    async fn fetch_records(
        &self,
        request: Request<FetchRecordsRequest>,
    ) -> Result<Response<FetchRecordsResponse>, Status> {
        let request = request.into_inner();
        let key = request::segment_key(request.segment.as_ref())
            .and_then(|key| {
                let asker = request::membership(request.membership.as_ref())?;
                crate::members::check(&key, self.store.membership(&key).as_ref(), asker.as_ref())?;
                Ok(key)
            })
            .map_err(|e| status("FetchRecords", e))?;
        let (records, scl) = self
            .store
            .fetch_records(&key, Lsn(request.after_lsn), u64::from(request.max_bytes))
            .await
            .map_err(|e| status("FetchRecords", e))?;
        // Read after the records: a truncation learned in between reaches the asker with them,
        // and the asker applies it first.
        let truncations = request::truncations_to_wire(&self.store.segment_state(&key).truncations);
        Ok(Response::new(FetchRecordsResponse {
            records,
            scl: scl.0,
            truncations,
        }))
    }

    async fn fetch_pages(
        &self,
        request: Request<FetchPagesRequest>,
    ) -> Result<Response<FetchPagesResponse>, Status> {
        let request = request.into_inner();
        let key =
            request::segment_key(request.segment.as_ref()).map_err(|e| status("FetchPages", e))?;
        let (folded, pages, next_cursor) = self
            .store
            .fetch_pages(
                &key,
                Lsn(request.after_lsn),
                request.cursor,
                request.max_pages as usize,
            )
            .await
            .map_err(|e| status("FetchPages", e))?;
        Ok(Response::new(FetchPagesResponse {
            folded: folded.0,
            pages: pages
                .into_iter()
                .map(|image| PageImage {
                    page: image.page.0,
                    lsn: image.lsn.0,
                    data: image.data.into(),
                })
                .collect(),
            next_cursor,
        }))
    }

    async fn segment_state(
        &self,
        request: Request<SegmentStateRequest>,
    ) -> Result<Response<SegmentStateResponse>, Status> {
        if request.get_ref().seal_epoch > 0 {
            // Sealing is how an epoch advances: only a writer opening the volume may.
            access::require(
                &request,
                &[Role::Writer],
                "seal a segment (advance its epoch)",
            )?;
        }
        if !request.get_ref().learn.is_empty() {
            // A truncation history drops records and carries epochs: only a recovering writer
            // hands one over (repair and rebalance ask with none).
            access::require(&request, &[Role::Writer], "hand a segment truncations")?;
        }
        let request = request.into_inner();
        let (key, membership) = request::segment_key(request.segment.as_ref())
            .and_then(|key| Ok((key, request::membership(request.membership.as_ref())?)))
            .map_err(|e| status("SegmentState", e))?;
        if request.seal_epoch == 0 {
            crate::members::check(
                &key,
                self.store.membership(&key).as_ref(),
                membership.as_ref(),
            )
            .map_err(|e| status("SegmentState", e))?;
        }
        let learn = request::truncations(&request.learn)
            .and_then(|learn| {
                if request.seal_epoch > 0 {
                    request::history_not_newer(&learn, Epoch(request.seal_epoch))?;
                }
                Ok(learn)
            })
            .map_err(|e| status("SegmentState", e))?;
        if request.seal_epoch > 0 {
            self.store
                .seal(key.clone(), Epoch(request.seal_epoch), membership)
                .await
                .map_err(|e| status("SegmentState", e))?;
        }
        self.store
            .learn_truncations(
                &key,
                &learn,
                (request.seal_epoch > 0).then_some(Epoch(request.seal_epoch)),
            )
            .await
            .map_err(|e| status("SegmentState", e))?;
        let state = self.store.segment_state(&key);
        let held = self.store.held_membership(&key).map(|h| h.to_wire());
        Ok(Response::new(SegmentStateResponse {
            exists: state.exists,
            scl: state.scl.0,
            max_lsn: state.max_lsn.0,
            epoch: state.epoch.0,
            truncations: request::truncations_to_wire(&state.truncations),
            membership: held.as_ref().and_then(|h| h.current.clone()),
            membership_base: held.as_ref().and_then(|h| h.base.clone()),
            membership_ballot: held.as_ref().and_then(|h| h.accepted),
            promised_epoch: held.as_ref().map_or(0, |h| h.promised_epoch),
            promised: held.and_then(|h| h.promised),
        }))
    }

    async fn open_segment(
        &self,
        request: Request<OpenSegmentRequest>,
    ) -> Result<Response<OpenSegmentResponse>, Status> {
        let request = request.into_inner();
        let (key, history, peers, membership) = request::segment_key(request.segment.as_ref())
            .and_then(|key| {
                let history = request::truncations(&request.history)?;
                let membership = request::membership(request.membership.as_ref())?;
                Ok((key, history, request::peers(&request.peers)?, membership))
            })
            .map_err(|e| status("OpenSegment", e))?;
        let scl = self
            .store
            .open_segment(
                key,
                Epoch(request.epoch),
                Lsn(request.truncate_after),
                history,
                peers,
                membership,
            )
            .await
            .map_err(|e| status("OpenSegment", e))?;
        Ok(Response::new(OpenSegmentResponse { scl: scl.0 }))
    }

    async fn put_volume_meta(
        &self,
        request: Request<PutVolumeMetaRequest>,
    ) -> Result<Response<PutVolumeMetaResponse>, Status> {
        let meta = request
            .into_inner()
            .meta
            .ok_or_else(|| StoreError::InvalidArgument("request carries no volume metadata".into()))
            .and_then(|meta| request::volume_meta(&meta).map(|()| meta))
            .map_err(|e| status("PutVolumeMeta", e))?;
        let version = self
            .store
            .put_meta(meta)
            .await
            .map_err(|e| status("PutVolumeMeta", e))?;
        Ok(Response::new(PutVolumeMetaResponse { version }))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        let request = request.into_inner();
        let parsed = (|| {
            let key = request::segment_key(request.segment.as_ref())?;
            let base = request::membership(request.base.as_ref())?;
            let proposed = request::membership(request.proposed.as_ref())?;
            let (Some(base), Some(proposed)) = (base, proposed) else {
                return Err(StoreError::InvalidArgument(
                    "a membership change names its base and its proposal".into(),
                ));
            };
            let superseded = request::membership(request.superseded.as_ref())?;
            let ballot = request.ballot.as_ref().map(|b| Ballot::from_wire(Some(b)));
            let mode = match (request.catch_up, superseded, ballot) {
                (false, None, None) => ChangeMode::Step,
                (true, None, ballot) => ChangeMode::CatchUp(ballot.unwrap_or(Ballot::FAST)),
                (false, Some(superseded), None) => ChangeMode::Supersede(superseded),
                (false, None, Some(ballot)) => ChangeMode::Accept(ballot),
                _ => {
                    return Err(StoreError::InvalidArgument(
                        "a membership change is one of a step, a catch-up, a supersede or a \
                         collision-recovery accept"
                            .into(),
                    ))
                }
            };
            Ok((key, base, proposed, request::peers(&request.peers)?, mode))
        })()
        .map_err(|e| status("ChangeMembership", e))?;
        let (key, base, proposed, peers, mode) = parsed;
        // A catch-up names the round its membership was established in: the fast round, a
        // writer's (learned), or a round of a node of the cluster.
        match &mode {
            ChangeMode::Accept(ballot) => Some(*ballot),
            ChangeMode::CatchUp(ballot) => {
                Some(*ballot).filter(|b| *b != Ballot::FAST && *b != Ballot::LEARNED)
            }
            ChangeMode::Step | ChangeMode::Supersede(_) => None,
        }
        .map_or(Ok(()), |ballot| self.check_round(&key, ballot))
        .map_err(|e| status("ChangeMembership", e))?;
        // A node joining the PG must be an active node of the cluster (as this node's copy of
        // the node list has it); every other one must at least be known.
        if let Some(list) = self.store.node_list() {
            for node in proposed.nodes() {
                let joining = !base.contains(node) && !matches!(mode, ChangeMode::CatchUp(_));
                let known = list.get(node).is_some_and(|n| {
                    !joining || n.state == sixfold_proto::nodes::NodeState::Active
                });
                if !known {
                    let what = if joining {
                        "an active node of the cluster"
                    } else {
                        "in the cluster's node list"
                    };
                    return Err(status(
                        "ChangeMembership",
                        StoreError::InvalidArgument(format!("segment {key}: {node} is not {what}")),
                    ));
                }
            }
        }
        let changed = self
            .store
            .change_membership(key, base, proposed, peers, Lsn(request.catch_up_to), mode)
            .await
            .map_err(|e| status("ChangeMembership", e))?;
        Ok(Response::new(ChangeMembershipResponse {
            scl: changed.scl.0,
            holds: changed.holds.is_some(),
            held_ballot: changed.holds.and_then(Ballot::to_wire),
        }))
    }

    async fn promise_membership(
        &self,
        request: Request<PromiseMembershipRequest>,
    ) -> Result<Response<PromiseMembershipResponse>, Status> {
        let request = request.into_inner();
        let parsed = (|| {
            let key = request::segment_key(request.segment.as_ref())?;
            let base = request::membership(request.base.as_ref())?.ok_or_else(|| {
                StoreError::InvalidArgument("a promise names the membership it is from".into())
            })?;
            let ballot = Ballot::from_wire(request.ballot.as_ref());
            Ok((key, base, ballot))
        })()
        .map_err(|e| status("PromiseMembership", e))?;
        let (key, base, ballot) = parsed;
        self.check_round(&key, ballot)
            .map_err(|e| status("PromiseMembership", e))?;
        let vote = self
            .store
            .promise_membership(key, base, ballot)
            .await
            .map_err(|e| status("PromiseMembership", e))?;
        Ok(Response::new(PromiseMembershipResponse {
            membership: vote.as_ref().map(|(m, _)| m.to_wire()),
            accepted: vote.and_then(|(_, b)| b.to_wire()),
        }))
    }

    async fn put_pg_membership(
        &self,
        request: Request<PutPgMembershipRequest>,
    ) -> Result<Response<PutPgMembershipResponse>, Status> {
        let request = request.into_inner();
        let parsed = (|| {
            request::volume_name(&request.volume)?;
            let membership =
                request::membership(request.membership.as_ref())?.ok_or_else(|| {
                    StoreError::InvalidArgument("the request carries no membership".into())
                })?;
            Ok((membership, request::peers(&request.nodes)?))
        })()
        .map_err(|e| status("PutPgMembership", e))?;
        let (membership, nodes) = parsed;
        let epoch = self
            .store
            .merge_pg_membership(&request.volume, PgId(request.pg), membership, nodes)
            .await
            .map_err(|e| status("PutPgMembership", e))?;
        Ok(Response::new(PutPgMembershipResponse { epoch }))
    }

    async fn get_volume_meta(
        &self,
        request: Request<GetVolumeMetaRequest>,
    ) -> Result<Response<GetVolumeMetaResponse>, Status> {
        let name = request.into_inner().name;
        request::volume_name(&name).map_err(|e| status("GetVolumeMeta", e))?;
        Ok(Response::new(GetVolumeMetaResponse {
            meta: self.store.get_meta(&name),
        }))
    }

    type RestoreSegmentStream = ReceiverStream<Result<RestoreSegmentProgress, Status>>;

    async fn restore_segment(
        &self,
        request: Request<RestoreSegmentRequest>,
    ) -> Result<Response<Self::RestoreSegmentStream>, Status> {
        let job = crate::restore::RestoreJob::parse(&request.into_inner())
            .map_err(|e| status("RestoreSegment", e))?;
        let Some(objects) = self.objects.clone() else {
            return Err(Status::failed_precondition(
                "this node has no backup store (start it with --backup)",
            ));
        };
        let Some(admitted) = self.restores.admit() else {
            return Err(Status::resource_exhausted(format!(
                "this node already runs {} restores and keeps {} waiting: try again later",
                crate::restore::RESTORES_RUNNING_MAX,
                crate::restore::RESTORES_WAITING_MAX
            )));
        };
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(crate::restore::run(
            self.store.clone(),
            objects,
            job,
            sender,
            self.restores.clone(),
            admitted,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_node_list(
        &self,
        _request: Request<GetNodeListRequest>,
    ) -> Result<Response<GetNodeListResponse>, Status> {
        let list = self.store.node_list().map(|l| l.to_wire());
        Ok(Response::new(GetNodeListResponse { list }))
    }

    async fn put_node_list(
        &self,
        request: Request<PutNodeListRequest>,
    ) -> Result<Response<PutNodeListResponse>, Status> {
        let writer = access::role(&request) == Some(Role::Writer);
        let list = request
            .into_inner()
            .list
            .ok_or_else(|| StoreError::InvalidArgument("request carries no node list".into()))
            .and_then(|list| {
                NodeList::from_wire(&list).map_err(|e| StoreError::InvalidArgument(e.to_string()))
            })
            .map_err(|e| status("PutNodeList", e))?;
        // A writer may only create the list (version 1, from its cluster file, on a cluster
        // that has none): a node holding any list keeps it, so two writers creating it at once
        // both succeed, and neither can change a list. Changing it is an admin's command.
        if writer && list.version != 1 {
            return Err(Status::permission_denied(
                "a certificate of role writer may only create the node list (version 1), not \
                 change it (use `sixfold cluster` with an admin certificate)",
            ));
        }
        let version = self
            .store
            .put_node_list(list)
            .await
            .map_err(|e| status("PutNodeList", e))?;
        Ok(Response::new(PutNodeListResponse { version }))
    }

    async fn rotate_keys(
        &self,
        _request: Request<RotateKeysRequest>,
    ) -> Result<Response<RotateKeysResponse>, Status> {
        let keys = self.store.rotate_keys().await.map_err(|e| e.to_status())?;
        info!(
            keys = keys.len(),
            "rotated the data keys at an admin's request"
        );
        Ok(Response::new(RotateKeysResponse {
            keys: keys.into_iter().map(key_state).collect(),
        }))
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        let snapshot = self.store.status();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let (backup_store, archived_objects, archived_bytes) = self.store.backup_totals();
        let writer_vdls: std::collections::HashMap<String, u64> = snapshot
            .volumes
            .iter()
            .map(|(name, state)| (name.clone(), state.writer_vdl.0))
            .collect();
        Ok(Response::new(NodeStatusResponse {
            az: self.az.clone(),
            segments: snapshot
                .segments
                .into_iter()
                .map(|(key, summary)| {
                    let archive = self.store.archive_status(&key, now_us);
                    let repair_blocked = self.store.repair_blocked(&key).unwrap_or_default();
                    let member = self
                        .store
                        .membership(&key)
                        .is_none_or(|m| m.contains(self.store.node_id()));
                    let catch_up = self.store.catch_up(&key);
                    SegmentStatus {
                        writer_vdl: writer_vdls.get(&key.volume).copied().unwrap_or(0),
                        segment: Some(SegmentRef {
                            volume: key.volume,
                            pg: key.pg.0,
                        }),
                        scl: summary.scl.0,
                        max_lsn: summary.max_lsn.0,
                        records: summary.records,
                        bytes: summary.bytes,
                        archived_lsn: archive.archived.0,
                        archiver: archive.archiver,
                        archive_lag_ms: archive.lag_ms,
                        archive_error: archive.error.unwrap_or_default(),
                        repair_blocked,
                        member,
                        catch_up_bytes: catch_up.map_or(0, |c| c.bytes),
                        catch_up_done_ppm: catch_up.map_or(0, |c| (c.done * 1e6) as u32),
                        catch_up_ms: catch_up.map_or(0, |c| c.since.elapsed().as_millis() as u64),
                    }
                })
                .collect(),
            backup_store: backup_store.unwrap_or_default(),
            archived_objects,
            archived_bytes,
            hot_log_bytes: snapshot.log_bytes,
            hot_log_written_bytes: snapshot.log_written_bytes,
            node_id: self.store.node_id().0,
            encryption: self.store.encryption_status(),
            node_list_version: self.store.node_list().map_or(0, |l| l.version),
            page_store_bytes: snapshot.page_store_bytes,
            gap_fill_records: snapshot.gap_fill_records,
            gap_fill_bytes: snapshot.gap_fill_bytes,
            hydrated_bytes: snapshot.hydrated_bytes,
            log_error: snapshot.log_error.unwrap_or_default(),
            corrupt_found: snapshot.corrupt_found,
            corrupt_repaired: snapshot.corrupt_repaired,
            appends_held_ms: snapshot.appends_held_ms,
            volumes: snapshot
                .volumes
                .into_iter()
                .map(|(volume, state)| VolumeWriterState {
                    volume,
                    epoch: state.epoch.0,
                    writer_vcl: state.writer_vcl.0,
                    writer_vdl: state.writer_vdl.0,
                })
                .collect(),
        }))
    }
}

fn key_state(key: crate::keyring::CurrentKey) -> DataKeyState {
    DataKeyState {
        scope: key.scope,
        key: key.key.hex(),
        generation: key.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use sixfold_proto::wire::SegmentRef;

    fn heartbeat() -> AppendRequest {
        AppendRequest {
            segment: Some(SegmentRef {
                volume: "v".into(),
                pg: 0,
            }),
            epoch: 1,
            ..AppendRequest::default()
        }
    }

    const SHORT: Duration = Duration::from_millis(200);

    /// A client that opens an append stream and sends nothing: the node ends the stream after
    /// the idle bound (cleanly, the client sees its end), instead of holding it for ever.
    #[tokio::test]
    async fn an_idle_append_stream_is_ended() {
        let temp = TempDir::new("stream-idle");
        let store = Store::open(temp.path()).expect("store").0;
        let (_requests, inbound) = mpsc::channel::<Result<AppendRequest, Status>>(4);
        let (responses, mut answers) = mpsc::channel(APPEND_STREAM_IN_FLIGHT_MAX);
        let served = serve_append_stream(
            store.clone(),
            ReceiverStream::new(inbound),
            responses,
            SHORT,
            SHORT,
        );
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the idle stream ended");
        assert!(
            answers.recv().await.is_none(),
            "the stream ends without an answer"
        );
        store.close().await;
    }

    /// A client that sends batches and never reads the answers: the node ends the stream once
    /// an answer has waited for the stall bound, and takes no more of its batches.
    #[tokio::test]
    async fn an_append_stream_whose_client_stops_reading_is_ended() {
        let temp = TempDir::new("stream-stall");
        let store = Store::open(temp.path()).expect("store").0;
        let (requests, inbound) = mpsc::channel::<Result<AppendRequest, Status>>(64);
        for _ in 0..8 {
            requests.send(Ok(heartbeat())).await.expect("queued");
        }
        let (responses, mut answers) = mpsc::channel(1);
        let served = serve_append_stream(
            store.clone(),
            ReceiverStream::new(inbound),
            responses,
            Duration::from_secs(3600),
            SHORT,
        );
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stalled stream ended");
        // The one answer the channel held, then the end.
        assert!(matches!(answers.recv().await, Some(Ok(_))));
        assert!(answers.recv().await.is_none());
        assert!(requests.is_closed(), "the node stopped reading the stream");
        store.close().await;
    }
}
