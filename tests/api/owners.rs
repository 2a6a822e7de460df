//! Owners against takeover: no registration reaches CLI-created apps (the bootstrap owner has no
//! email), emails are one account per normalised address and refuse invisible characters, V6 repairs
//! a database where the old bootstrap address was registered, and revoked keys stay revoked.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::helpers::{admin_url, reply, spawn_app, spawn_server_on, Reply, KEY_SECRET};

const PASSWORD: &str = "correct horse battery";
const JWT_SECRET: &[u8] = b"test-jwt-secret";

async fn send(http: &reqwest::Client, method: Method, url: String, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

async fn register_at(http: &reqwest::Client, base: &str, email: &str) -> Reply {
    let body = json!({"email": email, "name": "Someone", "password": PASSWORD});
    send(http, Method::POST, format!("{base}/api/auth/register"), None, Some(body)).await
}

async fn login_at(http: &reqwest::Client, base: &str, email: &str, password: &str) -> Reply {
    let body = json!({"email": email, "password": password});
    send(http, Method::POST, format!("{base}/api/auth/login"), None, Some(body)).await
}

/// Runs the real `strata` binary on `db_name`; returns its stdout.
fn cli(db_name: &str, args: &[&str]) -> String {
    let url = crate::helpers::test_config(db_name).database_url.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("DATABASE_URL", &url)
        .env("STRATA_KEY_SECRET", KEY_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// (is the bootstrap owner, has an email, has a password) of the owner of app `id`.
async fn owner_of(db: &tokio_postgres::Client, id: Uuid) -> (bool, bool, bool) {
    const SQL: &str = "SELECT o.bootstrap, o.email IS NOT NULL, o.password_hash IS NOT NULL \
         FROM apps a JOIN owners o ON o.id = a.owner_id WHERE a.id = $1";
    let r = db.query_one(SQL, &[&id]).await.unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn lookalikes_of_the_old_bootstrap_address_registered_before_the_first_cli_app_never_own_it() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let fullwidth = "\u{ff42}\u{ff4f}\u{ff4f}\u{ff54}\u{ff53}\u{ff54}\u{ff52}\u{ff41}\u{ff50}@strata.invalid";
    let variants = [
        "bootstrap@strata.invalid",
        "BOOTSTRAP@STRATA.INVALID",
        " bootstrap@strata.invalid ",
        "bootstrap\u{200b}@strata.invalid",
        fullwidth,
    ];
    for email in variants {
        // Each time a database where no CLI app exists yet: the attacker registers first.
        app.db.batch_execute("DELETE FROM api_keys; DELETE FROM apps; DELETE FROM owners").await.unwrap();
        let registered = register_at(&app.http, &base, email).await;
        let cli_app = Uuid::parse_str(&cli(&app.db_name, &["apps", "create", "--name", "made by ops"])).unwrap();
        if email.contains('\u{200b}') {
            let refused = (registered.status, registered.body["error"]["details"]["parameter"].as_str());
            assert_eq!(refused, (400, Some("email")), "{}", registered.body);
            assert_eq!(owner_of(&app.db, cli_app).await, (true, false, false), "the bootstrap owner");
            continue;
        }
        assert_eq!(registered.status, 201, "{email:?}: {}", registered.body);
        let token = registered.body["data"]["token"].as_str().unwrap();
        let apps = send(&app.http, Method::GET, format!("{base}/api/apps"), Some(token), None).await;
        assert_eq!((apps.status, &apps.body["data"]), (200, &json!([])), "{email:?} sees no apps");
        let overview = format!("{base}/api/analytics/apps/{cli_app}/overview");
        assert_eq!(send(&app.http, Method::GET, overview, Some(token), None).await.status, 404, "{email:?}");
        let key = json!({"appId": cli_app, "name": "mine"});
        let minted = send(&app.http, Method::POST, format!("{base}/api/keys"), Some(token), Some(key)).await;
        assert_eq!(minted.status, 404, "{email:?} mints no key: {}", minted.body);
        assert_eq!(owner_of(&app.db, cli_app).await, (true, false, false), "{email:?}: the bootstrap owner");
    }
}

#[tokio::test]
async fn emails_with_control_or_invisible_formatting_characters_are_refused_naming_the_character() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    for (email, code) in [
        ("ada\u{200b}@example.com", "U+200B"),
        ("ada\u{202e}@example.com", "U+202E"),
        ("\u{feff}ada@example.com", "U+FEFF"),
        ("ada\u{7}@example.com", "U+0007"),
    ] {
        let r = register_at(&app.http, &base, email).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{email:?}");
        assert_eq!(r.body["error"]["details"]["parameter"], "email");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(code) && message.contains("invisible"), "{email:?}: {message}");
    }
    let owners: i64 = app.db.query_one("SELECT count(*) FROM owners WHERE NOT bootstrap", &[]).await.unwrap().get(0);
    assert_eq!(owners, 0);
}

#[tokio::test]
async fn addresses_equal_after_normalisation_are_one_account_for_registration_and_login() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let first = register_at(&app.http, &base, "Zo\u{eb}@Example.com").await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["data"]["user"]["email"], "Zo\u{eb}@Example.com");
    for variant in ["ZOE\u{308}@EXAMPLE.COM", " zo\u{eb}@example.com ", "zoe\u{308}@example.com"] {
        let again = register_at(&app.http, &base, variant).await;
        assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("email_taken")), "{variant:?}");
        let login = login_at(&app.http, &base, variant, PASSWORD).await;
        assert_eq!((login.status, &login.body["data"]["user"]["id"]), (200, &first.body["data"]["user"]["id"]));
    }
}

#[tokio::test]
async fn regenerating_a_revoked_key_is_a_conflict_naming_the_reason_and_mints_nothing() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let token =
        register_at(&app.http, &base, "rex@example.com").await.body["data"]["token"].as_str().unwrap().to_string();
    let bearer = Some(token.as_str());
    let created = send(&app.http, Method::POST, format!("{base}/api/apps"), bearer, Some(json!({"name": "s"}))).await;
    let app_id = created.body["data"]["id"].as_str().unwrap().to_string();
    let key = json!({"appId": app_id, "name": "web"});
    let key = send(&app.http, Method::POST, format!("{base}/api/keys"), bearer, Some(key)).await;
    let key_id = key.body["data"]["id"].as_str().unwrap().to_string();
    let regenerate = |id: &str| send(&app.http, Method::POST, format!("{base}/api/keys/{id}/regenerate"), bearer, None);

    assert_eq!(regenerate(&key_id).await.status, 201, "an active key is regenerated once");
    for _ in 0..2 {
        let again = regenerate(&key_id).await;
        assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("key_revoked")), "{}", again.body);
        assert!(again.body.get("data").is_none());
    }
    const KEYS: &str = "SELECT count(*), count(*) FILTER (WHERE status = 'active') FROM api_keys \
                        WHERE app_id = $1::text::uuid";
    let keys = app.db.query_one(KEYS, &[&app_id]).await.unwrap();
    let (all, active): (i64, i64) = (keys.get(0), keys.get(1));
    assert_eq!(all, 2, "the original and its one replacement");
    assert_eq!(active, 1);
}

mod before_v6 {
    refinery::embed_migrations!("sql/migrations");
}

/// A database migrated only up to V5 (before the repair), dropped afterwards.
struct PreV6Database {
    name: String,
    db: tokio_postgres::Client,
}

impl PreV6Database {
    async fn create() -> PreV6Database {
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        let name = format!("strata_test_{}", Uuid::new_v4().simple());
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        let url = crate::helpers::test_config(&name).database_url.unwrap();
        let (mut db, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let v5 = refinery::Target::Version(5);
        before_v6::migrations::runner().set_target(v5).run_async(&mut db).await.unwrap();
        PreV6Database { name, db }
    }

    /// An owner as pre-V6 registration stored it (created `age` ago); returns its id.
    async fn owner(&self, email: &str, password: Option<&str>, age: Duration) -> Uuid {
        const SQL: &str = "INSERT INTO owners (id, email, name, password_hash, created_at) \
             VALUES ($1, $2, 'Pre-V6', $3, now() - $4::int8 * interval '1 second')";
        let hash = match password {
            Some(p) => Some(strata::auth::password::hash(p.into()).await.unwrap()),
            None => None,
        };
        let id = Uuid::new_v4();
        self.db.execute(SQL, &[&id, &email, &hash, &(age.as_secs() as i64)]).await.unwrap();
        id
    }

    async fn app_of(&self, owner: Uuid, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.db
            .execute("INSERT INTO apps (id, owner_id, name) VALUES ($1, $2, $3)", &[&id, &owner, &name])
            .await
            .unwrap();
        id
    }

    /// Applies the remaining migrations (V6) the way every process does at start.
    async fn migrate(&self) {
        let url = crate::helpers::test_config(&self.name).database_url.unwrap();
        strata::db::migrate(&url, 3, Duration::from_secs(5)).await.unwrap();
        let client = strata::db::connect(&url).await.unwrap();
        strata::accounts::report_repairs(&client).await.unwrap();
    }
}

impl Drop for PreV6Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
                tokio::spawn(conn);
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            });
        })
        .join()
        .ok();
    }
}

#[tokio::test]
async fn the_v6_repair_takes_the_cli_apps_and_the_login_from_whoever_registered_the_bootstrap_address() {
    let pre = PreV6Database::create().await;
    let hour = Duration::from_secs(3600);
    // The attacked state: the address registered over HTTP, then the CLI gave it its apps.
    let squatter = pre.owner("Bootstrap@Strata.invalid", Some(PASSWORD), 2 * hour).await;
    let cli_apps = [pre.app_of(squatter, "shop").await, pre.app_of(squatter, "blog").await];
    strata::accounts::create_key(&pre.db, KEY_SECRET.as_bytes(), cli_apps[0], "minted", None).await.unwrap();
    let honest = pre.owner("ann@example.com", Some(PASSWORD), hour).await;
    let honest_app = pre.app_of(honest, "ann's").await;
    let (old_token, _) = strata::auth::tokens::issue(JWT_SECRET, squatter, "x", chrono::Utc::now(), hour);

    pre.migrate().await;

    const LEFT: &str = "SELECT count(*) FROM apps WHERE owner_id = $1";
    assert_eq!(pre.db.query_one(LEFT, &[&squatter]).await.unwrap().get::<_, i64>(0), 0, "the squatter has no apps");
    for id in cli_apps {
        assert_eq!(owner_of(&pre.db, id).await, (true, false, false), "app {id} is the bootstrap owner's again");
    }
    assert_eq!(owner_of(&pre.db, honest_app).await, (false, true, true));
    const SQUATTER: &str = "SELECT disabled_at IS NOT NULL, password_hash IS NULL, \
         (SELECT count(*) FROM apps WHERE owner_id = $1) FROM owners WHERE id = $1";
    let row = pre.db.query_one(SQUATTER, &[&squatter]).await.unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1), row.get::<_, i64>(2)), (true, true, 0));
    const RECORD: &str =
        "SELECT disabled_owner_id, apps_moved, keys_to_review, reported_at IS NOT NULL FROM owner_repairs";
    let record = pre.db.query(RECORD, &[]).await.unwrap();
    assert_eq!(record.len(), 1, "one repair recorded");
    let r = &record[0];
    assert_eq!(
        (r.get::<_, Uuid>(0), r.get::<_, i32>(1), r.get::<_, i32>(2), r.get::<_, bool>(3)),
        (squatter, 2, 1, true)
    );

    let server = spawn_server_on(&pre.name, |_| {}).await;
    let base = format!("http://{}", server.addr);
    for email in ["Bootstrap@Strata.invalid", "bootstrap@strata.invalid"] {
        let login = login_at(&server.http, &base, email, PASSWORD).await;
        assert_eq!((login.status, login.body["error"]["code"].as_str()), (401, Some("invalid_credentials")));
    }
    let apps = send(&server.http, Method::GET, format!("{base}/api/apps"), Some(&old_token), None).await;
    assert_eq!(apps.status, 401, "the squatter's session is gone: {}", apps.body);
    assert_eq!(register_at(&server.http, &base, "bootstrap@strata.invalid").await.status, 409);
    let ann = login_at(&server.http, &base, "ann@example.com", PASSWORD).await;
    let token = ann.body["data"]["token"].as_str().unwrap();
    let listed = send(&server.http, Method::GET, format!("{base}/api/apps"), Some(token), None).await;
    assert_eq!(listed.body["data"][0]["id"], honest_app.to_string());
    // Later CLI apps go to the one new bootstrap owner.
    let later = strata::accounts::create_app(&pre.db, "later", None).await.unwrap();
    assert_eq!(owner_of(&pre.db, later.id).await, (true, false, false));
    let bootstraps: i64 = pre.db.query_one("SELECT count(*) FROM owners WHERE bootstrap", &[]).await.unwrap().get(0);
    assert_eq!(bootstraps, 1);
    drop(server);
}

#[tokio::test]
async fn owners_whose_addresses_collide_after_normalisation_keep_their_logins_and_new_ones_get_409() {
    let pre = PreV6Database::create().await;
    let hour = Duration::from_secs(3600);
    let genuine_bootstrap = pre.owner("bootstrap@strata.invalid", None, 3 * hour).await;
    let cli_app = pre.app_of(genuine_bootstrap, "ops").await;
    let older = pre.owner("jose\u{301}@example.com", Some(PASSWORD), 2 * hour).await;
    let younger = pre.owner("JOS\u{c9}@example.com", Some("another long password"), hour).await;

    pre.migrate().await;

    // The genuine bootstrap owner keeps its apps and loses its address.
    assert_eq!(owner_of(&pre.db, cli_app).await, (true, false, false));
    const NORMS: &str = "SELECT email_norm FROM owners WHERE id = ANY($1) ORDER BY created_at";
    let rows = pre.db.query(NORMS, &[&vec![older, younger]]).await.unwrap();
    let norms: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(norms, [Some("jos\u{e9}@example.com".to_string()), None], "the older owner holds the address");
    let server = spawn_server_on(&pre.name, |_| {}).await;
    let base = format!("http://{}", server.addr);
    for (email, password, id) in [
        ("jose\u{301}@example.com", PASSWORD, older),
        ("JOS\u{c9}@example.com", "another long password", younger),
        ("jos\u{e9}@EXAMPLE.com", "another long password", younger),
    ] {
        let login = login_at(&server.http, &base, email, password).await;
        assert_eq!(
            (login.status, login.body["data"]["user"]["id"].as_str()),
            (200, Some(id.to_string().as_str())),
            "{email:?}"
        );
    }
    for email in ["Jos\u{e9}@example.com", "JOSE\u{301}@EXAMPLE.COM"] {
        let taken = register_at(&server.http, &base, email).await;
        assert_eq!((taken.status, taken.body["error"]["code"].as_str()), (409, Some("email_taken")), "{email:?}");
    }
    drop(server);
}
