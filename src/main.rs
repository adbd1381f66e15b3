use clap::Parser;

fn main() {
    let cli = focalflow::cli::Cli::parse();
    match focalflow::cli::run(cli) {
        Ok(()) => {}
        Err(focalflow::Error::Interrupted(how)) => {
            eprintln!("{how}");
            std::process::exit(focalflow::interrupt::EXIT_STATUS);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
