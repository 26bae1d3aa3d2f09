//! Config values parsed into their types by serde, with the error in the config's words.
//!
//! A value of the wrong shape is then a deserialization problem like any other: reported at its place
//! by [`crate::config::load`], left out (so the rest of its section is still checked), and never
//! reported again in other words by the compiler. The compiler receives addresses, networks, methods
//! and header names, not strings to re-check.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A string value parsed by `parse`, whose error message is the config error.
fn parse_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.parse)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V { expecting, parse })
}

/// A socket address, `IP:PORT` (IPv6 as `[ADDR]:PORT`): a listener's address. Names are not allowed
/// here: what a listener binds must not depend on DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "an address like `0.0.0.0:8080`", |s| {
            s.parse()
                .map(Addr)
                .map_err(|_| format!("`{s}` is not an address like `0.0.0.0:8080` (IP:port)"))
        })
    }
}

impl FromStr for Addr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Addr)
    }
}

/// A network, `10.0.0.0/8` or `2001:db8::/32`, or one address (a /32 or /128). Host bits are cleared:
/// `10.1.2.3/8` is `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .ok()
            .map(|n| Cidr(n.trunc()))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a CIDR like `10.0.0.0/8` or an IP", |s| {
            Cidr::parse(s).ok_or_else(|| format!("`{s}` is not a CIDR like `10.0.0.0/8` or an IP"))
        })
    }
}

/// An HTTP method, any case in the file (`get` is `GET`); only letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MethodName(pub Method);

impl MethodName {
    pub fn parse(s: &str) -> Option<MethodName> {
        let up = s.to_ascii_uppercase();
        if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Method::from_bytes(up.as_bytes()).ok().map(MethodName)
    }
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "an HTTP method like `GET`", |s| {
            MethodName::parse(s).ok_or_else(|| format!("`{s}` is not an HTTP method"))
        })
    }
}

/// A header name (any case in the file; surrounding spaces ignored).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderNameSpec(pub HeaderName);

impl<'de> Deserialize<'de> for HeaderNameSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a header name", |s| {
            HeaderName::from_bytes(s.trim().as_bytes())
                .map(HeaderNameSpec)
                .map_err(|_| format!("`{s}` is not a valid header name"))
        })
    }
}

/// A header value: visible ASCII and spaces (what every peer accepts).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValueSpec(pub HeaderValue);

impl<'de> Deserialize<'de> for HeaderValueSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a header value", |s| {
            HeaderValue::from_str(s)
                .map(HeaderValueSpec)
                .map_err(|_| "not a valid header value".to_string())
        })
    }
}

/// A string schema for a type read from a string; `Serialize` writes it back as written (the schema's
/// defaults).
macro_rules! string_schema {
    ($ty:ty, $name:literal, $schema:tt, |$v:ident| $show:expr) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $v = self;
                s.collect_str(&$show)
            }
        }
    };
}

string_schema!(Addr, "Address", {
    "type": "string",
    "description": "An address `IP:port`, e.g. `0.0.0.0:8080` or `[::1]:9090`.",
    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}$|\$\{",
    "examples": ["0.0.0.0:8080"]
}, |a| a.0);

string_schema!(Cidr, "Cidr", {
    "type": "string",
    "description": "A CIDR like `10.0.0.0/8`, or a single IP.",
    "pattern": r"^\s*[0-9A-Fa-f:.]+(/[0-9]{1,3})?\s*$|\$\{",
    "examples": ["10.0.0.0/8", "::1"]
}, |c| c.0);

string_schema!(MethodName, "Method", {
    "type": "string",
    "description": "An HTTP method (any case), e.g. `GET`.",
    "pattern": "^[A-Za-z]+$|\\$\\{",
    "examples": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
}, |m| m.0);

string_schema!(HeaderNameSpec, "HeaderName", {
    "type": "string",
    "description": "An HTTP header name.",
    "pattern": "^\\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\\s*$|\\$\\{"
}, |h| h.0.as_str());

string_schema!(HeaderValueSpec, "HeaderValue", {
    "type": "string",
    "description": "An HTTP header value (visible characters, spaces and tabs)."
}, |h| h.0.to_str().unwrap_or_default());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::de::from_value;

    fn de<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, String> {
        from_value(&serde_yaml_ng::from_str(yaml).unwrap()).map_err(|p| p.error.to_string())
    }

    #[test]
    fn values_parse_into_their_types_with_config_words() {
        assert_eq!(de::<Addr>("\"127.0.0.1:80\"").unwrap().0.port(), 80);
        assert_eq!(
            de::<Addr>("nowhere").unwrap_err(),
            "`nowhere` is not an address like `0.0.0.0:8080` (IP:port)"
        );
        assert_eq!(
            de::<Cidr>("10.1.2.3/8").unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(de::<Cidr>("::1").unwrap().0.to_string(), "::1/128");
        assert!(de::<Cidr>("10.0.0.0/33").is_err());
        assert_eq!(de::<MethodName>("get").unwrap().0, Method::GET);
        assert_eq!(
            de::<MethodName>("\"BAD METHOD\"").unwrap_err(),
            "`BAD METHOD` is not an HTTP method"
        );
        assert_eq!(
            de::<HeaderNameSpec>("X-Canary").unwrap().0.as_str(),
            "x-canary"
        );
        assert!(de::<HeaderNameSpec>("\"bad header\"").is_err());
        assert!(de::<HeaderValueSpec>("\"a\\nb\"").is_err());
        // Not a string at all: the type error, in the config's words.
        assert!(de::<Addr>("[1]").unwrap_err().contains("a list"));
    }
}
