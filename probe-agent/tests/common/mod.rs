//! The Kubernetes API stand-in loaded with the recorded cluster (tests/kube/), a real
//! kube-rs client on it and the agent's names watcher: shared by the test crates that
//! need no root. Each crate uses a part of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use lab::kube_stand_in::KubeStandIn;
use probe_agent::{
    config::KubeMode,
    enrich::{self, KubeOptions, Names},
    metrics::Metrics,
};
use tokio::sync::watch;

pub struct StandIn {
    pub api: KubeStandIn,
    pub client: kube::Client,
    pub names: Names,
    pub metrics: Arc<Metrics>,
    /// Flips when the test ends: hand it to what else the test spawns.
    pub stopped: watch::Receiver<bool>,
    _stop: watch::Sender<bool>,
    _dir: TempDir,
}

impl StandIn {
    /// Starts the stand-in and the names watcher; `tag` names the kubeconfig's folder.
    pub async fn start(tag: &str) -> Self {
        let api = KubeStandIn::start().unwrap();
        api.apply_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube"))
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "netprobe-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let client = enrich::client(&KubeOptions {
            mode: KubeMode::Auto,
            kubeconfig: Some(kubeconfig),
        })
        .await
        .unwrap()
        .expect("a client for the stand-in");
        let names = Names::none();
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(enrich::watch(
            client.clone(),
            names.clone(),
            Arc::clone(&metrics),
            stopped.clone(),
        ));
        Self {
            api,
            client,
            names,
            metrics,
            stopped,
            _stop: stop,
            _dir: TempDir(dir),
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Waits until `check` holds: up to 30 s, kube-rs' longest backoff, since a watch that
/// failed a few times while the API was down (more often on a loaded machine) retries
/// after 0.8, 1.6, 3.2... s, each with up to as much again of jitter.
pub async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node with nothing to report: for tests of who may read the API and how it serves.
pub struct Empty(pub tokio::sync::broadcast::Sender<probe_agent::model::FlowEvent>);

impl probe_agent::serve::FlowSource for Empty {
    fn verdicts(
        &self,
        _: &probe_agent::serve::HeadFilter,
        _: &dyn Fn(&probe_agent::model::Verdict) -> bool,
        _: usize,
    ) -> Vec<probe_agent::model::Verdict> {
        Vec::new()
    }
    fn events(
        &self,
        _: &dyn Fn(&probe_agent::model::FlowEvent) -> bool,
        _: usize,
    ) -> Vec<probe_agent::model::FlowEvent> {
        Vec::new()
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<probe_agent::model::FlowEvent> {
        self.0.subscribe()
    }
    fn interfaces(&self) -> Vec<probe_agent::model::InterfaceStatus> {
        Vec::new()
    }
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The body of a chunked HTTP answer, or `body` as it is.
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}
