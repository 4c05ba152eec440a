//! What the API reads of the running agent.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use super::lock;
use crate::{
    model::{FlowEvent, InterfaceStatus, NodeVerdict, Verdict},
    serve::{FlowSource, HeadFilter},
    track::{Tracker, monotonic_now},
};

/// What the API reads: the tracker, the attached interfaces and readiness.
pub(super) struct AgentSource {
    pub(super) tracker: Arc<Mutex<Tracker>>,
    pub(super) interfaces: Arc<RwLock<Vec<InterfaceStatus>>>,
    pub(super) ready: Arc<RwLock<Result<(), String>>>,
    pub(super) events_tx: broadcast::Sender<FlowEvent>,
}

impl FlowSource for AgentSource {
    fn verdicts(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict> {
        lock(&self.tracker).verdicts_where(head, keep, limit)
    }

    fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        lock(&self.tracker).events(keep, limit)
    }

    fn node_verdicts(&self) -> Vec<NodeVerdict> {
        lock(&self.tracker).node_verdicts(monotonic_now())
    }

    fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.events_tx.subscribe()
    }

    fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.interfaces
            .read()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    fn readiness(&self) -> Result<(), String> {
        self.ready
            .read()
            .map_err(|_| "agent state poisoned".to_string())?
            .clone()
    }
}
