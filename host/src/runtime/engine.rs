//! The process-wide engine: pooling allocator, fuel, epoch interruption and
//! the single epoch-ticker thread; plus the linker every handler shares.

use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::CodeCache;
use super::linker::linker;
use super::store::State;

/// How often the epoch advances: the time slice. At every tick a running
/// guest gives its worker back to the worker's scheduler, which runs the
/// guest whose tenant has used the least CPU; the tick is also when a
/// running guest's deadline is checked against the clock. A switch costs a
/// few microseconds, so 2 ms slices cost a CPU-bound guest under 0.5% of
/// its throughput; a newcomer does not wait for the tick (the executor ends
/// long slices early), so the slice only sets how finely competing long
/// guests interleave. Measured: 1 ms slices gave another tenant the same
/// latency and throughput under a flood.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The fiber stack a guest call runs on. Wasm may use `MAX_WASM_STACK` of
/// it; the rest is for host functions. Stacks are pooled and not zeroed,
/// so a stack stays resident only as deep as guests have used it.
const ASYNC_STACK_SIZE: usize = 1 << 20;
/// Wasmtime's default wasm stack limit, spelled out because the fiber
/// stack must be larger.
const MAX_WASM_STACK: usize = 512 << 10;

/// Core instances, memories and tables one component may have. A Rust
/// `wasm32-wasip2` component has a handful of each (the program, the WASI
/// adapter, shims); these leave room without reserving much.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
const MAX_TABLES_PER_COMPONENT: u32 = 8;

/// Why the runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Wasmtime rejected the engine configuration.
    #[error("creating the wasm engine: {0}")]
    Engine(String),
    /// The linker could not be filled with the host functions.
    #[error("setting up host functions: {0}")]
    Linker(String),
    /// A worker thread could not be started.
    #[error("starting worker thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The engine and the linker, shared by every handler version.
#[derive(Clone)]
pub struct Runtime {
    /// One engine per process: compiled code is only valid with it.
    pub engine: Engine,
    /// Host functions (WASI with no capabilities, log, metrics, config,
    /// fuel), resolved against each component once, at load time.
    pub linker: std::sync::Arc<Linker<State>>,
    /// Whether the engine meters fuel (`runtime.consume_fuel`).
    pub consume_fuel: bool,
    /// Where compiled code is kept across restarts, if anywhere.
    pub cache: Option<CodeCache>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// An engine sized for `instances` concurrent instances (the guests
    /// the workers keep alive, plus one for loading) whose memories may grow to
    /// `max_memory_bytes`; starts the epoch ticker.
    pub fn new(
        instances: u32,
        max_memory_bytes: u64,
        consume_fuel: bool,
    ) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(instances, max_memory_bytes, consume_fuel))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        start_epoch_ticker(&engine)?;
        Ok(Self {
            engine,
            linker: std::sync::Arc::new(linker),
            consume_fuel,
            cache: None,
        })
    }

    /// Keeps compiled code in `cache` across restarts.
    pub fn with_code_cache(mut self, cache: CodeCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// An engine for compiling and checking only (no pool, no ticker).
    pub fn for_checking() -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        Ok(Self {
            engine,
            linker: std::sync::Arc::new(linker),
            consume_fuel: true,
            cache: None,
        })
    }
}

fn engine_config(instances: u32, max_memory_bytes: u64, consume_fuel: bool) -> Config {
    let slots = instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        // Every guest call runs on its own fiber stack while it is alive.
        .total_stacks(slots)
        .total_core_instances(slots * MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MAX_MEMORIES_PER_COMPONENT)
        .total_tables(slots * MAX_TABLES_PER_COMPONENT)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(usize::try_from(max_memory_bytes).unwrap_or(usize::MAX))
        // Reset a reused slot by memset instead of madvise + page faults.
        // A Rust guest has a 1 MiB shadow stack below its data and heap, so
        // 4 MiB covers what a typical handler dirties (measured: 1.5x the
        // instances/s of 1 MiB). pagemap_scan (Linux >= 6.7) finds exactly
        // the dirty pages (measured: 2x without it); Auto falls back when
        // the kernel lacks it.
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(1 << 16)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        // Compiling on the loading thread: a rayon pool would stay resident
        // afterwards, with a malloc arena per thread, for little gain on a
        // few small handlers.
        .parallel_compilation(false)
        // No backtrace is captured on a trap: traps are counted by kind and
        // logged with the guest's stderr (its panic message), which is what
        // an author needs, and a tenant that traps on purpose costs no
        // stack walks.
        .wasm_backtrace_max_frames(None)
        .consume_fuel(consume_fuel)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK_SIZE)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// One thread for the whole engine: it only bumps a counter that running
/// guests check at loop heads and function entries. It stops once the
/// engine is dropped.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmgate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}
