//! `kubectl netprobe`: the kubectl plugin (kubectl runs `kubectl-<name>` from the PATH).
//! `kubectl netprobe observe` is `probe-agent observe --cluster`, unless `--server` names
//! one agent; the arguments are the same (docs/cli.md, "probe-agent observe").

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource};
use probe_agent::observe::{self, ObserveArgs};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-netprobe",
    bin_name = "kubectl netprobe",
    version,
    about = "netprobe: which connections in the cluster fail, and why"
)]
struct Plugin {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print verdicts from every netprobe agent of the cluster, like `hubble observe`.
    Observe(ObserveArgs),
}

fn main() -> anyhow::Result<()> {
    let matches = Plugin::command().get_matches();
    let one_agent = matches.subcommand_matches("observe").is_some_and(|m| {
        matches!(
            m.value_source("server"),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    });
    let Command::Observe(mut args) = Plugin::from_arg_matches(&matches)?.command;
    args.cluster |= !one_agent;
    observe::run(args)
}
