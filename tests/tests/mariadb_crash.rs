//! Issue 5, test 4: MariaDB under a write load, then kill -9 of everything (the server, the
//! mount, all six nodes), as a power cut would; then `sixfold up` again: InnoDB recovers,
//! `CHECK TABLE` passes and every commit the client saw acknowledged is there.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context};
use sixfold_tests::mariadb::Mariadb;
use sixfold_tests::{require_fuse, test_dir, unmount_lazily, Up};

#[test]
fn mariadb_recovers_every_acknowledged_commit_after_everything_is_killed() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("mariadb_crash");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &dir.join("state"), "8G")?;
    let log = dir.join("mariadb.log");
    let mut db = Mariadb::install_on(&mnt, &log)?;
    let (datadir, socket) = (db.datadir.clone(), db.socket.clone());
    db.sql(
        "CREATE DATABASE app; \
         CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, pad BLOB) ENGINE=InnoDB;",
    )?;

    // One client, one autocommit INSERT per id; it prints the id once the INSERT returned.
    let mut client = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "--batch", "--skip-column-names", "--unbuffered"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the mariadb client")?;
    let mut input = client.stdin.take().context("client stdin")?;
    let output = client.stdout.take().context("client stdout")?;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let reader = {
        let acknowledged = acknowledged.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse::<u64>() {
                    acknowledged.lock().expect("lock").insert(id);
                }
            }
        })
    };
    let writer = std::thread::spawn(move || {
        for id in 0u64.. {
            let statement = format!(
                "INSERT INTO app.t VALUES ({id}, 'row-{id}', REPEAT('x', 300)); SELECT {id};\n"
            );
            if input.write_all(statement.as_bytes()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(4));

    // A power cut: everything dies at once.
    up.kill_everything()?;
    db.kill();
    let _ = client.kill();
    let _ = client.wait();
    let _ = writer.join();
    let _ = reader.join();
    let acknowledged = acknowledged.lock().expect("lock").clone();
    ensure!(
        acknowledged.len() > 10,
        "the load committed only {} rows before the cut",
        acknowledged.len()
    );
    unmount_lazily(&mnt);

    up.restart()
        .context("sixfold up after everything was killed")?;
    let db = Mariadb::start(&datadir, &socket, &log).context("InnoDB crash recovery")?;
    let present: BTreeSet<u64> = db
        .sql("SELECT id FROM app.t")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let missing: Vec<&u64> = acknowledged.difference(&present).take(10).collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged commits lost, first {missing:?}",
        acknowledged.difference(&present).count()
    );
    let check = db.sql("CHECK TABLE app.t")?;
    ensure!(check.contains("status\tOK"), "CHECK TABLE: {check}");
    eprintln!(
        "{} commits acknowledged before the cut, all present ({} rows after recovery)",
        acknowledged.len(),
        present.len()
    );
    db.stop()?;
    Ok(())
}
