//! `hastcctl`: control the hast connector (`hastcd`). All of it lives in
//! `hast_connect::ctl`.

fn main() {
    // `--completions SHELL`: the completion script (hast_sys::completions).
    if let Some(code) = hast_sys::completions(hast_connect::ctl::command) {
        std::process::exit(code);
    }
    std::process::exit(hast_connect::ctl::main());
}
