//! A dead reader is not a healthy agent: when the ring-buffer reader, the kernel-counter
//! reader or the tracking task ends, /readyz turns 503 with the reason and the agent exits
//! non-zero, so the kubelet restarts it.
//!
//! The failure is injected with the agent's hidden `--test-fault <task>`, which makes that
//! task panic a second after it starts, as a bug in it would: nothing from outside the
//! process can end one task and leave the others running (closing the ring's fd from
//! another process is not possible, and killing a thread kills the process).

use std::time::{Duration, Instant};

use crate::e2e::{Agent, node};

fn dies_unready_and_non_zero(fault: &str, reason: &str) {
    let mut node = node(&format!("dt{}", &fault[..2]));
    let _pod = node.add_pod("client", "default", 5).unwrap();
    let mut agent = Agent::start(&node, &["--test-fault", fault]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let unready = loop {
        let answer = ureq::get(&format!("{}/readyz", agent.base))
            .config()
            .http_status_as_error(false)
            .build()
            .call();
        if let Ok(mut answer) = answer
            && answer.status() == 503
        {
            break answer.body_mut().read_to_string().unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let body: serde_json::Value = serde_json::from_str(&unready).unwrap();
    let error = body["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!("{reason} panicked: injected fault (--test-fault): {reason} fails")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent is still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains(&format!("{reason} panicked")), "{log}");
    assert!(log.contains("detached from every interface"), "{log}");
}

#[test]
fn a_dead_ring_reader_stops_the_agent() {
    dies_unready_and_non_zero("ring-reader", "the ring-buffer reader");
}

#[test]
fn a_dead_kernel_counter_reader_stops_the_agent() {
    dies_unready_and_non_zero("kernel-counts", "the kernel-counter reader");
}

#[test]
fn a_dead_tracking_task_stops_the_agent() {
    dies_unready_and_non_zero("tracking", "the tracking task");
}
