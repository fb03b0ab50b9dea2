//! `hodei`: the orchestrator, the worker agent and the CLI in one binary.

mod cmd;
mod malloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    malloc::tune();
    let cli = cmd::Cli::parse();
    cmd::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hodei: cannot start the runtime: {e}");
            return ExitCode::from(125);
        }
    };
    match runtime.block_on(cmd::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hodei: {e:#}");
            ExitCode::from(125)
        }
    }
}
