//! A PostgreSQL cluster of one test alone, made with the server's embedded-cluster code (initdb in a
//! temporary directory, its own port), which the test can restart and kill. Stopped and deleted on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use uuid::Uuid;

use crate::wait::eventually;

pub struct PrivateCluster {
    /// The state directory handed to `strata::embedded`.
    dir: PathBuf,
    /// PGDATA.
    data_dir: PathBuf,
    /// Directory of pg_ctl.
    bin: PathBuf,
    /// URL of its `strata` database.
    pub url: String,
}

/// initdb and pg_ctl refuse root: run them as `postgres` then, as `strata::embedded` does.
fn as_server_user(program: &std::path::Path) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl PrivateCluster {
    /// A new cluster, or None when no server binaries are installed.
    pub async fn start() -> Option<PrivateCluster> {
        let bin = strata::embedded::find_server_binaries()?;
        let dir = std::env::temp_dir().join(format!("strata-faults-{}", Uuid::new_v4().simple()));
        let pg = strata::embedded::start_or_reuse(&dir).await.expect("a private cluster starts");
        Some(PrivateCluster { dir, data_dir: pg.data_dir, bin, url: pg.database_url })
    }

    /// Runs pg_ctl without blocking the runtime (the server and the load clients share it).
    async fn pg_ctl(&self, args: &[&str]) {
        let mut cmd: tokio::process::Command = as_server_user(&self.bin.join("pg_ctl")).into();
        let out = cmd
            .args(args)
            .arg("-D")
            .arg(&self.data_dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("pg_ctl runs");
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `pg_ctl restart -m fast`: sessions are terminated, the server stops and starts again (same port).
    pub async fn restart_fast(&self) {
        let log = self.data_dir.join("restart.log");
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60", "-l", log.to_str().unwrap()]).await;
    }

    /// SIGKILL to the postmaster (its backends notice and exit; the next start runs crash recovery).
    pub fn kill_postmaster(&self) {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).expect("postmaster.pid");
        let pid = pid_file.lines().next().unwrap().trim().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    }

    /// Starts the killed cluster again on its port; retried while its old backends still hold shared memory.
    pub async fn start_again(&self) {
        let started = async || strata::embedded::start_or_reuse(&self.dir).await.map_err(|e| e.to_string());
        let pg = eventually(Duration::from_secs(60), "the killed cluster started again", started).await;
        assert_eq!(pg.database_url, self.url, "the cluster came back on another port");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
