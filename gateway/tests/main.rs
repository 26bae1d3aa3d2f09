//! The gateway's integration tests, one binary: a module per area (see `common` for the harness).
//! Real upstreams and clients on 127.0.0.1; the gateway in process or as the real binary.

mod browser;
mod common;

mod auth;
mod cli;
mod compose;
mod compression;
mod dashboard;
mod grpc;
mod include;
mod inprocess;
mod ops;
mod plugin_api;
mod proxy;
mod proxy_protocol;
mod ratelimit;
mod request_path;
mod resilience;
mod schema;
mod tls;
mod websocket;
