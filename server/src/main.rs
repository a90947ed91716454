use std::process::ExitCode;

/// glibc malloc keeps argon2's 19 MiB blocks in per-thread arenas after a few logins (its
/// dynamic mmap threshold rises), growing RSS by hundreds of MiB; mimalloc gives them back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use palaver::app::Application;
use palaver::config::Config;
use palaver::server::shutdown_signal;

const USAGE: &str = "usage: palaver [openapi]

  (no argument)  run the server, configured from the environment and .env
  openapi        print the OpenAPI spec the server serves, then exit";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => serve(),
        Some("openapi") => {
            println!("{}", palaver::api::spec_json());
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("palaver: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("palaver: {e}");
            return ExitCode::from(2);
        }
    };
    palaver::telemetry::init();
    // Every live connection is a file descriptor: allow as many as the hard limit permits.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let runtime = match palaver::server::runtime(&config) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("palaver: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until(shutdown_signal()).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("palaver stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("start-up failed: {e:#}");
            eprintln!("palaver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
