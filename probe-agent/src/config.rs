//! Command line and environment (docs/cli.md, "probe-agent run").

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::observe::ObserveArgs;

#[derive(Parser, Debug)]
#[command(
    name = "probe-agent",
    version,
    about = "netprobe: which connections on this node fail, and why"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to pod veths and serve verdicts over HTTP.
    Run(RunArgs),
    /// Print verdicts from a running agent, like `hubble observe`.
    Observe(ObserveArgs),
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Host-side pod interfaces: name globs (kindnet/bridge, Cilium, Calico), and/or
    /// `auto`: every veth or netkit device whose peer is in another network namespace
    /// and that carries no default route, whatever the CNI names it.
    #[arg(
        long,
        env = "NETPROBE_INTERFACES",
        value_delimiter = ',',
        default_value = "veth*,lxc*,cali*"
    )]
    pub interfaces: Vec<String>,
    /// Address of the HTTP API and /metrics.
    #[arg(long, env = "NETPROBE_LISTEN", default_value = "0.0.0.0:9810")]
    pub listen: SocketAddr,
    /// A SYN without answer for this long (and 100 ms more, for a retransmission due at
    /// that instant) is a TIMEOUT.
    #[arg(long, env = "NETPROBE_SYN_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub syn_timeout: Duration,
    /// A DNS query without answer for this long is a DNS_TIMEOUT.
    #[arg(long, env = "NETPROBE_DNS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_timeout: Duration,
    /// Flows tracked at most (least recently used evicted); also sizes the kernel's table.
    #[arg(long, env = "NETPROBE_FLOW_CAPACITY", default_value = "65536", value_parser = flow_capacity)]
    pub flow_capacity: NonZeroUsize,
    /// Recent flow events kept for /v1/flows.
    #[arg(long, env = "NETPROBE_EVENT_CAPACITY", default_value = "4096")]
    pub event_capacity: NonZeroUsize,
    /// Kubernetes enrichment: `auto` is on when running in a cluster (service account)
    /// or when `--kubeconfig` is given.
    #[arg(long, env = "NETPROBE_KUBE", value_enum, default_value = "auto")]
    pub kube: KubeMode,
    /// Reach the Kubernetes API with this kubeconfig instead of the in-cluster service
    /// account.
    #[arg(long, env = "NETPROBE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The Kubernetes node this agent runs on (the DaemonSet sets it from
    /// `spec.nodeName`); logged, and the default is the host name.
    #[arg(long, env = "NETPROBE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Write a Kubernetes Event (type Warning) on the source pod for each new failing
    /// cause, so `kubectl describe pod` says why its connections fail. Needs the
    /// Kubernetes API and `create` on `events.k8s.io` events.
    #[arg(long, env = "NETPROBE_EVENTS")]
    pub events: bool,
    /// With `--events`: one Event per pod, cause and destination within this window.
    #[arg(long, env = "NETPROBE_EVENTS_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub events_window: Duration,
    /// How to attach: TCX links, clsact filters, or TCX falling back to clsact.
    #[arg(long, env = "NETPROBE_ATTACH_MODE", value_enum, default_value = "auto")]
    pub attach_mode: AttachModeArg,
    /// Forward the kernel program's own log (aya-log) to the agent's log. Off by default:
    /// then the verifier removes the logging code.
    #[arg(long, env = "NETPROBE_KERNEL_LOG")]
    pub kernel_log: bool,
    /// Receive buffer (bytes; the kernel doubles it) of the netlink socket that watches
    /// interfaces come and go. Default: the kernel's (net.core.rmem_default). A burst of
    /// pod churn that overflows it costs an immediate full relisting, never a missed veth;
    /// a larger buffer makes that rarer (tests use a tiny one to force it).
    #[arg(long, env = "NETPROBE_NETLINK_RCVBUF")]
    pub netlink_rcvbuf: Option<usize>,
    /// Work in this network namespace (e.g. /var/run/netns/NAME, a simulated node),
    /// keeping the HTTP listener in the namespace the agent started in.
    #[arg(long, env = "NETPROBE_NETNS")]
    pub netns: Option<PathBuf>,
    /// Who may read the API: `kube` asks the Kubernetes API who sent each bearer token
    /// (TokenReview) and whether it may `get` the path (SubjectAccessReview); `none` lets
    /// anyone who reaches the port read it; `auto` is `kube` in a cluster (a pod using its
    /// service account), `none` outside one (the demo, a laptop, or `--kubeconfig` given).
    #[arg(long, env = "NETPROBE_API_AUTH", value_enum, default_value = "auto")]
    pub api_auth: ApiAuthMode,
    /// How long an allowed answer of the Kubernetes API is reused for the same token and path.
    #[arg(long, env = "NETPROBE_API_AUTH_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub api_auth_cache_ttl: Duration,
    /// How long a denial (401 or 403) is reused; shorter, so a new RoleBinding takes effect soon.
    #[arg(long, env = "NETPROBE_API_AUTH_DENY_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_auth_deny_ttl: Duration,
    /// Serve HTTPS with this certificate chain (PEM); read again whenever the file changes.
    #[arg(long, env = "NETPROBE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert-file`.
    #[arg(long, env = "NETPROBE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Open API connections at most; beyond, new ones are closed at once. An idle one
    /// costs about 10 KiB until the header deadline closes it.
    #[arg(long, env = "NETPROBE_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: NonZeroUsize,
    /// A client must send a request's headers within this time (idle keep-alive
    /// connections included), or its connection is closed.
    #[arg(long, env = "NETPROBE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A client that takes no byte of an answer for this long is disconnected.
    #[arg(long, env = "NETPROBE_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Tests only: make one of the agent's tasks fail once it is ready, to check that the
    /// agent turns unready and exits.
    #[arg(long, env = "NETPROBE_TEST_FAULT", value_enum, hide = true)]
    pub test_fault: Option<TaskName>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiAuthMode {
    Auto,
    Kube,
    None,
}

/// The agent's long-running tasks whose end means the agent no longer does its job.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskName {
    /// Drains the kernel's ring buffer.
    RingReader,
    /// Reads the kernel's per-flow counters.
    KernelCounts,
    /// Decodes and tracks events.
    Tracking,
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RingReader => "the ring-buffer reader",
            Self::KernelCounts => "the kernel-counter reader",
            Self::Tracking => "the tracking task",
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeMode {
    Auto,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachModeArg {
    Auto,
    Tcx,
    Clsact,
}

/// The most flows a table may be sized for: slots are 32-bit numbers, and the kernel's
/// table is sized the same (at ~350 bytes a flow, 16 M flows are ~5.6 GiB).
pub const MAX_FLOW_CAPACITY: usize = 1 << 24;

fn flow_capacity(text: &str) -> Result<NonZeroUsize, String> {
    let flows: NonZeroUsize = text.parse().map_err(|e| format!("{e}"))?;
    if flows.get() > MAX_FLOW_CAPACITY {
        return Err(format!("at most {MAX_FLOW_CAPACITY} flows"));
    }
    Ok(flows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let cli = Cli::try_parse_from(["probe-agent", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.interfaces, ["veth*", "lxc*", "cali*"]);
        assert_eq!(args.listen, "0.0.0.0:9810".parse().unwrap());
        assert_eq!(args.syn_timeout, Duration::from_secs(3));
        assert_eq!(args.dns_timeout, Duration::from_secs(5));
        assert_eq!(args.event_capacity.get(), 4096);
        assert_eq!(args.kube, KubeMode::Auto);
        assert!(!args.events);
        assert_eq!(args.events_window, Duration::from_secs(600));
        assert_eq!(args.api_auth, ApiAuthMode::Auto);
        assert_eq!(args.max_connections.get(), 4096);
        assert!(args.tls_cert_file.is_none() && args.test_fault.is_none());
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["probe-agent", "run", "--tls-cert-file", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["probe-agent", "run", "--tls-key-file", "k.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "probe-agent",
            "run",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
            "--api-auth",
            "kube",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.api_auth, ApiAuthMode::Kube);
        assert_eq!(args.tls_key_file, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["probe-agent", "run", "--syn-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["probe-agent", "run", "--flow-capacity", "0"]).is_err());
        let too_many = (MAX_FLOW_CAPACITY + 1).to_string();
        let error = Cli::try_parse_from(["probe-agent", "run", "--flow-capacity", &too_many])
            .expect_err("refused");
        assert!(
            error.to_string().contains("at most 16777216 flows"),
            "{error}"
        );
        let cli = Cli::try_parse_from([
            "probe-agent",
            "run",
            "--interfaces",
            "eth*,veth*",
            "--dns-timeout",
            "250ms",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.interfaces, ["eth*", "veth*"]);
        assert_eq!(args.dns_timeout, Duration::from_millis(250));
    }

    #[test]
    fn events_are_opt_in_with_a_humantime_window() {
        let cli = Cli::try_parse_from(["probe-agent", "run", "--events", "--events-window", "90s"])
            .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert!(args.events);
        assert_eq!(args.events_window, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["probe-agent", "run", "--events-window", "often"]).is_err());
    }
}
