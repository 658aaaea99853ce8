fn main() {
    std::process::exit(hast_mon::cli::hastmonctl_main());
}
