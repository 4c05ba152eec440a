//! `probe-agent`: the netprobe daemon (`run`) and its client (`observe`).

use clap::Parser as _;
use probe_agent::{
    config::{Cli, Command},
    observe, privileges, run,
};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `observe` says itself which agents did not answer; the Kubernetes client's own
    // log of the same failures would only repeat it.
    let default_filter = match cli.command {
        Command::Observe(_) => "info,kube_client=off",
        Command::Run(_) => "info,netlink_packet_route=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Observe(args) => observe::run(args),
        Command::Run(args) => {
            // Bind first: with --netns the API stays reachable from where the agent was
            // started, while everything else happens inside the namespace.
            let listener = std::net::TcpListener::bind(args.listen)
                .map_err(|err| anyhow::anyhow!("listening on {}: {err}", args.listen))?;
            if let Some(netns) = &args.netns {
                run::enter_netns(netns)?;
            }
            tracing::info!(
                capabilities = privileges::effective()?.join(","),
                "probe-agent starting"
            );
            // Loaded before the runtime's threads exist, so that what only loading needs
            // can be dropped for the whole process (capabilities are per thread).
            let ebpf = run::load(&args)?;
            tracing::info!(
                capabilities = privileges::drop_unneeded()?.join(","),
                "programs loaded; capabilities kept for attaching new veths"
            );
            // glibc gives each thread that allocates its own heap arena (up to 8 per core),
            // and freed memory in one arena cannot serve another: the tracker moves
            // between tokio's workers, so the flow table spread over two arenas, each with
            // its own free space (50.4 MiB at a soak flood's worst; 47.4-47.7 in one).
            // Small blocks still come from each thread's cache, without the arena's lock.
            // SAFETY: called before any other thread exists.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
            // glibc raises its mmap threshold to the size of any large block freed (up to
            // 32 MiB), after which large blocks (the timeout queue, a 10,000-verdict API
            // answer, once the whole counter table) are carved out of the arena and
            // fragment it: a 60 s flood at 110k SYN/s reached 132 MiB. A fixed threshold
            // keeps such blocks in their own mappings, returned whole on free.
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024) };
            // Built after entering the namespace: runtime threads inherit it. Its threads
            // serve the API and watch the node; they yield to the datapath's threads
            // (run::probe), which this thread starts at the default priority.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(run::yield_to_datapath)
                .enable_all()
                .build()?;
            runtime.block_on(run::run(args, listener, ebpf))
        }
    }
}
