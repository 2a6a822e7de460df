use super::*;

/// A fresh directory under /tmp, removed by the test when done.
fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("strata-emb-{tag}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn finds_server_binaries_on_this_machine() {
    let Some(dir) = find_server_binaries() else {
        eprintln!("no PostgreSQL server binaries here; skipping");
        return;
    };
    assert!(has_server_programs(&dir), "{}", dir.display());
    assert!(bin_dir_candidates().contains(&dir));
}

#[test]
fn server_programs_need_all_three_executables() {
    let dir = temp_dir("bins");
    for (i, program) in SERVER_PROGRAMS.iter().enumerate() {
        assert!(!has_server_programs(&dir), "only {i} programs present");
        let path = dir.join(program);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(has_server_programs(&dir));
    fs::set_permissions(dir.join("postgres"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!has_server_programs(&dir), "non-executable postgres must not count");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn versioned_dirs_sort_highest_first() {
    let dir = temp_dir("versions");
    for name in ["9.6", "15", "16", "10", "latest", "postgresql@14"] {
        fs::create_dir(dir.join(name)).unwrap();
    }
    let found = versioned_dirs(&dir, "", "bin");
    let names: Vec<PathBuf> = ["16", "15", "10", "9.6"].iter().map(|n| dir.join(n).join("bin")).collect();
    assert_eq!(found, names);
    assert_eq!(versioned_dirs(&dir, "postgresql@", "bin"), vec![dir.join("postgresql@14/bin")]);
    assert!(versioned_dirs(&dir.join("missing"), "", "bin").is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn candidates_search_path_then_standard_locations() {
    let candidates = bin_dir_candidates();
    let pos = |p: &str| candidates.iter().position(|c| c == Path::new(p));
    assert!(pos("/usr/local/pgsql/bin").is_some());
    assert!(pos("/opt/homebrew/opt/postgresql/bin").is_some());
    if let (Some(lib), Some(pgsql)) =
        (candidates.iter().position(|c| c.starts_with("/usr/lib/postgresql")), pos("/usr/local/pgsql/bin"))
    {
        assert!(lib < pgsql);
    }
    let unique: std::collections::HashSet<_> = candidates.iter().collect();
    assert_eq!(unique.len(), candidates.len(), "no duplicates");
}

#[test]
fn parses_versions() {
    assert_eq!(parse_major_version("pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n").as_deref(), Some("15"));
    assert_eq!(parse_major_version("pg_ctl (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
    assert_eq!(parse_major_version("pg_ctl (PostgreSQL) 17beta1").as_deref(), Some("17"));
    assert_eq!(parse_major_version("garbage"), None);
    assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
    assert_eq!(parse_version("latest"), None);
}

#[test]
fn parses_uid_and_passwd() {
    let status = "Name:\tstrata\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
    assert_eq!(parse_status_euid(status), Some(0));
    let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                  postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
    assert_eq!(passwd_entry(passwd, "postgres"), Some((101, 104)));
    assert_eq!(passwd_entry(passwd, "nobody"), None);
    assert_eq!(passwd_entry(passwd, "post"), None);
}

#[test]
fn quotes_for_the_shell() {
    assert_eq!(sh_quote("/var/tmp/x-1"), "/var/tmp/x-1");
    assert_eq!(sh_quote(""), "''");
    assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    assert_eq!(server_options(5433, Some(Path::new("/p q"))), "-p 5433 -k '/p q' -c listen_addresses=127.0.0.1");
    assert_eq!(server_options(5433, None), "-p 5433 -k '' -c listen_addresses=127.0.0.1");
}

#[test]
fn permission_bits_follow_unix_rules() {
    assert!(mode_allows(0o700, 101, 104, 101, 0, 1));
    assert!(!mode_allows(0o700, 0, 0, 101, 104, 1));
    assert!(mode_allows(0o755, 0, 0, 101, 104, 1));
    assert!(mode_allows(0o710, 0, 104, 101, 104, 1));
    // Owner class matches first: no owner x means no access.
    assert!(!mode_allows(0o611, 101, 104, 101, 104, 1));
}

#[test]
fn traversal_checks_every_ancestor() {
    let dir = temp_dir("traverse");
    let inner = dir.join("closed/inner");
    fs::create_dir_all(&inner).unwrap();
    let owner = fs::metadata(&dir).unwrap().uid();
    let other = if owner == 0 { 65534 } else { 0 };
    assert!(can_traverse(&inner, owner, 0));
    fs::set_permissions(dir.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    if other != 0 {
        assert!(!can_traverse(&inner, other, 65534));
        assert!(can_traverse(&dir, other, 65534));
    }
    assert!(can_traverse(&inner, 0, 0), "root traverses everything");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layout_falls_back_when_user_cannot_reach_state() {
    let state = Path::new("/tmp/strata-layout-test/.data/postgres");
    assert_eq!(resolve_layout(state, None).cluster, state);
    let dir = temp_dir("layout");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let owner = fs::metadata(&dir).unwrap().uid();
    let stranger = RunAs { name: "x".into(), uid: owner + 1, gid: 4_000_000 };
    let state = dir.join("postgres");
    let layout = resolve_layout(&state, Some(&stranger));
    assert_eq!(layout.state, state);
    assert_eq!(layout.cluster, fallback_cluster_dir(&state));
    assert_eq!(layout.port_file(), state.join("port"));
    assert_eq!(layout.pgdata(), fallback_cluster_dir(&state).join("pgdata"));
    let me = RunAs { name: "me".into(), uid: owner, gid: 0 };
    assert_eq!(resolve_layout(&state, Some(&me)).cluster, state);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fallback_dir_is_stable_and_short() {
    let a = fallback_cluster_dir(Path::new("/root/project/.data/postgres"));
    let b = fallback_cluster_dir(Path::new("/root/other/.data/postgres"));
    assert_eq!(a, fallback_cluster_dir(Path::new("/root/project/.data/postgres")));
    assert_ne!(a, b);
    assert!(a.to_str().unwrap().starts_with("/var/tmp/strata-"));
    assert_eq!(a.to_str().unwrap().len(), "/var/tmp/strata-".len() + 12);
    // Pinned so a change of hash (which would orphan clusters) is noticed.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn socket_dir_is_dropped_when_path_is_too_long() {
    let short = Layout { state: "/s".into(), cluster: "/var/tmp/strata-1".into() };
    assert_eq!(short.socket_dir(), Some(Path::new("/var/tmp/strata-1")));
    let long = Layout { state: "/s".into(), cluster: PathBuf::from("/").join("x".repeat(120)) };
    assert_eq!(long.socket_dir(), None);
}

#[test]
fn port_file_round_trip_and_choice() {
    let dir = temp_dir("port");
    let file = dir.join("port");
    assert_eq!(read_port_file(&file), None);
    write_port_file(&file, 54321).unwrap();
    assert_eq!(read_port_file(&file), Some(54321));
    assert_eq!(fs::read_to_string(&file).unwrap(), "54321\n");
    fs::write(&file, "junk").unwrap();
    assert_eq!(read_port_file(&file), None);

    let free = free_port().unwrap();
    assert_eq!(choose_port(Some(free)).unwrap(), free, "a free recorded port is kept");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    assert_ne!(choose_port(Some(taken_port)).unwrap(), taken_port);
    assert_ne!(choose_port(None).unwrap(), 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_port_from_pid_file() {
    let pid = "4242\n/data/pgdata\n1700000000\n54329\n/data\n127.0.0.1\n  1234  5678\nready   \n";
    assert_eq!(pid_file_port(pid), Some(54329));
    assert_eq!(pid_file_port("4242\n"), None);
}

#[tokio::test]
async fn lock_is_exclusive_and_released_on_drop() {
    let dir = temp_dir("lock");
    let first = lock_dir(&dir, Duration::from_secs(1)).await.unwrap();
    let second = lock_dir(&dir, Duration::from_millis(300)).await;
    assert!(matches!(second, Err(EmbeddedError::LockTimeout { .. })), "{second:?}");
    drop(first);
    lock_dir(&dir, Duration::from_secs(1)).await.unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_binaries_message_says_how_to_fix() {
    let err = EmbeddedError::NoBinaries { searched: vec!["/usr/bin".into()] };
    let text = err.to_string();
    assert!(text.contains("apt-get install postgresql"), "{text}");
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(text.contains("/usr/bin"), "{text}");
}

/// Asserts that `url` serves SQL.
async fn select_one(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", error_chain(&e)));
    tokio::spawn(connection);
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// Full life cycle against real server binaries: concurrent first start,
/// reuse, stop, restart on the recorded port, restart on a new port when
/// the recorded one is taken, and recovery after the server was killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_reuses_and_stops_a_real_cluster() {
    if find_server_binaries().is_none() {
        eprintln!("no PostgreSQL server binaries here; skipping");
        return;
    }
    let root = temp_dir("cluster");
    let dir = root.join(".data/postgres");
    // In its own task so that a failed assertion still reaches the cleanup.
    let outcome = tokio::spawn(cluster_life_cycle(dir.clone())).await;
    let _ = stop(&dir).await;
    let _ = fs::remove_dir_all(&root);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn cluster_life_cycle(dir: PathBuf) {
    let dir = dir.as_path();
    // Two "processes" at once: exactly one starts the server.
    let (a, b) = tokio::join!(start_or_reuse(dir), start_or_reuse(dir));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.started_now, b.started_now, "{a:?} {b:?}");
    assert_eq!(a.port, b.port);
    assert_eq!(a.database_url, format!("postgres://postgres@127.0.0.1:{}/strata", a.port));
    assert_eq!(read_port_file(&dir.join("port")), Some(a.port));
    select_one(&a.database_url).await;

    let again = start_or_reuse(dir).await.unwrap();
    assert!(!again.started_now);
    assert_eq!(again.port, a.port);
    assert_eq!(again.data_dir, a.data_dir);

    stop(dir).await.unwrap();
    assert!(!wait_for_tcp(a.port, Duration::ZERO).await, "server still listening");
    stop(dir).await.unwrap(); // stopping a stopped cluster is fine

    let restarted = start_or_reuse(dir).await.unwrap();
    assert!(restarted.started_now);
    assert_eq!(restarted.port, a.port, "recorded port is preferred");
    stop(dir).await.unwrap();

    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, a.port)).unwrap();
    let moved = start_or_reuse(dir).await.unwrap();
    drop(squatter);
    assert!(moved.started_now);
    assert_ne!(moved.port, a.port);
    assert_eq!(read_port_file(&dir.join("port")), Some(moved.port));
    select_one(&moved.database_url).await;

    kill_postmaster(&moved.data_dir).await;
    let recovered = start_or_reuse(dir).await.unwrap();
    assert!(recovered.started_now, "a killed server is started again");
    select_one(&recovered.database_url).await;
}

/// Simulates a crash: SIGKILL the postmaster, leaving a stale postmaster.pid.
async fn kill_postmaster(pgdata: &Path) {
    let pid_file = fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim().to_owned();
    let status = Command::new("kill").args(["-9", &pid]).status().await.unwrap();
    assert!(status.success());
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..100 {
        if !proc_dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pgdata.join("postmaster.pid").exists(), "stale pid file left behind");
}
