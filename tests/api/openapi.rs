//! The OpenAPI document (`GET /api/openapi.json`) against what the server really serves: the routes
//! declared in `src/http/*.rs`, the document and a list kept here are the same set; every documented
//! operation reaches a handler; every other method on a documented path is a 405; `/api/docs` names
//! every operation.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{reply, spawn_app};

/// Every route of the service, as `METHOD path`.
const KNOWN_ROUTES: [&str; 32] = [
    "DELETE /api/analytics/users/{userId}",
    "DELETE /api/apps/{id}",
    "DELETE /api/keys/{id}",
    "GET /api/admin/indexes",
    "GET /api/admin/maintenance/runs",
    "GET /api/admin/partitions",
    "GET /api/admin/partitions/health",
    "GET /api/admin/slow-queries",
    "GET /api/analytics/apps/{appId}/overview",
    "GET /api/analytics/events/summary",
    "GET /api/analytics/events/timeline",
    "GET /api/analytics/users/{userId}",
    "GET /api/apps",
    "GET /api/apps/{id}",
    "GET /api/auth/me",
    "GET /api/docs",
    "GET /api/keys",
    "GET /api/keys/{id}",
    "GET /api/openapi.json",
    "GET /health",
    "GET /metrics",
    "GET /ready",
    "PATCH /api/apps/{id}",
    "POST /api/admin/maintenance/run",
    "POST /api/apps",
    "POST /api/auth/login",
    "POST /api/auth/logout",
    "POST /api/auth/register",
    "POST /api/events/track",
    "POST /api/events/track/batch",
    "POST /api/keys",
    "POST /api/keys/{id}/regenerate",
];

/// Methods an operation may use.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn documented_routes(doc: &Value) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, _) in item.as_object().expect("a path item is an object") {
            assert!(METHODS.contains(&method.as_str()), "{path}: unexpected key {method}");
            routes.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes
}

/// The routes declared in the source of every `router()` under `src/http/`: each
/// `.route("PATH", get(..).post(..))` call, with the method functions chained in it.
fn routes_in_source() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    // Every source file under src/http, folders (`http/analytics/`) included.
    let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http"))];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices(".route(\"") {
            let rest = &text[at + ".route(\"".len()..];
            let route = &rest[..rest.find('"').unwrap()];
            let call = &rest[..closing_paren(rest)];
            for method in METHODS {
                let token = format!("{method}(");
                let found = call.match_indices(&token).any(|(i, _)| {
                    i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric() && call.as_bytes()[i - 1] != b'_'
                });
                if found {
                    routes.insert(format!("{} {route}", method.to_uppercase()));
                }
            }
        }
    }
    routes
}

/// Length of `.route(` arguments: up to the parenthesis closing the call.
fn closing_paren(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return i,
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced .route( call");
}

async fn document(app: &crate::helpers::TestApp) -> Value {
    let resp = app.http.get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    serde_json::from_str(&resp.text().await.unwrap()).expect("the document is JSON")
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_declares() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.0.3");
    let known: BTreeSet<String> = KNOWN_ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(documented_routes(&doc), known);
    assert_eq!(routes_in_source(), known);
    // Every operation has a unique id, a success answer and an authentication statement.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            assert!(op["security"].is_array(), "{id}: no security");
            let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(statuses.iter().any(|s| s.starts_with('2')), "{id}: no 2xx in {statuses:?}");
        }
    }
    assert_eq!(ids.len(), KNOWN_ROUTES.len());
}

#[tokio::test]
async fn every_documented_reference_resolves() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 100, "{}", refs.len());
    for r in refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external reference {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The path with its `{placeholders}` filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "0193f0c4-7d1a-7000-8000-000000000001")
        .replace("{appId}", "0193f0c4-7d1a-7000-8000-000000000002")
        .replace("{userId}", "user-1")
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler_and_other_methods_are_405() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = app.url(&concrete(path));
        for method in METHODS {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // No credentials: handlers answer 401/400/404 without changing anything.
            let resp = app.http.request(m, &url).header("Content-Type", "application/json").body("{}").send().await;
            let resp = resp.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let code =
                serde_json::from_str::<Value>(&text).ok().and_then(|b| b["error"]["code"].as_str().map(String::from));
            if item.get(method).is_some() {
                assert_ne!(status, 405, "{method} {path}: {text}");
                assert_ne!(code.as_deref(), Some("not_found"), "{method} {path}: {text}");
            } else {
                assert_eq!((status, code.as_deref()), (405, Some("method_not_allowed")), "{method} {path}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn the_docs_page_is_offline_html_naming_every_operation() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let resp = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let html = resp.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..80]);
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(!html.contains("https://"), "the page loads nothing from elsewhere");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let heading =
                format!("<section class=\"op\" id=\"{id}\"><h3><span class=\"m\">{method}</span><code>{path}</code>");
            assert!(html.contains(&heading), "{id} missing from /api/docs");
            assert!(html.contains(&format!("(operationId <code>{id}</code>)")), "{id}");
        }
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(html.contains(&format!("<section id=\"schema-{name}\"><h3>{name}</h3>")), "schema {name}");
    }
}

#[tokio::test]
async fn real_error_answers_have_the_documented_error_shape() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["success", "error"]));
    assert_eq!(error["properties"]["error"]["required"], serde_json::json!(["code", "message", "details"]));
    let r = reply(app.http.get(app.url("/api/analytics/events/summary")).send().await.unwrap()).await;
    assert_eq!(r.status, 401);
    let keys: BTreeSet<&str> = r.body["error"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["code", "message", "details"]));
    assert_eq!(r.body["success"], false);
    // The 401 is documented for this operation and refers to the error shape.
    let documented = &doc["paths"]["/api/analytics/events/summary"]["get"]["responses"]["401"]["$ref"];
    assert_eq!(documented, "#/components/responses/Unauthorized");
    assert_eq!(
        doc["components"]["responses"]["Unauthorized"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
}
