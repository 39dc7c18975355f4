//! Issue 3, test 5: MariaDB (Debian's mariadb-server, its own datadir and socket on the volume,
//! never the system instance) on `sixfold up`: install the datadir, create a table, insert and
//! read back rows, stop and start it, read them again and `CHECK TABLE`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sixfold_tests::{log_tail, require_fuse, run, test_dir, Up};

struct Mariadb {
    datadir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mariadb {
    fn start(datadir: &Path, socket: &Path, log: &Path) -> anyhow::Result<Mariadb> {
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                datadir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--user=root",
                "--skip-networking",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
                "--innodb-flush-log-at-trx-commit=1",
                "--sync-binlog=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mariadbd (installed by scripts/setup.sh)")?;
        let mut db = Mariadb {
            datadir: datadir.to_owned(),
            socket: socket.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if db.sql("SELECT 1").is_ok() {
                return Ok(db);
            }
            if let Some(child) = db.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("mariadbd exited with {status}:\n{}", log_tail(&db.log, 40));
                }
            }
            if Instant::now() > deadline {
                bail!("mariadbd did not start:\n{}", log_tail(&db.log, 40));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn sql(&self, statements: &str) -> anyhow::Result<String> {
        run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", statements]))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        run(Command::new("mariadb-admin")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "shutdown"]))?;
        if let Some(mut child) = self.child.take() {
            let status = child.wait()?;
            assert!(status.success(), "mariadbd exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = &self.datadir;
    }
}

#[test]
fn mariadb_on_sixfold_up() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("mariadb_on_up");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &dir.join("state"), "8G")?;
    let datadir = mnt.join("mysql");
    let socket = mnt.join("mariadb.sock");
    let log = dir.join("mariadb.log");
    run(Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]))?;

    let db = Mariadb::start(&datadir, &socket, &log)?;
    db.sql(
        "CREATE DATABASE app; \
         CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, pad BLOB) ENGINE=InnoDB;",
    )?;
    let rows = 2000;
    for chunk in 0..(rows / 100) {
        let mut statement = String::from("INSERT INTO app.t VALUES ");
        for i in chunk * 100..(chunk + 1) * 100 {
            if i > chunk * 100 {
                statement.push(',');
            }
            statement.push_str(&format!("({i}, 'row-{i}', REPEAT('x', 500))"));
        }
        db.sql(&statement)?;
    }
    // Single-row commits too, each its own transaction.
    for i in rows..rows + 200 {
        db.sql(&format!("INSERT INTO app.t VALUES ({i}, 'row-{i}', NULL)"))?;
    }
    let expected = format!("{}\t{}", rows + 200, (0..rows + 200).sum::<i32>());
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    db.stop()?;

    // Start it again on the same datadir: the rows are there and the table checks out.
    let db = Mariadb::start(&datadir, &socket, &log)?;
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    assert_eq!(
        db.sql("SELECT v FROM app.t WHERE id = 1234")?.trim(),
        "row-1234"
    );
    let check = db.sql("CHECK TABLE app.t")?;
    assert!(check.contains("status\tOK"), "CHECK TABLE: {check}");
    db.stop()?;

    // And after the whole setup went down and came back.
    up.restart()?;
    let db = Mariadb::start(&datadir, &socket, &log)?;
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    db.stop()?;
    Ok(())
}
