//! `hastcctl`: control the hast connector (`hastcd`). All of it lives in
//! `hast_connect::ctl`.

fn main() {
    std::process::exit(hast_connect::ctl::main());
}
