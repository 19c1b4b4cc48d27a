//! The `switchboard` command: a thin shell over the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::config::Settings;
use tokio_util::sync::CancellationToken;

/// A horizontally scaled TCP chat server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a chat node (settings: docs/configuration.md).
    Serve {
        /// A TOML settings file; SWITCHBOARD_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Generate load against nodes or a load balancer and report throughput, latency, loss.
    Bench(switchboard::cli::bench::BenchArgs),
    /// Chat from the terminal (plain lines for scripts when stdin is not a terminal).
    Chat(switchboard::cli::chat::ChatArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let telemetry = switchboard::telemetry::init(&settings)?;
                let result = serve(settings).await;
                telemetry.shutdown();
                result
            })
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(switchboard::cli::bench::run(args))
        }
        Command::Chat(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            // One clear line on stderr (no backtrace, whatever RUST_BACKTRACE says), exit 1.
            if let Err(e) = runtime.block_on(switchboard::cli::chat::run(args)) {
                eprintln!("switchboard chat: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let server = switchboard::Server::bind(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    server.run(shutdown).await
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
}
