//! NetworkPolicy (networking.k8s.io/v1) evaluation: which policy, if any, stops a flow.
