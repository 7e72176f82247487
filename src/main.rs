#[tokio::main]
async fn main() {
    let cli = bulkhead::cli::parse_cli();
    let code = bulkhead::cli::execute(cli).await;
    std::process::exit(code);
}
