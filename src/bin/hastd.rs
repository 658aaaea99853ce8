fn main() {
    // `--completions SHELL`: the completion script (hast_sys::completions).
    if let Some(code) = hast_sys::completions(hastd::command) {
        std::process::exit(code);
    }
    std::process::exit(hastd::main());
}
