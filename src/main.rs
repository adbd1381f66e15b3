use clap::Parser;

fn main() {
    let cli = focalflow::cli::Cli::parse();
    if let Err(e) = focalflow::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
