//! `--interfaces auto`: every veth whose peer lives in another network namespace is a pod's,
//! whatever its name, unless it carries the node's default route (Kind's node `eth0` is a
//! veth facing the host). The lab's uplink is a veth with both ends in the node: never
//! taken.

use std::time::{Duration, Instant};

use crate::e2e::{Agent, node};

fn names(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = agent.interfaces().into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

/// Polls until the attached interfaces are `expected` (sorted), for at most 15 s: the
/// periodic relisting runs every 5 s.
fn wait_for(agent: &Agent, mut expected: Vec<String>) {
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(15);
    while names(agent) != expected {
        assert!(
            Instant::now() < deadline,
            "attached {:?}, not {expected:?}",
            names(agent)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn auto_attaches_to_pod_facing_veths_whatever_their_names_but_not_the_uplink() {
    let mut node = node("auto");
    let pod = node.add_pod("web", "default", 5).unwrap();
    // `rn…`: a name no default glob takes, its peer in another namespace.
    let odd = node.add_remote_host("odd", 20).unwrap();
    let agent = Agent::start(&node, &["--interfaces", "auto"]);
    wait_for(&agent, vec![pod.host_if.clone(), odd.host_if.clone()]);

    // Now it carries the default route: the node's uplink, not a pod's veth.
    node.command("ip")
        .args(["route", "replace", "default", "dev", &odd.host_if])
        .status()
        .unwrap();
    wait_for(&agent, vec![pod.host_if.clone()]);

    // A new pod veth is taken at once, without a name to match.
    let created = Instant::now();
    let second = node.add_pod("second", "default", 6).unwrap();
    wait_for(&agent, vec![pod.host_if.clone(), second.host_if.clone()]);
    assert!(
        created.elapsed() < Duration::from_secs(2),
        "{:?}",
        created.elapsed()
    );
}
