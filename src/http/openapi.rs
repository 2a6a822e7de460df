//! The API's own description: `GET /api/openapi.json` serves the OpenAPI 3.0 document kept in
//! `src/http/openapi.json` (written by hand, checked against the router by `tests/api/openapi.rs` and
//! fuzzed against the server by `.ci/fuzz`), and `GET /api/docs` an offline HTML page rendered from it
//! on the server once: every operation with its parameters, request body and responses, then every
//! schema. No script and no CDN.

use std::fmt::Write;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::AppState;

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// HTTP methods an OpenAPI path item may hold, in the order the page lists them.
const METHODS: [&str; 5] = ["get", "post", "patch", "put", "delete"];

/// The documentation routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(document)).route("/api/docs", get(docs))
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

async fn docs() -> Html<&'static str> {
    static PAGE: LazyLock<String> = LazyLock::new(|| match serde_json::from_str::<Value>(DOCUMENT) {
        Ok(doc) => render(&doc),
        // The tests parse the document, so this is never served; still no panic at run time.
        Err(e) => format!(
            "<!doctype html><title>Strata API</title><p>the OpenAPI document does not parse: {}</p>",
            escape(&e.to_string())
        ),
    });
    Html(PAGE.as_str())
}

/// The whole HTML page for `doc`.
pub fn render(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} API {v}</title><style>{STYLE}</style>\
         </head><body><h1>{t} API <small>{v}</small></h1><p>{d}</p><p>Machine-readable: <a href=\"/api/openapi.json\">\
         /api/openapi.json</a> (OpenAPI {o}).</p>",
        t = escape(title),
        v = escape(version),
        d = escape(doc["info"]["description"].as_str().unwrap_or("")),
        o = escape(doc["openapi"].as_str().unwrap_or("")),
    );
    render_security(&mut out, &doc["components"]["securitySchemes"]);
    out.push_str("<h2>Operations</h2>");
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                render_operation(&mut out, doc, method, path, op);
            }
        }
    }
    out.push_str("<h2>Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        let _ = write!(out, "<section id=\"schema-{n}\"><h3>{n}</h3>", n = escape(name));
        render_schema(&mut out, schema);
        out.push_str("</section>");
    }
    out.push_str("</body></html>");
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:70rem;margin:auto;padding:1rem;line-height:1.4}\
    table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;\
    vertical-align:top}code{background:#f3f3f3}.op{border-top:2px solid #888;margin-top:1.5rem}\
    .m{font-weight:bold;text-transform:uppercase;margin-right:.5rem}";

fn render_security(out: &mut String, schemes: &Value) {
    out.push_str("<h2>Authentication</h2><ul>");
    for (name, s) in schemes.as_object().into_iter().flatten() {
        let how = match s["type"].as_str() {
            Some("apiKey") => format!("header <code>{}</code>", escape(s["name"].as_str().unwrap_or(""))),
            _ => "header <code>Authorization: Bearer &lt;token&gt;</code>".to_string(),
        };
        let desc = escape(s["description"].as_str().unwrap_or(""));
        let _ = write!(out, "<li><b>{}</b>: {how}. {desc}</li>", escape(name));
    }
    out.push_str("</ul>");
}

fn render_operation(out: &mut String, doc: &Value, method: &str, path: &str, op: &Value) {
    let id = op["operationId"].as_str().unwrap_or("");
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{id}\"><h3><span class=\"m\">{method}</span><code>{path}</code></h3>\
         <p><b>{summary}</b> (operationId <code>{id}</code>). {desc}</p>",
        id = escape(id),
        path = escape(path),
        summary = escape(op["summary"].as_str().unwrap_or("")),
        desc = escape(op["description"].as_str().unwrap_or("")),
    );
    let auth: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|req| req.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_else(|| "none".into()))
        .collect();
    let auth = if auth.is_empty() { "none".to_string() } else { auth.join(" or ") };
    let _ = write!(out, "<p>Authentication: {}</p>", escape(&auth));
    if let Some(params) = op["parameters"].as_array() {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>required</th><th>type</th><th>description</th></tr>");
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(p["name"].as_str().unwrap_or("")),
                escape(p["in"].as_str().unwrap_or("")),
                if p["required"] == true { "yes" } else { "no" },
                type_of(&p["schema"]),
                escape(p["description"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</table>");
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(out, "<p>Request body ({}): {}</p>", escape(media), type_of(&body["schema"]));
        }
    }
    out.push_str("<table><tr><th>status</th><th>description</th><th>body</th></tr>");
    for (status, resp) in op["responses"].as_object().into_iter().flatten() {
        let resp = resolve(doc, resp);
        let body: Vec<String> = resp["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, c)| format!("{} {}", escape(media), type_of(&c["schema"])))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(status),
            escape(resp["description"].as_str().unwrap_or("")),
            body.join("<br>")
        );
    }
    out.push_str("</table></section>");
}

/// A `$ref` to `#/components/...` followed once; anything else as is.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#")) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(v),
        None => v,
    }
}

fn render_schema(out: &mut String, schema: &Value) {
    let _ = write!(out, "<p>{} {}</p>", type_of(schema), escape(schema["description"].as_str().unwrap_or("")));
    let Some(props) = schema["properties"].as_object() else { return };
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("<table><tr><th>field</th><th>required</th><th>type</th><th>description</th></tr>");
    for (name, p) in props {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            if required.contains(&name.as_str()) { "yes" } else { "no" },
            type_of(p),
            escape(p["description"].as_str().unwrap_or("")),
        );
    }
    out.push_str("</table>");
}

/// A short HTML rendering of a schema's type: a link for `$ref`, `array of X`, `a | b` for `oneOf`,
/// with format, bounds, enum values and nullability.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{n}\">{n}</a>", n = escape(name));
    }
    let mut t = if let Some(alts) = schema["oneOf"].as_array() {
        alts.iter().map(type_of).collect::<Vec<_>>().join(" | ")
    } else {
        match schema["type"].as_str() {
            Some("array") => format!("array of {}", type_of(&schema["items"])),
            Some(ty) => escape(ty),
            None => "any".to_string(),
        }
    };
    if let Some(f) = schema["format"].as_str() {
        let _ = write!(t, " ({})", escape(f));
    }
    if let Some(values) = schema["enum"].as_array() {
        let list: Vec<String> = values.iter().map(|v| escape(&v.to_string())).collect();
        let _ = write!(t, " one of {}", list.join(", "));
    }
    for (key, label) in [("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤")]
    {
        if let Some(n) = schema[key].as_i64() {
            let _ = write!(t, ", {label} {n}");
        }
    }
    if schema["nullable"] == true {
        t.push_str(", nullable");
    }
    t
}

/// Text made safe inside HTML elements and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_markup_and_links_schemas() {
        let doc = serde_json::json!({
            "openapi": "3.0.3",
            "info": {"title": "T<x>", "version": "1", "description": "a & b"},
            "paths": {"/p/{id}": {"get": {"operationId": "getP", "summary": "s", "security": [],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/P"}}}}}}}},
            "components": {"schemas": {"P": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "maximum": 5}}}}},
        });
        let html = render(&doc);
        assert!(html.contains("<h1>T&lt;x&gt; API <small>1</small></h1><p>a &amp; b</p>"), "{html}");
        assert!(html.contains("<span class=\"m\">get</span><code>/p/{id}</code>"), "{html}");
        assert!(html.contains("<td>string (uuid)</td>"), "{html}");
        assert!(html.contains("application/json <a href=\"#schema-P\">P</a>"), "{html}");
        assert!(html.contains("<tr><td><code>n</code></td><td>yes</td><td>integer, ≤ 5</td><td></td></tr>"), "{html}");
    }
}
