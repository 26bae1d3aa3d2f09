//! Tollgate: an API gateway on Pingora.
//!
//! The library holds everything the `tollgate` binary runs, split so each piece can be tested without a
//! socket: [`config`] reads YAML, [`snapshot`] compiles it, [`router`] and [`path`] decide where a request
//! goes, [`proxy`] is the thin Pingora glue, [`server`] assembles the process.

pub mod access_log;
pub mod admin;
pub mod cases;
pub mod cli;
pub mod compile;
pub mod compose;
pub mod compression;
pub mod config;
pub mod conn;
pub mod dashboard;
pub mod diff;
pub mod error;
pub mod explain;
pub mod forwarded;
pub mod grpc;
pub mod headers;
pub mod https;
pub mod metrics;
pub mod otlp;
pub mod path;
pub mod plugin;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod request;
pub mod resilience;
pub mod router;
pub mod schema;
pub mod server;
pub mod snapshot;
pub mod swar;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod upstream;
