//! Loads the embedded kernel program and hands out its maps.

pub mod counts;
pub mod seccomp;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier},
};
use probe_ebpf::{
    EGRESS_PROGRAM, EVENTS_MAP, FLOW_COUNTS_MAP, FlowCounters, HookKey, INGRESS_PROGRAM,
    LOSSES_MAP, LossCounter,
};

/// aya-log-ebpf's global log level in the object.
const KERNEL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// The kernel program, built by build.rs from probe-ebpf's binary.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this probe-agent was built without its eBPF program (bpf-linker was missing at build time): run `cargo xtask build`"
    )]
    NoProgram,
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("loading program {name} into the kernel: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// EPERM from bpf() while holding CAP_BPF under a seccomp filter: the container
    /// runtime's profile forbids the syscall (see [`seccomp`]).
    #[error("{}", seccomp::REFUSED)]
    Seccomp {
        #[source]
        source: Box<LoadError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The maps the agent reads, taken out of the loaded object.
pub struct ProbeMaps {
    pub events: RingBuf<MapData>,
    pub flow_counts: HashMap<MapData, HookKey, FlowCounters>,
    pub losses: PerCpuArray<MapData, u64>,
}

/// One of the kernel's event counters (ring full, submitted, ...), summed over CPUs; 0
/// when the map cannot be read.
pub fn kernel_count(losses: &PerCpuArray<MapData, u64>, counter: LossCounter) -> u64 {
    losses
        .get(&(counter as u32), 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// Sizes of the kernel maps.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub flow_counts_entries: u32,
    /// A power of two, a multiple of the page size.
    pub events_ring_bytes: u32,
    /// Keep the program's aya-log statements. Off, the log level is fixed to 0 at load
    /// and the verifier removes every logging instruction.
    pub kernel_log: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_counts_entries: probe_ebpf::FLOW_COUNTS_ENTRIES,
            events_ring_bytes: probe_ebpf::EVENTS_RING_BYTES,
            kernel_log: false,
        }
    }
}

/// Opens the object with its maps sized by `options` and loads the ingress and egress
/// classifiers (not yet attached). A refusal by the container's seccomp profile is told
/// as such ([`LoadError::Seccomp`]), not as the bare EPERM it looks like.
pub fn load(options: LoadOptions) -> Result<Ebpf, LoadError> {
    load_object(options).map_err(|error| {
        if seccomp::refusal(&error, seccomp::Status::current()) {
            LoadError::Seccomp {
                source: Box::new(error),
            }
        } else {
            error
        }
    })
}

fn load_object(options: LoadOptions) -> Result<Ebpf, LoadError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(LoadError::NoProgram);
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(FLOW_COUNTS_MAP, options.flow_counts_entries)
        .map_max_entries(EVENTS_MAP, options.events_ring_bytes);
    if !options.kernel_log {
        loader.override_global(KERNEL_LOG_LEVEL, &0u8, true);
    }
    let mut ebpf = loader.load(PROGRAM_OBJECT)?;
    for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
        load_program(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

/// Loads one classifier of the object into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    classifier(ebpf, name)?
        .load()
        .map_err(|source| LoadError::Program { name, source })
}

pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Takes the maps the agent reads; the programs stay in `ebpf`.
pub fn take_maps(ebpf: &mut Ebpf) -> Result<ProbeMaps, LoadError> {
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(LoadError::MissingMap(name));
    let events = take(EVENTS_MAP)?;
    let flow_counts = take(FLOW_COUNTS_MAP)?;
    let losses = take(LOSSES_MAP)?;
    Ok(ProbeMaps {
        events: RingBuf::try_from(events).map_err(|source| LoadError::Map {
            name: EVENTS_MAP,
            source,
        })?,
        flow_counts: HashMap::try_from(flow_counts).map_err(|source| LoadError::Map {
            name: FLOW_COUNTS_MAP,
            source,
        })?,
        losses: PerCpuArray::try_from(losses).map_err(|source| LoadError::Map {
            name: LOSSES_MAP,
            source,
        })?,
    })
}
