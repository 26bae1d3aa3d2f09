//! The config's value tree, built from the same parser events that give every node its place
//! ([`super::load`]), so that a file is parsed once, not twice.
//!
//! Before, `serde_yaml_ng` parsed the text a second time: it keeps every event of a document in memory
//! before it builds a value (hundreds of megabytes for 100,000 routes), and at that size `validate`
//! spent most of its time in the kernel zeroing the pages (benches/README.md, config compile time).
//! The tree built here is the one `serde_yaml_ng::from_str::<Value>` gives, node for node: plain
//! scalars are resolved by the same rules (the YAML 1.2 core schema as serde_yaml_ng 0.10 reads it,
//! `de.rs`: null, bool, int, float, else a string), every other style is a string, mappings keep their
//! order.
//!
//! What this builder does not do exactly as serde_yaml_ng does, it does not do at all: on a tag, an
//! alias (whose expansion serde_yaml_ng bounds against a billion laughs), a second document, a
//! duplicate key, nesting deeper than serde_yaml_ng's recursion limit, or an integer only a 128-bit
//! type holds (which serde_yaml_ng's `Value` refuses), it gives up, and the file is parsed by
//! serde_yaml_ng as before, with its values and its errors. Debug builds (every test) build both
//! trees for every config they load and assert they are equal.

use serde_yaml_ng::{Mapping, Number, Value};
use yaml_rust2::parser::Event;
use yaml_rust2::scanner::TScalarStyle;

/// serde_yaml_ng's recursion limit (`remaining_depth: 128`); deeper is left to it (it refuses).
const MAX_DEPTH: usize = 127;

enum Open {
    Map { map: Mapping, key: Option<Value> },
    Seq(Vec<Value>),
}

/// Builds the value tree from the parser's events; `None` from [`Tree::finish`] when it gave up.
#[derive(Default)]
pub struct Tree {
    stack: Vec<Open>,
    root: Option<Value>,
    documents: usize,
    gave_up: bool,
}

impl Tree {
    /// Take the next event (after the places were taken from it).
    pub fn event(&mut self, ev: Event) {
        if self.gave_up {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.gave_up = true;
                }
            }
            Event::Scalar(s, style, _, None) => {
                let v = match style {
                    TScalarStyle::Plain => match resolve(s) {
                        Some(v) => v,
                        None => {
                            self.gave_up = true;
                            return;
                        }
                    },
                    _ => Value::String(s),
                };
                self.push(v);
            }
            Event::MappingStart(_, None) => self.open(Open::Map {
                map: Mapping::new(),
                key: None,
            }),
            Event::SequenceStart(_, None) => self.open(Open::Seq(Vec::new())),
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Open::Map { map, key: None }) => self.push(Value::Mapping(map)),
                Some(Open::Seq(seq)) => self.push(Value::Sequence(seq)),
                _ => self.gave_up = true,
            },
            Event::Alias(_) | Event::Scalar(..) | Event::MappingStart(..) => self.gave_up = true,
            Event::SequenceStart(..) => self.gave_up = true,
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }

    fn open(&mut self, o: Open) {
        if self.stack.len() >= MAX_DEPTH {
            self.gave_up = true;
            return;
        }
        self.stack.push(o);
    }

    fn push(&mut self, v: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Open::Seq(seq)) => seq.push(v),
            Some(Open::Map { map, key }) => match key.take() {
                None => *key = Some(v),
                Some(k) => {
                    if map.contains_key(&k) {
                        // serde_yaml_ng refuses it, with its message.
                        self.gave_up = true;
                        return;
                    }
                    map.insert(k, v);
                }
            },
        }
    }

    /// The tree (`Value::Null` for a file with no document, as serde_yaml_ng has it), or `None` when
    /// the builder gave up and serde_yaml_ng is to parse the file.
    pub fn finish(self) -> Option<Value> {
        if self.gave_up || !self.stack.is_empty() {
            return None;
        }
        Some(self.root.unwrap_or(Value::Null))
    }
}

/// A plain scalar as serde_yaml_ng's `Value` reads it (`visit_untagged_scalar`); `None` for an
/// integer that only fits 128 bits, which its `Value` refuses.
fn resolve(s: String) -> Option<Value> {
    if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL") {
        return Some(Value::Null);
    }
    match s.as_str() {
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    // Only text that starts like a number can be one (a sign, a digit or a `.`): nearly every
    // config value is a name or a path and skips the parsing below.
    if !s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return Some(Value::String(s));
    }
    if let Some(u) = parse_unsigned_int(&s, u64::from_str_radix) {
        return Some(Value::Number(Number::from(u)));
    }
    if let Some(i) = parse_negative_int(&s, i64::from_str_radix) {
        return Some(Value::Number(Number::from(i)));
    }
    if parse_unsigned_int(&s, u128::from_str_radix).is_some()
        || parse_negative_int(&s, i128::from_str_radix).is_some()
    {
        return None;
    }
    if !digits_but_not_number(&s) {
        if let Some(f) = parse_f64(&s) {
            return Some(Value::Number(Number::from(f)));
        }
    }
    Some(Value::String(s))
}

// The four functions below are serde_yaml_ng 0.10.0's (`src/de.rs`, MIT OR Apache-2.0), which it does
// not export: the same text must resolve to the same value.

fn parse_unsigned_int<T>(
    scalar: &str,
    from_str_radix: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
) -> Option<T> {
    let unpositive = scalar.strip_prefix('+').unwrap_or(scalar);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(int) = from_str_radix(rest, radix) {
                return Some(int);
            }
        }
    }
    if unpositive.starts_with(['+', '-']) {
        return None;
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(unpositive, 10).ok()
}

fn parse_negative_int<T>(
    scalar: &str,
    from_str_radix: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
) -> Option<T> {
    for (prefix, radix) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = scalar.strip_prefix(prefix) {
            if let Ok(int) = from_str_radix(&format!("-{rest}"), radix) {
                return Some(int);
            }
        }
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(scalar, 10).ok()
}

fn parse_f64(scalar: &str) -> Option<f64> {
    let unpositive = if let Some(unpositive) = scalar.strip_prefix('+') {
        if unpositive.starts_with(['+', '-']) {
            return None;
        }
        unpositive
    } else {
        scalar
    };
    if let ".inf" | ".Inf" | ".INF" = unpositive {
        return Some(f64::INFINITY);
    }
    if let "-.inf" | "-.Inf" | "-.INF" = scalar {
        return Some(f64::NEG_INFINITY);
    }
    if let ".nan" | ".NaN" | ".NAN" = scalar {
        return Some(f64::NAN.copysign(1.0));
    }
    if let Ok(float) = unpositive.parse::<f64>() {
        if float.is_finite() {
            return Some(float);
        }
    }
    None
}

/// Leading zeros followed by digits is a string in YAML 1.2.
fn digits_but_not_number(scalar: &str) -> bool {
    let scalar = scalar.strip_prefix(['-', '+']).unwrap_or(scalar);
    scalar.len() > 1 && scalar.starts_with('0') && scalar[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Build the tree of `text` alone (tests; the loader builds it while it indexes).
#[cfg(test)]
fn build(text: &str) -> Option<Value> {
    struct R(Tree);
    impl yaml_rust2::parser::MarkedEventReceiver for R {
        fn on_event(&mut self, ev: Event, _: yaml_rust2::scanner::Marker) {
            self.0.event(ev);
        }
    }
    let mut r = R(Tree::default());
    yaml_rust2::parser::Parser::new_from_str(text)
        .load(&mut r, true)
        .ok()?;
    r.0.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scalar_form_resolves_as_serde_yaml_ng_resolves_it() {
        let scalars = [
            "",
            "~",
            "null",
            "Null",
            "NULL",
            "nULL",
            "true",
            "True",
            "TRUE",
            "tRUE",
            "false",
            "no",
            "yes",
            "on",
            "off",
            "y",
            "0",
            "00",
            "007",
            "-0",
            "+0",
            "+12",
            "-12",
            "1_000",
            "0x1f",
            "0X1F",
            "-0x1f",
            "+0x1f",
            "0x-1",
            "0o17",
            "-0o17",
            "0b101",
            "-0b101",
            "0b2",
            "1e3",
            "1E-3",
            "-1.5",
            "+1.5",
            ".5",
            "5.",
            "1.2.3",
            ".inf",
            "-.Inf",
            "+.INF",
            ".nan",
            ".NaN",
            "NaN",
            "inf",
            "infinity",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "-1e400",
            "12:30",
            "1.0.0",
            "- x",
            "a b",
            "/p{i}",
            "127.0.0.1:8080",
            "10s",
            "1.5s",
            "-",
            "+",
            ".",
            "..",
            "-.",
            "0.0",
            "-0.0",
            "00.5",
            "0e0",
            "01e2",
        ];
        for s in scalars {
            for text in [format!("k: {s}\n"), format!("[{s}]\n")] {
                let ours = build(&text);
                let theirs = serde_yaml_ng::from_str::<Value>(&text);
                match (&ours, &theirs) {
                    (Some(a), Ok(b)) => {
                        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text:?}");
                    }
                    // Given up: serde_yaml_ng decides (a value, or its error).
                    (None, _) => {}
                    (Some(a), Err(e)) => {
                        panic!("{text:?}: built {a:?} where serde_yaml_ng says {e}")
                    }
                }
            }
        }
        // Only the 128-bit integers give up; every other scalar above is built.
        assert!(build("k: 18446744073709551616\n").is_none());
        assert!(build("k: -9223372036854775809\n").is_none());
        assert!(build("k: 1e400\n").is_some());
    }

    #[test]
    fn styles_structure_and_what_gives_up() {
        let text = r#"
a: 'quoted 12'
b: "double\tescape \u00e9"
c: |
  literal
  block
d: >-
  folded
  text
e: [1, "1", '1', true, ~]
f: { x: 1, y: [ { z: null } ] }
g:
  - plain scalar
    over two lines
  -
  - - nested
12: int key
? [complex, key]
: value
h: &anchor 5
empty: {}
none: []
"#;
        let ours = build(text).expect("built");
        let theirs: Value = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        // No document: null, as serde_yaml_ng has it.
        assert_eq!(build("# only a comment\n"), Some(Value::Null));
        assert_eq!(
            serde_yaml_ng::from_str::<Value>("# only a comment\n").unwrap(),
            Value::Null
        );
        for (text, why) in [
            ("a: &x 1\nb: *x\n", "an alias"),
            ("a: !!str 1\n", "a tag"),
            ("a: !custom 1\n", "a custom tag"),
            ("a: !!map {}\n", "a tag on a mapping"),
            ("a: 1\n---\nb: 2\n", "a second document"),
            ("a: 1\na: 2\n", "a duplicate key"),
            ("k: 99999999999999999999999\n", "a 128-bit integer"),
        ] {
            assert!(build(text).is_none(), "{why}");
        }
        // Around serde_yaml_ng's recursion limit: built only where it builds the same.
        for depth in MAX_DEPTH - 3..MAX_DEPTH + 3 {
            let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let theirs = serde_yaml_ng::from_str::<Value>(&text).ok();
            if let Some(ours) = build(&text) {
                assert_eq!(Some(ours), theirs, "depth {depth}");
            }
        }
        assert!(build(&format!("{}1{}", "[".repeat(200), "]".repeat(200))).is_none());
    }
}
