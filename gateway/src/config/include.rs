//! A config per team: the main file's `include:` names files (or a folder, or `conf.d/*.yaml`) whose
//! `routes` and `upstreams` are merged into the one config the compiler checks.
//!
//! The rules, chosen so that a team's file can never change what it does not own:
//! - an included file defines only `routes` and `upstreams`; `server`, the global `plugins`, auth
//!   providers, rate-limit policies and `tracing` belong to the main file (the platform team's);
//! - includes are one level deep (an included file has no `include:`), so there are no cycles and the
//!   main file lists everything a config is made of;
//! - an upstream defined twice is an error that names both places (a route name used twice already is);
//! - an entry may restrict its files to path prefixes (`paths`) and hosts (`hosts`): a route of those
//!   files outside them is an error, so one team cannot capture another's paths;
//! - the main file's routes come first, then each entry's files in the order listed, a folder's or a
//!   pattern's files by name: the order [`crate::router`] uses among equals ("file order").
//!
//! Everything read is recorded in a [`Source`]: the watcher reloads when any of those files or
//! folders changes, and a rollback compiles the recorded texts again without touching the disk.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::diag::{Diagnostic, Severity};
use super::load::{parse_included, Locations, MAX_FILES};
use super::raw::RouteConfig;
use super::sink::Scope;

/// `include:` entry: a file, a folder (its `*.yaml` and `*.yml` files), or a pattern with `*` or `?`
/// in its last part (`conf.d/*.yaml`); relative to the main file's folder. Written as that string
/// alone, or as a mapping with restrictions.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncludeRule {
    /// A file, a folder, or a pattern with `*`/`?` in its last part (`teams/orders/*.yaml`).
    pub files: String,
    /// When set, every route of these files must match under one of these path prefixes
    /// (segment-aware, as `path_prefix`): with `path` or `path_prefix`, never `path_regex` or no path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// When set, every route of these files must name one of these hosts in `match.host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Upstreams defined elsewhere (the main file's, say) that these files' routes may use. An entry
    /// with `paths`, `hosts` or this list lets its routes (and their composition calls) use only the
    /// upstreams its own files define and these: a team cannot point a route of its own, without the
    /// owner's plugins, at another team's service.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Where the upstreams these files define may connect: an IP (`10.1.2.3`, any port), an
    /// `ip:port`, a CIDR (`10.1.0.0/16`), or a host name with or without a port (`orders.internal`,
    /// `orders.internal:8083`, `*.orders.internal` for its subdomains). Required for an entry with
    /// `paths`, `hosts`, `upstreams` or `targets` whose files define upstreams: otherwise a team's
    /// upstream could point at any address the gateway reaches (another team's service without its
    /// plugins, the admin listener, a cloud metadata address).
    #[serde(default)]
    pub targets: Vec<String>,
}

impl IncludeRule {
    /// Does this entry restrict what its files may do?
    fn restricted(&self) -> bool {
        !(self.paths.is_empty()
            && self.hosts.is_empty()
            && self.upstreams.is_empty()
            && self.targets.is_empty())
    }
}

/// Is the target `addr` (`ip:port` or `host:port`) one that `pattern` (see [`IncludeRule::targets`])
/// allows?
fn target_allowed(addr: &str, pattern: &str) -> bool {
    use std::net::{IpAddr, SocketAddr};
    let pattern = pattern.trim();
    let sock = addr.parse::<SocketAddr>().ok();
    if let Ok(net) = pattern.parse::<ipnet::IpNet>() {
        return sock.is_some_and(|a| net.contains(&a.ip().to_canonical()));
    }
    if let Ok(p) = pattern.parse::<SocketAddr>() {
        return sock.is_some_and(|a| {
            a.ip().to_canonical() == p.ip().to_canonical() && a.port() == p.port()
        });
    }
    if let Ok(ip) = pattern.trim_matches(['[', ']']).parse::<IpAddr>() {
        return sock.is_some_and(|a| a.ip().to_canonical() == ip.to_canonical());
    }
    if sock.is_some() {
        // An address is never allowed by a host name's pattern.
        return false;
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (addr, None),
    };
    let (want_host, want_port) = match pattern.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    // Compared as bytes: a team's name may hold any character, and a cut inside one would panic.
    let (host, want) = (host.as_bytes(), want_host.as_bytes());
    let host_ok = match want.strip_prefix(b"*.") {
        Some(parent) => {
            host.len() > parent.len() + 1
                && host[host.len() - parent.len()..].eq_ignore_ascii_case(parent)
                && host[host.len() - parent.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(want),
    };
    host_ok && want_port.is_none_or(|p| port == Some(p))
}

/// Check that the upstreams each restricted entry's files define connect only where its `targets`
/// allow.
pub(crate) fn check_targets(
    upstreams: &std::collections::BTreeMap<String, crate::config::raw::UpstreamConfig>,
    owned: &[Owned],
    at: &Scope,
) {
    for o in owned.iter().filter(|o| o.rule.restricted()) {
        for name in &o.upstreams {
            let Some(up) = upstreams.get(name) else {
                continue;
            };
            for (i, t) in up.targets.iter().enumerate() {
                let here = at.at(name).at("targets").idx(i).at("addr");
                if o.rule.targets.is_empty() {
                    here.error(format!(
                        "the files of include[{e}] are restricted, but not where their upstreams connect: list the addresses they may use in include[{e}].targets",
                        e = o.entry
                    ));
                } else if !o.rule.targets.iter().any(|p| target_allowed(&t.addr, p)) {
                    here.error(format!(
                        "`{}` is not an address the files of include[{}] may connect to (`{}`)",
                        t.addr,
                        o.entry,
                        o.rule.targets.join("`, `")
                    ));
                }
            }
        }
    }
}

/// The schema of `include:`: a list of file names or [`IncludeRule`]s.
pub fn include_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let rule = g.subschema_for::<IncludeRule>();
    schemars::json_schema!({
        "description": "Files whose `routes` and `upstreams` are merged into this config (a config per team): a file, a folder (its *.yaml files), or a pattern with `*` in its last part, relative to this file's folder; or `{files, paths, hosts, upstreams, targets}` to restrict what those files may route and where their upstreams connect.",
        "type": ["array", "null"],
        "items": { "anyOf": [ { "type": "string" }, rule ] },
    })
}

/// What the files of a config were when it was read: the main file first, then every file and folder
/// read for its includes. Kept with each applied version (a rollback compiles it again), and what the
/// watcher compares with the disk.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Path and text (or why it could not be read), the main file first.
    pub files: Vec<(String, Result<Arc<str>, String>)>,
    /// Folders listed for an include: their YAML file names, sorted (`None`: not a folder).
    pub dirs: Vec<(String, Option<Vec<String>>)>,
}

impl Source {
    /// A config of one file and its text (what a test or a tool compiles).
    pub fn single(path: &str, text: &str) -> Source {
        Source {
            files: vec![(path.to_string(), Ok(Arc::from(text)))],
            dirs: Vec::new(),
        }
    }

    /// The main file's path and text.
    pub fn main(&self) -> (&str, &str) {
        match self.files.first() {
            Some((p, Ok(t))) => (p, t),
            Some((p, Err(_))) => (p, ""),
            None => ("", ""),
        }
    }

    /// The included files that were read, in merge order.
    pub fn included(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().skip(1).filter_map(|(p, t)| match t {
            Ok(t) => Some((p.as_str(), &**t)),
            Err(_) => None,
        })
    }

    /// SHA-256 (hex, 16 digits) of the texts: of the main file's alone when it includes nothing, so
    /// a one-file config keeps the hash it always had; else of every file's path and text.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        if self.files.len() <= 1 {
            h.update(self.main().1.as_bytes());
        } else {
            for (p, t) in &self.files {
                h.update(p.as_bytes());
                h.update([0]);
                if let Ok(t) = t {
                    h.update(t.as_bytes());
                }
                h.update([0]);
            }
        }
        hex::encode(&h.finalize()[..8])
    }

    /// A hash of what these files and folders hold on disk now, and of `also` (certificates): it
    /// differs from the last one when a reload would read something else. `None` while the main file
    /// cannot be read.
    pub fn fingerprint(&self, also: &[PathBuf]) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let (main, _) = self.main();
        std::fs::read(main).ok()?.hash(&mut h);
        for (p, _) in self.files.iter().skip(1) {
            std::fs::read(p).ok().hash(&mut h);
        }
        for (d, _) in &self.dirs {
            yaml_files(Path::new(d)).hash(&mut h);
        }
        for f in also {
            std::fs::read(f).ok().hash(&mut h);
        }
        Some(h.finish())
    }
}

/// Where included files come from: the disk (recording what it reads) or a [`Source`] kept before.
pub trait Files {
    fn read(&self, path: &str) -> Result<Arc<str>, String>;
    /// The YAML file names in folder `path`, sorted; `None` when it is not a folder.
    fn dir(&self, path: &str) -> Option<Vec<String>>;
}

/// Reads the disk and records what it read.
pub struct Recorder(std::cell::RefCell<Source>);

impl Recorder {
    /// Recording from the main file `path`, whose `text` was read already.
    pub fn new(path: &str, text: &str) -> Recorder {
        Recorder(std::cell::RefCell::new(Source::single(path, text)))
    }

    pub fn into_source(self) -> Source {
        self.0.into_inner()
    }
}

impl Files for Recorder {
    fn read(&self, path: &str) -> Result<Arc<str>, String> {
        let r: Result<Arc<str>, String> = std::fs::read_to_string(path)
            .map(Arc::from)
            .map_err(|e| e.to_string());
        self.0
            .borrow_mut()
            .files
            .push((path.to_string(), r.clone()));
        r
    }

    fn dir(&self, path: &str) -> Option<Vec<String>> {
        let names = yaml_files(Path::new(path));
        self.0
            .borrow_mut()
            .dirs
            .push((path.to_string(), names.clone()));
        names
    }
}

impl Files for Source {
    fn read(&self, path: &str) -> Result<Arc<str>, String> {
        self.files
            .iter()
            .skip(1)
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| Err("not part of this version".into()))
    }

    fn dir(&self, path: &str) -> Option<Vec<String>> {
        self.dirs
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, names)| names.clone())
    }
}

/// The visible `*.yaml`/`*.yml` file names of a folder, sorted; `None` when it is not one. Hidden
/// names are skipped: editors' swap files, and a Kubernetes ConfigMap's `..data` folders (whose files
/// the visible symlinks name).
fn yaml_files(dir: &Path) -> Option<Vec<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Some(names)
}

/// `*` (any run of characters) and `?` (one) over a file name.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// `a/./b/../c` → `a/c`, so that one file named two ways is seen as one.
fn tidy(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The files `rule` names, in merge order.
fn expand(rule: &str, base: &Path, files: &dyn Files) -> Result<Vec<String>, String> {
    let joined = tidy(&base.join(rule));
    let name = joined
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let parent = joined.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir_of = |d: &Path| {
        if d.as_os_str().is_empty() {
            ".".to_string()
        } else {
            d.to_string_lossy().into_owned()
        }
    };
    if has_wildcard(&parent.to_string_lossy()) {
        return Err(format!(
            "`{rule}`: a wildcard may only be in the last part of the path (`conf.d/*.yaml`)"
        ));
    }
    let listed = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Result<Vec<String>, String> {
        let d = dir_of(dir);
        let names = files
            .dir(&d)
            .ok_or_else(|| format!("`{rule}`: there is no folder `{d}`"))?;
        Ok(names
            .into_iter()
            .filter(|n| keep(n))
            .map(|n| dir.join(n).to_string_lossy().into_owned())
            .collect())
    };
    if has_wildcard(&name) {
        return listed(&parent, &|n| wildcard(name.as_bytes(), n.as_bytes()));
    }
    let whole = joined.to_string_lossy().into_owned();
    match files.dir(&whole) {
        Some(_) => listed(&joined, &|n| n.ends_with(".yaml") || n.ends_with(".yml")),
        None => Ok(vec![whole]),
    }
}

/// The routes an entry's files brought (their positions in the merged list) and its restrictions.
pub(crate) struct Owned {
    pub(crate) routes: std::ops::Range<usize>,
    pub(crate) rule: Arc<IncludeRule>,
    /// `include[i]`, for messages.
    pub(crate) entry: usize,
    /// The upstreams the entry's files define.
    pub(crate) upstreams: std::collections::BTreeSet<String>,
}

fn upstream_names(root: &Mapping) -> std::collections::BTreeSet<String> {
    match root.get("upstreams") {
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Default::default(),
    }
}

/// Take `include:` out of the main file's top-level `root` and merge the files it names into it.
/// `main` is the main file's path; places of the included files are merged into `locations`;
/// problems found before the sink exists go to `early`. Returns which routes each entry brought.
pub(crate) fn merge(
    root: &mut Mapping,
    main: &str,
    locations: &mut Locations,
    files: &dyn Files,
    early: &mut Vec<Diagnostic>,
    tainted: &mut Vec<String>,
) -> Vec<Owned> {
    let Some(list) = root.remove("include") else {
        return Vec::new();
    };
    let rules = entries(list, locations, early);
    let base = Path::new(main)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let main_tidy = tidy(Path::new(main));
    // (file, include[i]) of every file merged so far: a file named twice is merged once.
    let mut seen: Vec<(PathBuf, usize)> = Vec::new();
    let mut owned = Vec::new();
    for (i, rule) in rules {
        let at = format!("include[{i}]");
        let paths = match expand(&rule.files, &base, files) {
            Ok(p) => p,
            Err(m) => {
                early.push(locations.error(&at, m));
                continue;
            }
        };
        if paths.is_empty() {
            early.push(locations.warning(
                &at,
                format!("`{}` matches no file (nothing is included)", rule.files),
            ));
        }
        let start = route_count(root);
        let upstreams_before = upstream_names(root);
        for path in paths {
            let t = tidy(Path::new(&path));
            if t == main_tidy {
                early.push(locations.error(&at, format!("`{path}` is the main file itself")));
                continue;
            }
            if let Some((_, j)) = seen.iter().find(|(p, _)| *p == t) {
                early.push(locations.error(
                    &at,
                    format!("`{path}` is included already (by include[{j}])"),
                ));
                continue;
            }
            seen.push((t, i));
            if locations.file_count() >= MAX_FILES {
                early.push(locations.error(
                    &at,
                    format!("a config is made of at most {MAX_FILES} files"),
                ));
                break;
            }
            let text = match files.read(&path) {
                Ok(t) => t,
                Err(e) => {
                    early.push(locations.error(&at, format!("cannot read `{path}`: {e}")));
                    continue;
                }
            };
            merge_file(root, &path, &text, locations, early, tainted);
        }
        let upstreams = upstream_names(root)
            .difference(&upstreams_before)
            .cloned()
            .collect();
        owned.push(Owned {
            routes: start..route_count(root),
            rule: Arc::new(rule),
            entry: i,
            upstreams,
        });
    }
    owned
}

/// The entries of `include:`, each with its index; problems reported into `early`.
fn entries(
    list: Value,
    locations: &Locations,
    early: &mut Vec<Diagnostic>,
) -> Vec<(usize, IncludeRule)> {
    let items = match list {
        Value::Sequence(items) => items,
        Value::Null => return Vec::new(),
        Value::String(_) => vec![list],
        _ => {
            early.push(locations.error(
                "include",
                "expected a list of files (`include: [conf.d/*.yaml]`)",
            ));
            return Vec::new();
        }
    };
    let sink = super::sink::Sink::new(locations);
    let at = sink.root().at("include");
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let here = at.idx(i);
        let rule = match item {
            Value::String(files) => Some(IncludeRule {
                files,
                paths: Vec::new(),
                hosts: Vec::new(),
                upstreams: Vec::new(),
                targets: Vec::new(),
            }),
            Value::Mapping(_) => super::load::section::<IncludeRule>(item, &here),
            _ => {
                here.error("expected a file name or `{ files: ..., paths: [...] }`");
                None
            }
        };
        let Some(rule) = rule else { continue };
        if rule.files.trim().is_empty() {
            here.at("files").error("a file name is needed");
            continue;
        }
        for (j, p) in rule.paths.iter().enumerate() {
            if !p.starts_with('/') || p.contains(['{', '}', '*']) {
                here.at("paths")
                    .idx(j)
                    .error(format!("`{p}` is not a path prefix like `/api/orders`"));
            }
        }
        out.push((i, rule));
    }
    early.extend(sink.finish().0);
    out
}

fn route_count(root: &Mapping) -> usize {
    match root.get("routes") {
        Some(Value::Sequence(s)) => s.len(),
        _ => 0,
    }
}

/// Merge one included file's `routes` and `upstreams` into `root`.
fn merge_file(
    root: &mut Mapping,
    path: &str,
    text: &str,
    locations: &mut Locations,
    early: &mut Vec<Diagnostic>,
    tainted: &mut Vec<String>,
) {
    // A leading byte-order mark is not part of the file (see `without_bom`).
    let text = super::load::without_bom(text);
    let file_error = |line: usize, col: usize, message: String| Diagnostic {
        file: path.to_string(),
        line,
        col,
        path: String::new(),
        message,
        severity: Severity::Error,
    };
    // As for the main file: an empty file is what a truncated write leaves, never a team's intent.
    if text.trim().is_empty() {
        early.push(file_error(
            1,
            1,
            "the included file is empty (a truncated write?): it needs `routes:` or `upstreams:`"
                .into(),
        ));
        return;
    }
    let offset = route_count(root);
    let (local, mut value) = match parse_included(path, text, locations.file_count(), offset) {
        Ok(parsed) => parsed,
        Err(d) => {
            early.push(d);
            return;
        }
    };
    let merged = if super::load::may_merge(text) {
        value.apply_merge()
    } else {
        Ok(())
    };
    if let Err(e) = merged {
        early.push(local.error("", format!("YAML merge key error: {e}")));
        return;
    }
    let Value::Mapping(mut map) = value else {
        early.push(local.error(
            "",
            "an included file is a mapping with `routes` and/or `upstreams`",
        ));
        return;
    };
    // A team's file is trusted less than the main one: it must not copy the gateway's environment
    // (its secrets) into headers or paths sent to its own service. Decided on the tree itself, after
    // YAML merge keys (`<<`) are applied, so no place of the file can bring a `${VAR}` in.
    for (k, v) in map.iter_mut() {
        match (k.as_str(), v) {
            // Routes are numbered as in the merged list, after the main file's and earlier files'.
            (Some("routes"), Value::Sequence(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let mut p = format!("routes[{}]", offset + i);
                    refuse_env(item, &mut p, &local, early, tainted);
                }
            }
            (k, v) => refuse_env(
                v,
                &mut k.unwrap_or_default().to_string(),
                &local,
                early,
                tainted,
            ),
        }
    }
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default().to_string();
        match (key.as_str(), v) {
            ("routes", Value::Sequence(routes)) => {
                if !matches!(root.get("routes"), Some(Value::Sequence(_)) | None | Some(Value::Null)) {
                    // The main file's own `routes` is broken; that is reported on its own.
                    continue;
                }
                let list = root
                    .entry(Value::String("routes".into()))
                    .or_insert(Value::Null);
                if list.is_null() {
                    *list = Value::Sequence(Vec::new());
                }
                if let Value::Sequence(list) = list {
                    list.extend(routes);
                }
            }
            ("upstreams", Value::Mapping(ups)) => {
                let all = root
                    .entry(Value::String("upstreams".into()))
                    .or_insert(Value::Null);
                if all.is_null() {
                    *all = Value::Mapping(Mapping::new());
                }
                let Value::Mapping(all) = all else { continue };
                for (name, up) in ups {
                    // A number or a tagged key would name the upstream one way here and another
                    // where the config is typed, out of reach of the checks made by name.
                    let Value::String(n) = &name else {
                        early.push(local.error(
                            "upstreams",
                            format!(
                                "an upstream's name is a plain string, not `{}`",
                                super::load::yaml_key(&name).trim()
                            ),
                        ));
                        continue;
                    };
                    let n = n.clone();
                    let here = format!("upstreams.{n}");
                    if all.contains_key(&name) {
                        early.push(local.diag(
                            &here,
                            format!(
                                "upstream `{n}` is defined twice: here and at {}",
                                locations.describe(&here, true)
                            ),
                            Severity::Error,
                            true,
                        ));
                        continue;
                    }
                    all.insert(name, up);
                }
            }
            ("routes" | "upstreams", Value::Null) => {}
            ("routes", _) => early.push(local.error("routes", "expected a list of routes")),
            ("upstreams", _) => early.push(local.error(
                "upstreams",
                "expected a mapping of upstream name to upstream",
            )),
            ("include", _) => early.push(local.diag(
                "include",
                "an included file cannot include others (the main file lists every file)",
                Severity::Error,
                true,
            )),
            (other, _) => early.push(local.diag(
                other,
                format!(
                    "an included file defines only `routes` and `upstreams`; `{other}` belongs in the main file"
                ),
                Severity::Error,
                true,
            )),
        }
    }
    locations.merge(local);
}

/// Report every string of an included file's `v` that holds `${` (`${VAR}` is read from the
/// environment in the main file only), blank it so that nothing expands it later, and mark its place
/// `tainted` (what would be said about the blank value would only repeat this).
fn refuse_env(
    v: &mut Value,
    path: &mut String,
    local: &Locations,
    early: &mut Vec<Diagnostic>,
    tainted: &mut Vec<String>,
) {
    super::load::walk_leaves(v, path, &mut |v, path| {
        if let Value::String(s) = v {
            if s.contains("${") {
                early.push(local.error(
                    path,
                    "`${VAR}` is expanded in the main config file only: an included file cannot read the gateway's environment",
                ));
                s.clear();
                tainted.push(path.to_string());
            }
        }
    });
}

/// Check that the routes each entry brought stay within its `paths` and `hosts`.
pub(crate) fn check_owned(routes: &[RouteConfig], owned: &[Owned], at: &Scope) {
    for r in routes {
        let Some(o) = owned.iter().find(|o| o.routes.contains(&r.index)) else {
            continue;
        };
        let here = at.idx(r.index).at("match");
        let m = &r.matcher;
        if !o.rule.paths.is_empty() {
            let allowed = o.rule.paths.join("`, `");
            let entry = o.entry;
            match (&m.path, &m.path_prefix, &m.path_regex) {
                (_, _, Some(_)) => here.at("path_regex").error(format!(
                    "the files of include[{entry}] may route only under `{allowed}`: use `path` or `path_prefix` (a regex's reach cannot be checked)"
                )),
                (Some(p), _, _) | (None, Some(p), _) => {
                    if !o.rule.paths.iter().any(|prefix| under(p, prefix)) {
                        let field = if m.path.is_some() { "path" } else { "path_prefix" };
                        here.at(field).error(format!(
                            "`{p}` is outside what the files of include[{entry}] may route (`{allowed}`)"
                        ));
                    }
                }
                (None, None, None) => here.error(format!(
                    "the files of include[{entry}] may route only under `{allowed}`: this route matches every path"
                )),
            }
        }
        if o.rule.restricted() {
            let may_use =
                |u: &str| o.upstreams.contains(u) || o.rule.upstreams.iter().any(|a| a == u);
            let refuse = |field: Scope, u: &str| {
                let own: Vec<&str> = o.upstreams.iter().map(String::as_str).collect();
                field.error(format!(
                    "`{u}` is not an upstream of the files of include[{}] (theirs: `{}`); list it in include[{}].upstreams to let them use it",
                    o.entry,
                    own.join("`, `"),
                    o.entry
                ));
            };
            let route = at.idx(r.index);
            if let Some(u) = r.upstream.as_deref().filter(|u| !may_use(u)) {
                refuse(route.at("upstream"), u);
            }
            for (name, call) in r.compose.iter().flat_map(|c| c.calls.iter()) {
                if !may_use(&call.upstream) {
                    refuse(
                        route.at("compose").at("calls").at(name).at("upstream"),
                        &call.upstream,
                    );
                }
            }
        }
        if !o.rule.hosts.is_empty() {
            let ok = m.host.as_deref().is_some_and(|h| {
                o.rule
                    .hosts
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(h))
            });
            if !ok {
                here.at("host").error(format!(
                    "the files of include[{}] may route only for host `{}`",
                    o.entry,
                    o.rule.hosts.join("`, `")
                ));
            }
        }
    }
}

/// Is `path` (a route's `path` or `path_prefix`) under `prefix`, segment-aware?
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*.yaml", b"orders.yaml"));
        assert!(!wildcard(b"*.yaml", b"orders.yml"));
        assert!(wildcard(b"team-?.yaml", b"team-a.yaml"));
        assert!(!wildcard(b"team-?.yaml", b"team-ab.yaml"));
        assert!(wildcard(b"*a*b*", b"xxaxxbxx"));
        assert!(!wildcard(b"*a*b", b"xxaxxbxx"));
        assert!(wildcard(b"*", b""));
    }

    #[test]
    fn target_patterns() {
        assert!(target_allowed("10.1.2.3:8080", "10.1.0.0/16"));
        assert!(!target_allowed("10.2.0.1:8080", "10.1.0.0/16"));
        assert!(target_allowed("[::ffff:10.1.2.3]:80", "10.1.0.0/16"));
        assert!(target_allowed("127.0.0.1:8083", "127.0.0.1:8083"));
        assert!(!target_allowed("127.0.0.1:9090", "127.0.0.1:8083"));
        assert!(target_allowed("127.0.0.1:9090", "127.0.0.1"));
        assert!(target_allowed("[::1]:80", "::1"));
        assert!(target_allowed("orders.internal:8083", "orders.internal"));
        assert!(target_allowed(
            "Orders.Internal:8083",
            "orders.internal:8083"
        ));
        assert!(!target_allowed(
            "orders.internal:9090",
            "orders.internal:8083"
        ));
        assert!(target_allowed("a.orders.internal:1", "*.orders.internal"));
        assert!(!target_allowed("orders.internal:1", "*.orders.internal"));
        assert!(!target_allowed(
            "evilorders.internal:1",
            "*.orders.internal"
        ));
        assert!(!target_allowed("localhost:9090", "127.0.0.1"));
        assert!(!target_allowed("127.0.0.1:9090", "localhost"));
        assert!(!target_allowed("orders.internal:80", "orders.internal:x"));
        // Not a panic on a name with a character cut by the parent's length.
        assert!(!target_allowed("aérders.internal:80", "*.orders.internal"));
        assert!(!target_allowed("é:80", "*.é"));
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(under("/api/orders", "/api/orders"));
        assert!(under("/api/orders/{id}", "/api/orders"));
        assert!(under("/api/orders/{id}", "/api/orders/"));
        assert!(!under("/api/ordersx", "/api/orders"));
        assert!(!under("/api/{x}", "/api/orders"));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn tidy_paths() {
        assert_eq!(
            tidy(Path::new("a/./b/../c.yaml")),
            PathBuf::from("a/c.yaml")
        );
        assert_eq!(tidy(Path::new("../x.yaml")), PathBuf::from("../x.yaml"));
    }
}
