fn main() {
    std::process::exit(hastctl::main());
}
