//! `hastcd`: the connector on client hosts (hast_connect::daemon).

fn main() {
    // `--completions SHELL`: the completion script (hast_sys::completions).
    if let Some(code) = hast_sys::completions(hast_connect::cli::command) {
        std::process::exit(code);
    }
    std::process::exit(hast_connect::daemon::main());
}
