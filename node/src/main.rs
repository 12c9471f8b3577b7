//! The `raftkv` binary: parses the command line and runs it (see `cli`).

use clap::Parser;

/// glibc's allocator showed up as about an eighth of all CPU under load
/// (every request allocates a few buffers on one thread and frees them on
/// another); mimalloc's per-thread heaps make that cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = raftkv::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(raftkv::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
