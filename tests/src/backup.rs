//! Helpers of the backup tests: consistency points of a raw volume (write rounds, hashes, the
//! LSN and time of each), restores, sixfold commands that must fail, and moto's S3 server.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::Rng;

use crate::{log_tail, pattern, run, Cluster, Mount};

const GIB: u64 = 1 << 30;
/// The regions written: 4 MiB at the start of PGs 0, 1 and 2 (the rest of the volume stays
/// zeros in every version). A volume of [`VOLUME_SIZE`] holds them.
pub const REGIONS: [(u64, u64); 3] = [
    (0, 4 << 20),
    (10 * GIB, 4 << 20),
    (20 * GIB + (1 << 20), 4 << 20),
];
pub const VOLUME_SIZE: &str = "30G";

/// A consistency point as a test saw it: the VDL, a time after it was reached (and before
/// anything later was written), and the hash of the volume there.
#[derive(Clone, Debug)]
pub struct Point {
    pub lsn: u64,
    pub time: SystemTime,
    pub hash: u64,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// Hash of every written region of a mounted volume.
pub fn volume_hash(mount: &Mount) -> Result<u64> {
    let mut file = std::fs::File::open(mount.volume_path())?;
    let mut hash = 0xcbf2_9ce4_8422_2325;
    let mut buffer = vec![0u8; 1 << 20];
    for (offset, len) in REGIONS {
        file.seek(SeekFrom::Start(offset))?;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(buffer.len());
            file.read_exact(&mut buffer[..n])?;
            fnv(&mut hash, &buffer[..n]);
            left -= n;
        }
    }
    Ok(hash)
}

/// The writer's VDL as the nodes report it, once it stops moving (nothing is being written).
pub fn settled_vdl(cluster: &Cluster, volume: &str) -> Result<u64> {
    let mut last = None;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(700));
        let vdl = cluster.status(volume)?["vdl"].as_u64();
        if vdl.is_some() && vdl == last {
            return Ok(vdl.unwrap_or(0));
        }
        last = vdl;
    }
    bail!("the VDL did not settle")
}

/// One round: `writes` random writes into [`REGIONS`], fsync, then the point they make.
pub fn write_round(
    cluster: &Cluster,
    mount: &Mount,
    volume: &str,
    rng: &mut StdRng,
    round: u64,
    writes: usize,
) -> Result<Point> {
    let mut file = mount.open_volume()?;
    for _ in 0..writes {
        let (start, len) = REGIONS[rng.random_range(0..REGIONS.len())];
        let size = rng.random_range(1..=64) * 4096;
        let offset = start + rng.random_range(0..(len - size) / 512) * 512;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&pattern(round * 1000 + offset, size as usize))?;
    }
    file.sync_all()?;
    let time = SystemTime::now();
    let lsn = settled_vdl(cluster, volume)?;
    let hash = volume_hash(mount)?;
    println!("round {round}: LSN {lsn}, hash {hash:016x}");
    Ok(Point { lsn, time, hash })
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    let output = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{}.{:06}", since.as_secs(), since.subsec_micros()))
        .arg("+%Y-%m-%dT%H:%M:%S.%6NZ")
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `sixfold ARGS --cluster FILE`.
pub fn sixfold(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run(crate::sixfold_command()
        .args(args)
        .arg("--cluster")
        .arg(&cluster.cluster_file))
}

/// Runs `sixfold ARGS --cluster FILE`, which must fail; returns its stderr.
pub fn sixfold_fails(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let output = crate::sixfold_command()
        .args(args)
        .arg("--cluster")
        .arg(&cluster.cluster_file)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        bail!(
            "sixfold {args:?} succeeded, expected a failure:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(stderr)
}

/// Requires `stderr` to name `needle`.
pub fn expect_error(stderr: &str, needle: &str) -> Result<()> {
    if !stderr.contains(needle) {
        bail!("expected an error naming {needle:?}, got:\n{stderr}");
    }
    println!("as expected: {}", stderr.trim());
    Ok(())
}

/// Restores volume `source` into `name` (`how`: --to-lsn N, --to-time T or --from SNAPSHOT),
/// mounts it and hashes it.
pub fn restore_and_hash(
    cluster: &Cluster,
    dir: &Path,
    source: &str,
    name: &str,
    how: &[&str],
) -> Result<u64> {
    let mut args = vec!["restore", "--source", source, "--volume", name];
    args.extend_from_slice(how);
    let output = sixfold(cluster, &args).with_context(|| format!("restore {name}"))?;
    println!("{}", output.trim());
    let mount = Mount::start(cluster, name, VOLUME_SIZE, &dir.join(format!("mnt-{name}")))?;
    let hash = volume_hash(&mount)?;
    mount.unmount()?;
    Ok(hash)
}

/// Every file under `dir`, sorted.
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// moto's S3 server (installed by scripts/setup.sh in target/tools/moto), on 127.0.0.1.
pub struct Moto {
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Requests a server from [`Moto::start_with_auth`] lets through unchecked: create a user, an
/// access key, a policy.
const AUTH_FREE_ACTIONS: u32 = 3;

fn moto_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SIXFOLD_MOTO") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/moto")
        .to_owned()
}

impl Moto {
    /// moto's server as its default: it takes any keys.
    pub fn start(dir: &Path) -> Result<Moto> {
        Moto::start_with(dir, &[])
    }

    /// moto's server checking credentials as AWS does (IAM users and their access keys), after
    /// [`AUTH_FREE_ACTIONS`] requests that it lets through: the ones
    /// [`Moto::create_user_with_bucket`] needs to set up a user to check against.
    pub fn start_with_auth(dir: &Path) -> Result<Moto> {
        Moto::start_with(
            dir,
            &[(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                &AUTH_FREE_ACTIONS.to_string(),
            )],
        )
    }

    fn start_with(dir: &Path, envs: &[(&str, &str)]) -> Result<Moto> {
        let bin = moto_dir().join("bin/moto_server");
        if !bin.exists() {
            bail!("{} is missing: run scripts/setup.sh", bin.display());
        }
        let port = crate::free_port("127.0.0.1");
        let log = dir.join("moto.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start moto_server")?;
        let moto = Moto {
            port,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto did not listen:\n{}", log_tail(&moto.log, 20));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// On a server from [`Moto::start_with_auth`]: creates an IAM user allowed every S3 action
    /// and an access key for it (the requests moto lets through unchecked), then, signed with
    /// that key and so checked, a bucket. Returns the key's id and secret.
    pub fn create_user_with_bucket(&self, bucket: &str) -> Result<(String, String)> {
        let python = moto_dir().join("bin/python");
        let script = format!(
            r#"
import boto3, json
kw = dict(endpoint_url="{endpoint}", region_name="us-east-1")
iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
iam.create_user(UserName="sixfold")
key = iam.create_access_key(UserName="sixfold")["AccessKey"]
iam.put_user_policy(UserName="sixfold", PolicyName="s3", PolicyDocument=json.dumps(
    {{"Version": "2012-10-17",
     "Statement": [{{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}}]}}))
s3 = boto3.client("s3", aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"], **kw)
s3.create_bucket(Bucket="{bucket}")
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
            endpoint = self.endpoint()
        );
        let out = run(Command::new(python).arg("-c").arg(script))?;
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned())),
            _ => bail!("no access key in {out:?}"),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket (boto3, from moto's virtualenv).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let python = moto_dir().join("bin/python");
        run(Command::new(python).arg("-c").arg(format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')",
            self.endpoint()
        )))?;
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections open but nothing answers, as a store that is
    /// down looks to its clients. [`Moto::resume`] lets it go on.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the child this value owns.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGSTOP);
            }
        }
    }

    pub fn resume(&self) {
        if let Some(child) = &self.child {
            // SAFETY: as in pause.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.resume_pid(&child);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Moto {
    fn resume_pid(&self, child: &Child) {
        // SAFETY: as in pause.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
        }
    }
}

/// Sets the AWS variables the nodes and the CLI read (they inherit them): moto takes any keys.
pub fn use_test_credentials() {
    use_credentials("test", "test");
}

/// Sets the AWS variables the nodes and the CLI inherit to this key (region us-east-1).
pub fn use_credentials(id: &str, secret: &str) {
    // SAFETY (edition 2021: safe fn): a test binary sets them while no other thread of it reads
    // the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    std::env::set_var("AWS_REGION", "us-east-1");
}
