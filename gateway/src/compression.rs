//! Response compression: which answers are compressed, and with what.
//!
//! The encoding itself is Pingora's: the context of its `ResponseCompression` HTTP module (pingora-core
//! 0.9.1 `modules/http/compression.rs`), held in this file's one module ([`Encoders`]) for every request
//! at level 0 (off), and the proxy turns it on for one algorithm when [`decide`] says so. What the
//! module does and what this file adds:
//!
//! - Pingora (pingora-core 0.9.1 `protocols/http/compression/mod.rs`): the gzip, brotli and zstd
//!   encoders, streaming; per-algorithm levels (`adjust_algorithm_level`); once it compresses, it drops
//!   `Content-Length` and `Accept-Ranges`, sends chunked, weakens a strong `ETag` (`weaken_or_clear_etag`),
//!   and adds `Vary: Accept-Encoding` (`add_vary_header`, no duplicate); it leaves an answer that has a
//!   `Content-Encoding` alone (`decide_action`: with decompression off there is no decoder, so nothing
//!   changes) and one without a body (`end` at the head). Its own type check (`compressible`) only
//!   lets `text/*`, `application/*`, `font/*` and a few image types through, none containing `zip`, and
//!   bodies of 20 bytes or more.
//! - Its gaps, filled here: it takes the client's *first* listed coding and ignores q-values (so
//!   `gzip;q=0` would get gzip) and `identity`; it compresses 206 partial content, `text/event-stream`
//!   (which must not be buffered), gRPC, `application/octet-stream` and other binary `application/*`
//!   types (PDF, woff2 is `font/*`); its minimum size is fixed; HEAD is passed with the identity headers
//!   (the module sees the end of the answer at its head), though RFC 9110 §9.3.2 wants the headers a GET
//!   would get. So [`negotiate`] parses `Accept-Encoding` with q-values (RFC 9110 §12.5.3) and picks
//!   among the route's algorithms, [`decide`] checks status, method, types and size, and the proxy feeds
//!   the module an `Accept-Encoding` of the chosen coding alone, so the module's first-listed pick is
//!   ours. For HEAD the proxy writes those headers itself ([`head_headers`]).
//! - Brotli is not Pingora's: its `brotli::Compressor` ends the stream with `flush()` instead of
//!   finishing it (pingora-core 0.9.1 `protocols/http/compression/brotli.rs`; cloudflare/pingora#1013,
//!   open), so every `br` body lacks brotli's last meta-block and strict decoders (Node's `fetch`, the
//!   `brotli` tool) reject it. [`BrotliModule`], beside Pingora's context in [`Encoders`], encodes
//!   brotli with the same crate and finishes the stream at the end of the body (or at `Done`).

use pingora_core::protocols::http::compression::ResponseCompressionCtx;
use pingora_http::ResponseHeader;

use http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE,
};

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Gzip,
    Brotli,
    Zstd,
}

impl Algorithm {
    /// The coding's token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
        }
    }

    /// Pingora's name for it.
    pub fn pingora(self) -> pingora_core::protocols::http::compression::Algorithm {
        use pingora_core::protocols::http::compression::Algorithm as P;
        match self {
            Algorithm::Gzip => P::Gzip,
            Algorithm::Brotli => P::Brotli,
            Algorithm::Zstd => P::Zstd,
        }
    }
}

/// A route's compression settings, compiled from `compression:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// In the gateway's order of preference, for codings the client weighs the same.
    pub algorithms: Vec<Algorithm>,
    /// 1 (fastest) to 9, for every algorithm.
    pub level: u32,
    /// Bodies whose `Content-Length` is below this are sent as they are (a body of unknown length is
    /// compressed).
    pub min_size: u64,
}

/// The coding to answer with for this `Accept-Encoding` (every field line of it), among `offered`:
/// the acceptable one (q > 0) with the highest q, ties to the first in `offered`. `*` stands for every
/// coding not named. `None`: no header (RFC 9110 §12.5.3 allows any coding then, but clients that
/// send none are mostly tools that would not decode it), nothing acceptable, or only `identity`.
pub fn negotiate<'a>(
    accept: impl IntoIterator<Item = &'a HeaderValue>,
    offered: &[Algorithm],
) -> Option<Algorithm> {
    let mut named: Vec<(&str, u16)> = Vec::new();
    let mut any = false;
    for v in accept {
        any = true;
        let Ok(text) = v.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = 1000;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim()).unwrap_or(0);
                    }
                }
            }
            named.push((coding, q));
        }
    }
    if !any {
        return None;
    }
    let weight = |a: Algorithm| {
        let own = named
            .iter()
            .filter(|(c, _)| c.eq_ignore_ascii_case(a.token()))
            .map(|(_, q)| *q)
            .max();
        own.or_else(|| named.iter().find(|(c, _)| *c == "*").map(|(_, q)| *q))
            .unwrap_or(0)
    };
    let mut best: Option<(Algorithm, u16)> = None;
    for a in offered {
        let q = weight(*a);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*a, q));
        }
    }
    best.map(|(a, _)| a)
}

/// A qvalue (RFC 9110 §12.4.2: `0` to `1` with up to three decimals) in thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// Content types that are compressed already (or whose bytes do not shrink), by prefix of the media
/// type, lower case: images but SVG, audio, video, archives, fonts in compressed formats, PDF,
/// `application/octet-stream` (unknown bytes, often an archive), and what must not be held back to
/// fill a compressor's buffer (`text/event-stream`) or belongs to gRPC.
const SKIP: &[&str] = &[
    "image/",
    "video/",
    "audio/",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/x-bzip",
    "application/x-xz",
    "application/x-7z",
    "application/x-rar",
    "application/vnd.rar",
    "application/x-tar",
    "application/pdf",
    "application/octet-stream",
    "application/grpc",
    "font/woff",
    "text/event-stream",
];

/// Is `content_type` one to leave alone?
pub fn skip_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "image/svg+xml" {
        return false;
    }
    SKIP.iter().any(|p| media.starts_with(p))
}

/// Whether the answer `status`/`resp` to a request with `method` may be compressed under `policy`
/// (the client's `Accept-Encoding` aside): a final answer with a body (not 1xx, 204, 206, 304), not
/// already encoded, not a range, of a compressible type, at least `min_size` when its length is known,
/// and not marked `Cache-Control: no-transform` (RFC 9110 §7.7: an intermediary must not change the
/// content coding then). gRPC and upgraded answers are the caller's to exclude.
pub fn eligible(policy: &Policy, status: u16, resp: &HeaderMap) -> bool {
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return false;
    }
    if resp.contains_key(CONTENT_ENCODING) || resp.contains_key(CONTENT_RANGE) {
        return false;
    }
    let Some(ct) = resp.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        // Pingora does not compress an answer without a type either.
        return false;
    };
    if skip_type(ct) {
        return false;
    }
    let no_transform = resp
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    if no_transform {
        return false;
    }
    let length = resp
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_none_or(|n| n >= policy.min_size)
}

/// The decision for one answer: `None` leaves it alone; `Some((vary, algorithm))`: it depends on
/// `Accept-Encoding` (`vary`), and is compressed with `algorithm` when the client accepts one.
pub fn decide(
    policy: &Policy,
    req: &HeaderMap,
    status: u16,
    resp: &HeaderMap,
) -> Option<Option<Algorithm>> {
    eligible(policy, status, resp)
        .then(|| negotiate(req.get_all(ACCEPT_ENCODING), &policy.algorithms))
}

/// The headers of a HEAD answer as those of the GET would be, compressed with `a` (RFC 9110 §9.3.2):
/// `Content-Encoding`, no `Content-Length` (the compressed length is not known without the body) nor
/// `Accept-Ranges`, a weak `ETag` (as Pingora's `weaken_or_clear_etag` makes it). `Vary` is the
/// caller's. Through `ResponseHeader`'s own methods, which keep its header-case map in step (Pingora
/// writes HTTP/1 headers from that map).
pub fn head_headers(resp: &mut ResponseHeader, a: Algorithm) {
    let _ = resp.insert_header(CONTENT_ENCODING, a.token());
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&http::header::ACCEPT_RANGES);
    let weak = resp
        .headers
        .get(http::header::ETAG)
        .filter(|e| !e.as_bytes().starts_with(b"W/"))
        .map(|e| {
            let mut w = b"W/".to_vec();
            w.extend_from_slice(e.as_bytes());
            HeaderValue::from_bytes(&w)
        });
    match weak {
        Some(Ok(v)) => {
            let _ = resp.insert_header(http::header::ETAG, v);
        }
        Some(Err(_)) => {
            resp.remove_header(&http::header::ETAG);
        }
        None => {}
    }
}

/// Add `Accept-Encoding` to `Vary` unless it (or `*`) is there already.
pub fn add_vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|x| x.trim_ascii())
            .any(|x| x == b"*" || x.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !present {
        let _ = resp.append_header(http::header::VARY, "Accept-Encoding");
    }
}

/// Counts the answers being compressed, gateway-wide (`limits.max_compressing`).
#[derive(Debug, Default)]
pub struct Gate(std::sync::Arc<std::sync::atomic::AtomicUsize>);

/// One answer's place under the [`Gate`], given back when dropped (however the request ends).
#[derive(Debug)]
pub struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Gate {
    /// A place for one more answer, if fewer than `max` hold one.
    pub fn enter(&self, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }

    /// Answers being compressed now.
    pub fn held(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Brotli's window (log2 bytes): 512 KiB per response being encoded, as Pingora chose.
const BROTLI_LGWIN: u32 = 19;

/// The brotli encoder of one response (see the module docs for why not Pingora's), in [`Encoders`].
/// Idle unless [`BrotliModule::start`] is called in the response header phase.
#[derive(Default)]
pub struct BrotliModule {
    /// Boxed: the encoder's state is kilobytes, and every request's module context would be built
    /// and moved with it inline (a `memcpy` per move, for every request, compressed or not).
    encoder: Option<Box<brotli::CompressorWriter<Vec<u8>>>>,
}

impl BrotliModule {
    /// Encode this response's body at `level` (1 to 9).
    pub fn start(&mut self, level: u32) {
        self.encoder = Some(Box::new(brotli::CompressorWriter::new(
            Vec::new(),
            4096,
            level,
            BROTLI_LGWIN,
        )));
    }

    /// `input` through the encoder: what it has output so far; with `end`, the rest and the end of
    /// the stream (the encoder is gone after). `None` when idle.
    pub fn encode(&mut self, input: &[u8], end: bool) -> Option<std::io::Result<bytes::Bytes>> {
        use std::io::Write;
        let encoder = self.encoder.as_mut()?;
        if let Err(e) = encoder.write_all(input) {
            self.encoder = None;
            return Some(Err(e));
        }
        if end {
            // `into_inner` runs BROTLI_OPERATION_FINISH: the last meta-block.
            let out = self
                .encoder
                .take()
                .map(|e| (*e).into_inner())
                .unwrap_or_default();
            return Some(Ok(out.into()));
        }
        Some(Ok(std::mem::take(encoder.get_mut()).into()))
    }
}

fn brotli_error(e: std::io::Error) -> Box<pingora_core::Error> {
    pingora_core::Error::because(
        pingora_core::ErrorType::InternalError,
        "brotli encoding failed",
        e,
    )
}

/// The response encoders of one request, as one HTTP module: Pingora's gzip/zstd context and the
/// brotli encoder, both idle unless the response phase ([`crate::proxy`]'s `compress`) turns one on.
/// One module rather than Pingora's `ResponseCompression` and a second for brotli: Pingora builds
/// every module's context and awaits each module's filters (boxed futures) for every request,
/// compressed or not, about 550 instructions a module per request.
pub struct Encoders {
    /// Pingora's gzip and zstd encoders (`ResponseCompression`'s context), off (level 0) until the
    /// response phase asks for one.
    pub pingora: ResponseCompressionCtx,
    pub brotli: BrotliModule,
}

#[async_trait::async_trait]
impl pingora_core::modules::http::HttpModule for Encoders {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    // No request header filter: Pingora's module reads `Accept-Encoding` there, but only once a
    // level is set (`ResponseCompressionCtx::request_filter` returns early at 0); the response phase
    // gives it the coding it chose instead.

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora_core::Result<()> {
        // As Pingora's `ResponseCompression` (pingora-core 0.9.1 `modules/http/compression.rs`).
        self.pingora.response_header_filter(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
    ) -> pingora_core::Result<()> {
        if self.pingora.is_enabled() {
            if let Some(out) = self
                .pingora
                .response_body_filter(body.as_ref(), end_of_stream)
            {
                *body = Some(out);
            }
            return Ok(());
        }
        if self.brotli.encoder.is_none() {
            return Ok(());
        }
        let input = body.take().unwrap_or_default();
        match self.brotli.encode(&input, end_of_stream) {
            None => {}
            Some(Ok(out)) => *body = Some(out).filter(|b| !b.is_empty()),
            Some(Err(e)) => return Err(brotli_error(e)),
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora_core::Result<Option<bytes::Bytes>> {
        // The end of a response that did not come with a last body chunk: flush what is left.
        if self.pingora.is_enabled() {
            return Ok(self.pingora.response_body_filter(None, true));
        }
        match self.brotli.encode(&[], true) {
            None => Ok(None),
            Some(Ok(out)) => Ok(Some(out)),
            Some(Err(e)) => Err(brotli_error(e)),
        }
    }
}

/// Builds [`Encoders`] for each request; late in the response filters, as Pingora's compression.
pub struct EncodersBuilder;

impl pingora_core::modules::http::HttpModuleBuilder for EncodersBuilder {
    fn init(&self) -> pingora_core::modules::http::Module {
        Box::new(Encoders {
            pingora: ResponseCompressionCtx::new(0, false, false),
            brotli: BrotliModule::default(),
        })
    }

    fn order(&self) -> i16 {
        i16::MIN / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Algorithm::*;

    fn ae(v: &str) -> Option<Algorithm> {
        let h = HeaderValue::from_str(v).unwrap();
        negotiate([&h], &[Zstd, Brotli, Gzip])
    }

    #[test]
    fn accept_encoding_with_q_values_identity_and_star() {
        assert_eq!(ae("gzip"), Some(Gzip));
        assert_eq!(ae("gzip, br"), Some(Brotli), "same q: the gateway's order");
        assert_eq!(ae("gzip;q=1, br;q=0.5"), Some(Gzip));
        assert_eq!(ae("gzip;q=0"), None, "q=0 is 'not acceptable'");
        assert_eq!(ae("GZIP ; Q=0.001"), Some(Gzip));
        assert_eq!(ae("identity"), None);
        assert_eq!(ae("identity;q=1, gzip;q=0.2"), Some(Gzip));
        assert_eq!(ae("*"), Some(Zstd));
        assert_eq!(ae("*;q=0.1, br;q=0, zstd;q=0"), Some(Gzip));
        assert_eq!(ae("*;q=0"), None);
        assert_eq!(ae("deflate, compress"), None);
        assert_eq!(ae("gzip;q=2"), None, "an invalid q counts as 0");
        assert_eq!(ae("gzip;q=0.5000"), None);
        assert_eq!(ae(""), None);
        assert_eq!(negotiate([], &[Gzip]), None, "no header: none");
        let (a, b) = (
            HeaderValue::from_static("gzip;q=0.5"),
            HeaderValue::from_static("br"),
        );
        assert_eq!(negotiate([&a, &b], &[Gzip, Brotli]), Some(Brotli));
        assert_eq!(
            negotiate([&HeaderValue::from_static("br, zstd")], &[Gzip]),
            None
        );
    }

    fn policy() -> Policy {
        Policy {
            algorithms: vec![Gzip],
            level: 6,
            min_size: 1024,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn what_is_eligible() {
        let p = policy();
        let json = headers(&[
            ("content-type", "application/json"),
            ("content-length", "5000"),
        ]);
        assert!(eligible(&p, 200, &json));
        assert!(eligible(&p, 404, &json));
        for s in [101, 204, 206, 304] {
            assert!(!eligible(&p, s, &json), "{s}");
        }
        let small = headers(&[("content-type", "text/html"), ("content-length", "1023")]);
        assert!(!eligible(&p, 200, &small));
        let unknown_length = headers(&[("content-type", "text/html; charset=utf-8")]);
        assert!(eligible(&p, 200, &unknown_length));
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "video/mp4",
            "audio/ogg",
            "application/zip",
            "application/gzip",
            "font/woff2",
            "application/octet-stream",
            "text/event-stream",
            "application/grpc+proto",
        ] {
            assert!(!eligible(&p, 200, &headers(&[("content-type", t)])), "{t}");
        }
        assert!(eligible(
            &p,
            200,
            &headers(&[("content-type", "image/svg+xml")])
        ));
        assert!(!eligible(&p, 200, &headers(&[])), "no type");
        let encoded = headers(&[("content-type", "text/plain"), ("content-encoding", "br")]);
        assert!(!eligible(&p, 200, &encoded));
        let nt = headers(&[
            ("content-type", "text/plain"),
            ("cache-control", "public, No-Transform"),
        ]);
        assert!(!eligible(&p, 200, &nt));
    }

    #[test]
    fn the_gate_holds_at_most_max_and_gives_places_back() {
        let g = Gate::default();
        let a = g.enter(2).unwrap();
        let b = g.enter(2).unwrap();
        assert!(g.enter(2).is_none());
        drop(a);
        let _c = g.enter(2).unwrap();
        assert_eq!(g.held(), 2);
        drop(b);
        assert_eq!(g.held(), 1);
        assert!(g.enter(0).is_none());
    }

    #[test]
    fn brotli_streams_end_with_the_last_meta_block() {
        use std::io::Read;
        let text: Vec<u8> = (0..20_000u32)
            .map(|i| b"abcdefgh"[(i % 7) as usize])
            .collect();
        let mut m = BrotliModule::default();
        assert!(m.encode(b"x", false).is_none(), "idle until started");
        m.start(6);
        let mut out = Vec::new();
        for chunk in text.chunks(3000) {
            out.extend_from_slice(&m.encode(chunk, false).unwrap().unwrap());
        }
        out.extend_from_slice(&m.encode(&[], true).unwrap().unwrap());
        assert!(m.encode(b"", true).is_none(), "finished once");
        // A strict decoder: it fails on a stream without its last meta-block.
        let mut back = Vec::new();
        brotli::Decompressor::new(&out[..], 4096)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn head_headers_are_those_of_the_get() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-length", "5000").unwrap();
        r.insert_header("etag", "\"abc\"").unwrap();
        r.insert_header("accept-ranges", "bytes").unwrap();
        head_headers(&mut r, Brotli);
        add_vary(&mut r);
        add_vary(&mut r);
        let h = &r.headers;
        assert_eq!(h["content-encoding"], "br");
        assert_eq!(h["etag"], "W/\"abc\"");
        assert!(!h.contains_key("content-length") && !h.contains_key("accept-ranges"));
        assert_eq!(h.get_all("vary").iter().count(), 1);
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("vary", "Origin, accept-encoding").unwrap();
        add_vary(&mut r);
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    }
}
