fn main() {
    // `--completions SHELL`: the completion script (hast_sys::completions).
    if let Some(code) = hast_sys::completions(hast_mon::cli::hastmonctl_command) {
        std::process::exit(code);
    }
    std::process::exit(hast_mon::cli::hastmonctl_main());
}
