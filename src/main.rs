//! `nemo`: the command-line entry. Parses flags and dispatches to `cli/`, which prints one
//! actionable line on error and picks the exit code.

mod cli;

fn main() {
    // Chat templates render in a helper process of this same binary (chat::template_sandbox).
    if let Some(code) = nemo::chat::template_sandbox::serve_if_helper() {
        std::process::exit(code);
    }
    nemo::backend::cpu::keep_freed_memory();
    std::process::exit(cli::main());
}
