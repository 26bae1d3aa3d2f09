//! Composition routes: one client request answered by several upstream calls, merged into one JSON
//! object.
//!
//! A [`Composition`] is compiled from `routes[].compose` (see `crate::compile::compose`): named calls
//! whose path, query and header templates refer to the route's parameters, the client's query and
//! headers, the verified JWT's claims and the JSON of other calls. The references make a graph, checked
//! for cycles at load time; [`run`] starts every call whose inputs are there, so independent calls run
//! in parallel and a call runs as soon as what it depends on has answered. A reference with `[]` fans
//! out: one call per array element, capped by `max_calls`, all within the composition's `concurrency`.
//!
//! Failure: each call has a timeout and is `required` or not. An optional call that fails leaves `null`
//! and an entry in `errors` (the answer is partial, and says so in `Tollgate-Partial`); a required one
//! ends the composition at once with its status (see [`CallError::status`]); calls still in flight are
//! dropped, which closes their connections. The composition's `timeout` bounds it all.
//!
//! The proxy runs the route's plugin chain (auth, limits) once before [`run`], and races [`run`] with
//! the client connection: a client that goes away cancels the calls in flight.

pub mod client;
pub mod template;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use http::{HeaderName, HeaderValue, Method};
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use serde_json::{Map, Value};

pub use client::CallError;
use template::{follow, scalar_text, Piece, Ref, Seg, Source};

use crate::upstream::Upstream;

/// Response header naming the calls that failed, on a partial answer.
pub const PARTIAL_HEADER: &str = "tollgate-partial";

/// A compiled `compose:` section.
pub struct Composition {
    /// In name order (as the file's map); [`Call::deps`] says what each waits for, and [`run`]
    /// starts each call when those have answered, whatever its place here.
    pub calls: Vec<Call>,
    /// The answer's shape; `None`: one field per call.
    pub response: Option<Shape>,
    pub timeout: Duration,
    pub concurrency: usize,
}

/// One named call.
pub struct Call {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub method: Method,
    /// Path and query; pieces after the `?` are encoded as query values.
    pub target: Vec<Piece>,
    pub headers: Vec<(HeaderName, Vec<Piece>)>,
    pub timeout: Duration,
    pub required: bool,
    pub max_calls: usize,
    pub max_body: usize,
    /// Indexes of the calls it needs (earlier in [`Composition::calls`]).
    pub deps: Vec<usize>,
    /// The call fans out over an array (one reference with `[]`).
    pub fans_out: bool,
    /// `tollgate_aggregate_call_duration_seconds{route,call}`, resolved on first use.
    pub duration: OnceLock<prometheus::Histogram>,
}

/// The declared shape of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Object(Vec<(String, Shape)>),
    Array(Vec<Shape>),
    /// `"{ref}"`: the value referred to, whatever its type (`null` when missing).
    Ref(Ref),
    /// Text with references in it: a string.
    Text(Vec<Piece>),
    Lit(Value),
}

/// What a composition reads from the client's request, owned so that the calls can run while the
/// proxy watches the client connection.
#[derive(Default)]
pub struct Input {
    /// The route's parameters (name, value as in the normalized path).
    pub params: Vec<(String, String)>,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub claims: Option<Arc<Map<String, Value>>>,
    /// Feeds consistent hashing of the calls' upstreams (the client's address).
    pub hash_key: Vec<u8>,
}

/// The trace the calls belong to: each call is a child span of the gateway's span.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    pub trace_id: u128,
    pub parent_span_id: u64,
    pub flags: u8,
}

/// One call made (or not), for the metrics, the access log and the spans.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call: usize,
    /// The element of a fan-out.
    pub index: Option<usize>,
    pub status: Option<u16>,
    pub target: Option<SocketAddr>,
    pub start: SystemTime,
    pub duration: Duration,
    pub error: Option<CallError>,
    pub span_id: u64,
    pub path: String,
}

/// A required call failed: what the client is answered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub call: String,
    pub error: CallError,
}

/// The result of [`run`].
pub struct Outcome {
    /// The merged answer, or the failure of a required call.
    pub result: Result<Value, Failure>,
    /// Names of the optional calls that failed (the answer is partial).
    pub partial: Vec<String>,
    pub records: Vec<CallRecord>,
}

/// What is known of each call while the composition runs.
enum State {
    Waiting,
    Running {
        pending: usize,
        /// One slot per element (one for a plain call).
        results: Vec<Option<Value>>,
    },
    Done(Result<Value, CallError>),
}

/// One request waiting to be sent.
struct Job {
    call: usize,
    index: Option<usize>,
    head: RequestHeader,
    path: String,
    span_id: u64,
}

/// Reads the answer of call `n`, when it has one.
type Lookup<'v> = dyn Fn(usize) -> Option<&'v Value> + 'v;

/// Adds the gateway's headers (forwarding, request id, identity from the chain) to a call's request.
pub type Decorate<'a> = dyn Fn(&mut RequestHeader) + Send + Sync + 'a;

/// Run `comp` for one request. `decorate` adds what every upstream request carries; `trace`, when the
/// request is traced, gives each call its own span id in `traceparent`.
pub async fn run(
    comp: &Composition,
    input: &Input,
    connector: &Connector,
    decorate: &Decorate<'_>,
    trace: Option<Trace>,
) -> Outcome {
    let n = comp.calls.len();
    let mut state: Vec<State> = (0..n).map(|_| State::Waiting).collect();
    let mut errors: Vec<(usize, Option<usize>, CallError)> = Vec::new();
    let mut records = Vec::new();
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut inflight = FuturesUnordered::new();
    let deadline = tokio::time::sleep(comp.timeout);
    tokio::pin!(deadline);
    let mut timed_out = false;

    loop {
        // Start every call whose inputs are all there (a call that fails at once may unblock others).
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if !matches!(state[i], State::Waiting) {
                    continue;
                }
                let call = &comp.calls[i];
                if call
                    .deps
                    .iter()
                    .any(|&d| !matches!(state[d], State::Done(_)))
                {
                    continue;
                }
                progressed = true;
                let failed_dep = call
                    .deps
                    .iter()
                    .find(|&&d| matches!(state[d], State::Done(Err(_))));
                let jobs = match failed_dep {
                    Some(&d) => Err(CallError::Dependency(comp.calls[d].name.clone())),
                    None => prepare(comp, i, input, &state, decorate, trace),
                };
                match jobs {
                    Ok(jobs) if jobs.is_empty() => {
                        // A fan-out over an empty array.
                        state[i] = State::Done(Ok(Value::Array(Vec::new())));
                    }
                    Ok(jobs) => {
                        state[i] = State::Running {
                            pending: jobs.len(),
                            results: vec![None; jobs.len()],
                        };
                        queue.extend(jobs);
                    }
                    Err(e) => {
                        if call.required {
                            return fail(comp, i, e, records);
                        }
                        errors.push((i, None, e.clone()));
                        state[i] = State::Done(Err(e));
                    }
                }
            }
        }
        while inflight.len() < comp.concurrency.max(1) {
            let Some(job) = queue.pop_front() else { break };
            inflight.push(send(comp, job, input, connector));
        }
        if inflight.is_empty() {
            break;
        }
        let done = tokio::select! {
            d = inflight.next() => d,
            () = &mut deadline => { timed_out = true; None }
        };
        let Some((job_call, index, result, record)) = done else {
            break;
        };
        records.push(record);
        let call = &comp.calls[job_call];
        let State::Running { pending, results } = &mut state[job_call] else {
            continue;
        };
        *pending -= 1;
        match result {
            Ok(v) => results[index.unwrap_or(0)] = Some(v),
            Err(e) => {
                if call.required {
                    return fail(comp, job_call, e, records);
                }
                errors.push((job_call, index, e));
            }
        }
        if *pending == 0 {
            let results = std::mem::take(results);
            state[job_call] = State::Done(if call.fans_out {
                Ok(Value::Array(
                    results
                        .into_iter()
                        .map(|r| r.unwrap_or(Value::Null))
                        .collect(),
                ))
            } else {
                match results.into_iter().next().flatten() {
                    Some(v) => Ok(v),
                    // Its error is recorded above.
                    None => Err(errors
                        .iter()
                        .rev()
                        .find(|(c, _, _)| *c == job_call)
                        .map(|(_, _, e)| e.clone())
                        .unwrap_or(CallError::Deadline)),
                }
            });
        }
    }
    if timed_out {
        // The deadline: a required call not done fails the answer; optional ones become errors.
        for (i, call) in comp.calls.iter().enumerate() {
            if matches!(state[i], State::Done(_)) {
                continue;
            }
            if call.required {
                return fail(comp, i, CallError::Deadline, records);
            }
            errors.push((i, None, CallError::Deadline));
            state[i] = State::Done(Err(CallError::Deadline));
        }
    }
    let values: Vec<Option<&Value>> = state
        .iter()
        .map(|s| match s {
            State::Done(Ok(v)) => Some(v),
            _ => None,
        })
        .collect();
    let mut body = match &comp.response {
        Some(shape) => render_shape(shape, &values, input),
        None => Value::Object(
            comp.calls
                .iter()
                .zip(&values)
                .map(|(c, v)| (c.name.clone(), v.cloned().unwrap_or(Value::Null)))
                .collect(),
        ),
    };
    let mut partial: Vec<String> = Vec::new();
    if !errors.is_empty() {
        let list: Vec<Value> = errors
            .iter()
            .map(|(c, index, e)| {
                let name = &comp.calls[*c].name;
                if !partial.contains(name) {
                    partial.push(name.clone());
                }
                error_entry(name, *index, e)
            })
            .collect();
        if let Value::Object(m) = &mut body {
            m.insert("errors".into(), Value::Array(list));
        }
    }
    Outcome {
        result: Ok(body),
        partial,
        records,
    }
}

fn fail(comp: &Composition, call: usize, error: CallError, records: Vec<CallRecord>) -> Outcome {
    Outcome {
        result: Err(Failure {
            call: comp.calls[call].name.clone(),
            error,
        }),
        partial: Vec::new(),
        records,
    }
}

/// An entry of the `errors` array.
pub fn error_entry(call: &str, index: Option<usize>, e: &CallError) -> Value {
    let mut m = Map::new();
    m.insert("call".into(), call.into());
    if let Some(i) = index {
        m.insert("index".into(), i.into());
    }
    m.insert("code".into(), e.code().into());
    m.insert("message".into(), e.message().into());
    if let Some(s) = e.upstream_status() {
        m.insert("status".into(), s.into());
    }
    Value::Object(m)
}

/// Send one job: the request within the call's timeout, and its record.
async fn send(
    comp: &Composition,
    job: Job,
    input: &Input,
    connector: &Connector,
) -> (usize, Option<usize>, Result<Value, CallError>, CallRecord) {
    let call = &comp.calls[job.call];
    let start = SystemTime::now();
    let t0 = Instant::now();
    let mut target = None;
    let res = tokio::time::timeout(
        call.timeout,
        client::fetch(
            connector,
            &call.upstream,
            &job.head,
            call.max_body,
            &input.hash_key,
            &mut target,
        ),
    )
    .await
    .unwrap_or(Err(CallError::Timeout));
    let (status, result) = match res {
        Ok(f) => (Some(f.status), Ok(f.json)),
        Err(e) => (e.upstream_status(), Err(e)),
    };
    let record = CallRecord {
        call: job.call,
        index: job.index,
        status,
        target,
        start,
        duration: t0.elapsed(),
        error: result.as_ref().err().cloned(),
        span_id: job.span_id,
        path: job.path,
    };
    (job.call, job.index, result, record)
}

/// The requests of call `i` now that its dependencies have answered.
fn prepare(
    comp: &Composition,
    i: usize,
    input: &Input,
    state: &[State],
    decorate: &Decorate<'_>,
    trace: Option<Trace>,
) -> Result<Vec<Job>, CallError> {
    let call = &comp.calls[i];
    let lookup = |c: usize| match &state[c] {
        State::Done(Ok(v)) => Some(v),
        _ => None,
    };
    // The elements a fan-out goes over: the array its `[]` reference points into.
    let each = call.target.iter().find_map(|p| match p {
        Piece::Ref(r) if r.each().is_some() => Some(r),
        _ => None,
    });
    let elements: Option<Vec<Value>> = match each {
        None => None,
        Some(r) => {
            let at = r.each().unwrap_or(0);
            let base = source_value(&r.source, &r.path[..at], input, &lookup)?;
            let arr = base.as_array().ok_or_else(|| CallError::Input {
                message: format!("`{r}`: the value before `[]` is not an array"),
                from_request: is_request_source(&r.source),
            })?;
            if arr.len() > call.max_calls {
                return Err(CallError::TooManyCalls {
                    count: arr.len(),
                    max: call.max_calls,
                });
            }
            Some(arr.clone())
        }
    };
    let count = elements.as_ref().map_or(1, Vec::len);
    let mut jobs = Vec::with_capacity(count);
    for k in 0..count {
        let element = elements.as_ref().map(|e| &e[k]);
        let target = render_target(&call.target, input, &lookup, element)?;
        let mut head = RequestHeader::build(call.method.clone(), target.as_bytes(), Some(8))
            .map_err(|_| CallError::Input {
                message: format!("`{target}` is not a valid request target"),
                from_request: false,
            })?;
        for (name, t) in &call.headers {
            let v = render_text(t, input, &lookup, element)?;
            let from_request = t
                .iter()
                .any(|p| matches!(p, Piece::Ref(r) if is_request_source(&r.source)));
            let v = HeaderValue::from_str(&v).map_err(|_| CallError::Input {
                message: format!("header `{name}`: the value is not a valid header value"),
                from_request,
            })?;
            let _ = head.append_header(name.clone(), v);
        }
        decorate(&mut head);
        let span_id = fastrand::u64(1..);
        if let Some(t) = trace {
            let tp = format!("00-{:032x}-{span_id:016x}-{:02x}", t.trace_id, t.flags);
            let _ = head.insert_header("traceparent", tp);
        }
        jobs.push(Job {
            call: i,
            index: elements.as_ref().map(|_| k),
            head,
            path: target,
            span_id,
        });
    }
    Ok(jobs)
}

fn is_request_source(s: &Source) -> bool {
    !matches!(s, Source::Call(_))
}

/// The value a source and path point to (without `[]`). Missing: an `Input` error, unless defaulted
/// (handled by the callers that can use a default).
fn source_value<'v>(
    source: &Source,
    path: &[Seg],
    input: &'v Input,
    lookup: &Lookup<'v>,
) -> Result<std::borrow::Cow<'v, Value>, CallError> {
    use std::borrow::Cow;
    let missing = |what: String| CallError::Input {
        message: what,
        from_request: is_request_source(source),
    };
    match source {
        Source::Param(name) => input
            .params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Cow::Owned(Value::String(v.clone())))
            .ok_or_else(|| missing(format!("route parameter `{name}` is missing"))),
        Source::Query(name) => input
            .query
            .as_deref()
            .and_then(|q| template::query_param(q, name))
            .map(|v| Cow::Owned(Value::String(v)))
            .ok_or_else(|| missing(format!("query parameter `{name}` is missing"))),
        Source::Header(name) => input
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| Cow::Owned(Value::String(v.to_string())))
            .ok_or_else(|| missing(format!("header `{name}` is missing"))),
        Source::Claims => input
            .claims
            .as_deref()
            .and_then(|c| {
                let (first, rest) = path.split_first()?;
                let Seg::Field(f) = first else { return None };
                follow(c.get(f)?, rest)
            })
            .map(|v| Cow::Owned(v.clone()))
            .ok_or_else(|| missing("a claim the call needs is missing".to_string())),
        Source::Call(c) => lookup(*c)
            .and_then(|v| follow(v, path))
            .map(Cow::Borrowed)
            .ok_or_else(|| missing("a field the call needs is missing from an answer".into())),
    }
}

/// The value of a reference for text (path, query, header), `element` being the fan-out's element
/// for the part after `[]`.
fn ref_text<'v>(
    r: &Ref,
    input: &'v Input,
    lookup: &Lookup<'v>,
    element: Option<&Value>,
) -> Result<String, CallError> {
    let found = match (r.each(), element) {
        (Some(at), Some(el)) => follow(el, &r.path[at + 1..])
            .map(|v| std::borrow::Cow::Owned(v.clone()))
            .ok_or_else(|| CallError::Input {
                message: String::new(),
                from_request: false,
            }),
        _ => source_value(&r.source, &r.path, input, lookup),
    };
    let v = match (found, &r.default) {
        (Ok(v), _) => v,
        (Err(_), Some(d)) => return Ok(d.clone()),
        (Err(e), None) => {
            return Err(CallError::Input {
                message: format!("`{{{r}}}` is missing"),
                from_request: matches!(
                    e,
                    CallError::Input {
                        from_request: true,
                        ..
                    }
                ),
            })
        }
    };
    scalar_text(&v)
        .map(|s| s.into_owned())
        .ok_or_else(|| CallError::Input {
            message: format!("`{{{r}}}` is not a string, number or boolean"),
            from_request: is_request_source(&r.source),
        })
}

/// A call's path and query: literals as written, route parameters as the rewrite encodes them,
/// values from data strictly encoded (they can add no segment and no parameter).
fn render_target<'v>(
    pieces: &[Piece],
    input: &'v Input,
    lookup: &Lookup<'v>,
    element: Option<&Value>,
) -> Result<String, CallError> {
    let mut out = String::with_capacity(64);
    let mut in_query = false;
    for p in pieces {
        match p {
            Piece::Lit(s) => {
                if !in_query {
                    if let Some(q) = s.find('?') {
                        check_path(&out, &s[..q])?;
                        in_query = true;
                    }
                }
                out.push_str(s);
            }
            Piece::Ref(r) => {
                let v = ref_text(r, input, lookup, element)?;
                // In the path, a value from data is one segment's text or nothing: no separator,
                // no escape, no control byte, no dot segment (what `crate::path` refuses from
                // clients, because backends disagree on what it means).
                let bad_segment = v.is_empty()
                    || v.bytes().all(|b| b == b'.')
                    || v.bytes()
                        .any(|b| matches!(b, b'/' | b'\\' | b'%') || b.is_ascii_control());
                if !in_query && !matches!(r.source, Source::Param(_)) && bad_segment {
                    return Err(CallError::Input {
                        message: format!(
                            "`{{{r}}}` is `{}`, which cannot be a path segment",
                            v.escape_debug()
                        ),
                        from_request: is_request_source(&r.source),
                    });
                }
                match r.source {
                    Source::Param(_) => crate::request::encode_into(&mut out, &v, in_query),
                    _ => template::encode_strict(&mut out, &v),
                }
            }
        }
    }
    if !in_query {
        check_path(&out, "")?;
    }
    Ok(out)
}

/// The rendered path (`done` + `more`) must be what normalization leaves as it is: pieces put side
/// by side (`/x/.{a}` with `a` = `.`) cannot make a dot segment either.
fn check_path(done: &str, more: &str) -> Result<(), CallError> {
    let path = format!("{done}{more}");
    match crate::path::normalize(&path) {
        Ok(n) if n == path => Ok(()),
        _ => Err(CallError::Input {
            message: format!("the call's path `{path}` is not a normalized path"),
            from_request: false,
        }),
    }
}

/// A header value: the text of each reference as it is.
fn render_text<'v>(
    pieces: &[Piece],
    input: &'v Input,
    lookup: &Lookup<'v>,
    element: Option<&Value>,
) -> Result<String, CallError> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Ref(r) => out.push_str(&ref_text(r, input, lookup, element)?),
        }
    }
    Ok(out)
}

/// The answer in the declared shape. A missing value is `null` (optional calls that failed leave
/// theirs so; the `errors` array says why).
fn render_shape<'v>(shape: &Shape, values: &[Option<&'v Value>], input: &'v Input) -> Value {
    let lookup = |c: usize| values.get(c).copied().flatten();
    match shape {
        Shape::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, s)| (k.clone(), render_shape(s, values, input)))
                .collect(),
        ),
        Shape::Array(items) => Value::Array(
            items
                .iter()
                .map(|s| render_shape(s, values, input))
                .collect(),
        ),
        Shape::Lit(v) => v.clone(),
        Shape::Text(pieces) => {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Lit(s) => out.push_str(s),
                    Piece::Ref(r) => {
                        if let Ok(t) = ref_text(r, input, &lookup, None) {
                            out.push_str(&t);
                        }
                    }
                }
            }
            Value::String(out)
        }
        Shape::Ref(r) => match r.each() {
            None => source_value(&r.source, &r.path, input, &lookup)
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| r.default.clone().map_or(Value::Null, Value::String)),
            Some(at) => match source_value(&r.source, &r.path[..at], input, &lookup) {
                Ok(base) => match base.as_array() {
                    Some(arr) => Value::Array(
                        arr.iter()
                            .map(|el| {
                                follow(el, &r.path[at + 1..])
                                    .cloned()
                                    .unwrap_or(Value::Null)
                            })
                            .collect(),
                    ),
                    None => Value::Null,
                },
                Err(_) => Value::Null,
            },
        },
    }
}

#[cfg(test)]
mod tests;
