fn main() {
    // `--completions SHELL`: the completion script (hast_sys::completions).
    if let Some(code) = hast_sys::completions(hastctl::command) {
        std::process::exit(code);
    }
    std::process::exit(hastctl::main());
}
