use serde_json::json;

use super::*;

fn ctx() -> EventContext {
    EventContext {
        app_id: Uuid::nil(),
        received_at: "2026-06-15T12:00:00Z".parse().unwrap(),
        ip: None,
        ua: None,
        sent_at: None,
        metadata_max_bytes: 64,
        future_skew: Duration::hours(24),
        accept_window: Duration::days(730),
        retention_floor: None,
    }
}

fn code(v: serde_json::Value) -> &'static str {
    parse_event(&v, &ctx(), &UaParser::new()).unwrap_err().code
}

#[test]
fn event_time_is_corrected_for_the_client_clock() {
    let v = json!({"eventType": "a", "timestamp": "2026-06-15T13:00:00Z", "sentAt": "2026-06-15T13:00:05Z"});
    let row = parse_event(&v, &ctx(), &UaParser::new()).unwrap();
    assert_eq!(row.created_at, "2026-06-15T11:59:55Z".parse::<DateTime<Utc>>().unwrap());
    let v = json!({"eventType": "a", "timestamp": 1781524800000_i64});
    let row = parse_event(&v, &ctx(), &UaParser::new()).unwrap();
    assert_eq!(row.created_at, "2026-06-15T12:00:00Z".parse::<DateTime<Utc>>().unwrap());
}

#[test]
fn window_edges_are_inclusive() {
    let ok = json!({"eventType": "a", "timestamp": "2026-06-16T12:00:00Z"});
    assert!(parse_event(&ok, &ctx(), &UaParser::new()).is_ok());
    assert_eq!(code(json!({"eventType": "a", "timestamp": "2026-06-16T12:00:00.001Z"})), "timestamp_in_future");
    assert_eq!(code(json!({"eventType": "a", "timestamp": "2024-06-15T11:59:59Z"})), "timestamp_too_old");
}

#[test]
fn each_bad_field_gets_its_code() {
    assert_eq!(code(json!({"eventType": "a", "userId": true})), "invalid_type");
    assert_eq!(code(json!({"eventType": "a", "userId": "x".repeat(257)})), "field_too_long");
    assert_eq!(code(json!({"eventType": "a", "screenHeight": -1})), "invalid_value");
    assert_eq!(code(json!({"eventType": "a", "screenHeight": 1.5})), "invalid_type");
    assert_eq!(code(json!({"eventType": "a", "metadata": {"k\u{0}": 1}})), "invalid_string");
    assert_eq!(code(json!({"eventType": "a", "metadata": {"k": "x".repeat(64)}})), "metadata_too_large");
    assert_eq!(code(json!({"eventType": "a", "metadata": {}, "properties": {}})), "conflicting_fields");
    assert_eq!(code(json!({"eventType": "a", "eventId": "00000000-0000-0000-0000-000000000000"})), "invalid_event_id");
    assert_eq!(code(json!({"eventType": "a", "timestamp": "2026-06-15 12:00:00"})), "invalid_timestamp");
    assert_eq!(code(json!({"eventType": "   "})), "missing_event_type");
    assert_eq!(code(json!([])), "invalid_event");
}

#[test]
fn nulls_are_absent_and_server_assigns_v7_ids() {
    let v = json!({"eventType": "a", "userId": null, "metadata": null, "eventId": null});
    let row = parse_event(&v, &ctx(), &UaParser::new()).unwrap();
    assert_eq!((row.user_id, row.metadata), (None, None));
    assert_eq!(row.event_id.get_version_num(), 7);
}

#[test]
fn events_in_months_retention_removes_are_refused() {
    let mut c = ctx();
    c.retention_floor = Some("2026-03-01T00:00:00Z".parse().unwrap());
    let old = json!({"eventType": "a", "timestamp": "2026-02-28T23:59:59Z"});
    assert_eq!(parse_event(&old, &c, &UaParser::new()).unwrap_err().code, "timestamp_too_old");
    let kept = json!({"eventType": "a", "timestamp": "2026-03-01T00:00:00Z"});
    assert!(parse_event(&kept, &c, &UaParser::new()).is_ok());
}
