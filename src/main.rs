use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = bulkhead::cli::Cli::parse();
    let code = bulkhead::cli::execute(cli).await;
    std::process::exit(code);
}
