//! The plugin chains (`plugins:` and each route's). The providers their plugins name are compiled by
//! the registry from the sections the plugins own ([`Registry::compile_sections`]).

use std::sync::Arc;

use serde_yaml_ng::Value;

use crate::config::sink::Scope;
use crate::plugin::{Plugin, Providers, Registry};

/// Build a list of plugin entries (`at` is `plugins` or `routes[3].plugins`); problems are reported at
/// each entry, and the entries that built are returned.
pub(super) fn chain(
    entries: &[Value],
    at: &Scope,
    registry: &Registry,
    providers: &Providers,
) -> Vec<Arc<dyn Plugin>> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| registry.build_at(entry, providers, &at.idx(i)))
        .collect()
}
