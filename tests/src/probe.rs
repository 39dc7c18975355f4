//! Asks one storage node directly over gRPC, for tests that check what the node itself holds and
//! serves (not what the writer reads through the quorum).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    NodeStatusRequest, NodeStatusResponse, ReadPageRequest, SegmentRef, SegmentStateRequest,
};
use tonic::transport::Channel;

/// A blocking client of one node, for the segments of one volume.
pub struct NodeProbe {
    runtime: tokio::runtime::Runtime,
    client: StorageNodeClient<Channel>,
    volume: String,
}

impl NodeProbe {
    pub fn connect(addr: SocketAddr, volume: &str) -> Result<NodeProbe> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(StorageNodeClient::connect(format!("http://{addr}")))?
            .max_decoding_message_size(64 << 20);
        Ok(NodeProbe {
            runtime,
            client,
            volume: volume.to_owned(),
        })
    }

    fn segment(&self, pg: u32) -> Option<SegmentRef> {
        Some(SegmentRef {
            volume: self.volume.clone(),
            pg,
        })
    }

    /// The node's SCL for PG `pg` of the volume.
    pub fn scl(&mut self, pg: u32) -> Result<u64> {
        let request = SegmentStateRequest {
            segment: self.segment(pg),
            seal_epoch: 0,
            learn: vec![],
            membership: None,
        };
        let state = self.runtime.block_on(self.client.segment_state(request))?;
        Ok(state.into_inner().scl)
    }

    /// Waits until the node's SCL for `pg` reaches `target`; returns it. Fails after `timeout`,
    /// saying where it stopped.
    pub fn wait_for_scl(&mut self, pg: u32, target: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let scl = self.scl(pg)?;
            if scl >= target {
                return Ok(scl);
            }
            if Instant::now() >= deadline {
                bail!("SCL of PG {pg} stuck at {scl}, short of {target}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Page `page` as the node serves it as of `lsn` (also the SCL it must have).
    pub fn page(&mut self, pg: u32, page: u64, lsn: u64) -> Result<Vec<u8>> {
        let request = ReadPageRequest {
            segment: self.segment(pg),
            page,
            read_lsn: lsn,
            required_scl: lsn,
            ..Default::default()
        };
        let response = self.runtime.block_on(self.client.read_page(request))?;
        Ok(response.into_inner().data.to_vec())
    }

    pub fn status(&mut self) -> Result<NodeStatusResponse> {
        let response = self
            .runtime
            .block_on(self.client.node_status(NodeStatusRequest {}))?;
        Ok(response.into_inner())
    }
}
