//! Deserializing the YAML value tree into config types, with errors that keep their structure.
//!
//! `serde_yaml_ng`'s own deserializer reports problems as text. Matching that text to tell an unknown field
//! from a type error (to place it at the key, to suggest a spelling) is fragile, so config sections are
//! read through [`De`], a deserializer over [`serde_yaml_ng::Value`] whose error type records what serde
//! reported: [`ErrorKind::UnknownField`] with the fields that exist, [`ErrorKind::MissingField`],
//! [`ErrorKind::InvalidType`] and so on. Messages are written in the config's words ("a whole number from
//! 0 to 65535", "a list") rather than Rust's (`u16`, "a sequence"), and a near-miss field or variant name
//! gets a "did you mean" ([`did_you_mean`]).
//!
//! [`from_value`] adds the field path (`serde_path_to_error`). [`collect`] goes further: after a problem
//! it removes the offending node and tries again, so every problem of a section is reported in one pass
//! (a file with a typo in `routes[0]` and a bad type in `routes[0].timeout` gets both lines, and the route
//! is still compiled so that its other problems show too).

use std::fmt;

use serde::de::{
    self, value::MapAccessDeserializer, value::MapDeserializer, value::SeqDeserializer,
    DeserializeOwned, IntoDeserializer, Visitor,
};
use serde_yaml_ng::Value;

/// What went wrong, as serde reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
    DuplicateField(&'static str),
    InvalidType {
        found: String,
        expected: String,
    },
    InvalidValue {
        found: String,
        expected: String,
    },
    InvalidLength {
        len: usize,
        expected: String,
    },
    /// A message of a type's own `Deserialize` (durations, sizes, key specs...).
    Custom(String),
}

/// The error of [`De`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub ErrorKind);

impl Error {
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ErrorKind::UnknownField {
                field,
                expected: [],
            } => {
                write!(f, "unknown field `{field}`, this section takes no fields")
            }
            ErrorKind::UnknownField { field, expected } => {
                f.write_str(&unknown("field", field, expected))
            }
            ErrorKind::UnknownVariant { variant, expected } => {
                f.write_str(&unknown("value", variant, expected))
            }
            ErrorKind::MissingField(field) => write!(f, "missing field `{field}`"),
            ErrorKind::DuplicateField(field) => write!(f, "field `{field}` is given twice"),
            ErrorKind::InvalidType { found, expected } => {
                write!(f, "invalid type: {found}, expected {expected}")
            }
            ErrorKind::InvalidValue { found, expected } => {
                write!(f, "invalid value: {found}, expected {expected}")
            }
            ErrorKind::InvalidLength { len, expected } => {
                write!(f, "{len} items, expected {expected}")
            }
            ErrorKind::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(ErrorKind::Custom(msg.to_string()))
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error(ErrorKind::InvalidType {
            found: unexpected(unexp),
            expected: words(&exp.to_string()),
        })
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error(ErrorKind::InvalidValue {
            found: unexpected(unexp),
            expected: words(&exp.to_string()),
        })
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Error(ErrorKind::InvalidLength {
            len,
            expected: words(&exp.to_string()),
        })
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error(ErrorKind::UnknownVariant {
            variant: variant.to_string(),
            expected,
        })
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error(ErrorKind::UnknownField {
            field: field.to_string(),
            expected,
        })
    }
    fn missing_field(field: &'static str) -> Self {
        Error(ErrorKind::MissingField(field))
    }
    fn duplicate_field(field: &'static str) -> Self {
        Error(ErrorKind::DuplicateField(field))
    }
}

/// What was found, in the config's words.
fn unexpected(u: de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match u {
        U::Unsigned(n) => format!("number `{n}`"),
        U::Signed(n) => format!("number `{n}`"),
        U::Float(n) => format!("number `{n}`"),
        U::Str(s) => format!("string `{s}`"),
        U::Unit => "nothing (null)".into(),
        U::Seq => "a list".into(),
        U::Map => "a mapping".into(),
        other => other.to_string(),
    }
}

/// An expectation in the config's words rather than Rust's.
fn words(exp: &str) -> String {
    let range = |lo: &str, hi: &str| format!("a whole number from {lo} to {hi}");
    match exp {
        "u8" => range("0", "255"),
        "u16" => range("0", "65535"),
        "u32" => range("0", "4294967295"),
        "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a nonzero u8" | "a nonzero u16" | "a nonzero u32" | "a nonzero u64"
        | "a nonzero usize" => "a whole number of at least 1".into(),
        "a boolean" => "`true` or `false`".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "a string" => "a string".into(),
        e if e.starts_with("struct ") || e.starts_with("a map") => "a mapping".into(),
        e if e.starts_with("enum ") => "one of the allowed values".into(),
        e => e.to_string(),
    }
}

fn one_of(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match q.len() {
        0 => "nothing".into(),
        1 => q[0].clone(),
        _ => format!("one of {}", q.join(", ")),
    }
}

/// "unknown WHAT `name`", with a suggestion when one of `known` is a near miss, else the list of them:
/// the one wording of every unknown name (fields, values, plugins, sections).
pub fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    match did_you_mean(name, known.iter().copied()) {
        Some(m) => format!("unknown {what} `{name}`: did you mean `{m}`?"),
        None => format!("unknown {what} `{name}`, expected {}", one_of(known)),
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a typo: an edit distance of at
/// most 2 (1 for short words) or the same letters in another case, or a Jaro-Winkler similarity of 0.9.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let limit = if word.len() <= 4 { 1 } else { 2 };
    candidates
        .filter(|c| *c != word)
        .map(|c| {
            let d = strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase());
            let close = d <= limit || strsim::jaro_winkler(&lower, &c.to_ascii_lowercase()) >= 0.9;
            (c, d, close)
        })
        .filter(|(_, _, close)| *close)
        .min_by_key(|(c, d, _)| (*d, c.len()))
        .map(|(c, _, _)| c)
}

/// A deserializer over a YAML value tree with [`Error`] as its error. It reads the tree where it is
/// (strings are copied out, nothing is moved), so that [`collect`] can try a section again after a
/// problem without a copy of the section per try: the copy was most of a route's cost to load at
/// 100,000 routes.
pub struct De<'a>(pub &'a Value);

impl<'de> IntoDeserializer<'de, Error> for De<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    v.visit_i64(i)
                } else {
                    v.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => v.visit_str(s),
            Value::Sequence(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(De));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Mapping(m) => {
                let mut map = MapDeserializer::new(m.iter().map(|(k, v)| (De(k), De(v))));
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            Value::Tagged(t) => Err(de::Error::custom(format!(
                "YAML tags such as `{}` have no meaning in this config",
                t.tag
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            other => v.visit_some(De(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(s) => v.visit_enum(s.as_str().into_deserializer()),
            Value::Mapping(m) if m.len() == 1 => v.visit_enum(MapAccessDeserializer::new(
                MapDeserializer::new(m.iter().map(|(k, v)| (De(k), De(v)))),
            )),
            other => Err(de::Error::invalid_type(
                unexpected_of(other),
                &"a value name, or a one-key mapping",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

fn unexpected_of(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Sequence(_) => de::Unexpected::Seq,
        Value::Mapping(_) => de::Unexpected::Map,
        Value::Tagged(_) => de::Unexpected::Other("a tagged value"),
    }
}

/// One problem of [`from_value`]/[`collect`]: where (relative to the value given), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field path relative to the deserialized value: `timeouts.read`, `[2].addr`, or empty.
    pub path: String,
    pub error: Error,
}

impl Problem {
    /// Whether the problem is best shown at the key that introduces `path` rather than its value.
    pub fn at_key(&self) -> bool {
        matches!(self.error.0, ErrorKind::UnknownField { .. })
    }
}

/// Deserialize `T` from `v`; the first problem with its field path.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(De(v)).map_err(|e| Problem {
        path: path_string(e.path()),
        error: e.into_inner(),
    })
}

/// How many problems one section may report before the rest are left for the next run.
const MAX_PROBLEMS: usize = 32;

/// Deserialize `T` from `v`, reporting every problem rather than the first: after each one the node at
/// fault is removed and deserializing starts again. Returns the value when what is left deserializes
/// (so callers can check the rest of it; the problems still make the config invalid), and the problems.
pub fn collect<T: DeserializeOwned>(mut v: Value) -> (Option<T>, Vec<Problem>) {
    let mut problems: Vec<Problem> = Vec::new();
    // List items blanked after a problem (see `remove`), in the tree's current numbering.
    let mut blanked: Vec<String> = Vec::new();
    // List items taken out because even a blank is wrong there (an item type that is not optional):
    // (the list's path, the item's index in the file), so later problems keep the file's numbering.
    let mut taken: Vec<(String, usize)> = Vec::new();
    loop {
        // Read in place: the tree is still there to retry after a problem.
        match from_value::<T>(&v) {
            Ok(t) => return (Some(t), problems),
            Err(mut p) => {
                // A blanked list item that is still wrong said what it had to say the first time:
                // take it out of the list, and go on with the items after it.
                if let Some(i) = blanked.iter().position(|b| *b == p.path) {
                    blanked.swap_remove(i);
                    match take_item(&mut v, &p.path) {
                        Some((list, index)) => {
                            let list = file_path(&list, &taken);
                            let index = file_index(&list, index, &taken);
                            taken.push((list, index));
                            continue;
                        }
                        None => return (None, problems),
                    }
                }
                let current = p.path.clone();
                p.path = file_path(&p.path, &taken);
                if let ErrorKind::MissingField(f) = p.error.0 {
                    let full = join(&p.path, f);
                    // A required field that was left out for being wrong is not "missing" as well,
                    // nor one whose misspelling was reported with a suggestion of it.
                    let said = problems.iter().any(|q| {
                        q.path == full
                            || matches!(&q.error.0, ErrorKind::UnknownField { field, expected }
                                if parent(&q.path) == p.path
                                    && did_you_mean(field, expected.iter().copied()) == Some(f))
                    });
                    if !said {
                        problems.push(p);
                    }
                    return (None, problems);
                }
                let removable = !matches!(p.error.0, ErrorKind::InvalidLength { .. })
                    && !current.is_empty()
                    && remove(&mut v, &current);
                if removable && current.ends_with(']') {
                    blanked.push(current);
                }
                problems.push(p);
                if !removable || problems.len() >= MAX_PROBLEMS {
                    return (None, problems);
                }
            }
        }
    }
}

/// Take the list item at `path` (`a.b[2]`) out of its list; returns the list's path and the index.
fn take_item(v: &mut Value, path: &str) -> Option<(String, usize)> {
    let open = path.rfind('[')?;
    let index: usize = path[open + 1..path.len() - 1].parse().ok()?;
    let list = &path[..open];
    let node = if list.is_empty() {
        v
    } else {
        node_mut(v, list)?
    };
    match node {
        Value::Sequence(items) if index < items.len() => {
            items.remove(index);
            Some((list.to_string(), index))
        }
        _ => None,
    }
}

/// The index in the file of item `index` of `list` (its path in the file's numbering) in the tree, with
/// the items `taken` out before.
fn file_index(list: &str, index: usize, taken: &[(String, usize)]) -> usize {
    let mut before: Vec<usize> = taken
        .iter()
        .filter(|(l, _)| l == list)
        .map(|(_, i)| *i)
        .collect();
    before.sort_unstable();
    let mut i = index;
    for t in before {
        if t <= i {
            i += 1;
        }
    }
    i
}

/// `path` (in the tree's numbering) in the file's numbering.
fn file_path(path: &str, taken: &[(String, usize)]) -> String {
    if taken.is_empty() {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| c + open) else {
            break;
        };
        out.push_str(&rest[..open]);
        match rest[open + 1..close].parse::<usize>() {
            Ok(i) => out.push_str(&format!("[{}]", file_index(&out, i, taken))),
            Err(_) => out.push_str(&rest[open..=close]),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The node at a relative field path, for changing it.
fn node_mut<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut node = v;
    for seg in segments(path)? {
        node = match (seg, node) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k)?,
            (Seg::Idx(i), Value::Sequence(items)) => items.get_mut(i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// `a.b[2].c` → `a.b[2]`; `a` → ``.
fn parent(path: &str) -> &str {
    &path[..path.rfind(['.', '[']).unwrap_or(0)]
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// A serde path as a field path: `targets[0].weight`.
pub fn path_string(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut path = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            Segment::Map { key } => path = join(&path, key),
            Segment::Enum { variant } => path = join(&path, variant),
            Segment::Unknown => {}
        }
    }
    path
}

/// `a.b[2].c` → keys and indexes; `None` when an index is not a number.
fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            segs.push(Seg::Idx(rest[1..end].parse().ok()?));
            rest = &rest[end + 1..];
        }
    }
    Some(segs)
}

/// Remove the node at a relative field path (`a.b[2].c`). Returns whether something was removed.
fn remove(v: &mut Value, path: &str) -> bool {
    let Some(segs) = segments(path) else {
        return false;
    };
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut node = v;
    for s in parents {
        node = match (s, node) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(*k) {
                Some(n) => n,
                None => return false,
            },
            (Seg::Idx(i), Value::Sequence(items)) => match items.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        // `shift_remove` keeps the order of the other keys, so problems keep coming in file order.
        (Seg::Key(k), Value::Mapping(m)) => m.shift_remove(*k).is_some(),
        // Removing a list item would renumber the ones after it; blank it instead, which keeps the
        // paths of later problems right (if a blank is wrong too, `collect` stops there).
        (Seg::Idx(i), Value::Sequence(items)) if *i < items.len() => {
            if items[*i].is_null() {
                false
            } else {
                items[*i] = Value::Null;
                true
            }
        }
        _ => false,
    }
}

enum Seg<'a> {
    Key(&'a str),
    Idx(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        list: Vec<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        RoundRobin,
        Random,
    }

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn every_problem_of_a_section_in_one_pass() {
        let (t, problems) = collect::<T>(yaml(
            "{ nmae: x, name: a, port: 70000, mode: round_robbin, list: [1, x, 3, y, 5] }",
        ));
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.error))
            .collect();
        assert_eq!(
            lines,
            [
                "nmae: unknown field `nmae`: did you mean `name`?",
                "port: invalid value: number `70000`, expected a whole number from 0 to 65535",
                "mode: unknown value `round_robbin`: did you mean `round_robin`?",
                "list[1]: invalid type: string `x`, expected a whole number from 0 to 4294967295",
                "list[3]: invalid type: string `y`, expected a whole number from 0 to 4294967295",
            ],
        );
        // A bad item (which not even a blank can stand for) is taken out; the rest of the list stays,
        // and the next bad item is reported with its place in the file.
        assert_eq!(t.map(|t| t.list), Some(vec![1, 3, 5]));
        assert!(problems[0].at_key() && !problems[1].at_key());
    }

    #[test]
    fn a_removed_required_field_is_not_missing_too() {
        let (t, problems) = collect::<T>(yaml("{ name: [1] }"));
        assert!(t.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "name");
        let (_, problems) = collect::<T>(yaml("{ port: 1 }"));
        assert_eq!(problems[0].error.to_string(), "missing field `name`");
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let fields = ["strip_prefix", "rewrite", "upstream", "match"];
        assert_eq!(
            did_you_mean("strip_prefx", fields.iter().copied()),
            Some("strip_prefix")
        );
        assert_eq!(
            did_you_mean("Upstream", fields.iter().copied()),
            Some("upstream")
        );
        assert_eq!(did_you_mean("timeout", fields.iter().copied()), None);
    }
}
