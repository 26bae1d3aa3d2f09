//! The one place every config problem goes: YAML and type errors from loading, compile errors, plugin
//! and provider build errors, TLS load errors. A [`Scope`] is a field path into the file
//! (`sink.root().at("routes").idx(3).at("plugins")`) that reports at that path, so code that checks a
//! part of the config never builds path strings itself and never needs to know where its part sits.
//!
//! The sink also knows which values were already reported as unusable (a `${VAR}` that is not set, a
//! value of the wrong type that was left out): a later complaint about such a value, a part of it or the
//! mapping that holds it would only repeat the first in other words, and is dropped.

use std::cell::RefCell;

use super::de::Problem;
use super::diag::{Diagnostic, Diagnostics, Severity};
use super::load::{join_key, parent_path, sub_path, Locations};

/// Collects diagnostics for one file. Single-threaded (compiling is), hence the `RefCell`: scopes are
/// handed out by shared reference so that nested code can report while its caller holds a scope too.
pub struct Sink<'a> {
    locs: &'a Locations,
    found: RefCell<Found>,
    /// Values that came from the environment (`${VAR}`), by variable: a message that quotes one
    /// names the variable instead, so a secret put in the wrong place (a password in a URL that does
    /// not parse) is not printed to the log, the admin API or the dashboard.
    expanded: RefCell<Vec<(String, String)>>,
}

#[derive(Default)]
struct Found {
    diags: Vec<Diagnostic>,
    tainted: Vec<String>,
}

impl<'a> Sink<'a> {
    pub fn new(locs: &'a Locations) -> Self {
        Self::resume(locs, Diagnostics::default(), Vec::new())
    }

    /// Continue a sink whose findings so far are `diags`, with `tainted` the paths already reported as
    /// unusable (what [`Sink::into_parts`] gave back).
    pub fn resume(locs: &'a Locations, diags: Diagnostics, tainted: Vec<String>) -> Self {
        Sink {
            locs,
            found: RefCell::new(Found {
                diags: diags.0,
                tainted,
            }),
            expanded: RefCell::new(Vec::new()),
        }
    }

    /// From now on, messages quoting one of these `(variable, value)` pairs' values say `${VARIABLE}`
    /// instead (values shorter than 4 bytes are left: they would match inside other words).
    pub fn redact(&self, expanded: &[(String, String)]) {
        let mut e = self.expanded.borrow_mut();
        e.extend(expanded.iter().filter(|(_, v)| v.len() >= 4).cloned());
        // Longest first, so a value that contains another is replaced whole.
        e.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        e.dedup();
    }

    /// The pairs given to [`Sink::redact`].
    pub fn expanded(&self) -> Vec<(String, String)> {
        self.expanded.borrow().clone()
    }

    /// The whole file.
    pub fn root(&self) -> Scope<'_> {
        Scope {
            sink: Some(self),
            path: String::new(),
        }
    }

    pub fn locations(&self) -> &Locations {
        self.locs
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    /// Errors so far: compare before and after a check to know whether it found any.
    pub fn error_count(&self) -> usize {
        let f = self.found.borrow();
        f.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// The diagnostics in file order.
    pub fn finish(self) -> Diagnostics {
        self.into_parts().0
    }

    /// The diagnostics in file order and the tainted paths, to [`Sink::resume`] later.
    pub fn into_parts(self) -> (Diagnostics, Vec<String>) {
        let f = self.found.into_inner();
        let mut d = Diagnostics(f.diags);
        // The main file's first, then each included file's, each in line order.
        d.0.sort_by_key(|d| (self.locs.rank(&d.file), d.line, d.col));
        d.0.dedup();
        (d, f.tainted)
    }

    fn push(&self, path: &str, mut message: String, severity: Severity, at_key: bool) {
        let mut f = self.found.borrow_mut();
        if f.tainted.iter().any(|t| repeats(t, path)) {
            return;
        }
        for (name, value) in self.expanded.borrow().iter() {
            if message.contains(value.as_str()) {
                message = message.replace(value.as_str(), &format!("${{{name}}}"));
            }
        }
        f.diags
            .push(self.locs.diag(path, message, severity, at_key));
    }

    fn taint(&self, path: String) {
        self.found.borrow_mut().tainted.push(path);
    }
}

/// Would a problem at `path` repeat the one reported at `tainted`? It does when it is about the same
/// value, a part of it, or the mapping that holds it (`routes[0].match` lacks a path because
/// `routes[0].match.path` had the wrong type and was left out).
fn repeats(tainted: &str, path: &str) -> bool {
    match path.strip_prefix(tainted) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => parent_path(tainted) == Some(path),
    }
}

/// A field path in the file, reporting into its [`Sink`]. Cheap to derive (`at`, `idx`), so each check
/// gets the scope of exactly what it checks.
#[derive(Clone)]
pub struct Scope<'a> {
    /// `None` for a detached scope, whose reports go nowhere (plugin unit tests).
    sink: Option<&'a Sink<'a>>,
    path: String,
}

impl<'a> Scope<'a> {
    /// A scope that reports nowhere: for building a plugin outside a config file (tests, tools).
    pub fn detached() -> Scope<'static> {
        Scope {
            sink: None,
            path: String::new(),
        }
    }

    /// Whether reports go nowhere ([`Scope::detached`]).
    pub fn is_detached(&self) -> bool {
        self.sink.is_none()
    }

    /// The field `key` of this mapping.
    pub fn at(&self, key: &str) -> Scope<'a> {
        Scope {
            sink: self.sink,
            path: join_key(&self.path, key),
        }
    }

    /// Item `i` of this list.
    pub fn idx(&self, i: usize) -> Scope<'a> {
        Scope {
            sink: self.sink,
            path: format!("{}[{i}]", self.path),
        }
    }

    /// A path relative to this one: `x.y`, `[0].y`, or empty for this scope itself.
    pub fn sub(&self, rel: &str) -> Scope<'a> {
        Scope {
            sink: self.sink,
            path: sub_path(&self.path, rel),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn error(&self, message: impl Into<String>) {
        self.report(message.into(), Severity::Error, false);
    }

    pub fn warning(&self, message: impl Into<String>) {
        self.report(message.into(), Severity::Warning, false);
    }

    /// An error shown at the key that introduces this path (an unknown field) rather than its value.
    pub fn error_at_key(&self, message: impl Into<String>) {
        self.report(message.into(), Severity::Error, true);
    }

    /// A deserialization problem (its path is relative to this scope). A value left out because of
    /// its type counts as reported: what is later said about its absence is dropped.
    pub fn problem(&self, p: &Problem) {
        let at = self.sub(&p.path);
        if let Some(sink) = self.sink {
            let before = sink.found.borrow().diags.len();
            at.report(p.error.to_string(), Severity::Error, p.at_key());
            // An unknown field changes nothing else; a value left out is missing from now on.
            if !p.at_key() && sink.found.borrow().diags.len() > before {
                sink.taint(at.path.clone());
            }
            // A misspelt field (`upstreem`) stands for the one it resembles: what is later said about
            // that one's absence repeats the typo's message.
            if let super::de::ErrorKind::UnknownField { field, expected } = p.error.kind() {
                if let Some(meant) = super::de::did_you_mean(field, expected.iter().copied()) {
                    let parent = at.path.strip_suffix(field.as_str()).unwrap_or("");
                    sink.taint(format!("{parent}{meant}"));
                }
            }
        }
    }

    /// Mark this value as reported already (e.g. a `${VAR}` that is not set).
    pub fn taint(&self) {
        if let Some(sink) = self.sink {
            sink.taint(self.path.clone());
        }
    }

    /// An error at this place, not reported: for a problem only found later, such as a target name
    /// that `validate --resolve` cannot look up.
    pub fn diagnostic(&self, message: impl Into<String>) -> Diagnostic {
        match self.sink {
            Some(sink) => sink.locs.diag(&self.path, message, Severity::Error, false),
            None => Locations::default().diag(&self.path, message, Severity::Error, false),
        }
    }

    /// Errors reported so far in the whole sink (0 for a detached scope).
    pub fn error_count(&self) -> usize {
        self.sink.map_or(0, Sink::error_count)
    }

    /// A path written in the config, relative to the config file's folder (as given, detached).
    pub fn config_relative(&self, p: &str) -> std::path::PathBuf {
        // Relative to the file the value is written in (an included file's own folder).
        let dir = self
            .locations()
            .and_then(|l| std::path::Path::new(l.file_at(&self.path)).parent())
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        dir.join(p)
    }

    /// The sink's file locations, when attached (for paths relative to the config file).
    pub fn locations(&self) -> Option<&'a Locations> {
        self.sink.map(|s| s.locs)
    }

    fn report(&self, message: String, severity: Severity, at_key: bool) {
        if let Some(sink) = self.sink {
            sink.push(&self.path, message, severity, at_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_build_paths_and_repeats_are_dropped() {
        let locs = Locations::default();
        let sink = Sink::new(&locs);
        let routes = sink.root().at("routes");
        routes.idx(3).at("plugins").idx(0).error("bad");
        assert_eq!(routes.idx(3).sub("[1].x").path(), "routes[3][1].x");
        routes.idx(1).at("match").at("path").taint();
        routes.idx(1).at("match").error("needs a path"); // the parent of a tainted value
        routes
            .idx(1)
            .at("match")
            .at("path")
            .at("x")
            .error("part of it");
        routes.idx(2).at("match").error("kept");
        routes.idx(4).warning("w");
        assert_eq!(sink.error_count(), 2);
        let d = sink.finish();
        let paths: Vec<&str> = d.0.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths.len(), 3);
        assert!(paths.contains(&"routes[3].plugins[0]"));
        assert!(paths.contains(&"routes[2].match"));
        assert!(paths.contains(&"routes[4]"));
        Scope::detached().at("x").error("goes nowhere");
    }
}
