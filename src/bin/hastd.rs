fn main() {
    std::process::exit(hastd::main());
}
