//! `probe-agent`: the netprobe daemon (`run`) and its client (`observe`).

use clap::Parser as _;
use probe_agent::{
    config::{Cli, Command},
    observe, run,
};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Observe(args) => observe::run(args),
        Command::Run(args) => {
            // Bind first: with --netns the API stays reachable from where the agent was
            // started, while everything else happens inside the namespace.
            let listener = std::net::TcpListener::bind(args.listen)
                .map_err(|err| anyhow::anyhow!("listening on {}: {err}", args.listen))?;
            if let Some(netns) = &args.netns {
                run::enter_netns(netns)?;
            }
            // Built after entering the namespace: runtime threads inherit it.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run::run(args, listener))
        }
    }
}
