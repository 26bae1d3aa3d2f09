//! Rendering without a socket: call targets from every source, strict encoding, the answer's shape.
#![allow(clippy::unwrap_used)]

use super::template::{parse, Names};
use super::*;

fn input() -> Input {
    let mut headers = http::HeaderMap::new();
    headers.insert("accept-language", HeaderValue::from_static("de"));
    let claims: Map<String, Value> =
        serde_json::from_value(serde_json::json!({"sub": "u/1", "org": {"id": 9}})).unwrap();
    Input {
        params: vec![("id".into(), "7".into())],
        query: Some("limit=5&q=a%20b".into()),
        headers,
        claims: Some(Arc::new(claims)),
        hash_key: Vec::new(),
    }
}

fn pieces(t: &str) -> Vec<Piece> {
    let calls = ["order".to_string()];
    let params = ["id".to_string()];
    parse(
        t,
        &Names {
            params: &params,
            calls: &calls,
            fans_out: &[false],
            has_jwt: true,
        },
    )
    .unwrap()
}

#[test]
fn targets_are_filled_from_every_source() {
    let order = serde_json::json!({"user_id": 42, "tag": "a&b", "dots": ".."});
    let input = input();
    let lookup = |c: usize| (c == 0).then_some(&order);
    let t = render_target(
        &pieces("/u/{order.user_id}/{id}?org={claims.org.id}&q={query.q}&l={header.accept-language}&t={order.tag}&s={claims.sub}"),
        &input,
        &lookup,
        None,
    )
    .unwrap();
    assert_eq!(t, "/u/42/7?org=9&q=a%20b&l=de&t=a%26b&s=u%2F1");
    // Missing from the request: the client's fault (400); missing from an answer: the upstream's.
    let e = render_target(&pieces("/x/{query.nope}"), &input, &lookup, None).unwrap_err();
    assert_eq!(e.status(), 400);
    let e = render_target(&pieces("/x/{order.nope}"), &input, &lookup, None).unwrap_err();
    assert_eq!(e.status(), 502);
    assert_eq!(
        render_target(&pieces("/x/{order.nope|dflt}"), &input, &lookup, None).unwrap(),
        "/x/dflt"
    );
    // A segment of dots would climb the path.
    let e = render_target(&pieces("/x/{order.dots}"), &input, &lookup, None).unwrap_err();
    assert!(e.message().contains("cannot be a path segment"), "{e:?}");
}

#[test]
fn the_shape_selects_renames_and_nests() {
    let order = serde_json::json!({"id": 7, "items": [{"p": 1}, {"p": 2}]});
    let input = input();
    let calls = ["order".to_string()];
    let params = ["id".to_string()];
    let names = Names {
        params: &params,
        calls: &calls,
        fans_out: &[false],
        has_jwt: true,
    };
    let r = |t: &str| template::parse_ref(t, &names).unwrap();
    let shape = Shape::Object(vec![
        ("order_id".into(), Shape::Ref(r("order.id"))),
        ("ps".into(), Shape::Ref(r("order.items[].p"))),
        ("missing".into(), Shape::Ref(r("order.nope"))),
        (
            "who".into(),
            Shape::Text(parse("user {claims.sub}", &names).unwrap()),
        ),
        (
            "nested".into(),
            Shape::Object(vec![("first".into(), Shape::Ref(r("order.items[0]")))]),
        ),
        ("fixed".into(), Shape::Lit(Value::from(1))),
    ]);
    let v = render_shape(&shape, &[Some(&order)], &input);
    assert_eq!(
        v,
        serde_json::json!({"order_id": 7, "ps": [1, 2], "missing": null, "who": "user u/1",
                           "nested": {"first": {"p": 1}}, "fixed": 1})
    );
}

#[test]
fn failures_map_to_statuses_clients_understand() {
    assert_eq!(CallError::Status(404).status(), 404);
    assert_eq!(CallError::Status(500).status(), 502);
    assert_eq!(CallError::Status(504).status(), 504);
    assert_eq!(CallError::Timeout.status(), 504);
    assert_eq!(CallError::Deadline.status(), 504);
    assert_eq!(CallError::NotJson("x".into()).status(), 502);
    assert_eq!(CallError::TooManyCalls { count: 3, max: 2 }.status(), 502);
}
