//! Issue 16, test 1: mutual TLS with certificate roles, on real nodes.
//!
//! A cluster whose nodes, writer and admin commands each hold a certificate of the cluster's CA:
//! the right certificates work end to end (a mount writes and reads back, `sixfold status`
//! answers). A client without a certificate, with another CA's or an expired one is refused in
//! the TLS handshake, with the reason in the client's error and in the node's log; a client
//! with a certificate of the wrong role is refused per call (a writer cannot fetch pages as a
//! peer, an admin cannot append, only a writer may seal, a writer may not change the node list);
//! a plaintext client gets nowhere, and a command with no certificate and no `--insecure` says
//! what it needs.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    AppendRequest, FetchPagesRequest, GetNodeListRequest, NodeStatusRequest, PutNodeListRequest,
    SegmentStateRequest, Truncation,
};
use sixfold_tests::{log_tail, pattern, require_fuse, sixfold_bin, test_dir, Cluster, Mount};
use sixfold_transport::{ca, ChannelOptions, Role, Security, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

/// A client certificate and key (none: no certificate).
type Identity<'a> = Option<(&'a Path, &'a Path)>;

fn files(tls: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: tls.join("ca.pem"),
        cert: tls.join(format!("{name}.pem")),
        key: tls.join(format!("{name}.key")),
    }
}

fn client(addr: &str, security: &Security) -> Result<StorageNodeClient<Channel>> {
    let options = ChannelOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Some(Duration::from_secs(10)),
        keep_alive: None,
    };
    Ok(StorageNodeClient::new(sixfold_transport::channel(
        addr, security, options,
    )?))
}

/// What a node answers an append connection of `security`'s certificate that sends one batch:
/// the status of the refusal it must send (on the connection, or on the batch).
async fn append_wire_refusal(addr: &str, security: &Security) -> Result<tonic::Status> {
    use sixfold_transport::frames::{self, Kind};
    let mut io = sixfold_transport::connect_append(addr, security, Duration::from_secs(5)).await?;
    let mut out = bytes::BytesMut::new();
    frames::encode_message(&mut out, Kind::Append, 1, &AppendRequest::default());
    // The node may close the connection before it reads the batch: a failed write is fine.
    let _ = io.write_all(&out).await;
    let mut buffer = bytes::BytesMut::new();
    loop {
        if let Some(frame) = frames::decode(&mut buffer)? {
            ensure!(
                frame.kind == Kind::Refused,
                "the node answered {:?}",
                frame.kind
            );
            return Ok(frames::decode_refusal(frame.payload));
        }
        let read = tokio::time::timeout(Duration::from_secs(5), io.read_buf(&mut buffer))
            .await
            .context("no answer on the append wire within 5 s")??;
        ensure!(
            read > 0,
            "the node closed the append connection without a refusal"
        );
    }
}

fn as_role(tls: &Path, name: &str) -> Result<Security> {
    Ok(Security::load(&files(tls, name))?)
}

/// A TLS 1.3 handshake with the node as a raw rustls client holding `identity` (none: no
/// certificate), then one write and one read, where a TLS 1.3 server's verdict on the client's
/// certificate arrives. Returns the client's error, if any.
async fn raw_handshake(addr: &str, cluster_ca: &Path, identity: Identity<'_>) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster_ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs"),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => return Some(format!("tcp: {e}")),
    };
    let name = ServerName::try_from(Role::Node.subject_name()).expect("name");
    let mut stream = match connector.connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return Some(e.to_string()),
    };
    if let Err(e) = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
        return Some(e.to_string());
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Err(_) => Some("timed out".into()),
        Ok(Err(e)) => Some(e.to_string()),
        Ok(Ok(0)) => Some("closed".into()),
        Ok(Ok(_)) => None,
    }
}

#[test]
fn certificates_and_roles_are_checked() -> Result<()> {
    require_fuse();
    let dir = test_dir("tls_roles");
    let cluster = Cluster::start_tls(&dir, 6)?;
    let tls = cluster.tls.clone().context("a TLS cluster")?;

    // The right certificates work end to end.
    let mount = Mount::start(&cluster, "secure", "1G", &dir.join("mnt"))?;
    let volume = mount.open_volume()?;
    let data = pattern(16, 1 << 20);
    volume.write_all_at(&data, 4096)?;
    volume.sync_all()?;
    let mut back = vec![0u8; data.len()];
    volume.read_exact_at(&mut back, 4096)?;
    ensure!(back == data, "read back over TLS differs");
    let status = cluster.status("secure")?;
    ensure!(status["exists"] == true, "admin status over TLS: {status}");

    let runtime = tokio::runtime::Runtime::new()?;
    let addr = cluster.nodes[0].addr.to_string();
    let node_log = cluster.nodes[0].log.clone();

    // Refused in the handshake, with the reason on both sides.
    let other = dir.join("other-ca");
    ca::init(&other)?;
    let stranger = ca::issue(
        &other,
        Role::Admin,
        "stranger",
        ca::Validity::days(1),
        &other,
    )?;
    let now = time::OffsetDateTime::now_utc();
    let expired = ca::issue(
        &tls,
        Role::Admin,
        "expired",
        ca::Validity {
            not_before: now - Duration::from_secs(2 * 86400),
            not_after: now - Duration::from_secs(86400),
        },
        &tls,
    )?;
    let ca_file = tls.join("ca.pem");
    let cases: [(&str, Identity<'_>, &str); 3] = [
        ("no certificate", None, "CertificateRequired"),
        (
            "another CA's certificate",
            Some((&stranger.cert, &stranger.key)),
            "UnknownCA",
        ),
        (
            "an expired certificate",
            Some((&expired.cert, &expired.key)),
            "CertificateExpired",
        ),
    ];
    for (what, identity, alert) in cases {
        let error = runtime
            .block_on(raw_handshake(&addr, &ca_file, identity))
            .with_context(|| format!("a client with {what} must be refused"))?;
        ensure!(
            error.contains(alert),
            "a client with {what} is refused naming why ({alert}): {error}"
        );
    }
    // The client sees the alert before the node has written its log line: wait for it.
    for reason in [
        "peer sent no certificates",
        "UnknownIssuer",
        "certificate expired",
    ] {
        let logged = sixfold_tests::wait_for(
            &format!("the node's log line for {reason}"),
            std::time::Duration::from_secs(10),
            || {
                std::fs::read_to_string(&node_log).is_ok_and(|log| {
                    log.lines()
                        .any(|l| l.contains("refused a connection") && l.contains(reason))
                })
            },
        );
        ensure!(
            logged.is_ok(),
            "the node logs a refusal naming {reason}:\n{}",
            log_tail(&node_log, 20)
        );
    }

    // Refused per call for the wrong role; the right role gets through the check.
    runtime.block_on(async {
        let writer = as_role(&tls, "writer")?;
        let admin = as_role(&tls, "admin")?;
        let node = as_role(&tls, "node-1")?;
        let refused = client(&addr, &writer)?
            .fetch_pages(FetchPagesRequest::default())
            .await
            .err()
            .context("a writer certificate must not fetch pages as a peer")?;
        ensure!(refused.code() == Code::PermissionDenied, "{refused:?}");
        ensure!(
            refused
                .message()
                .contains("role writer may not call FetchPages"),
            "{refused:?}"
        );
        let as_peer = client(&addr, &node)?
            .fetch_pages(FetchPagesRequest::default())
            .await
            .err();
        ensure!(
            as_peer.as_ref().is_none_or(
                |s| s.code() != Code::PermissionDenied && s.code() != Code::Unauthenticated
            ),
            "a node certificate passes the access check: {as_peer:?}"
        );
        let refused = client(&addr, &admin)?
            .append(AppendRequest::default())
            .await
            .err()
            .context("an admin certificate must not append")?;
        ensure!(refused.code() == Code::PermissionDenied, "{refused:?}");
        // Nor on the append wire, where the role is checked once per connection.
        let refused = append_wire_refusal(&addr, &admin).await?;
        ensure!(
            refused.code() == Code::PermissionDenied && refused.message().contains("role admin"),
            "{refused:?}"
        );
        let refused = client(&addr, &node)?
            .segment_state(SegmentStateRequest {
                seal_epoch: 1 << 40,
                ..Default::default()
            })
            .await
            .err()
            .context("a node certificate must not seal (advance an epoch)")?;
        ensure!(
            refused.code() == Code::PermissionDenied && refused.message().contains("seal"),
            "{refused:?}"
        );
        let refused = client(&addr, &node)?
            .segment_state(SegmentStateRequest {
                learn: vec![Truncation {
                    epoch: u64::MAX,
                    truncate_after: 0,
                }],
                ..Default::default()
            })
            .await
            .err()
            .context("a node certificate must not hand a segment truncations")?;
        ensure!(
            refused.code() == Code::PermissionDenied && refused.message().contains("truncations"),
            "{refused:?}"
        );
        let held = client(&addr, &admin)?
            .get_node_list(GetNodeListRequest {})
            .await?
            .into_inner()
            .list
            .context("the mount created the node list")?;
        let mut changed = held.clone();
        changed.version += 1;
        let refused = client(&addr, &writer)?
            .put_node_list(PutNodeListRequest {
                list: Some(changed),
            })
            .await
            .err()
            .context("a writer must not change the node list")?;
        ensure!(refused.code() == Code::PermissionDenied, "{refused:?}");
        // Creating it (version 1) is the writer's, and a node that holds one keeps it.
        let mut first = held.clone();
        first.version = 1;
        let kept = client(&addr, &writer)?
            .put_node_list(PutNodeListRequest { list: Some(first) })
            .await?
            .into_inner()
            .version;
        ensure!(kept == held.version, "the node keeps its list: {kept}");
        client(&addr, &admin)?
            .node_status(NodeStatusRequest {})
            .await
            .context("an admin asks a node's status")?;
        let plaintext = client(&addr, &Security::Insecure)?
            .node_status(NodeStatusRequest {})
            .await;
        ensure!(
            plaintext.is_err(),
            "a plaintext client gets nowhere with a TLS node"
        );
        anyhow::Ok(())
    })?;

    // A command with neither a certificate nor --insecure says what it needs.
    let plain_cluster = dir.join("plain");
    std::fs::create_dir_all(&plain_cluster)?;
    std::fs::copy(&cluster.cluster_file, plain_cluster.join("cluster.toml"))?;
    let output = std::process::Command::new(sixfold_bin())
        .args(["status", "--volume", "secure", "--cluster"])
        .arg(plain_cluster.join("cluster.toml"))
        .env_remove("SIXFOLD_INSECURE")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("no certificate"),
        "status without a certificate: {stderr}"
    );
    // An expired certificate is refused at the start of the process that holds it.
    let output = std::process::Command::new(sixfold_bin())
        .args(["status", "--volume", "secure", "--cluster"])
        .arg(&cluster.cluster_file)
        .env_remove("SIXFOLD_INSECURE")
        .env("SIXFOLD_TLS_CA", &ca_file)
        .env("SIXFOLD_TLS_CERT", &expired.cert)
        .env("SIXFOLD_TLS_KEY", &expired.key)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("certificate expired"),
        "status with an expired certificate: {stderr}"
    );
    // Certificates and keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(&tls)? {
        let path = entry?.path();
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", path.display());
    }

    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
