fn main() {
    std::process::exit(hast_mon::cli::hastmon_main());
}
