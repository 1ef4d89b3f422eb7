//! `nemo`: the command-line entry. Parses flags and dispatches to `cli/`, which prints one
//! actionable line on error and picks the exit code.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
