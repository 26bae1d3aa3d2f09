//! Reading a config file: YAML syntax, `${ENV}` interpolation, typed sections, and the place of every node.
//!
//! `yaml-rust2`'s event parser reads the text once: its events give the line and column of every key
//! and value, stored by field path in [`Locations`], and build the value tree ([`super::tree`]: the
//! one `serde_yaml_ng` would build, which parses the text itself only for what that builder leaves to
//! it). The typed sections are deserialized from the tree through [`crate::config::de`], whose errors
//! keep their structure and their field path. Each upstream and each route is deserialized on its own
//! and every problem of it is reported, so one bad route hides neither its own other problems nor the
//! next route's.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::diag::{Diagnostic, Diagnostics, Severity};
use super::include;
pub use super::include::{Files, Recorder, Source};
use super::raw::{RawConfig, RouteConfig, ServerConfig, UpstreamConfig};
use super::sink::{Scope, Sink};

/// Line and column (1-based) of every key and value of a config, by field path (`routes[0].match.path`),
/// and the file each is in: the main file and the files it includes (`include:`), merged into the one
/// tree the compiler checks.
///
/// Paths are kept as their 64-bit FNV-1a hash, not as strings: a file of 100,000 routes has millions of
/// nodes, and a string per node was most of `validate`'s time and memory. The hash is computed while
/// the parser walks the tree, from the parent's (FNV-1a reads bytes one at a time, so hashing a path
/// piece by piece equals hashing it whole, which is what a lookup does). Two paths of one file sharing
/// a hash (odds about 10⁻⁷ at millions of nodes) would only misplace a diagnostic's line and column.
#[derive(Debug, Default, Clone)]
pub struct Locations {
    files: Vec<FileInfo>,
    /// The index of `files[0]` in the config (0, but for an included file's own places before they
    /// are [merged](Locations::merge)).
    first: usize,
    values: HashMap<u64, Pos, BuildHasherDefault<PathHashed>>,
    keys: HashMap<u64, Pos, BuildHasherDefault<PathHashed>>,
}

#[derive(Debug, Clone)]
struct FileInfo {
    name: String,
    /// Where the file's own `routes:` start in the merged list (0 for the main file): its
    /// `routes[2]` is the config's `routes[route_offset + 2]`, and diagnostics show the file's own.
    route_offset: usize,
}

/// Line (1-based), and column (1-based, low [`COL_BITS`] bits) with the file's index above it: eight
/// bytes a node, as for a single file.
#[derive(Debug, Clone, Copy)]
struct Pos {
    line: u32,
    file_col: u32,
}

const COL_BITS: u32 = 20;
const COL_MASK: u32 = (1 << COL_BITS) - 1;
/// Files one config may be made of (the main one and its includes).
pub const MAX_FILES: usize = 1 << (32 - COL_BITS);

impl Pos {
    fn file(self) -> usize {
        (self.file_col >> COL_BITS) as usize
    }
    fn col(self) -> usize {
        (self.file_col & COL_MASK) as usize
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn path_hash(path: &str) -> u64 {
    fnv(FNV_OFFSET, path.as_bytes())
}

/// The map keys are hashes already.
#[derive(Default)]
struct PathHashed(u64);

impl std::hash::Hasher for PathHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv(self.0, bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Locations {
    /// The main config file (relative file names in the config are resolved against its folder).
    pub fn file(&self) -> &str {
        self.files.first().map_or("", |f| f.name.as_str())
    }

    fn info(&self, pos: Option<Pos>) -> Option<&FileInfo> {
        let i = pos.map_or(self.first, Pos::file);
        self.files.get(i.checked_sub(self.first)?)
    }

    /// The file the value at `path` is written in.
    pub fn file_at(&self, path: &str) -> &str {
        self.info(self.place(path, false))
            .map_or("", |f| f.name.as_str())
    }

    /// Where the value at `path` is, or else its nearest ancestor that has a place.
    fn place(&self, path: &str, at_key: bool) -> Option<Pos> {
        if at_key {
            if let Some(&p) = self.keys.get(&path_hash(path)) {
                return Some(p);
            }
        }
        let mut p = path;
        loop {
            if let Some(&pos) = self.values.get(&path_hash(p)) {
                return Some(pos);
            }
            p = parent_path(p)?;
        }
    }

    /// Where the value at `path` is (line, column), or else its nearest ancestor that has a place.
    pub fn value(&self, path: &str) -> (usize, usize) {
        self.place(path, false)
            .map_or((1, 1), |p| (p.line as usize, p.col()))
    }

    /// Where the key that introduces `path` is (falls back to the value's place).
    pub fn key(&self, path: &str) -> (usize, usize) {
        self.place(path, true)
            .map_or((1, 1), |p| (p.line as usize, p.col()))
    }

    /// `FILE:LINE:COL` of the value at `path` (or of the key that introduces it): for a message
    /// that points at a second place.
    pub fn describe(&self, path: &str, at_key: bool) -> String {
        let pos = self.place(path, at_key);
        let (line, col) = pos.map_or((1, 1), |p| (p.line as usize, p.col()));
        let file = self.info(pos).map_or("", |f| f.name.as_str());
        format!("{file}:{line}:{col}")
    }

    /// Position of `file` among the config's files (the main one is 0): diagnostics are sorted by it.
    pub(crate) fn rank(&self, file: &str) -> usize {
        self.files
            .iter()
            .position(|f| f.name == file)
            .unwrap_or(usize::MAX)
    }

    /// A diagnostic at the value of `path`.
    pub fn error(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        self.diag(path, message, Severity::Error, false)
    }

    /// A warning at the value of `path`.
    pub fn warning(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        self.diag(path, message, Severity::Warning, false)
    }

    pub fn diag(
        &self,
        path: &str,
        message: impl Into<String>,
        severity: Severity,
        at_key: bool,
    ) -> Diagnostic {
        let pos = self.place(path, at_key);
        let (line, col) = pos.map_or((1, 1), |p| (p.line as usize, p.col()));
        let info = self.info(pos);
        Diagnostic {
            file: info.map(|f| f.name.clone()).unwrap_or_default(),
            line,
            col,
            path: match info {
                Some(f) if f.route_offset > 0 => local_route_path(path, f.route_offset),
                _ => path.to_string(),
            },
            message: message.into(),
            severity,
        }
    }

    /// Add the places of an included file (indexed by [`locate_included`]); the main file's (and
    /// earlier files') places win where paths meet (`routes`, a name defined twice).
    pub(crate) fn merge(&mut self, other: Locations) {
        debug_assert_eq!(other.first, self.first + self.files.len());
        self.files.extend(other.files);
        for (k, v) in other.values {
            self.values.entry(k).or_insert(v);
        }
        for (k, v) in other.keys {
            self.keys.entry(k).or_insert(v);
        }
    }

    /// Files so far (the index the next included file takes).
    pub(crate) fn file_count(&self) -> usize {
        self.first + self.files.len()
    }
}

/// `routes[7].upstream` of the merged config as the file whose routes start at `offset` numbers it
/// (`routes[2].upstream` for offset 5): an author reads their own file's positions.
fn local_route_path(path: &str, offset: usize) -> String {
    let Some(rest) = path.strip_prefix("routes[") else {
        return path.to_string();
    };
    let Some(end) = rest.find(']') else {
        return path.to_string();
    };
    match rest[..end].parse::<usize>() {
        Ok(i) if i >= offset => format!("routes[{}]{}", i - offset, &rest[end + 1..]),
        _ => path.to_string(),
    }
}

/// `routes[0].match` → `routes[0]` → `routes` → None.
pub(crate) fn parent_path(p: &str) -> Option<&str> {
    if p.is_empty() {
        return None;
    }
    let cut = p.rfind(['.', '[']).unwrap_or(0);
    Some(&p[..cut])
}

pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A path being built: the FNV-1a state of its text, and whether it is empty (the root, whose keys
/// take no leading `.`).
#[derive(Clone, Copy)]
struct PathState {
    hash: u64,
    empty: bool,
}

impl PathState {
    const ROOT: PathState = PathState {
        hash: FNV_OFFSET,
        empty: true,
    };

    /// `self.key` (or `key` at the root), as [`join_key`] writes it.
    fn key(self, key: &str) -> PathState {
        let h = if self.empty {
            self.hash
        } else {
            fnv(self.hash, b".")
        };
        PathState {
            hash: fnv(h, key.as_bytes()),
            empty: false,
        }
    }

    /// `self[index]`.
    fn index(self, index: usize) -> PathState {
        let mut digits = itoa::Buffer::new();
        let h = fnv(self.hash, b"[");
        let h = fnv(h, digits.format(index).as_bytes());
        PathState {
            hash: fnv(h, b"]"),
            empty: false,
        }
    }
}

enum Frame {
    /// `fresh`: no key seen yet (the map's own place is then moved to its first key, which is where
    /// a reader looks; the parser marks a block mapping at its first `:`).
    Map {
        path: PathState,
        key: Option<PathState>,
        fresh: bool,
    },
    Seq {
        path: PathState,
        index: usize,
    },
}

/// Builds [`Locations`] from parser events.
struct Indexer {
    stack: Vec<Frame>,
    values: HashMap<u64, Pos, BuildHasherDefault<PathHashed>>,
    keys: HashMap<u64, Pos, BuildHasherDefault<PathHashed>>,
    /// The file's index, shifted into place ([`Pos::file_col`]).
    file_bits: u32,
    /// Where the file's top-level `routes:` list starts in the merged config.
    route_offset: usize,
    routes_hash: u64,
    /// The value tree, built from the same events (`None`: places only).
    tree: Option<super::tree::Tree>,
    /// The first document has ended: later events only count documents (for the tree).
    ended: bool,
}

impl Indexer {
    /// The path a new node takes, or `None` when the node is a mapping key (recorded here).
    fn place(&mut self, mark: Marker, scalar: Option<&str>) -> Option<PathState> {
        let pos = self.position(mark);
        match self.stack.last_mut() {
            None => Some(PathState::ROOT),
            Some(Frame::Seq { path, index }) => {
                let p = path.index(*index);
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, fresh }) => match key.take() {
                Some(k) => Some(k),
                None => {
                    // This node is a key. Complex keys (maps as keys) are not used by our config.
                    let k = path.key(scalar.unwrap_or("?"));
                    if std::mem::take(fresh) {
                        self.values.insert(path.hash, pos);
                    }
                    self.keys.insert(k.hash, pos);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl Indexer {
    fn position(&self, mark: Marker) -> Pos {
        let line = u32::try_from(mark.line()).unwrap_or(u32::MAX);
        let col = u32::try_from(mark.col() + 1).map_or(COL_MASK, |c| c.min(COL_MASK));
        Pos {
            line,
            file_col: self.file_bits | col,
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if !self.ended {
            self.index(&ev, mark);
            self.ended = ev == Event::DocumentEnd;
        }
        if let Some(tree) = &mut self.tree {
            tree.event(ev);
        }
    }
}

impl Indexer {
    fn index(&mut self, ev: &Event, mark: Marker) {
        let pos = self.position(mark);
        match *ev {
            Event::Scalar(ref s, ..) => {
                if let Some(p) = self.place(mark, Some(s)) {
                    self.values.insert(p.hash, pos);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.place(mark, None) {
                    self.values.insert(p.hash, pos);
                }
            }
            Event::MappingStart(..) => {
                if let Some(p) = self.place(mark, None) {
                    self.values.insert(p.hash, pos);
                    self.stack.push(Frame::Map {
                        path: p,
                        key: None,
                        fresh: true,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(p) = self.place(mark, None) {
                    self.values.insert(p.hash, pos);
                    // An included file's `routes:` continue the merged list.
                    let index = if self.stack.len() == 1 && p.hash == self.routes_hash {
                        self.route_offset
                    } else {
                        0
                    };
                    self.stack.push(Frame::Seq { path: p, index });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// A file parsed, interpolated and deserialized as far as it could be.
pub struct Loaded {
    pub config: RawConfig,
    pub locations: Locations,
    /// Problems found so far (type errors, unknown fields, unset variables). The config is still
    /// returned so that the semantic checks can report their problems too, in the same run.
    pub diagnostics: Diagnostics,
    /// Paths already reported (a `${VAR}` that could not be resolved, a value of the wrong type that was
    /// left out). Any later complaint about them would only repeat that problem in other words, so the
    /// [`Loaded::sink`] drops it.
    tainted: Vec<String>,
    /// The texts it was made of (the main file's and its includes'), for the version history, the
    /// watcher and rollbacks.
    pub source: std::sync::Arc<Source>,
    /// `(variable, value)` of every `${VAR}` expanded: never quoted in a diagnostic (see
    /// [`Sink::redact`]).
    expanded: Vec<(String, String)>,
}

impl Loaded {
    /// A sink that goes on from what loading found (its diagnostics, and the values it reported as
    /// unusable, whose later complaints are dropped): what the compiler reports into.
    pub fn sink(&self) -> Sink<'_> {
        let sink = Sink::resume(
            &self.locations,
            self.diagnostics.clone(),
            self.tainted.clone(),
        );
        sink.redact(&self.expanded);
        sink
    }
}

/// Read and parse `path` and the files it includes. Errors carry the file name as given.
pub fn load_file(path: &str) -> Result<Loaded, Diagnostics> {
    load_file_recorded(path).1
}

/// [`load_file`], and what it read (also when the config is refused: the watcher follows the files
/// of the last attempt, and the version history hashes them). `None` when `path` is unreadable.
pub fn load_file_recorded(path: &str) -> (Option<Source>, Result<Loaded, Diagnostics>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let d = Diagnostic {
                file: path.to_string(),
                line: 0,
                col: 0,
                path: String::new(),
                message: format!("cannot read file: {e}"),
                severity: Severity::Error,
            };
            return (None, Err(Diagnostics(vec![d])));
        }
    };
    let disk = Recorder::new(path, &text);
    let loaded = load_from(path, &text, &|k| std::env::var(k).ok(), &disk);
    let source = disk.into_source();
    match loaded {
        Ok(mut l) => {
            let source = std::sync::Arc::new(source);
            l.source = source.clone();
            (Some((*source).clone()), Ok(l))
        }
        Err(d) => (Some(source), Err(d)),
    }
}

/// Compile again what was read before (a rollback): no file is read.
pub fn load_source(
    source: &std::sync::Arc<Source>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Diagnostics> {
    let (path, text) = source.main();
    let mut l = load_from(path, text, env, &**source)?;
    l.source = source.clone();
    Ok(l)
}

/// Where every key and value of the YAML `text` is, by field path: for other YAML files that want
/// FILE:LINE diagnostics the way the config has them (`tollgate test`'s cases file).
pub fn locate(file: &str, text: &str) -> Result<Locations, Diagnostics> {
    index(file, without_bom(text), 0, 0, false)
        .map(|(l, _)| l)
        .map_err(|d| Diagnostics(vec![d]))
}

/// The places and the value tree of an included file, the `index`th of the config, whose routes
/// start at `route_offset` in the merged list: to [`Locations::merge`] into the main file's.
pub(crate) fn parse_included(
    file: &str,
    text: &str,
    index_in_config: usize,
    route_offset: usize,
) -> Result<(Locations, Value), Diagnostic> {
    let (l, tree) = index(file, text, index_in_config, route_offset, true)?;
    Ok((l, tree_or_serde(file, text, tree)?))
}

/// The tree the events built, or (where that builder gave up) `serde_yaml_ng`'s own, with its errors.
/// Debug builds parse with both and assert that the trees are the same.
fn tree_or_serde(file: &str, text: &str, tree: Option<Value>) -> Result<Value, Diagnostic> {
    #[cfg(debug_assertions)]
    if let Some(t) = &tree {
        let theirs = serde_yaml_ng::from_str::<Value>(text);
        debug_assert!(
            theirs
                .as_ref()
                .is_ok_and(|v| format!("{v:?}") == format!("{t:?}")),
            "the tree built from the events differs from serde_yaml_ng's for {text:?}: {t:?} vs {theirs:?}"
        );
    }
    if let Some(t) = tree {
        return Ok(t);
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        Diagnostic {
            file: file.to_string(),
            line,
            col,
            path: String::new(),
            message: format!("YAML error: {e}"),
            severity: Severity::Error,
        }
    })
}

/// Can `text` have a YAML merge key (`<<`)? Only with those two characters in it, or with an escape
/// in a double-quoted key (`"\x3c<"`): else `apply_merge`, a walk of the whole tree, has nothing to
/// do (2 % of `validate` at 100,000 routes).
pub(crate) fn may_merge(text: &str) -> bool {
    text.contains("<<") || text.contains('\\')
}

/// `text` without a leading byte-order mark, which some Windows editors write: it is not part of the
/// first key (yaml-rust2 would read it as one), and a column counts from after it, as an editor
/// shows it. serde_yaml_ng refused such a file as "more than one document". Stripped where a file's
/// text enters loading (`load_from`, `merge_file`, `locate`), for both parsers.
pub(crate) fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

fn index(
    file: &str,
    text: &str,
    nth: usize,
    route_offset: usize,
    build: bool,
) -> Result<(Locations, Option<Value>), Diagnostic> {
    // About one value per 10 bytes of YAML and a key for most: sized once rather than regrown (and
    // rehashed) a dozen times for a large file.
    let nodes = text.len() / 10;
    let mut indexer = Indexer {
        stack: Vec::new(),
        values: HashMap::with_capacity_and_hasher(nodes, Default::default()),
        keys: HashMap::with_capacity_and_hasher(nodes, Default::default()),
        file_bits: u32::try_from(nth.min(MAX_FILES - 1)).unwrap_or(0) << COL_BITS,
        route_offset,
        routes_hash: PathState::ROOT.key("routes").hash,
        tree: (build && super::tree::builds(text)).then(super::tree::Tree::default),
        ended: false,
    };
    // The tree needs to see a second document (serde_yaml_ng refuses one); places are the first's.
    let multi = indexer.tree.is_some();
    if let Err(e) = drive(&mut Parser::new_from_str(text), &mut indexer, multi) {
        let m = e.marker();
        return Err(Diagnostic {
            file: file.to_string(),
            line: m.line(),
            col: m.col() + 1,
            path: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
            severity: Severity::Error,
        });
    }
    let tree = indexer.tree.and_then(super::tree::Tree::finish);
    let locations = Locations {
        files: vec![FileInfo {
            name: file.to_string(),
            route_offset,
        }],
        first: nth,
        values: indexer.values,
        keys: indexer.keys,
    };
    Ok((locations, tree))
}

/// Feed `recv` the parser's events: those of the first document, or with `multi` all of them. As
/// `Parser::load` does, but in a loop: `load` recurses once per level of nesting, and a file of a few
/// kilobytes of `- - - -` overflowed the stack (a reload's thread, taking the gateway with it).
pub(crate) fn drive<R: MarkedEventReceiver>(
    parser: &mut Parser<std::str::Chars<'_>>,
    recv: &mut R,
    multi: bool,
) -> Result<(), yaml_rust2::ScanError> {
    loop {
        let (ev, mark) = parser.next_token()?;
        let last = ev == Event::StreamEnd || (!multi && ev == Event::DocumentEnd);
        recv.on_event(ev, mark);
        if last {
            return Ok(());
        }
    }
}

/// Parse config text as the content of file `file`. `env` resolves `${VAR}` (a seam for tests); the
/// files it includes are read from the disk.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Diagnostics> {
    let disk = Recorder::new(file, text);
    let mut l = load_from(file, text, env, &disk)?;
    l.source = std::sync::Arc::new(disk.into_source());
    Ok(l)
}

fn load_from(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    files: &dyn Files,
) -> Result<Loaded, Diagnostics> {
    let text = without_bom(text);
    let (mut locations, tree) = index(file, text, 0, 0, true).map_err(|d| Diagnostics(vec![d]))?;

    // An empty file is never a config: it is what a truncated write or a ConfigMap glitch leaves, and
    // applying it would turn every route into a 404 and the admin API off (so it could not be mended
    // through the API). A reload of it keeps the running config.
    let mut root: Value = if text.trim().is_empty() {
        return Err(Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            line: 1,
            col: 1,
            path: String::new(),
            message: "the config file is empty (a truncated write?): it needs at least `routes:`"
                .into(),
            severity: Severity::Error,
        }]));
    } else {
        tree_or_serde(file, text, tree).map_err(|d| Diagnostics(vec![d]))?
    };
    let merged = if may_merge(text) {
        root.apply_merge()
    } else {
        Ok(())
    };
    if let Err(e) = merged {
        return Err(Diagnostics(vec![
            locations.error("", format!("YAML merge key error: {e}"))
        ]));
    }

    // `include:` is merged before anything else looks at the tree: from here on it is one config,
    // whose paths the merged `locations` place in the right file.
    let mut early = Vec::new();
    let mut tainted = Vec::new();
    let owned = match &mut root {
        Value::Mapping(m) => {
            include::merge(m, file, &mut locations, files, &mut early, &mut tainted)
        }
        _ => Vec::new(),
    };

    let sink = Sink::resume(&locations, Diagnostics(early), tainted);
    // Only a file with a `$` can have a `${VAR}` to expand.
    let seen = std::cell::RefCell::new(Vec::new());
    if text.contains('$') || locations.file_count() > 1 {
        let recording = |name: &str| {
            let v = env(name);
            if let Some(v) = &v {
                seen.borrow_mut().push((name.to_string(), v.clone()));
            }
            v
        };
        interpolate(&mut root, &sink.root(), &mut String::new(), &recording);
    }
    let expanded = seen.into_inner();
    sink.redact(&expanded);
    let config = typed(root, &sink.root());
    include::check_owned(&config.routes, &owned, &sink.root().at("routes"));
    include::check_targets(&config.upstreams, &owned, &sink.root().at("upstreams"));
    let (diagnostics, tainted) = sink.into_parts();
    Ok(Loaded {
        config,
        locations,
        diagnostics,
        tainted,
        source: Default::default(),
        expanded,
    })
}

/// Deserialize the tree section by section, collecting every problem.
fn typed(root: Value, at: &Scope) -> RawConfig {
    let mut cfg = RawConfig::default();
    let Value::Mapping(map) = root else {
        at.error("the config must be a mapping with `server`, `upstreams` and `routes`");
        return cfg;
    };
    for (k, v) in map {
        let Some(key) = k.as_str().map(str::to_string) else {
            at.error(format!("top-level keys must be strings, found {k:?}"));
            continue;
        };
        match key.as_str() {
            "server" => {
                if let Some(s) = section::<ServerConfig>(v, &at.at("server")) {
                    cfg.server = s;
                }
            }
            "upstreams" => match v {
                Value::Mapping(ups) => {
                    for (name, up) in ups {
                        let name = yaml_key(&name);
                        match section::<UpstreamConfig>(up, &at.at("upstreams").at(&name)) {
                            Some(u) => {
                                cfg.upstreams.insert(name, u);
                            }
                            None => {
                                cfg.broken_upstreams.insert(name);
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => at
                    .at("upstreams")
                    .error("expected a mapping of upstream name to upstream"),
            },
            "tracing" => {
                if let Some(t) = section(v, &at.at("tracing")) {
                    cfg.tracing = Some(t);
                }
            }
            "plugins" => match v {
                Value::Sequence(list) => cfg.plugins = list,
                Value::Null => {}
                _ => at.at("plugins").error("expected a list of plugins"),
            },
            "routes" => match v {
                Value::Sequence(routes) => {
                    for (i, r) in routes.into_iter().enumerate() {
                        if let Some(mut r) = section::<RouteConfig>(r, &at.at("routes").idx(i)) {
                            r.index = i;
                            cfg.routes.push(r);
                        }
                    }
                }
                Value::Null => {}
                _ => at.at("routes").error("expected a list of routes"),
            },
            // A plugin's section, or unknown: the compiler knows which (the registry's sections).
            _ => {
                cfg.sections.insert(key, v);
            }
        }
    }
    cfg
}

pub(crate) fn yaml_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Deserialize one section, reporting every problem in it (see [`crate::config::de::collect`]). Returns
/// the section when what is left of it after the bad nodes were taken out still deserializes, so its
/// other problems are found by the compiler in the same run; the file is invalid either way.
pub fn section<T: DeserializeOwned>(v: Value, at: &Scope) -> Option<T> {
    // An absent section body (`server:` with nothing after it) means "all defaults".
    let v = if v.is_null() {
        Value::Mapping(Default::default())
    } else {
        v
    };
    let (value, problems) = crate::config::de::collect::<T>(v);
    for p in &problems {
        at.problem(p);
    }
    value
}

/// `base` + a relative path (`x.y`, `[0].y` or empty).
pub fn sub_path(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else if rel.starts_with('[') {
        format!("{base}{rel}")
    } else {
        join_key(base, rel)
    }
}

/// Call `f` with every leaf of `v` (each value that is not a list or a mapping) and its path
/// (`routes[3].match.path`). The path is one buffer, grown and cut back around each child: a string
/// per node would be most of the work for a file of many routes.
pub(crate) fn walk_leaves(v: &mut Value, path: &mut String, f: &mut dyn FnMut(&mut Value, &str)) {
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push('[');
                path.push_str(itoa::Buffer::new().format(i));
                path.push(']');
                walk_leaves(item, path, f);
                path.truncate(len);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k.as_str() {
                    Some(k) => path.push_str(k),
                    None => path.push_str(&yaml_key(k)),
                }
                walk_leaves(item, path, f);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => walk_leaves(&mut t.value, path, f),
        leaf => f(leaf, path),
    }
}

/// Replace `${VAR}` and `${VAR:-default}` in every string value. `$${` is a literal `${`.
/// A value that is exactly one `${VAR}` is re-read as YAML, so `port: ${PORT}` becomes a number.
fn interpolate(
    v: &mut Value,
    root: &Scope,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) {
    walk_leaves(v, path, &mut |v, path| match v {
        // A team's file is trusted less than the main one: it must not copy the gateway's
        // environment (its secrets) into headers or paths sent to its own service.
        Value::String(s) if s.contains("${") && !in_main_file(root, path) => {
            let at = root.sub(path);
            at.error("`${VAR}` is expanded in the main config file only: an included file cannot read the gateway's environment");
            at.taint();
        }
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok((out, whole)) => {
                if whole {
                    match serde_yaml_ng::from_str::<Value>(&out) {
                        Ok(parsed @ (Value::Number(_) | Value::Bool(_))) => *v = parsed,
                        _ => *s = out,
                    }
                } else {
                    *s = out;
                }
            }
            Err(msg) => {
                let at = root.sub(path);
                at.error(msg);
                // Whatever is later said about this value would repeat that it is not set.
                at.taint();
            }
        },
        _ => {}
    });
}

fn in_main_file(root: &Scope, path: &str) -> bool {
    root.locations()
        .is_none_or(|l| l.file_count() == 1 || l.file_at(path) == l.file())
}

/// Expand one string. Returns the result and whether the input was a single `${...}` and nothing else.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut refs = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let inner = &after[..end];
            let (name, default) = match inner.find(":-") {
                Some(j) => (&inner[..j], Some(&inner[j + 2..])),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference (use ${{NAME}} or ${{NAME:-default}})"));
            }
            match (env(name), default) {
                (Some(val), _) => out.push_str(&val),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (set it, or give a default with ${{{name}:-value}})"
                    ))
                }
            }
            refs += 1;
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    let whole =
        refs == 1 && s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
    Ok((out, whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PORT" => Some("8081".into()),
            "SECRET" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables() {
        assert_eq!(expand("${SECRET}", &env).unwrap(), ("s3cr3t".into(), true));
        assert_eq!(
            expand("a-${SECRET}-b", &env).unwrap(),
            ("a-s3cr3t-b".into(), false)
        );
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), ("x".into(), true));
        assert_eq!(
            expand("$${SECRET}", &env).unwrap(),
            ("${SECRET}".into(), false)
        );
        assert_eq!(expand("cost $5", &env).unwrap(), ("cost $5".into(), false));
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("`NOPE` is not set"));
        assert!(expand("${BAD NAME}", &env).is_err());
        assert!(expand("${OPEN", &env).is_err());
    }

    #[test]
    fn merge_keys_are_applied_however_the_key_is_written() {
        // Plain, quoted, and escaped (no `<<` in the text), with and without an alias.
        for merge in [
            "<<: { threads: 3 }",
            "\"<<\": { threads: 3 }",
            "\"\\x3c\\x3c\": { threads: 3 }",
            "\"\\u003c<\": { threads: 3 }",
        ] {
            let text = format!("server:\n  {merge}\nroutes: []\n");
            let l = load_str("f.yaml", &text, &env).unwrap();
            assert_eq!(l.config.server.threads.map(|n| n.get()), Some(3), "{text}");
        }
        let text = "base: &b { threads: 3 }\nserver:\n  <<: *b\nroutes: []\n";
        let l = load_str("f.yaml", text, &env).unwrap();
        assert_eq!(l.config.server.threads.map(|n| n.get()), Some(3));
        assert!(!may_merge("server: { threads: 3 }\nroutes: []\n"));
    }

    #[test]
    fn locations_point_at_keys_and_values() {
        let text = "server:\n  listen: [\"127.0.0.1:1\"]\nroutes:\n  - name: a\n    match: { path: /x }\n    upstream: u\n";
        let l = load_str("f.yaml", text, &env).unwrap();
        assert_eq!(l.locations.value("routes[0].name"), (4, 11));
        assert_eq!(l.locations.key("routes[0].upstream"), (6, 5));
        assert_eq!(l.locations.value("routes[0].match.path"), (5, 20));
        assert_eq!(l.locations.value("server.listen[0]"), (2, 12));
        assert_eq!(l.locations.value("routes[0].nonexistent"), (4, 5));
    }

    #[test]
    fn reports_every_section_problem() {
        let text = "upstreams:\n  u:\n    targets: [{ addr: a, weight: x }]\nroutes:\n  - name: a\n    matchh: {}\n  - name: b\n    upstream: 5\n";
        let errs = load_str("f.yaml", text, &env).unwrap().diagnostics;
        let lines: Vec<String> = errs.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with("f.yaml:3:34: error: upstreams.u.targets[0].weight: invalid type"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("f.yaml:6:5: error: routes[0].matchh: unknown field `matchh`"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("f.yaml:8:15: error: routes[1].upstream: invalid type: number `5`, expected a string"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn env_number_and_missing_var() {
        let text = "upstreams:\n  u:\n    targets: [{ addr: a, weight: \"${PORT}\" }]\n    retries: ${MISSING}\n";
        let errs = load_str("f.yaml", text, &env).unwrap().diagnostics;
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, "upstreams.u.retries");
        assert_eq!((errs.0[0].line, errs.0[0].col), (4, 14));
        let ok = load_str(
            "f.yaml",
            "upstreams:\n  u:\n    targets: [{ addr: a, weight: \"${PORT}\" }]\n",
            &env,
        )
        .unwrap();
        assert_eq!(ok.config.upstreams["u"].targets[0].weight, 8081);
    }

    #[test]
    fn values_from_the_environment_are_never_quoted() {
        // A secret put where a duration goes: the message names the variable, not the value, and the
        // compiler's messages (through `Loaded::sink`) do the same.
        let text = "server:\n  listen: [\"127.0.0.1:1\"]\n  limits: { header_read_timeout: \"${SECRET}\" }\nupstreams:\n  u: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: r, match: { path_prefix: \"/${SECRET}\" }, upstream: u, rewrite: \"/x/{nope}\" }\n";
        let loaded = load_str("f.yaml", text, &env).unwrap();
        let shown = loaded.diagnostics.to_string();
        assert!(shown.contains("${SECRET}"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let sink = loaded.sink();
        sink.root()
            .at("routes")
            .error("a message quoting /s3cr3t and s3cr3t again");
        let all = sink.finish().to_string();
        assert!(!all.contains("s3cr3t"), "{all}");
        assert!(all.contains("/${SECRET} and ${SECRET} again"), "{all}");
    }

    #[test]
    fn syntax_error_has_place() {
        for empty in ["", "  \n\n"] {
            let e = load_str("f.yaml", empty, &env).err().unwrap();
            let text = e.0[0].to_string();
            assert!(text.starts_with("f.yaml:1:1: "), "{text}");
            assert!(text.contains("the config file is empty"), "{text}");
        }
        let errs = load_str("f.yaml", "routes:\n  - name: a\n   bad: [\n", &env)
            .err()
            .unwrap();
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].line >= 2, "{}", errs);
        assert!(errs.0[0].message.contains("syntax"), "{}", errs);
    }
}
