//! The process and runtime gauges (`process_*`, `tokio_*`), read at each scrape from `/proc`
//! and from the data runtime.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::workers::Workers;

/// Registers the process and runtime gauges (`process_*`, `tokio_*`), read at each scrape
/// from `/proc` and from `runtime` (the data plane's workers).
pub fn register_process(registry: &mut Registry, runtime: Option<Workers>) {
    registry.register_collector(Box::new(ProcessCollector { runtime }));
}

/// Reads [`ProcessStats`] at each scrape.
#[derive(Debug)]
struct ProcessCollector {
    runtime: Option<Workers>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        ProcessStats::read(self.runtime.as_ref()).encode(&mut encoder)
    }
}

/// Process and runtime figures read at scrape time.
#[derive(Debug, Default)]
pub struct ProcessStats {
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit.
    pub max_fds: u64,
    /// Tasks woken from other threads, waiting for their worker.
    pub global_queue_depth: u64,
    /// Per data-plane worker, in worker order (`tokio_num_workers` is their count,
    /// `tokio_num_alive_tasks` the sum of their tasks).
    pub per_worker: Vec<WorkerStats>,
}

/// One data-plane worker's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    /// Seconds busy.
    pub busy: f64,
    /// Times parked.
    pub parks: u64,
    /// Times parked or unparked.
    pub park_unparks: u64,
    /// Tasks alive on it: its listeners, its connections and their pooled HBONE connections.
    pub alive_tasks: u64,
}

impl ProcessStats {
    /// Reads the process figures and the given workers'.
    pub fn read(runtime: Option<&Workers>) -> Self {
        // The directory listing holds a descriptor of its own while it is read: not counted.
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| (d.count() as u64).saturating_sub(1))
            .unwrap_or(0);
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(0);
        let mut stats = ProcessStats {
            open_fds,
            max_fds,
            ..ProcessStats::default()
        };
        // Each worker is a current-thread runtime: its one worker's figures, in worker order.
        for h in runtime.map_or(&[][..], Workers::handles) {
            let m = h.metrics();
            let mut worker = WorkerStats {
                alive_tasks: m.num_alive_tasks() as u64,
                ..WorkerStats::default()
            };
            #[cfg(target_has_atomic = "64")]
            {
                worker.busy = m.worker_total_busy_duration(0).as_secs_f64();
                worker.parks = m.worker_park_count(0);
                worker.park_unparks = m.worker_park_unpark_count(0);
            }
            stats.global_queue_depth += m.global_queue_depth() as u64;
            stats.per_worker.push(worker);
        }
        stats
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let workers = self.per_worker.len() as u64;
        let alive_tasks = self.per_worker.iter().map(|w| w.alive_tasks).sum();
        for (name, help, v) in [
            ("process_open_fds", "Open file descriptors", self.open_fds),
            ("process_max_fds", "File descriptor limit", self.max_fds),
            ("tokio_num_workers", "Data-plane worker threads", workers),
            (
                "tokio_num_alive_tasks",
                "Tasks alive on the data runtime",
                alive_tasks,
            ),
            (
                "tokio_global_queue_depth",
                "Tasks waiting in the global queue",
                self.global_queue_depth,
            ),
        ] {
            gauge(encoder, name, &format!("{help}."), v)?;
        }
        if self.per_worker.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "ztun_worker_alive_tasks",
            "Tasks alive on each data-plane worker.",
            None,
            MetricType::Gauge,
        )?;
        for (w, stats) in self.per_worker.iter().enumerate() {
            let worker = [("worker", w.to_string())];
            ConstGauge::new(stats.alive_tasks as i64).encode(family.encode_family(&worker)?)?;
        }
        let busy = self.per_worker.iter().map(|w| w.busy);
        per_worker(
            encoder,
            "tokio_worker_total_busy_duration_seconds",
            "Time each data-plane worker spent busy.",
            busy,
        )?;
        let parks = self.per_worker.iter().map(|w| w.parks);
        per_worker(
            encoder,
            "tokio_worker_park_count",
            "Times each data-plane worker parked.",
            parks,
        )?;
        let park_unparks = self.per_worker.iter().map(|w| w.park_unparks);
        per_worker(
            encoder,
            "tokio_worker_park_unpark_count",
            "Times each data-plane worker parked or unparked.",
            park_unparks,
        )
    }
}

/// Encodes a counter family with one series per data-plane worker (`worker` label).
fn per_worker<N: EncodeCounterValue + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = N>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (w, v) in values.enumerate() {
        let worker = [("worker", w.to_string())];
        ConstCounter::new(v).encode(family.encode_family(&worker)?)?;
    }
    Ok(())
}

/// Encodes one unlabelled gauge read at scrape time.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(value as i64);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}
