use serde_json::json;

use super::*;

#[test]
fn a_batch_keeps_at_most_max_events_raw_and_counts_the_rest() {
    let body = br#"{"x":[[],[],{"a":[]}],"events":[{"eventType":"a"}, 5 ,[],{"b":1}],"sentAt":"2026-01-01T00:00:00Z"}"#;
    let batch = read_batch(body, 2).unwrap();
    let (events, total) = batch.events.unwrap();
    assert_eq!(events.iter().map(|e| e.get()).collect::<Vec<_>>(), vec![r#"{"eventType":"a"}"#, "5"]);
    assert_eq!(total, 4);
    assert!(!batch.events_not_array);
    assert_eq!(batch.sent_at, Some(json!("2026-01-01T00:00:00Z")));
}

#[test]
fn a_batch_without_an_events_array_says_which() {
    let b = read_batch(br#"{"events":{"a":1},"sent_at":1700000000000}"#, 10).unwrap();
    assert!(b.events.is_none() && b.events_not_array);
    assert_eq!(b.sent_at, Some(json!(1700000000000_i64)));
    let b = read_batch(br#"{"events":null,"sentAt":null}"#, 10).unwrap();
    assert!(b.events.is_none() && !b.events_not_array && b.sent_at.is_none());
}

#[test]
fn bodies_that_are_not_objects_or_not_json_are_told_apart() {
    assert_eq!(read_batch(b" [1,2] ", 10).unwrap_err(), BodyError::NotAnObject);
    assert_eq!(read_batch(b"\"text\"", 10).unwrap_err(), BodyError::NotAnObject);
    assert!(matches!(read_batch(b"{\"events\":[", 10).unwrap_err(), BodyError::Invalid(_)));
    assert!(matches!(read_batch(b"[[[", 10).unwrap_err(), BodyError::Invalid(_)));
    assert!(matches!(read_batch(br#"{"events":[]} x"#, 10).unwrap_err(), BodyError::Invalid(_)));
}

#[test]
fn an_event_keeps_its_known_fields_only_with_nested_values_as_empty_stand_ins() {
    let raw = br#"{"eventType":"click","junk":[[],[],[]],"url":["a","b"],"user_id":{"x":1},"screenWidth":3,
                  "metadata":{"plan":"pro","n":[1,2]},"apiKey":"ak_x","timestamp":null}"#;
    let v = event_value(raw, 1024).unwrap();
    assert_eq!(
        v,
        json!({"eventType":"click","url":[],"user_id":{},"screenWidth":3,
               "metadata":{"plan":"pro","n":[1,2]},"timestamp":null})
    );
}

#[test]
fn repeated_fields_keep_the_last_value_as_a_json_object_would() {
    let v = event_value(br#"{"eventType":"a","eventType":"b"}"#, 64).unwrap();
    assert_eq!(v, json!({"eventType":"b"}));
}

#[test]
fn metadata_far_over_its_limit_is_refused_unparsed() {
    let big = format!(r#"{{"eventType":"a","metadata":{{"k":"{}"}}}}"#, "x".repeat(300));
    let e = event_value(big.as_bytes(), 64).unwrap_err();
    assert_eq!(e.code, "metadata_too_large");
    assert_eq!(e.message, "metadata is 308 bytes as sent, more than 4 times the 64-byte limit");
    // Within the slack it is parsed (the compact-size check is parse_event's).
    let spaced = format!(r#"{{"metadata":{{ {} "k" : 1 }}}}"#, " ".repeat(100));
    assert_eq!(event_value(spaced.as_bytes(), 64).unwrap(), json!({"metadata":{"k":1}}));
    // Not an object: left to parse_event's type check.
    assert_eq!(event_value(br#"{"properties":[1,2]}"#, 64).unwrap(), json!({"properties":[]}));
}

#[test]
fn events_that_are_not_objects_are_invalid_events() {
    for raw in [&b"5"[..], b"[]", b"\"a\"", b"null"] {
        assert_eq!(event_value(raw, 64).unwrap_err().code, "invalid_event");
    }
}

#[test]
fn the_api_key_is_found_in_a_prefix_after_other_fields_but_not_when_cut_off() {
    assert_eq!(find_api_key(br#"{"apiKey":"ak_1","events":[{"a":"#), Some("ak_1".into()));
    assert_eq!(find_api_key(br#" { "x" : [[],{"apiKey":"no"}], "apiKey" : "ak_2" , "#), Some("ak_2".into()));
    assert_eq!(find_api_key(br#"{"events":[[],[],[],"#), None);
    assert_eq!(find_api_key(br#"{"apiKey":"ak_"#), None);
    assert_eq!(find_api_key(br#"{"apiKey":5}"#), None);
    assert_eq!(find_api_key(br#"{"apiKey":null}"#), None);
    assert_eq!(find_api_key(br#"[{"apiKey":"ak_3"}]"#), None);
    assert_eq!(find_api_key(b"\x1f\x8b\x08"), None);
}
