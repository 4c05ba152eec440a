//! The lab crate, re-exported for the code that still names it through xtask. Nothing
//! else lives here: xtask is the `cargo xtask` binary.

pub use lab::{self, exec, kube_objects, kube_stand_in};
