//! The `tollgate` command: the command line of [`tollgate::cli`] with the built-in plugins.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tollgate::cli::main_with(tollgate::plugin::Registry::builtin())
}
