//! The foreign test program (see the library's documentation), built for the BPF target by
//! probe-agent's build script when its privileged tests are built.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "foreign-ebpf is a test program for the BPF target, built by probe-agent's build script"
    );
}
