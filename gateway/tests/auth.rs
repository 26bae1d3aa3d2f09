//! Authentication and the other built-in plugins, through the gateway (in process, and the custom
//! plugin example's binary) in front of a real upstream: every JWT algorithm and key source, JWKS
//! rotation and outage, the classic token attacks, API keys, CORS, IP filter, body limits and
//! header transforms.
#![allow(clippy::unwrap_used)]

use crate::common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 300, "iss": "test-idp", "aud": "api", "scope": "read write"})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, body: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, body, key).unwrap()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem(name)).unwrap()
}

fn hs() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

/// A provider block with the common checks.
fn provider(name: &str, body: &str) -> String {
    format!("    {name}: {{ {body}, issuer: test-idp, audience: api }}\n")
}

fn get(g: &Gateway, path: &str, headers: &[&str]) -> Response {
    request(g.addr, "GET", path, headers, None)
}

#[test]
fn every_algorithm_and_key_source() {
    let be = Backend::start("be", Mode::Echo);
    let mut providers = String::new();
    providers += &provider(
        "hs",
        &format!("algorithms: [HS256, HS384, HS512], secret: \"{SECRET}\""),
    );
    providers += &provider(
        "rsa",
        &format!(
            "algorithms: [RS256, RS384, RS512, PS256, PS384, PS512], public_key_file: \"{}\"",
            fixture("rsa1.pub")
        ),
    );
    providers += &provider(
        "es256",
        &format!(
            "algorithms: [ES256], public_key_file: \"{}\"",
            fixture("ec256.pub")
        ),
    );
    providers += &provider(
        "es384",
        &format!(
            "algorithms: [ES384], public_key_file: \"{}\"",
            fixture("ec384.pub")
        ),
    );
    providers += &provider(
        "ed",
        &format!(
            "algorithms: [EdDSA], public_key_file: \"{}\"",
            fixture("ed25519.pub")
        ),
    );
    providers += &provider(
        "jwk",
        &format!(
            "algorithms: [RS256], jwk_file: \"{}\"",
            fixture("rsa1.jwk.json")
        ),
    );
    providers += &provider(
        "ecjwk",
        &format!(
            "algorithms: [ES256], jwk_file: \"{}\"",
            fixture("ec256.jwk.json")
        ),
    );
    let mut routes = String::new();
    for p in ["hs", "rsa", "es256", "es384", "ed", "jwk", "ecjwk"] {
        routes += &format!(
            "  - name: {p}\n    match: {{ path_prefix: /{p} }}\n    upstream: be\n    plugins: [{{ jwt: {{ provider: {p}, forward_claims: {{ sub: X-User-Id }} }} }}]\n"
        );
    }
    let g = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}\nauth:\n  jwt:\n{providers}upstreams:\n  be: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n{routes}",
        be.addr
    ));
    let c = claims("alice");
    let cases: Vec<(&str, Algorithm, EncodingKey, Option<&str>)> = vec![
        ("/hs", Algorithm::HS256, hs(), None),
        ("/hs", Algorithm::HS384, hs(), None),
        ("/hs", Algorithm::HS512, hs(), None),
        ("/rsa", Algorithm::RS256, rsa("rsa1.key"), None),
        ("/rsa", Algorithm::RS384, rsa("rsa1.key"), None),
        ("/rsa", Algorithm::RS512, rsa("rsa1.key"), None),
        ("/rsa", Algorithm::PS256, rsa("rsa1.key"), None),
        ("/rsa", Algorithm::PS384, rsa("rsa1.key"), None),
        ("/rsa", Algorithm::PS512, rsa("rsa1.key"), None),
        (
            "/es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
            None,
        ),
        (
            "/es384",
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&pem("ec384.key")).unwrap(),
            None,
        ),
        (
            "/ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed25519.key")).unwrap(),
            None,
        ),
        ("/jwk", Algorithm::RS256, rsa("rsa1.key"), Some("rsa-1")),
        (
            "/ecjwk",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
            Some("ec-1"),
        ),
    ];
    for (path, alg, key, kid) in &cases {
        let t = sign(*alg, key, *kid, &c);
        let r = get(&g, path, &[&bearer(&t)]);
        assert_eq!(
            r.status,
            200,
            "{path} {alg:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.upstream_header("x-user-id").as_deref(),
            Some("alice"),
            "{path} {alg:?}"
        );
    }
    // A valid token of one provider is not valid for another.
    let t = sign(Algorithm::RS256, &rsa("rsa2.key"), None, &c);
    assert_eq!(get(&g, "/rsa", &[&bearer(&t)]).status, 401);
    let t = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
        None,
        &c,
    );
    assert_eq!(get(&g, "/es384", &[&bearer(&t)]).status, 401);
}

/// A route protected by an HS256 provider (with a cookie and a query source) and one by an RS256 key.
fn attack_gateway(be: &Backend) -> Gateway {
    Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: \"{SECRET}\", issuer: test-idp, audience: api, cookie: session, query: access_token }}
    rs: {{ algorithms: [RS256], public_key_file: \"{}\", issuer: test-idp, audience: api }}
    es: {{ algorithms: [ES256], public_key_file: \"{}\", issuer: test-idp, audience: api }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: open
    match: {{ path_prefix: /api/public }}
    upstream: be
  - name: secure
    match: {{ path_prefix: /api/secure }}
    upstream: be
    plugins: [{{ jwt: {{ provider: hs, scopes: [write], forward_claims: {{ sub: X-User-Id, scope: {{ header: X-Scopes, optional: true }} }} }} }}]
  - name: rs
    match: {{ path_prefix: /rs }}
    upstream: be
    plugins: [{{ jwt: {{ provider: rs }} }}]
  - name: es
    match: {{ path_prefix: /es }}
    upstream: be
    plugins: [{{ jwt: {{ provider: es }} }}]
  - name: admin
    match: {{ path_prefix: /admin-only }}
    upstream: be
    plugins: [{{ jwt: {{ provider: hs, roles: [admin], claims: {{ tenant: {{ equals: acme }}, groups: {{ contains: eng }} }} }} }}]
",
        fixture("rsa1.pub"),
        fixture("ec256.pub"),
        be.addr
    ))
}

fn unsigned(header: Value, body: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(body.to_string()),
        B64.encode(sig)
    )
}

fn assert_401(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.starts_with("Bearer"), "{what}: {www}");
    assert_eq!(r.json()["error"]["status"], 401, "{what}");
}

#[test]
fn classic_attacks_are_refused() {
    let be = Backend::start("be", Mode::Echo);
    let g = attack_gateway(&be);
    let good = sign(Algorithm::HS256, &hs(), None, &claims("alice"));
    let r = get(&g, "/api/secure/x", &[&bearer(&good)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-scopes").as_deref(), Some("read write"));

    // No token: 401 with a bare challenge (RFC 6750); a bad one: error="invalid_token".
    let r = get(&g, "/api/secure/x", &[]);
    assert_401(&r, "missing");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    let r = get(&g, "/api/secure/x", &[&bearer("garbage")]);
    assert_401(&r, "garbage");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));

    // alg none, in any spelling, signed or not.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = unsigned(json!({"alg": alg, "typ": "JWT"}), &claims("mallory"), b"");
        assert_401(&get(&g, "/api/secure/x", &[&bearer(&t)]), alg);
    }
    // RS/HS key confusion: an HMAC token keyed with the RSA public key, against the RSA route.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem("rsa1.pub")),
        None,
        &claims("mallory"),
    );
    assert_401(&get(&g, "/rs/x", &[&bearer(&confused)]), "RS/HS confusion");
    // The same RSA route accepts the real thing.
    let rs = sign(Algorithm::RS256, &rsa("rsa1.key"), None, &claims("alice"));
    assert_eq!(get(&g, "/rs/x", &[&bearer(&rs)]).status, 200);

    // Time and audience checks.
    let mut c = claims("alice");
    c["exp"] = json!(now() - 31);
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
        ),
        "expired beyond leeway",
    );
    c["exp"] = json!(now() - 5);
    assert_eq!(
        get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))]
        )
        .status,
        200,
        "expired within the 30 s leeway"
    );
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
        ),
        "missing exp",
    );
    let mut c = claims("alice");
    c["nbf"] = json!(now() + 120);
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
        ),
        "future nbf",
    );
    let mut c = claims("alice");
    c["iss"] = json!("evil-idp");
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
        ),
        "wrong iss",
    );
    let mut c = claims("alice");
    c["aud"] = json!("other-api");
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
        ),
        "wrong aud",
    );

    // Tampered payload: same header and signature, sub changed.
    let parts: Vec<&str> = good.split('.').collect();
    let mut body: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    body["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(body.to_string()), parts[2]);
    assert_401(&get(&g, "/api/secure/x", &[&bearer(&tampered)]), "tampered");

    // Unknown kid, and a kid that is a path: signed with the contents of /dev/null (empty key) would
    // verify if the gateway ever read a file named by the kid.
    let t = sign(
        Algorithm::RS256,
        &rsa("rsa2.key"),
        Some("rsa-unknown"),
        &claims("mallory"),
    );
    assert_401(&get(&g, "/rs/x", &[&bearer(&t)]), "unknown kid");
    for kid in ["../../../../dev/null", "/dev/null", "file:///dev/null"] {
        let t = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b""),
            Some(kid),
            &claims("mallory"),
        );
        assert_401(&get(&g, "/api/secure/x", &[&bearer(&t)]), kid);
    }
    // jku / x5u / jwk headers pointing at the attacker's key are ignored.
    let attacker_jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks-rsa2.json")).unwrap())
            .map(|v: Value| serde_json::from_value(v["keys"][0].clone()).unwrap())
            .unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.jku = Some(format!("http://{}/jwks", be.addr));
    h.x5u = Some(format!("http://{}/cert", be.addr));
    h.jwk = Some(attacker_jwk);
    h.kid = Some("rsa-2".into());
    let t = encode(&h, &claims("mallory"), &rsa("rsa2.key")).unwrap();
    assert_401(&get(&g, "/rs/x", &[&bearer(&t)]), "jku/x5u/jwk");
    // `crit` lists extensions a recipient must understand to accept the token (RFC 7515 §4.1.11): the
    // gateway understands none, so a correctly signed token that has one is refused.
    for crit in ["exp", "b64"] {
        let mut h = Header::new(Algorithm::HS256);
        h.crit = Some(vec![crit.to_string()]);
        let t = encode(&h, &claims("alice"), &hs()).unwrap();
        let r = get(&g, "/api/secure/x", &[&bearer(&t)]);
        assert_401(&r, &format!("crit: [{crit}]"));
        assert!(
            r.header("www-authenticate").unwrap().contains("(crit)"),
            "{:?}",
            r.header("www-authenticate")
        );
    }
    // ES256 with r = s = 0 ("psychic signatures").
    let t = unsigned(
        json!({"alg": "ES256", "typ": "JWT"}),
        &claims("mallory"),
        &[0u8; 64],
    );
    assert_401(&get(&g, "/es/x", &[&bearer(&t)]), "ES256 r=s=0");
    let es = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
        None,
        &claims("alice"),
    );
    assert_eq!(get(&g, "/es/x", &[&bearer(&es)]).status, 200);

    // Two tokens: refused, whatever the sources.
    assert_401(
        &get(&g, "/api/secure/x", &[&bearer(&good), &bearer(&good)]),
        "two headers",
    );
    assert_401(
        &get(
            &g,
            &format!("/api/secure/x?access_token={good}"),
            &[&bearer(&good)],
        ),
        "header and query",
    );
    assert_401(
        &get(
            &g,
            "/api/secure/x",
            &[&bearer(&good), &format!("Cookie: session={good}")],
        ),
        "header and cookie",
    );
    // One token from the cookie or the query is fine; the query token is not passed on.
    assert_eq!(
        get(
            &g,
            "/api/secure/x",
            &[&format!("Cookie: a=b; session={good}")]
        )
        .status,
        200
    );
    let r = get(&g, &format!("/api/secure/x?a=1&access_token={good}"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/secure/x?a=1");

    // Insufficient scope: 403 with the challenge naming it.
    let mut c = claims("alice");
    c["scope"] = json!("read");
    let r = get(
        &g,
        "/api/secure/x",
        &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\", scope=\"write\""));
    // `scp` as a list counts too.
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["write"]);
    assert_eq!(
        get(
            &g,
            "/api/secure/x",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))]
        )
        .status,
        200
    );
    // Roles and claim rules.
    let mut c = claims("alice");
    c["roles"] = json!(["admin"]);
    c["tenant"] = json!("acme");
    c["groups"] = json!(["ops", "eng"]);
    assert_eq!(
        get(
            &g,
            "/admin-only",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))]
        )
        .status,
        200
    );
    c["tenant"] = json!("globex");
    assert_eq!(
        get(
            &g,
            "/admin-only",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))]
        )
        .status,
        403
    );
    c["tenant"] = json!("acme");
    c["roles"] = json!(["user"]);
    assert_eq!(
        get(
            &g,
            "/admin-only",
            &[&bearer(&sign(Algorithm::HS256, &hs(), None, &c))]
        )
        .status,
        403
    );

    // A spoofed identity header never reaches the upstream, with or without a valid token.
    let r = get(
        &g,
        "/api/secure/x",
        &[&bearer(&good), "X-User-Id: root", "X-Scopes: admin"],
    );
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-scopes").as_deref(), Some("read write"));

    // Path variants never slip past auth on the protected prefix.
    for p in [
        "/api/secure/x",
        "/api/public/../secure/x",
        "/api/public/%2e%2e/secure/x",
        "/api/public/%2E%2E/secure/x",
        "//api//secure/x",
        "/api/./secure/x",
        "/api/%73ecure/x",
        "/api/secure;/x",
        "/API/../api/secure/x",
    ] {
        let r = get(&g, p, &[]);
        assert!(
            r.status == 401 || r.status == 400 || r.status == 404,
            "{p} reached the upstream unauthenticated: {}",
            r.status
        );
        if r.status != 401 {
            // Anything not refused by auth must not have been proxied either.
            assert!(r.json()["error"].is_object(), "{p}");
        }
    }
    assert_eq!(get(&g, "/api/public/x", &[]).status, 200);
}

/// A gateway whose one route needs a token of provider `idp`, whose keys come from `jwks` (`timing`: the
/// provider's jwks_refresh/min_refetch/timeout fields).
fn jwks_gateway(be: &Backend, jwks: &StaticServer, timing: &str) -> Gateway {
    Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
auth:
  jwt:
    idp: {{ algorithms: [RS256], jwks_url: \"http://{}/jwks\", {timing}, issuer: test-idp, audience: api }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: be
    plugins: [{{ jwt: {{ provider: idp }} }}]
",
        jwks.addr, be.addr
    ))
}

/// Alice's token signed with rsa-1, Bob's with rsa-2.
fn rsa_tokens() -> (String, String) {
    (
        sign(
            Algorithm::RS256,
            &rsa("rsa1.key"),
            Some("rsa-1"),
            &claims("alice"),
        ),
        sign(
            Algorithm::RS256,
            &rsa("rsa2.key"),
            Some("rsa-2"),
            &claims("bob"),
        ),
    )
}

#[test]
fn jwks_rotation_and_outage() {
    let be = Backend::start("be", Mode::Echo);
    let jwks = StaticServer::start(
        200,
        &std::fs::read_to_string(fixture("jwks-rsa1.json")).unwrap(),
    );
    let g = jwks_gateway(
        &be,
        &jwks,
        "jwks_refresh: 300ms, jwks_min_refetch: 100ms, jwks_timeout: 1s",
    );
    let (t1, t2) = rsa_tokens();
    let eventually = |token: &str, want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = get(&g, "/x", &[&bearer(token)]).status;
            if s == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still {s}, want {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    eventually(&t1, 200);
    assert_eq!(
        get(&g, "/x", &[&bearer(&t2)]).status,
        401,
        "rsa-2 not published yet"
    );

    // Rotation: rsa-2 published, rsa-1 withdrawn. An unknown kid triggers a refetch.
    jwks.set(
        200,
        &std::fs::read_to_string(fixture("jwks-rsa2.json")).unwrap(),
    );
    eventually(&t2, 200);
    eventually(&t1, 401);

    // Outage: errors and garbage keep the last good keys.
    jwks.set(500, "oops");
    let before = jwks.hits.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        jwks.hits.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the gateway kept trying"
    );
    assert_eq!(get(&g, "/x", &[&bearer(&t2)]).status, 200);
    jwks.set(200, "{\"keys\": \"nope\"}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(get(&g, "/x", &[&bearer(&t2)]).status, 200);
    // Unknown kids during the outage are refused, and do not hammer the endpoint.
    let hits = jwks.hits.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..20 {
        let t = sign(
            Algorithm::RS256,
            &rsa("rsa2.key"),
            Some(&format!("k{i}")),
            &claims("x"),
        );
        assert_eq!(get(&g, "/x", &[&bearer(&t)]).status, 401);
    }
    let extra = jwks.hits.load(std::sync::atomic::Ordering::Relaxed) - hits;
    assert!(extra < 20, "{extra} fetches for 20 unknown kids");
}

/// A JWKS over 1 MiB (here a valid one, with another key, padded with spaces) is refused: the keys
/// fetched before stay, and the log says why.
#[test]
fn an_oversized_jwks_is_refused_and_the_last_good_keys_stay() {
    let be = Backend::start("be", Mode::Echo);
    let jwks = StaticServer::start(
        200,
        &std::fs::read_to_string(fixture("jwks-rsa1.json")).unwrap(),
    );
    let g = jwks_gateway(
        &be,
        &jwks,
        "jwks_refresh: 200ms, jwks_min_refetch: 100ms, jwks_timeout: 2s",
    );
    let (t1, t2) = rsa_tokens();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&g, "/x", &[&bearer(&t1)]).status != 200 {
        assert!(std::time::Instant::now() < deadline, "rsa-1 never loaded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let big = format!(
        "{}{}",
        " ".repeat(2 * 1024 * 1024),
        std::fs::read_to_string(fixture("jwks-rsa2.json")).unwrap()
    );
    jwks.set(200, &big);
    // Let the gateway try it at least twice.
    let hits = jwks.hits.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while jwks.hits.load(std::sync::atomic::Ordering::Relaxed) < hits + 2 {
        assert!(std::time::Instant::now() < deadline, "no refresh was tried");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        get(&g, "/x", &[&bearer(&t1)]).status,
        200,
        "the last good keys stay"
    );
    assert_eq!(
        get(&g, "/x", &[&bearer(&t2)]).status,
        401,
        "nothing from the oversized JWKS was taken"
    );
    assert!(
        g.stderr_text().contains("JWKS larger than 1 MiB"),
        "{}",
        g.stderr_text()
    );
}

/// A plain-http JWKS URL is allowed to a loopback host only; anything else is a located error.
#[test]
fn a_plain_http_jwks_url_must_be_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "auth:
  jwt:
    idp: { algorithms: [RS256], jwks_url: \"http://example.com/jwks\" }
    local: { algorithms: [RS256], jwks_url: \"http://127.0.0.1:9999/jwks\" }
    tls: { algorithms: [RS256], jwks_url: \"https://idp.example.com/jwks\" }
upstreams:
  be: { targets: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - name: a
    match: { path: /a }
    upstream: be
    plugins: [{ jwt: { provider: local } }]
",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = path.to_str().unwrap();
    let want = format!(
        "{f}:3:43: error: auth.jwt.idp.jwks_url: `http://example.com/jwks`: use https:// (http is accepted only for loopback"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&want)),
        "missing `{want}` in:\n{out}"
    );
    assert_eq!(out.lines().count(), 1, "only that error:\n{out}");
}

#[test]
fn a_key_in_the_query_never_reaches_the_gateways_own_log() {
    // Pingora's error line for a failed proxy names the request: with the query as the access log
    // has it, without the credential.
    let acme = tollgate::plugin::apikey::hash_key("acme-secret-key");
    let g = Gateway::start(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
auth:
  api_keys:
    partners: {{ query: api_key, keys: [{{ id: acme, sha256: \"{acme}\" }}] }}
upstreams:
  gone: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }}
routes:
  - name: r
    match: {{ path_prefix: /partners }}
    upstream: gone
    plugins: [{{ api_key: {{ provider: partners }} }}]
"
    ));
    let r = get(&g, "/partners/x?q=1&api_key=acme-secret-key", &[]);
    assert_eq!(r.status, 502);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !g.stderr_text().contains("Fail to proxy") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = g.stderr_text();
    assert!(log.contains("GET /partners/x?q=1, Host:"), "{log}");
    assert!(!log.contains("acme-secret-key"), "{log}");
}

#[test]
fn api_keys() {
    let be = Backend::start("be", Mode::Echo);
    let acme = tollgate::plugin::apikey::hash_key("acme-secret-key");
    let globex = tollgate::plugin::apikey::hash_key("globex-secret-key");
    let g = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
auth:
  api_keys:
    partners: {{ header: X-Api-Key, query: api_key, keys: [{{ id: acme, sha256: \"{acme}\" }}, {{ id: globex, sha256: \"{globex}\" }}] }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: r
    match: {{ path_prefix: /partners }}
    upstream: be
    plugins: [{{ api_key: {{ provider: partners }} }}]
",
        be.addr
    ));
    let r = get(
        &g,
        "/partners/x",
        &["X-Api-Key: globex-secret-key", "X-Consumer-Id: acme"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-consumer-id").as_deref(),
        Some("globex")
    );
    assert_eq!(
        r.upstream_header("x-api-key"),
        None,
        "the key is not passed on"
    );
    let r = get(&g, "/partners/x?q=1&api_key=acme-secret-key", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("acme"));
    assert_eq!(r.json()["path"], "/partners/x?q=1");
    for (headers, path, code) in [
        (vec![], "/partners/x", "unauthenticated"),
        (
            vec!["X-Api-Key: acme-secret-kez"],
            "/partners/x",
            "invalid_api_key",
        ),
        (vec!["X-Api-Key: "], "/partners/x", "invalid_api_key"),
        (
            vec!["X-Api-Key: acme-secret-key", "X-Api-Key: acme-secret-key"],
            "/partners/x",
            "invalid_api_key",
        ),
        (
            vec!["X-Api-Key: acme-secret-key"],
            "/partners/x?api_key=acme-secret-key",
            "invalid_api_key",
        ),
    ] {
        let r = get(&g, path, &headers);
        assert_eq!(r.status, 401, "{headers:?} {path}");
        assert_eq!(r.error_code(), code, "{headers:?} {path}");
        assert!(r.header("www-authenticate").is_some());
    }
}

#[test]
fn cors_ip_filter_body_limit_and_header_transforms() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: \"{SECRET}\" }}
plugins:
  - cors: {{ allow_origins: [\"https://app.example.com\", \"https://*.shop.io\"], allow_credentials: true }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: api
    match: {{ path_prefix: /api, methods: [GET, POST] }}
    upstream: be
    plugins:
      - jwt: {{ provider: hs }}
      - body_limit: {{ max: 100 }}
      - headers: {{ request: {{ set: {{ X-Env: test }}, remove: [X-Debug] }}, response: {{ add: {{ X-Served-By: tollgate }}, remove: [X-Backend] }} }}
  - name: blocked
    match: {{ path_prefix: /blocked }}
    upstream: be
    plugins: [{{ ip_filter: {{ deny: [127.0.0.0/8] }} }}]
  - name: allowed
    match: {{ path_prefix: /allowed }}
    upstream: be
    plugins: [{{ ip_filter: {{ allow: [127.0.0.1/32] }} }}]
",
        be.addr
    ));
    let token = bearer(&sign(
        Algorithm::HS256,
        &hs(),
        None,
        &json!({"sub": "a", "exp": now() + 60}),
    ));

    // Preflight: answered by the gateway, before auth, for the route the real request would take.
    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    let r = request(
        g.addr,
        "OPTIONS",
        "/api/x",
        &[
            "Origin: https://a.shop.io",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: authorization, content-type",
        ],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.shop.io")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        be.hits.load(std::sync::atomic::Ordering::Relaxed),
        hits,
        "preflight not proxied"
    );
    let r = request(
        g.addr,
        "OPTIONS",
        "/api/x",
        &[
            "Origin: https://evil.io",
            "Access-Control-Request-Method: POST",
        ],
        None,
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "cors_origin_not_allowed");
    let r = request(
        g.addr,
        "OPTIONS",
        "/api/x",
        &[
            "Origin: https://app.example.com",
            "Access-Control-Request-Method: GET",
            "Access-Control-Request-Headers: x-evil",
        ],
        None,
    );
    assert_eq!(r.status, 403);
    // A plain OPTIONS (not a preflight) is just a method the route does not take.
    assert_eq!(request(g.addr, "OPTIONS", "/api/x", &[], None).status, 405);

    // Actual requests: CORS headers on the upstream's answer and on the gateway's own 401.
    let r = get(
        &g,
        "/api/x",
        &["Origin: https://app.example.com", &token, "X-Debug: 1"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(r.header("vary").unwrap().contains("Origin"));
    assert_eq!(r.upstream_header("x-env").as_deref(), Some("test"));
    assert_eq!(r.upstream_header("x-debug"), None);
    assert_eq!(r.header("x-served-by"), Some("tollgate"));
    assert_eq!(r.header("x-backend"), None);
    let r = get(&g, "/api/x", &["Origin: https://app.example.com"]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = get(&g, "/api/x", &["Origin: https://evil.io", &token]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Body limit: by Content-Length before anything is proxied, and on a chunked body as it streams.
    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    let r = request(g.addr, "POST", "/api/x", &[&token], Some(&"x".repeat(101)));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), hits);
    assert_eq!(
        request(g.addr, "POST", "/api/x", &[&token], Some(&"x".repeat(100))).status,
        200
    );
    let chunk = "y".repeat(60);
    let raw = format!(
        "POST /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{token}\r\nTransfer-Encoding: chunked\r\n\r\n3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = send(g.addr, raw.as_bytes());
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));

    // IP filter on the client address.
    let r = get(&g, "/blocked", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ip_forbidden");
    assert_eq!(
        get(&g, "/blocked", &["X-Forwarded-For: 8.8.8.8"]).status,
        403,
        "XFF from an untrusted peer is ignored"
    );
    assert_eq!(get(&g, "/allowed", &[]).status, 200);
}

#[test]
fn plugin_config_errors_have_places() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "upstreams:
  be: { targets: [{ addr: \"127.0.0.1:1\" }] }
auth:
  jwt:
    weak: { algorithms: [HS256, none], secret: short }
    rsonly: { algorithms: [RS256, HS256], public_key_file: nowhere.pem }
plugins:
  - rate_limiter
routes:
  - name: a
    match: { path: /a }
    upstream: be
    plugins:
      - jwt: { provider: missing }
      - cors: { allow_origins: [\"*\"], allow_credentials: true }
      - body_limit: { max: 1KiB, maxx: 2 }
",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let f = path.to_str().unwrap();
    for want in [
        format!("{f}:5:33: error: auth.jwt.weak.algorithms[1]: `none` is not a supported algorithm"),
        format!("{f}:5:48: error: auth.jwt.weak.secret: an HMAC secret must be at least 32 bytes"),
        format!("{f}:6:35: error: auth.jwt.rsonly.algorithms[1]: no configured key can verify HS256 tokens"),
        format!("{f}:6:60: error: auth.jwt.rsonly.public_key_file: cannot read `nowhere.pem`"),
        format!("{f}:8:5: error: plugins[0]: unknown plugin `rate_limiter`: did you mean `rate_limit`?"),
        format!("{f}:14:26: error: routes[0].plugins[0].jwt.provider: unknown JWT provider `missing`"),
        format!("{f}:15:33: error: routes[0].plugins[1].cors.allow_origins[0]: `*` cannot be used with `allow_credentials: true`"),
        format!("{f}:16:34: error: routes[0].plugins[2].body_limit.maxx: unknown field `maxx`: did you mean `max`?"),
    ] {
        assert!(out.lines().any(|l| l.starts_with(&want)), "missing `{want}` in:\n{out}");
    }
}

/// A user's own plugin (gateway/examples/custom_plugin.rs), registered beside the built-ins, runs in the
/// chain like them, and its config is checked like theirs.
#[test]
fn a_custom_plugin_from_the_example() {
    let exe = std::path::Path::new(bin())
        .parent()
        .unwrap()
        .join("examples/custom_plugin");
    assert!(
        exe.exists(),
        "build the examples first: cargo build --all-targets"
    );
    let be = Backend::start("be", Mode::Echo);
    let config = format!(
        "server: {{ listen: [\"{{listen}}\"] }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: be
    plugins: [{{ tenant_header: {{ allow: [acme] }} }}]
",
        be.addr
    );
    let g = Gateway::start_program(&exe, &["run", "-c"], &config);
    let r = get(&g, "/x", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "unknown_tenant");
    let r = get(&g, "/x", &["X-Tenant: acme"]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-tenant-verified").as_deref(),
        Some("acme")
    );
    // The example's binary is the whole command line with the plugin known: `validate` accepts a
    // config using it, and its config errors have places too.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, config.replace("{listen}", "127.0.0.1:1")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config
            .replace("allow: [acme]", "allow: [acme], colour: red")
            .replace("{listen}", "127.0.0.1:1"),
    )
    .unwrap();
    let validate = |program: &std::path::Path, file: &std::path::Path| {
        let out = std::process::Command::new(program)
            .arg("validate")
            .arg(file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    let (ok, out) = validate(&exe, &good);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), format!("{}: ok", good.display()));
    let (ok, out) = validate(&exe, &bad);
    assert!(!ok);
    assert!(
        out.contains(
            ":8:49: error: routes[0].plugins[0].tenant_header.colour: unknown field `colour`"
        ),
        "{out}"
    );
    let out = std::process::Command::new(&exe)
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            ":8:49: error: routes[0].plugins[0].tenant_header.colour: unknown field `colour`"
        ),
        "{err}"
    );
    // The built-in command does not know it.
    let (ok, out) = validate(std::path::Path::new(bin()), &good);
    assert!(!ok);
    assert!(
        out.contains(":8:17: error: routes[0].plugins[0]: unknown plugin `tenant_header`"),
        "{out}"
    );
}
