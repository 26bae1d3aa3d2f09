//! Templates of a composition: `/users/{order.user_id}`, `{order.items[].product_id}`,
//! `{query.limit|20}`, and the references they are made of.
//!
//! A reference names a source and a path into it:
//! - `{id}`: a parameter the route's path captured;
//! - `{query.NAME}`, `{header.NAME}`: the client's query parameter or request header;
//! - `{claims.sub}`, `{claims.org.id}`: a claim of the verified JWT;
//! - `{CALL.field[0].x}`: the JSON another call answered, `[]` meaning "each element" (a fan-out).
//!
//! `|text` after a reference is the value used when it is missing. Parsing checks everything that can
//! be known before a request: the names exist, a fan-out call is read as an array, at most one `[]`.

use std::fmt;

use http::HeaderName;
use serde_json::Value;

/// Where a reference's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A parameter captured by the route's path.
    Param(String),
    /// A query parameter of the client's request (first occurrence, percent-decoded).
    Query(String),
    /// A header of the client's request.
    Header(HeaderName),
    /// The verified JWT's claims.
    Claims,
    /// The JSON answered by call number `n` (its index in [`super::Composition::calls`]).
    Call(usize),
}

/// One step of a path into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Field(String),
    Index(usize),
    /// Every element of an array.
    Each,
}

/// A reference, as written between braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub source: Source,
    pub path: Vec<Seg>,
    /// Used when the value is missing (`{query.limit|20}`).
    pub default: Option<String>,
    /// The text between the braces, for messages.
    pub text: String,
}

impl Ref {
    /// Position of the `[]` in the path, when the reference fans out.
    pub fn each(&self) -> Option<usize> {
        self.path.iter().position(|s| *s == Seg::Each)
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Ref(Ref),
}

/// What parsing needs to know about the route: its parameters and its calls.
pub struct Names<'a> {
    pub params: &'a [String],
    /// Call names, by index.
    pub calls: &'a [String],
    /// Calls that fan out (their answer is an array, one element per call made).
    pub fans_out: &'a [bool],
    /// The route's chain verifies JWTs (so `claims` can exist).
    pub has_jwt: bool,
}

/// Names a call may not take: they start references to other sources.
pub const RESERVED: &[&str] = &["query", "header", "claims", "errors"];

/// Parse `{...}` references and literal text. `fans_out` tells which calls answer arrays.
pub fn parse(text: &str, names: &Names<'_>) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err("unmatched `}`".into());
        }
        if open > 0 {
            out.push(Piece::Lit(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "unclosed `{`".to_string())?
            + open;
        out.push(Piece::Ref(parse_ref(&rest[open + 1..close], names)?));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest.to_string()));
    }
    Ok(out)
}

/// Parse one reference (the text between braces).
pub fn parse_ref(text: &str, names: &Names<'_>) -> Result<Ref, String> {
    let (body, default) = match text.split_once('|') {
        Some((b, d)) => (b.trim(), Some(d.to_string())),
        None => (text.trim(), None),
    };
    if body.is_empty() {
        return Err("`{}` names nothing".into());
    }
    let head_end = body.find(['.', '[']).unwrap_or(body.len());
    let (head, tail) = body.split_at(head_end);
    let done = |source, path| {
        Ok(Ref {
            source,
            path,
            default: default.clone(),
            text: text.to_string(),
        })
    };
    match head {
        "query" | "header" => {
            let name = tail.strip_prefix('.').unwrap_or_default();
            if name.is_empty() {
                return Err(format!("`{{{head}.NAME}}`: say which {head}"));
            }
            if head == "query" {
                return done(Source::Query(name.to_string()), Vec::new());
            }
            let h = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            return done(Source::Header(h), Vec::new());
        }
        "claims" => {
            if !names.has_jwt {
                return Err(format!(
                    "`{{{body}}}`: this route's chain has no `jwt` plugin, so there are no claims"
                ));
            }
            let path = parse_path(tail)?;
            if path.is_empty() {
                return Err("`{claims}`: name a claim, like `{claims.sub}`".into());
            }
            return done(Source::Claims, path);
        }
        _ => {}
    }
    if let Some(i) = names.calls.iter().position(|c| c == head) {
        let path = parse_path(tail)?;
        let fans_out = names.fans_out.get(i).copied().unwrap_or(false);
        if fans_out && !matches!(path.first(), None | Some(Seg::Each) | Some(Seg::Index(_))) {
            return Err(format!(
                "`{{{body}}}`: call `{head}` fans out, so its answer is an array (one element per call): write `{head}[].…` or `{head}[0].…`"
            ));
        }
        return done(Source::Call(i), path);
    }
    if names.params.iter().any(|p| p == head) {
        if !tail.is_empty() {
            return Err(format!(
                "`{{{body}}}`: route parameter `{head}` is text, it has no fields"
            ));
        }
        return done(Source::Param(head.to_string()), Vec::new());
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(format!(
        "`{{{body}}}`: `{head}` is not a call (defined: {}), a route parameter (captured: {}), or `query.`, `header.`, `claims.`",
        list(names.calls),
        list(names.params)
    ))
}

/// `.a.b[0][]` → segments.
fn parse_path(mut s: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if field.is_empty() || field.contains(']') {
                return Err(format!("`{s}`: a field name is missing after `.`"));
            }
            out.push(Seg::Field(field.to_string()));
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("`{s}`: `[` without `]`"))?;
            let inner = &r[..end];
            if inner.is_empty() {
                if out.contains(&Seg::Each) {
                    return Err("only one `[]` per reference".into());
                }
                out.push(Seg::Each);
            } else {
                let n = inner
                    .parse()
                    .map_err(|_| format!("`[{inner}]`: write `[]` or an index like `[0]`"))?;
                out.push(Seg::Index(n));
            }
            s = &r[end + 1..];
        } else {
            return Err(format!("`{s}`: expected `.field` or `[index]`"));
        }
    }
    Ok(out)
}

/// Follow `path` into `v`; `None` when a step is missing or `null`. An `Each` is not followed (the
/// caller splits at it).
pub fn follow<'v>(mut v: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    for seg in path {
        v = match seg {
            Seg::Field(f) => v.get(f.as_str())?,
            Seg::Index(i) => v.get(*i)?,
            Seg::Each => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// The text of a scalar for a path, query or header; `None` for objects, arrays and `null`.
pub fn scalar_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// Percent-encode a value that came from data (a call's JSON, a query parameter, a header, a claim)
/// for a path segment or a query value: everything but RFC 3986 unreserved characters is encoded,
/// `/` and `%` too, so a value can never add a segment or smuggle an escape. A segment that is all
/// dots is refused by the caller (it would climb the path).
pub fn encode_strict(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Percent-decode a query component (`+` is a space), for `{query.NAME}`. Invalid escapes are kept.
pub fn decode_query(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match (crate::path::hex(b[i + 1]), crate::path::hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of query parameter `name` in `query`, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(k) == name).then(|| decode_query(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(calls: &'a [String], fans: &'a [bool], params: &'a [String]) -> Names<'a> {
        Names {
            params,
            calls,
            fans_out: fans,
            has_jwt: true,
        }
    }

    #[test]
    fn references_of_every_source() {
        let calls = vec!["order".to_string(), "products".to_string()];
        let fans = vec![false, true];
        let params = vec!["id".to_string()];
        let n = names(&calls, &fans, &params);
        let p = parse("/users/{order.user_id}?l={query.limit|20}&x={id}", &n).unwrap();
        assert_eq!(p.len(), 6);
        assert!(
            matches!(&p[1], Piece::Ref(r) if r.source == Source::Call(0) && r.path == vec![Seg::Field("user_id".into())])
        );
        assert!(
            matches!(&p[3], Piece::Ref(r) if r.source == Source::Query("limit".into()) && r.default.as_deref() == Some("20"))
        );
        assert!(matches!(&p[5], Piece::Ref(r) if r.source == Source::Param("id".into())));
        let r = parse_ref("order.items[].product_id", &n).unwrap();
        assert_eq!(r.each(), Some(1));
        let r = parse_ref("header.Accept-Language", &n).unwrap();
        assert_eq!(
            r.source,
            Source::Header(HeaderName::from_static("accept-language"))
        );
        let r = parse_ref("claims.org.id", &n).unwrap();
        assert_eq!(r.path.len(), 2);
    }

    #[test]
    fn what_cannot_exist_is_refused() {
        let calls = vec!["order".to_string(), "products".to_string()];
        let fans = vec![false, true];
        let params = vec!["id".to_string()];
        let n = names(&calls, &fans, &params);
        let e = parse_ref("ordr.user_id", &n).unwrap_err();
        assert!(e.contains("not a call (defined: order, products)"), "{e}");
        let e = parse_ref("products.name", &n).unwrap_err();
        assert!(e.contains("fans out"), "{e}");
        assert!(parse_ref("products[].name", &n).is_ok());
        assert!(parse_ref("id.x", &n).unwrap_err().contains("has no fields"));
        assert!(parse_ref("order.a[][]", &n)
            .unwrap_err()
            .contains("one `[]`"));
        assert!(parse_ref("order.a[x]", &n).is_err());
        assert!(parse("/a/{order", &n).unwrap_err().contains("unclosed"));
        assert!(parse("/a/}", &n).unwrap_err().contains("unmatched"));
        let no_jwt = Names {
            has_jwt: false,
            ..names(&calls, &fans, &params)
        };
        assert!(parse_ref("claims.sub", &no_jwt)
            .unwrap_err()
            .contains("no `jwt`"));
    }

    #[test]
    fn values_are_encoded_strictly() {
        let mut s = String::new();
        encode_strict(&mut s, "a/b c%2e?&=ü");
        assert_eq!(s, "a%2Fb%20c%252e%3F%26%3D%C3%BC");
        assert_eq!(
            query_param("a=1&limit=5%20x&limit=9", "limit").as_deref(),
            Some("5 x")
        );
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(decode_query("%zz+%41"), "%zz A");
    }

    #[test]
    fn follow_walks_fields_and_indexes() {
        let v = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "n": null});
        assert_eq!(
            follow(
                &v,
                &[
                    Seg::Field("a".into()),
                    Seg::Field("b".into()),
                    Seg::Index(1),
                    Seg::Field("c".into())
                ]
            ),
            Some(&Value::String("x".into()))
        );
        assert_eq!(follow(&v, &[Seg::Field("n".into())]), None);
        assert_eq!(follow(&v, &[Seg::Field("zz".into())]), None);
    }
}
