//! Zero-configuration local PostgreSQL for Strata.
//!
//! When no `DATABASE_URL` is set, `strata serve` and every CLI subcommand call
//! [`start_or_reuse`] to get a private PostgreSQL cluster built from the server
//! binaries installed on the machine (see [`find_server_binaries`]). This is
//! what makes the README's "run it" command work on a fresh machine without
//! any configuration. Production deployments set `DATABASE_URL` instead.
//!
//! # Layout
//!
//! Everything lives under the state directory passed in (e.g. `.data/postgres`):
//!
//! - `.lock`: advisory lock so that concurrent strata processes never run
//!   `initdb` or `pg_ctl start` at the same time;
//! - `port`: the TCP port the cluster listens on (127.0.0.1 only), so later
//!   runs and other subcommands reach the same server;
//! - `pgdata/`: the data directory, `postgres.log`: the server log (appended
//!   to, never rotated), and the server's Unix socket.
//!
//! `initdb` and `pg_ctl` refuse to run as root. When strata runs as root, they
//! run as the `postgres` system user (or `nobody`) through `runuser`, `setpriv`
//! or `su`, and the cluster directory is owned by that user. If that user
//! cannot reach the state directory (e.g. the project lives under a mode-700
//! `/root`), `pgdata/`, the log and the socket move to
//! `/var/tmp/strata-<hash of the state directory>`; `.lock` and `port` stay in
//! the state directory.
//!
//! # Lifetime
//!
//! The cluster is a detached daemon: it keeps running after strata exits, so
//! the next command reuses it instantly. [`stop`] (behind `strata db stop`)
//! shuts it down; deleting the state directory afterwards deletes the data.
//!
//! # Security
//!
//! The cluster uses `trust` authentication and listens only on 127.0.0.1:
//! any local user can connect as the `postgres` superuser. It is meant for
//! development and single-user machines only.

use std::error::Error as StdError;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio_postgres::error::SqlState;
use tracing::{debug, info, warn};

/// Environment variable naming a directory with `initdb`, `pg_ctl` and
/// `postgres`; it is searched before everything else.
pub const BIN_DIR_ENV: &str = "STRATA_PG_BIN_DIR";

/// Name of the application database created in the cluster.
const DB_NAME: &str = "strata";
/// Superuser created by `initdb -U`.
const SUPERUSER: &str = "postgres";
/// Programs a directory must contain to count as a server installation.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Covers a concurrent `initdb` plus a `pg_ctl start -t 60` with margin.
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for a started server to accept SQL connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a running server gets to answer TCP before we give up on it.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Unix socket paths are limited to ~104 bytes (macOS) or 108 (Linux).
const MAX_SOCKET_PATH: usize = 100;

/// A local PostgreSQL cluster started or reused by [`start_or_reuse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedPostgres {
    /// The PostgreSQL data directory (`PGDATA`) actually in use.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 the server listens on.
    pub port: u16,
    /// URL of the `strata` database: `postgres://postgres@127.0.0.1:PORT/strata`.
    pub database_url: String,
    /// `true` if this call started the server, `false` if it was already running.
    pub started_now: bool,
}

/// Why the local cluster could not be started, reused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found; searched: {}. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`, Fedora: `dnf install \
         postgresql-server`, macOS: `brew install postgresql@16`), point {BIN_DIR_ENV} at their \
         directory, or set DATABASE_URL to use an existing PostgreSQL server",
        join_paths(searched)
    )]
    NoBinaries {
        /// Directories (and patterns) that were searched.
        searched: Vec<PathBuf>,
    },
    /// The existing cluster needs a major version no installed binaries have.
    #[error(
        "the cluster in {} was created by PostgreSQL {data_version}, but no server binaries of \
         that major version were found (found: {}); install PostgreSQL {data_version}, or \
         remove that directory to start with an empty database",
        pgdata.display(),
        join_paths(found)
    )]
    VersionMismatch {
        /// Data directory of the existing cluster.
        pgdata: PathBuf,
        /// Major version recorded in `PG_VERSION`.
        data_version: String,
        /// Server binary directories that were found.
        found: Vec<PathBuf>,
    },
    /// A file system or process-spawning operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, including the path involved.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
    /// An external command (`initdb`, `pg_ctl`, `chown`, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, shell-quoted.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr, plus the server log tail for `pg_ctl start`.
        output: String,
    },
    /// Another strata process held the lock for too long.
    #[error(
        "timed out after {}s waiting for the lock {} (another strata process is starting \
         PostgreSQL?)",
        waited.as_secs(),
        path.display()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// Running as root, but there is no unprivileged user to run PostgreSQL as.
    #[error(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run \
         PostgreSQL as (initdb refuses to run as root); create one (`useradd --system \
         postgres`) or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    /// A directory we would put the cluster in is not safe to use.
    #[error("refusing to use {} for the PostgreSQL cluster: {reason}", path.display())]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The server runs (or was started) but does not accept connections.
    #[error(
        "PostgreSQL on 127.0.0.1:{port} did not accept connections within {}s: {reason}\n\
         --- tail of {} ---\n{log_tail}",
        waited.as_secs(),
        log_file.display()
    )]
    NotReady {
        /// The port we tried.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The last connection error.
        reason: String,
        /// The server log file.
        log_file: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// A SQL statement against the cluster failed.
    #[error("{context}: {reason}")]
    Database {
        /// What was being done.
        context: String,
        /// The error, with its causes.
        reason: String,
    },
}

/// Starts or reuses the cluster under `dir` (e.g. `.data/postgres`) and
/// returns its URL (`postgres://postgres@127.0.0.1:PORT/strata`).
///
/// Runs `initdb` on first use, starts the server if it is not running (on the
/// recorded port if still free, else on a new free port), waits until it
/// accepts connections and creates the `strata` database if missing. Safe to
/// call from several processes at once. The server keeps running after the
/// process exits; see [`stop`].
pub async fn start_or_reuse(dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
    let state = state_dir(dir)?;
    // Held until we return, so a concurrent process waits and then reuses.
    let _lock = lock_dir(&state, LOCK_TIMEOUT).await?;
    let runner = Runner::detect()?;
    let layout = resolve_layout(&state, runner.run_as.as_ref());
    let bin = select_binaries(&layout.pgdata()).await?;
    prepare_cluster_dir(&layout, &runner).await?;
    if !is_initialized(&layout.pgdata()) {
        init_cluster(&runner, &bin, &layout).await?;
    }
    let (port, started_now) = match running_port(&runner, &bin, &layout).await? {
        Some(port) => {
            info!(port, pgdata = %layout.pgdata().display(), "reusing running local PostgreSQL");
            (port, false)
        }
        None => {
            let port = choose_port(read_port_file(&layout.port_file()))
                .map_err(io_err("cannot pick a free TCP port on 127.0.0.1 for PostgreSQL".to_owned()))?;
            start_server(&runner, &bin, &layout, port).await?;
            (port, true)
        }
    };
    write_port_file(&layout.port_file(), port)?;
    let client = connect_when_ready(port, &layout.log_file()).await?;
    ensure_database(&client).await?;
    Ok(EmbeddedPostgres { data_dir: layout.pgdata(), port, database_url: database_url(port), started_now })
}

/// Stops the cluster under `dir` (`pg_ctl stop -m fast`), for `strata db stop`.
///
/// Succeeds without doing anything if there is no cluster or it is not running.
pub async fn stop(dir: &Path) -> Result<(), EmbeddedError> {
    let abs = std::path::absolute(dir).map_err(io_err(format!("cannot resolve {}", dir.display())))?;
    let state = match abs.canonicalize() {
        Ok(state) => state,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("cannot resolve {}", abs.display()))(e)),
    };
    let _lock = lock_dir(&state, LOCK_TIMEOUT).await?;
    let runner = Runner::detect()?;
    let Some(layout) = existing_layout(&state) else {
        info!(dir = %state.display(), "no local PostgreSQL cluster to stop");
        return Ok(());
    };
    let bin = select_binaries(&layout.pgdata()).await?;
    let pg_ctl = bin.join("pg_ctl");
    let pgdata = layout.pgdata();
    let status = runner.output(&pg_ctl, &[os("status"), os("-D"), pgdata.as_os_str()]).await?;
    if !status.status.success() {
        info!(pgdata = %pgdata.display(), "local PostgreSQL is not running");
        return Ok(());
    }
    let args = [os("stop"), os("-D"), pgdata.as_os_str(), os("-m"), os("fast")];
    runner.run(&pg_ctl, &[&args[..], &[os("-w"), os("-t"), os("60")]].concat()).await?;
    info!(pgdata = %pgdata.display(), "stopped local PostgreSQL");
    Ok(())
}

/// Returns the first directory containing `initdb`, `pg_ctl` and `postgres`.
///
/// Search order: `$STRATA_PG_BIN_DIR`, `PATH`, `/usr/lib/postgresql/*/bin`
/// (highest version first), `/usr/pgsql-*/bin`, `/usr/local/pgsql/bin`,
/// Homebrew (`/opt/homebrew/opt/postgresql*/bin`, `/usr/local/opt/...`),
/// Postgres.app, `/usr/local/bin`, `/usr/bin`.
pub fn find_server_binaries() -> Option<PathBuf> {
    bin_dir_candidates().into_iter().find(|dir| has_server_programs(dir))
}

// ---------------------------------------------------------------------------
// Binary discovery

/// All directories that may hold server binaries, most preferred first.
fn bin_dir_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        dirs.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        // Relative entries ("." or "") would make the result depend on the cwd.
        dirs.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    dirs.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin"));
    dirs.extend(versioned_dirs(Path::new("/usr"), "pgsql-", "bin"));
    dirs.push("/usr/local/pgsql/bin".into());
    for brew in ["/opt/homebrew/opt", "/usr/local/opt"] {
        dirs.extend(versioned_dirs(Path::new(brew), "postgresql@", "bin"));
        dirs.push(Path::new(brew).join("postgresql/bin"));
    }
    let app = Path::new("/Applications/Postgres.app/Contents/Versions");
    dirs.extend(versioned_dirs(app, "", "bin"));
    dirs.push(app.join("latest/bin"));
    // Fedora and Arch install the server programs here; PATH usually has them.
    dirs.extend(["/usr/local/bin".into(), "/usr/bin".into()]);
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `parent/<prefix><version>/<sub>` for every versioned entry, highest first.
fn versioned_dirs(parent: &Path, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            Some((version, entry.path().join(sub)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Parses "15", "9.6" or "16.2" into numeric components.
fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether `dir` holds executable `initdb`, `pg_ctl` and `postgres`.
fn has_server_programs(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|program| {
        fs::metadata(dir.join(program)).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// Picks the binaries for `pgdata`: the preferred ones for a new cluster, or
/// ones matching the major version of an existing cluster (a server refuses
/// data directories of another major version).
async fn select_binaries(pgdata: &Path) -> Result<PathBuf, EmbeddedError> {
    let found: Vec<PathBuf> = bin_dir_candidates().into_iter().filter(|dir| has_server_programs(dir)).collect();
    let Some(preferred) = found.first() else {
        return Err(EmbeddedError::NoBinaries { searched: bin_dir_candidates() });
    };
    let Ok(data_version) = fs::read_to_string(pgdata.join("PG_VERSION")) else {
        return Ok(preferred.clone());
    };
    let data_version = data_version.trim().to_owned();
    for dir in &found {
        if server_major_version(dir).await.as_deref() == Some(data_version.as_str()) {
            return Ok(dir.clone());
        }
    }
    Err(EmbeddedError::VersionMismatch { pgdata: pgdata.to_path_buf(), data_version, found })
}

/// Major version of the binaries in `bin`, as written in `PG_VERSION`.
async fn server_major_version(bin: &Path) -> Option<String> {
    // `--version` is answered before pg_ctl's root check, so no user switch.
    let out = Command::new(bin.join("pg_ctl")).arg("--version").stdin(Stdio::null()).output().await.ok()?;
    parse_major_version(&String::from_utf8_lossy(&out.stdout))
}

/// "pg_ctl (PostgreSQL) 15.14 (Debian ...)" -> "15"; "... 9.6.24" -> "9.6".
fn parse_major_version(text: &str) -> Option<String> {
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    let numbers: Vec<u32> = version
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits
        })
        .map_while(|digits| digits.parse().ok())
        .collect();
    match numbers.as_slice() {
        [major, ..] if *major >= 10 => Some(major.to_string()),
        [major, minor, ..] => Some(format!("{major}.{minor}")),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Users and commands

/// The unprivileged user PostgreSQL runs as when strata runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// Runs external programs, dropping root privileges when needed.
#[derive(Debug, Clone)]
struct Runner {
    run_as: Option<RunAs>,
}

impl Runner {
    /// Root runs PostgreSQL as `postgres` (or `nobody`); others as themselves.
    fn detect() -> Result<Self, EmbeddedError> {
        if effective_uid() != Some(0) {
            return Ok(Self { run_as: None });
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        for name in ["postgres", "nobody"] {
            if let Some((uid, gid)) = passwd_entry(&passwd, name) {
                if name == "nobody" {
                    warn!("no `postgres` system user; running local PostgreSQL as `nobody`");
                }
                let name = name.to_owned();
                return Ok(Self { run_as: Some(RunAs { name, uid, gid }) });
            }
        }
        Err(EmbeddedError::NoUnprivilegedUser)
    }

    /// Builds the command, wrapped in a privilege drop when running as root.
    fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        let mut cmd = match &self.run_as {
            None => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Some(user) => drop_privileges(user, program, args),
        };
        // "/" is readable by everyone; the caller's cwd may not be (e.g. /root).
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs the command and returns its output whatever the exit status.
    async fn output(&self, program: &Path, args: &[&OsStr]) -> Result<Output, EmbeddedError> {
        debug!(command = %describe(program, args), "running");
        self.command(program, args).output().await.map_err(io_err(format!("cannot run `{}`", describe(program, args))))
    }

    /// Runs the command; a non-zero exit becomes [`EmbeddedError::CommandFailed`].
    async fn run(&self, program: &Path, args: &[&OsStr]) -> Result<(), EmbeddedError> {
        let out = self.output(program, args).await?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let command = match &self.run_as {
            Some(user) => format!("{} (as {})", describe(program, args), user.name),
            None => describe(program, args),
        };
        Err(EmbeddedError::CommandFailed {
            command,
            status: out.status.to_string(),
            output: output.trim_end().to_owned(),
        })
    }
}

/// Wraps `program args` to run as `user`: runuser, else setpriv, else su.
fn drop_privileges(user: &RunAs, program: &Path, args: &[&OsStr]) -> Command {
    if let Some(runuser) = find_tool("runuser") {
        let mut cmd = Command::new(runuser);
        cmd.args(["-u", &user.name, "--"]).arg(program).args(args);
        return cmd;
    }
    if let Some(setpriv) = find_tool("setpriv") {
        let mut cmd = Command::new(setpriv);
        cmd.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--"])
            .arg(program)
            .args(args);
        return cmd;
    }
    // su takes a shell command line; `-s` because `nobody` has no login shell.
    let mut cmd = Command::new("su");
    cmd.args(["-s", "/bin/sh", &user.name, "-c"]).arg(format!("exec {}", describe(program, args)));
    cmd
}

/// Finds a system tool in PATH or the sbin directories (root's PATH may lack them).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Effective uid from /proc (no libc: unsafe code is forbidden), else `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        return parse_status_euid(&status);
    }
    let out = std::process::Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The effective uid from a /proc/<pid>/status text ("Uid: real eff saved fs").
fn parse_status_euid(status: &str) -> Option<u32> {
    let fields = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    fields.split_whitespace().nth(1)?.parse().ok()
}

/// (uid, gid) of `name` in an /etc/passwd text.
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != name {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

/// Quotes `s` for a POSIX shell (pg_ctl passes `-o` through `sh -c`).
fn sh_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell-quoted command line, for error messages and `su -c`.
fn describe(program: &Path, args: &[&OsStr]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().copied())
        .map(|a| sh_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// ---------------------------------------------------------------------------
// Directories and locking

/// Where the pieces of one cluster live.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// The state directory given by the caller: lock and port files.
    state: PathBuf,
    /// Owned by the server's user: pgdata, log and socket.
    cluster: PathBuf,
}

impl Layout {
    fn pgdata(&self) -> PathBuf {
        self.cluster.join("pgdata")
    }
    fn log_file(&self) -> PathBuf {
        self.cluster.join("postgres.log")
    }
    fn port_file(&self) -> PathBuf {
        self.state.join("port")
    }
    /// The socket directory, unless its path is too long for a Unix socket.
    fn socket_dir(&self) -> Option<&Path> {
        let socket = self.cluster.join(".s.PGSQL.65535");
        (socket.as_os_str().len() <= MAX_SOCKET_PATH).then_some(self.cluster.as_path())
    }
}

/// Makes `dir` absolute, creates it and canonicalizes it (the fallback hash
/// and the traversal check need the real path).
fn state_dir(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let abs = std::path::absolute(dir).map_err(io_err(format!("cannot resolve {}", dir.display())))?;
    fs::create_dir_all(&abs).map_err(io_err(format!("cannot create {}", abs.display())))?;
    abs.canonicalize().map_err(io_err(format!("cannot resolve {}", abs.display())))
}

/// The cluster stays in `state` unless the server's user cannot reach it.
fn resolve_layout(state: &Path, run_as: Option<&RunAs>) -> Layout {
    let same = Layout { state: state.to_path_buf(), cluster: state.to_path_buf() };
    let Some(user) = run_as else { return same };
    let parent = state.parent().unwrap_or(Path::new("/"));
    if can_traverse(parent, user.uid, user.gid) {
        return same;
    }
    let cluster = fallback_cluster_dir(state);
    warn!(
        state = %state.display(),
        cluster = %cluster.display(),
        user = %user.name,
        "the PostgreSQL user cannot reach the state directory; keeping the cluster in /var/tmp"
    );
    Layout { cluster, ..same }
}

/// The layout of an initialized cluster for `state`, wherever it was put.
fn existing_layout(state: &Path) -> Option<Layout> {
    [state.to_path_buf(), fallback_cluster_dir(state)]
        .into_iter()
        .map(|cluster| Layout { state: state.to_path_buf(), cluster })
        .find(|layout| is_initialized(&layout.pgdata()))
}

/// `/var/tmp/strata-<hash>`: stable per state directory, survives reboots.
fn fallback_cluster_dir(state: &Path) -> PathBuf {
    let hash = fnv1a(state.as_os_str().as_bytes()) & 0xffff_ffff_ffff;
    PathBuf::from(format!("/var/tmp/strata-{hash:012x}"))
}

/// FNV-1a: tiny and, unlike `DefaultHasher`, stable across Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Whether `uid`/`gid` may search `path` and every ancestor (mode bits only;
/// supplementary groups and ACLs are ignored, so the answer errs on "no").
fn can_traverse(path: &Path, uid: u32, gid: u32) -> bool {
    uid == 0
        || path.ancestors().all(|dir| {
            fs::metadata(dir).map(|m| mode_allows(m.mode(), m.uid(), m.gid(), uid, gid, 0o1)).unwrap_or(false)
        })
}

/// Classic Unix permission check of one `bit` (4 r, 2 w, 1 x).
fn mode_allows(mode: u32, owner: u32, group: u32, uid: u32, gid: u32, bit: u32) -> bool {
    // Only the first matching class counts: an owner without x is denied
    // even if "other" has it.
    let shift = if uid == owner {
        6
    } else if gid == group {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

/// Creates the cluster directory and hands it to the server's user.
async fn prepare_cluster_dir(layout: &Layout, runner: &Runner) -> Result<(), EmbeddedError> {
    if layout.cluster != layout.state {
        ensure_private_dir(&layout.cluster, runner.run_as.as_ref())?;
    }
    let Some(user) = &runner.run_as else {
        return Ok(());
    };
    let meta = fs::metadata(&layout.cluster).map_err(io_err(format!("cannot stat {}", layout.cluster.display())))?;
    if meta.uid() != user.uid {
        // -R: a cluster directory left by an earlier root-owned setup.
        let owner = format!("{}:{}", user.uid, user.gid);
        let args = [os("-R"), os(&owner), layout.cluster.as_os_str()];
        Runner { run_as: None }.run(Path::new("chown"), &args).await?;
    }
    Ok(())
}

/// Creates `dir` mode 0700 in the world-writable /var/tmp, refusing a
/// directory or symlink planted there by another user.
fn ensure_private_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), EmbeddedError> {
    let unsafe_dir = |reason: String| EmbeddedError::UnsafeDir { path: dir.to_path_buf(), reason };
    match fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Err(unsafe_dir("it is not a directory".into())),
        Ok(m) if m.uid() != 0 && Some(m.uid()) != run_as.map(|u| u.uid) => {
            Err(unsafe_dir(format!("it is owned by uid {}", m.uid())))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err(format!("cannot chmod {}", dir.display())))
        }
        Err(e) => Err(io_err(format!("cannot stat {}", dir.display()))(e)),
    }
}

/// Exclusive lock on `dir/.lock`, released when dropped.
#[derive(Debug)]
struct DirLock {
    _file: File,
}

/// Takes the lock, polling until `timeout`.
///
/// An OS advisory lock (flock) instead of a create-new marker file: the kernel
/// releases it when the holder exits or is killed, so there is never a stale
/// lock to detect and remove, and no race between two processes removing it.
async fn lock_dir(dir: &Path, timeout: Duration) -> Result<DirLock, EmbeddedError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(io_err(format!("cannot lock {}", path.display()))(e)),
        }
        if started.elapsed() >= timeout {
            return Err(EmbeddedError::LockTimeout { path, waited: started.elapsed() });
        }
        if started.elapsed() < Duration::from_millis(200) {
            info!(lock = %path.display(), "waiting for another strata process to finish with PostgreSQL");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Ports

/// Reads the recorded port, if any.
fn read_port_file(path: &Path) -> Option<u16> {
    let port: u16 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (port != 0).then_some(port)
}

/// Records `port` (atomically, so readers never see a half-written file).
fn write_port_file(path: &Path, port: u16) -> Result<(), EmbeddedError> {
    if read_port_file(path) == Some(port) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let context = format!("cannot write {}", path.display());
    let mut file = File::create(&tmp).map_err(io_err(context.clone()))?;
    file.write_all(format!("{port}\n").as_bytes()).map_err(io_err(context.clone()))?;
    fs::rename(&tmp, path).map_err(io_err(context))
}

/// The recorded port if it is still free, else a fresh free port.
fn choose_port(recorded: Option<u16>) -> io::Result<u16> {
    if let Some(port) = recorded {
        if port_is_free(port) {
            return Ok(port);
        }
        warn!(port, "recorded PostgreSQL port is taken by another program; picking a new one");
    }
    free_port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Lets the kernel pick a free port; the listener is dropped right away, so
/// another program could grab it before PostgreSQL does (then start fails).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Port of a running server from line 4 of `postmaster.pid`.
fn pid_file_port(pid_file: &str) -> Option<u16> {
    pid_file.lines().nth(3)?.trim().parse().ok()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` within `timeout`.
async fn wait_for_tcp(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Server lifecycle

fn is_initialized(pgdata: &Path) -> bool {
    pgdata.join("PG_VERSION").is_file()
}

/// Runs initdb: superuser `postgres`, trust auth, UTF8, C locale (so the
/// result does not depend on the machine's locale settings).
async fn init_cluster(runner: &Runner, bin: &Path, layout: &Layout) -> Result<(), EmbeddedError> {
    let pgdata = layout.pgdata();
    info!(pgdata = %pgdata.display(), bin = %bin.display(), "initializing local PostgreSQL cluster");
    let args = [
        os("-D"),
        pgdata.as_os_str(),
        os("-U"),
        os(SUPERUSER),
        os("--auth=trust"),
        os("-E"),
        os("UTF8"),
        os("--locale=C"),
    ];
    runner.run(&bin.join("initdb"), &args).await
}

/// The port of the server if it already runs and accepts TCP connections.
async fn running_port(runner: &Runner, bin: &Path, layout: &Layout) -> Result<Option<u16>, EmbeddedError> {
    let pgdata = layout.pgdata();
    let args = [os("status"), os("-D"), pgdata.as_os_str()];
    // Exit 3 means "not running"; a dead server's stale postmaster.pid counts
    // as not running too, and `pg_ctl start` then replaces it.
    if !runner.output(&bin.join("pg_ctl"), &args).await?.status.success() {
        return Ok(None);
    }
    // The pid file knows the port the server really uses.
    let port = fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|text| pid_file_port(&text))
        .or_else(|| read_port_file(&layout.port_file()));
    let Some(port) = port else {
        return Err(not_ready(0, Duration::ZERO, "server runs on an unknown port".into(), layout));
    };
    if wait_for_tcp(port, TCP_TIMEOUT).await {
        return Ok(Some(port));
    }
    let reason = "pg_ctl reports the server running, but its TCP port does not answer".into();
    Err(not_ready(port, TCP_TIMEOUT, reason, layout))
}

/// `pg_ctl start -w` on 127.0.0.1:`port`; on failure the error carries the log tail.
async fn start_server(runner: &Runner, bin: &Path, layout: &Layout, port: u16) -> Result<(), EmbeddedError> {
    let (pgdata, log) = (layout.pgdata(), layout.log_file());
    let options = server_options(port, layout.socket_dir());
    info!(port, pgdata = %pgdata.display(), log = %log.display(), "starting local PostgreSQL");
    let args = [
        os("-D"),
        pgdata.as_os_str(),
        os("-l"),
        log.as_os_str(),
        os("-w"),
        os("-t"),
        os("60"),
        os("-o"),
        os(&options),
        os("start"),
    ];
    match runner.run(&bin.join("pg_ctl"), &args).await {
        Err(EmbeddedError::CommandFailed { command, status, output }) => Err(EmbeddedError::CommandFailed {
            command,
            status,
            output: format!("{output}\n--- tail of {} ---\n{}", log.display(), log_tail(&log)),
        }),
        other => other,
    }
}

/// postgres options: TCP on loopback only, Unix socket next to the data (or
/// none if the path is too long; an empty `-k` disables Unix sockets).
fn server_options(port: u16, socket_dir: Option<&Path>) -> String {
    let socket = socket_dir.map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
    format!("-p {port} -k {} -c listen_addresses=127.0.0.1", sh_quote(&socket))
}

/// Connects to the `postgres` database, retrying while the server starts up.
async fn connect_when_ready(port: u16, log_file: &Path) -> Result<tokio_postgres::Client, EmbeddedError> {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user(SUPERUSER).dbname("postgres").connect_timeout(Duration::from_secs(5));
    let started = Instant::now();
    loop {
        let error = match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                // The connection future drives the socket; it ends when the
                // client is dropped.
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %error_chain(&e), "embedded PostgreSQL admin connection");
                    }
                });
                return Ok(client);
            }
            Err(e) => e,
        };
        if started.elapsed() >= READY_TIMEOUT {
            let log_tail = log_tail(log_file);
            return Err(EmbeddedError::NotReady {
                port,
                waited: started.elapsed(),
                reason: error_chain(&error),
                log_file: log_file.to_path_buf(),
                log_tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the `strata` database unless it exists.
async fn ensure_database(client: &tokio_postgres::Client) -> Result<(), EmbeddedError> {
    let db_err = |context: &str, e: tokio_postgres::Error| EmbeddedError::Database {
        context: context.to_owned(),
        reason: error_chain(&e),
    };
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DB_NAME])
        .await
        .map_err(|e| db_err("cannot look up database `strata`", e))?
        .is_some();
    if exists {
        return Ok(());
    }
    match client.batch_execute(&format!("CREATE DATABASE {DB_NAME}")).await {
        Ok(()) => {
            info!("created database `{DB_NAME}`");
            Ok(())
        }
        // Someone else (e.g. a user with psql) was quicker: fine.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(db_err("cannot create database `strata`", e)),
    }
}

/// `postgres://postgres@127.0.0.1:PORT/strata`.
fn database_url(port: u16) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{DB_NAME}")
}

fn not_ready(port: u16, waited: Duration, reason: String, layout: &Layout) -> EmbeddedError {
    let log_file = layout.log_file();
    EmbeddedError::NotReady { port, waited, reason, log_tail: log_tail(&log_file), log_file }
}

/// The last lines of the server log (it is appended to forever, so only the
/// end is read).
fn log_tail(path: &Path) -> String {
    const MAX_BYTES: u64 = 4096;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------------------
// Error helpers

/// Wraps an io::Error with what was being done.
fn io_err(context: String) -> impl FnOnce(io::Error) -> EmbeddedError {
    move |error| EmbeddedError::Io { context, error }
}

/// An error and all its causes ("db error: ERROR: ..."): tokio-postgres puts
/// the useful part in `source()`.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn join_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
