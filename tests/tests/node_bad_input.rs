//! Issue 3, test 6: a node given garbage answers an error and keeps serving: raw bytes that are
//! not HTTP/2, a gRPC call whose body is not a valid protobuf message, records with a bad
//! checksum, a page past the largest volume, a page outside its PG, a stale epoch, an oversized
//! message, a read of a segment the node does not host.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use sixfold_proto::record::seal;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    AppendRequest, ByteRange, OpenSegmentRequest, ReadPageRequest, SegmentRef,
};
use sixfold_proto::{Epoch, Lsn, PageId, PG_PAGES};
use sixfold_tests::{sixfold_bin, test_dir, Cluster};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

/// Sends raw bytes as a gRPC message body, whatever they are.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

fn segment(pg: u32) -> Option<SegmentRef> {
    Some(SegmentRef {
        volume: "bad".into(),
        pg,
    })
}

fn page_record(
    lsn: u64,
    backlink: u64,
    epoch: u64,
    page: u64,
    fill: u8,
) -> sixfold_proto::wire::Record {
    seal(
        Lsn(lsn),
        Lsn(backlink),
        Epoch(epoch),
        PageId(page),
        vec![ByteRange {
            offset: 0,
            data: Bytes::from(vec![fill; 4096]),
        }],
    )
}

fn append(pg: u32, epoch: u64, records: Vec<sixfold_proto::wire::Record>) -> AppendRequest {
    AppendRequest {
        segment: segment(pg),
        epoch,
        records,
        peers: vec![],
        writer_vcl: 0,
        writer_vdl: 0,
        pgcl: 0,
        fold_limit: 0,
        truncations: vec![],
        ..AppendRequest::default()
    }
}

async fn expect_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
) {
    match result {
        Ok(response) => panic!("{what}: expected {code:?}, got a success: {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(
                !status.message().is_empty(),
                "{what}: the error must say what is wrong"
            );
            eprintln!("{what}: {:?}: {}", status.code(), status.message());
        }
    }
}

async fn still_serves(client: &mut StorageNodeClient<Channel>, lsn: u64, backlink: u64) {
    let scl = client
        .append(append(
            0,
            1,
            vec![page_record(lsn, backlink, 1, 5, lsn as u8)],
        ))
        .await
        .expect("a valid append after bad input")
        .into_inner()
        .scl;
    assert_eq!(scl, lsn);
    let page = client
        .read_page(ReadPageRequest {
            segment: segment(0),
            page: 5,
            read_lsn: lsn,
            required_scl: lsn,
            ..Default::default()
        })
        .await
        .expect("a valid read after bad input")
        .into_inner()
        .data;
    assert!(page.iter().all(|b| *b == lsn as u8));
}

#[test]
fn node_answers_garbage_with_errors_and_keeps_serving() -> anyhow::Result<()> {
    assert!(sixfold_bin().exists(), "build the sixfold binary first");
    let dir = test_dir("node_bad_input");
    let cluster = Cluster::start(&dir, 1)?;
    let addr = cluster.nodes[0].addr;

    // Not HTTP/2 at all.
    let mut raw = TcpStream::connect(addr)?;
    raw.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage garbage");
    drop(raw);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut client =
            StorageNodeClient::new(channel.clone()).max_encoding_message_size(128 << 20);
        still_serves(&mut client, 1, 0).await;

        // A body that is not a protobuf message.
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/sixfold.v1.StorageNode/Append");
        let garbage = Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage");
        let result = grpc
            .unary(tonic::Request::new(garbage), path, RawCodec)
            .await;
        let status = result.expect_err("a malformed message must be refused");
        eprintln!(
            "malformed protobuf: {:?}: {}",
            status.code(),
            status.message()
        );
        assert_ne!(status.code(), Code::Ok);

        // A record whose bytes were changed after its checksum was computed.
        let mut corrupt = page_record(2, 1, 1, 5, 9);
        corrupt.ranges[0].data = Bytes::from(vec![8u8; 4096]);
        expect_code(
            "bad checksum",
            client.append(append(0, 1, vec![corrupt])).await,
            Code::InvalidArgument,
        )
        .await;

        // A page past the largest volume (64 TiB = 6554 PGs).
        let far_pg = 10_000u32;
        let far = page_record(2, 1, 1, u64::from(far_pg) * PG_PAGES, 1);
        expect_code(
            "page past the volume",
            client.append(append(far_pg, 1, vec![far])).await,
            Code::InvalidArgument,
        )
        .await;

        // A record of another PG than its batch says.
        let wrong_pg = page_record(2, 1, 1, PG_PAGES + 1, 1);
        expect_code(
            "page outside its PG",
            client.append(append(0, 1, vec![wrong_pg])).await,
            Code::InvalidArgument,
        )
        .await;

        // Reads: a segment that is not hosted, a page outside the PG.
        let read = |pg: u32, page: u64| ReadPageRequest {
            segment: Some(SegmentRef {
                volume: "nosuchvolume".into(),
                pg,
            }),
            page,
            read_lsn: 1,
            required_scl: 0,
            ..Default::default()
        };
        expect_code(
            "read of a segment not hosted",
            client.read_page(read(0, 1)).await,
            Code::NotFound,
        )
        .await;
        let outside = ReadPageRequest {
            segment: segment(0),
            page: PG_PAGES * 3,
            read_lsn: 1,
            required_scl: 0,
            ..Default::default()
        };
        expect_code(
            "read of a page outside the PG",
            client.read_page(outside).await,
            Code::InvalidArgument,
        )
        .await;

        // An oversized message (past the node's 64 MiB limit).
        let huge: Vec<_> = (0..17_000u64)
            .map(|i| page_record(10 + i, 9 + i, 1, 7, 1))
            .collect();
        let result = client.append(append(0, 1, huge)).await;
        let status = result.expect_err("an oversized message must be refused");
        eprintln!("oversized: {:?}: {}", status.code(), status.message());

        // A stale epoch after a newer writer opened the segment.
        client
            .open_segment(OpenSegmentRequest {
                segment: segment(0),
                epoch: 5,
                truncate_after: 1,
                history: vec![],
                peers: vec![],
                membership: None,
            })
            .await?;
        let stale = page_record(2, 1, 1, 5, 3);
        let result = client.append(append(0, 1, vec![stale])).await;
        expect_code("stale epoch", result, Code::FailedPrecondition).await;

        // Still serving, in the new epoch.
        let scl = client
            .append(append(
                0,
                5,
                vec![seal(
                    Lsn(3),
                    Lsn(1),
                    Epoch(5),
                    PageId(5),
                    vec![ByteRange {
                        offset: 0,
                        data: Bytes::from(vec![3u8; 4096]),
                    }],
                )],
            ))
            .await?
            .into_inner()
            .scl;
        assert_eq!(scl, 3);
        anyhow::Ok(())
    })?;
    let log = std::fs::read_to_string(&cluster.nodes[0].log)?;
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    Ok(())
}
