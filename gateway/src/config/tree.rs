//! The config's value tree, built from the same parser events that give every node its place
//! ([`super::load`]), so that a file is parsed once, not twice.
//!
//! Before, `serde_yaml_ng` parsed the text a second time: it keeps every event of a document in memory
//! before it builds a value (hundreds of megabytes for 100,000 routes), and at that size `validate`
//! spent most of its time in the kernel zeroing the pages (benches/README.md, config compile time).
//!
//! The tree built here is the one `serde_yaml_ng::from_str::<Value>` gives for the files it builds:
//! plain scalars are resolved by the same rules (the YAML 1.2 core schema as serde_yaml_ng 0.10 reads
//! it, `de.rs`: null, bool, int, float, else a string), every other style is a string, mappings keep
//! their order. Where yaml-rust2 and libyaml (serde_yaml_ng's parser) read the same text differently,
//! or where serde_yaml_ng does more than build, this builder does nothing and the file is parsed by
//! serde_yaml_ng as before, with its values and its errors:
//! - text with a character that is not printable, LF or CR ([`builds`]): libyaml refuses control
//!   characters that yaml-rust2 takes (a NUL ends the file for yaml-rust2), skips a byte-order mark
//!   at the start of a line that yaml-rust2 keeps (the loader strips one at the start of the file
//!   for both), and breaks lines at U+0085, U+2028 and U+2029; a tab (whose use as indentation both
//!   refuse, each its own way);
//! - a directive line (`%YAML 2.0`, which libyaml refuses);
//! - a literal or folded scalar as the last value (yaml-rust2 ends the file with a line break that
//!   changes its value);
//! - a tag, an alias (whose expansion serde_yaml_ng bounds against a billion laughs), a second
//!   document, a duplicate key, nesting near serde_yaml_ng's recursion limit, or an integer only a
//!   128-bit type holds (which its `Value` refuses).
//!
//! Builds with debug assertions (every `cargo test` of the suite) also parse each file that was built
//! with serde_yaml_ng, and assert that the two trees are the same.

use serde_yaml_ng::{Mapping, Number, Value};
use yaml_rust2::parser::Event;
use yaml_rust2::scanner::TScalarStyle;

/// serde_yaml_ng builds 128 levels of nesting and refuses more (`remaining_depth: 128`); a file
/// nested deeper than 127 levels this builder leaves to it.
const MAX_DEPTH: usize = 127;

/// Does the builder take `text` at all (see the module docs)? Printable text, LF and CR only, and no
/// directive line. Printable beyond ASCII is what both parsers take as ordinary text: from U+00A0 on
/// (not the C1 controls, among them NEL), without the line and paragraph separators, the byte-order
/// mark and the two noncharacters U+FFFE and U+FFFF (libyaml's `IS_PRINTABLE`, `IS_BREAK`, `IS_BOM`).
pub fn builds(text: &str) -> bool {
    let printable = if text.is_ascii() {
        text.bytes()
            .all(|b| matches!(b, b'\n' | b'\r' | 0x20..=0x7e))
    } else {
        text.chars().all(|c| {
            matches!(c, '\n' | '\r' | ' '..='~')
                || (c >= '\u{a0}'
                    && !matches!(
                        c,
                        '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                    ))
        })
    };
    printable && !text.starts_with('%') && !text.contains("\n%")
}

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
    /// The last scalar was a literal or folded block.
    last_was_block: bool,
}

impl Tree {
    /// Take the next event (after the places were taken from it).
    pub fn event(&mut self, ev: Event) {
        if self.gave_up {
            // What was built is of no use: freed now, before serde_yaml_ng parses.
            self.stack = Vec::new();
            self.root = None;
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
                self.last_was_block = matches!(style, TScalarStyle::Literal | TScalarStyle::Folded);
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
                Some(k) => match map.entry(k) {
                    serde_yaml_ng::mapping::Entry::Vacant(e) => {
                        e.insert(v);
                    }
                    // serde_yaml_ng refuses it, with its message.
                    serde_yaml_ng::mapping::Entry::Occupied(_) => self.gave_up = true,
                },
            },
        }
    }

    /// The tree (`Value::Null` for a file with no document, as serde_yaml_ng has it), or `None` when
    /// the builder gave up and serde_yaml_ng is to parse the file.
    pub fn finish(self) -> Option<Value> {
        if self.gave_up || self.last_was_block || !self.stack.is_empty() {
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

/// The tree of `text` alone, as the loader would build it while it indexes: `Ok(None)` where it
/// leaves the file to serde_yaml_ng, `Err` for a syntax error (tests).
#[cfg(test)]
fn build(text: &str) -> Result<Option<Value>, String> {
    struct R(Tree);
    impl yaml_rust2::parser::MarkedEventReceiver for R {
        fn on_event(&mut self, ev: Event, _: yaml_rust2::scanner::Marker) {
            self.0.event(ev);
        }
    }
    if !builds(text) {
        return Ok(None);
    }
    let mut r = R(Tree::default());
    super::load::drive(
        &mut yaml_rust2::parser::Parser::new_from_str(text),
        &mut r,
        true,
    )
    .map_err(|e| e.to_string())?;
    Ok(r.0.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_yaml_ng makes of `text`, in the form compared (its Debug: NaN equals NaN there).
    fn theirs(text: &str) -> Result<String, String> {
        serde_yaml_ng::from_str::<Value>(text)
            .map(|v| format!("{v:?}"))
            .map_err(|e| e.to_string())
    }

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
            "-9223372036854775808",
            "1e400",
            "-1e400",
            "12:30",
            "1.0.0",
            "a b",
            "/p{i}",
            "127.0.0.1:8080",
            "10s",
            "1.5s",
            "-.",
            "0.0",
            "-0.0",
            "00.5",
            "0e0",
            "01e2",
            "'q'",
            "\"d\"",
        ];
        for s in scalars {
            for text in [format!("k: {s}\n"), format!("[{s}]\n")] {
                if text.starts_with('[') && theirs(&text).is_err() {
                    // Not a flow scalar (`{` is a flow indicator): refused by both.
                    assert!(build(&text).is_err(), "{text:?}");
                    continue;
                }
                let ours = build(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                let ours = ours.unwrap_or_else(|| panic!("{text:?} was left to serde_yaml_ng"));
                assert_eq!(Ok(format!("{ours:?}")), theirs(&text), "{text:?}");
            }
        }
        // Integers only 128 bits hold: left to serde_yaml_ng, which refuses them.
        for text in ["k: 18446744073709551616\n", "k: -9223372036854775809\n"] {
            assert_eq!(build(text), Ok(None), "{text}");
            assert!(theirs(text).is_err(), "{text}");
        }
    }

    #[test]
    fn styles_and_structure_are_built_as_serde_yaml_ng_builds_them() {
        let text = r#"
a: 'quoted 12'
b: "double\tescape \u00e9 \x41"
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
"trailing spaces": "a  "
last: plain
"#;
        let unicode = "# Équipe commandes — 注文チーム 🚀\nname: café\nk: { 键: \"值 ✓\", 'ключ': значение }\nfolded: >\n  сложенный\n  текст\nlast: ü\n";
        for text in [
            text.to_string(),
            text.replace('\n', "\r\n"),
            unicode.to_string(),
        ] {
            let ours = build(&text).unwrap().expect("built");
            assert_eq!(Ok(format!("{ours:?}")), theirs(&text), "{text:?}");
        }
        // No document: null, as serde_yaml_ng has it.
        assert_eq!(build("# only a comment\n"), Ok(Some(Value::Null)));
        assert_eq!(theirs("# only a comment\n"), Ok("Null".into()));
    }

    #[test]
    fn what_the_two_parsers_read_differently_is_left_to_serde_yaml_ng() {
        for (text, why) in [
            ("a: &x 1\nb: *x\n", "an alias"),
            ("a: !!str 1\n", "a tag"),
            ("a: !custom 1\n", "a custom tag"),
            ("a: !!map {}\n", "a tag on a mapping"),
            ("a: 1\n---\nb: 2\n", "a second document"),
            ("a: 1\na: 2\n", "a duplicate key"),
            (
                "a: 1\n\0\0b: 2\n",
                "a NUL (the end of the file to yaml-rust2)",
            ),
            ("a: 1\n\x01\n", "a control character libyaml refuses"),
            ("\u{feff}a: 1\n", "a byte-order mark (libyaml strips it)"),
            ("a: \"x\u{85}y\"\n", "a NEL (a line break to libyaml)"),
            ("a: \"x\u{2028}y\"\n", "a line separator"),
            ("a:\t1\n", "a tab"),
            ("a: \"x\u{9f}y\"\n", "a C1 control"),
            ("a: \"x\u{fffe}y\"\n", "a noncharacter"),
            ("%YAML 2.0\n---\na: 1\n", "a directive"),
            (
                "a: |\n  x",
                "a literal block at the end of the file, without a line break",
            ),
            ("a: |\n", "an empty literal block at the end of the file"),
            ("a: >\n  x\n", "a folded block as the last value"),
        ] {
            assert_eq!(build(text), Ok(None), "{why}");
        }
        // Before another value, a block scalar ends at the dedent: built.
        let text = "a: |\n  x\nb: 1\n";
        let ours = build(text).unwrap().expect("built");
        assert_eq!(Ok(format!("{ours:?}")), theirs(text));
        // Around serde_yaml_ng's recursion limit: built only where it builds the same.
        let mut built = 0;
        for depth in MAX_DEPTH - 3..MAX_DEPTH + 3 {
            let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            if let Some(ours) = build(&text).unwrap() {
                assert_eq!(Ok(format!("{ours:?}")), theirs(&text), "depth {depth}");
                built += 1;
            }
        }
        assert_eq!(built, 4, "up to a depth of {MAX_DEPTH}");
    }

    #[test]
    fn a_file_cut_by_a_nul_is_refused_and_one_with_a_byte_order_mark_loads() {
        use super::super::load::load_str;
        let cfg = "upstreams:\n  u: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n";
        // What a crashed writer leaves: the text then zeros. yaml-rust2 reads a NUL as the end.
        let cut = format!("{cfg}\0\0\0\0");
        let err = load_str("c.yaml", &cut, &|_| None).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        // A byte-order mark (Windows editors write one) is not part of the first key (serde_yaml_ng
        // refused the file as "more than one document").
        let bom = format!("\u{feff}{cfg}");
        let loaded = load_str("c.yaml", &bom, &|_| None)
            .map_err(|d| d.to_string())
            .unwrap();
        assert!(
            loaded.diagnostics.0.is_empty(),
            "{:?}",
            loaded.diagnostics.0
        );
        assert_eq!(loaded.config.routes.len(), 1);
        // A mark and nothing else is an empty file, said as such.
        let err = load_str("c.yaml", "\u{feff}\n", &|_| None)
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("the config file is empty"),
            "{err}"
        );
    }

    #[test]
    fn deep_block_nesting_is_an_error_not_a_stack_overflow() {
        // yaml-rust2's own `load` recursed once per level: this overflowed the 2 MiB stack of the
        // thread a reload runs on (tokio's blocking threads). serde_yaml_ng, which the file is then
        // left to, stops at 128 levels.
        let text = format!("{}x\n", "- ".repeat(50_000));
        let big = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let places = super::super::load::locate("deep.yaml", &text).is_ok();
                let loaded = super::super::load::load_str("deep.yaml", &text, &|_| None);
                (places, loaded.map(|_| ()).map_err(|d| d.to_string()))
            })
            .unwrap()
            .join()
            .expect("no overflow");
        assert!(big.0, "the places are found");
        let err = big.1.unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
    }
}
