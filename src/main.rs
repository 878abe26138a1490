//! The `portcullis` binary: parse settings, set up logging, serve.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use clap::Parser;
use portcullis::config::{Cli, Command, Config, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", portcullis::admin::openapi::document_json());
        return std::process::ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli, std::env::var("PORTCULLIS_ADMIN_KEY").ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let result = actix_web::rt::System::new().block_on(portcullis::serve(config));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "portcullis stopped");
            eprintln!("portcullis: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
