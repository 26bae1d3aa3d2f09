//! Configuration: the YAML file as written ([`raw`]), how it is read ([`load`]), and the problems found
//! in it ([`diag`]). Turning it into runtime structures is [`crate::snapshot`]'s job.

pub mod de;
pub mod diag;
pub mod include;
pub mod load;
pub mod raw;
pub mod sink;
mod tree;
pub mod types;
pub mod units;

pub use diag::{Diagnostic, Diagnostics, Severity};
