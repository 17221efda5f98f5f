//! The process and runtime gauges (`process_*`, `tokio_*`), read at each scrape from `/proc`
//! and from the data runtime.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Registers the process and runtime gauges (`process_*`, `tokio_*`), read at each scrape
/// from `/proc` and from `runtime` (the data plane's).
pub fn register_process(registry: &mut Registry, runtime: Option<tokio::runtime::Handle>) {
    registry.register_collector(Box::new(ProcessCollector { runtime }));
}

/// Reads [`ProcessStats`] at each scrape.
#[derive(Debug)]
struct ProcessCollector {
    runtime: Option<tokio::runtime::Handle>,
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
    /// Data-plane worker threads.
    pub workers: u64,
    /// Tasks alive on the data runtime.
    pub alive_tasks: u64,
    /// Tasks in the global queue.
    pub global_queue_depth: u64,
    /// Per data-plane worker, in worker order: (seconds busy, times parked, times parked or
    /// unparked).
    pub per_worker: Vec<(f64, u64, u64)>,
}

impl ProcessStats {
    /// Reads the process figures and the given runtime's.
    pub fn read(runtime: Option<&tokio::runtime::Handle>) -> Self {
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
        if let Some(h) = runtime {
            let m = h.metrics();
            stats.workers = m.num_workers() as u64;
            stats.alive_tasks = m.num_alive_tasks() as u64;
            stats.global_queue_depth = m.global_queue_depth() as u64;
            #[cfg(target_has_atomic = "64")]
            {
                stats.per_worker = (0..m.num_workers())
                    .map(|w| {
                        (
                            m.worker_total_busy_duration(w).as_secs_f64(),
                            m.worker_park_count(w),
                            m.worker_park_unpark_count(w),
                        )
                    })
                    .collect();
            }
        }
        stats
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, v) in [
            ("process_open_fds", "Open file descriptors", self.open_fds),
            ("process_max_fds", "File descriptor limit", self.max_fds),
            (
                "tokio_num_workers",
                "Data-plane worker threads",
                self.workers,
            ),
            (
                "tokio_num_alive_tasks",
                "Tasks alive on the data runtime",
                self.alive_tasks,
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
        let busy = self.per_worker.iter().map(|w| w.0);
        per_worker(
            encoder,
            "tokio_worker_total_busy_duration_seconds",
            "Time each data-plane worker spent busy.",
            busy,
        )?;
        let parks = self.per_worker.iter().map(|w| w.1);
        per_worker(
            encoder,
            "tokio_worker_park_count",
            "Times each data-plane worker parked.",
            parks,
        )?;
        let park_unparks = self.per_worker.iter().map(|w| w.2);
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
