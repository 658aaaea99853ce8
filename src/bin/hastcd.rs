//! `hastcd`: the connector on client hosts (hast_connect::daemon).

fn main() {
    std::process::exit(hast_connect::daemon::main());
}
