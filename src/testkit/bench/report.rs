//! The pure half of the benchmark: samples collected per figure and log level, their medians
//! and ratios, the table printed at the end, and the checks that decide whether a measurement
//! really took the path it claims (parsing the node link's packet counters and iperf3's JSON).

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// Who a sample was measured through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// Plain TCP between uncaptured pods.
    Direct,
    /// Two plain relays (no TLS) between uncaptured pods, plus the AEAD cost where it applies.
    Floor,
    /// The ztun under test.
    Ztun,
    /// The reference ztunnel.
    Ztunnel,
}

/// Samples of one figure at one log level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// What is measured, with its unit.
    pub figure: String,
    /// The tunnels' `RUST_LOG` (`-` where no tunnel is involved).
    pub level: String,
    /// Samples through direct TCP.
    pub direct: Vec<f64>,
    /// Samples of the floor.
    pub floor: Vec<f64>,
    /// Samples through ztun.
    pub ztun: Vec<f64>,
    /// Samples through ztunnel.
    pub ztunnel: Vec<f64>,
}

impl Row {
    fn samples_mut(&mut self, who: Through) -> &mut Vec<f64> {
        match who {
            Through::Direct => &mut self.direct,
            Through::Floor => &mut self.floor,
            Through::Ztun => &mut self.ztun,
            Through::Ztunnel => &mut self.ztunnel,
        }
    }

    /// The samples measured through `who`.
    pub fn samples(&self, who: Through) -> &[f64] {
        match who {
            Through::Direct => &self.direct,
            Through::Floor => &self.floor,
            Through::Ztun => &self.ztun,
            Through::Ztunnel => &self.ztunnel,
        }
    }

    /// The median through `who`, if anything was measured.
    pub fn median(&self, who: Through) -> Option<f64> {
        median(self.samples(who))
    }

    /// ztun's median over ztunnel's.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.median(Through::Ztun)?, self.median(Through::Ztunnel)?)
    }
}

/// Every row of a run, in the order figures were first measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// Records one sample.
    pub fn add(&mut self, level: &str, figure: &str, who: Through, value: f64) {
        let i = match self
            .rows
            .iter()
            .position(|r| r.level == level && r.figure == figure)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    figure: figure.to_string(),
                    level: level.to_string(),
                    ..Row::default()
                });
                self.rows.len() - 1
            }
        };
        self.rows[i].samples_mut(who).push(value);
    }

    /// The row of `figure` at `level`.
    pub fn row(&self, level: &str, figure: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.level == level && r.figure == figure)
    }

    /// The measured rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Rows computed from the measured ones, per level: latency added over direct TCP (the
    /// median minus direct's, for the tunnels and for the floor's relays), the tunnels' added
    /// latency as a multiple of the floor's, and CPU per GB as a multiple of the floor's. The
    /// floor involves no tunnel, so its one row (level `-`) serves every level.
    pub fn derived(&self) -> Vec<Row> {
        let floor = self
            .rows
            .iter()
            .filter(|r| r.figure == FIGURE_CPU)
            .find_map(|r| r.median(Through::Floor));
        // A variant of a figure ("p50 latency (µs), event-loop relays") is measured against
        // the direct median of the figure itself, at the same level.
        let direct = |r: &Row| -> Option<f64> {
            r.median(Through::Direct).or_else(|| {
                let (base, _variant) = r.figure.split_once(", ")?;
                self.row(&r.level, base)?.median(Through::Direct)
            })
        };
        let added_by = |r: &Row, who| -> Option<f64> { Some(r.median(who)? - direct(r)?) };
        let floor_added = |figure: &str| -> Option<f64> {
            self.rows
                .iter()
                .filter(|r| r.figure == figure)
                .find_map(|r| added_by(r, Through::Floor))
        };
        let mut out = Vec::new();
        for r in &self.rows {
            let is_latency =
                r.figure.starts_with("p50 latency") || r.figure.starts_with("p99 latency");
            if is_latency {
                let added = |who| added_by(r, who).into_iter().collect::<Vec<_>>();
                out.push(Row {
                    figure: r.figure.replacen("latency", "added latency", 1),
                    level: r.level.clone(),
                    floor: added(Through::Floor),
                    ztun: added(Through::Ztun),
                    ztunnel: added(Through::Ztunnel),
                    ..Row::default()
                });
                if let Some(f) = floor_added(&r.figure) {
                    let multiple = |who| -> Vec<f64> {
                        added_by(r, who)
                            .and_then(|a| ratio(a, f))
                            .into_iter()
                            .collect()
                    };
                    let (ztun, ztunnel) = (multiple(Through::Ztun), multiple(Through::Ztunnel));
                    if !ztun.is_empty() || !ztunnel.is_empty() {
                        out.push(Row {
                            figure: format!(
                                "{}, multiple of the floor's",
                                r.figure.replacen("latency (µs)", "added latency", 1)
                            ),
                            level: r.level.clone(),
                            ztun,
                            ztunnel,
                            ..Row::default()
                        });
                    }
                }
            }
            let tunnelled =
                r.median(Through::Ztun).is_some() || r.median(Through::Ztunnel).is_some();
            // The connection figures against the multiplexing pair's: the rate as a fraction
            // of the floor's, the tunnels' CPU per connection as a multiple of the relays'.
            let per_connection = [
                (FIGURE_CONN_RATE, "connections/s, fraction of the floor's"),
                (
                    FIGURE_CONN_TUNNELS,
                    "CPU per connection, both tunnels, multiple of the floor's",
                ),
            ];
            for (figure, label) in per_connection {
                if !(tunnelled && r.figure.starts_with(figure)) {
                    continue;
                }
                let Some(f) = self
                    .row("-", &r.figure)
                    .and_then(|f| f.median(Through::Floor))
                else {
                    continue;
                };
                let multiple = |who| -> Vec<f64> {
                    r.median(who)
                        .and_then(|t| ratio(t, f))
                        .into_iter()
                        .collect()
                };
                out.push(Row {
                    figure: label.to_string(),
                    level: r.level.clone(),
                    ztun: multiple(Through::Ztun),
                    ztunnel: multiple(Through::Ztunnel),
                    ..Row::default()
                });
            }
            // The tunnels' rate placed on the what-if curve: how much work per end the pair
            // spends to fall to the same rate.
            if tunnelled && r.figure.starts_with(FIGURE_CONN_RATE) {
                let curve = self.work_curve(&r.figure);
                let work = |who| -> Vec<f64> {
                    r.median(who)
                        .and_then(|rate| equivalent_work(&curve, rate))
                        .into_iter()
                        .collect()
                };
                let (ztun, ztunnel) = (work(Through::Ztun), work(Through::Ztunnel));
                if !ztun.is_empty() || !ztunnel.is_empty() {
                    out.push(Row {
                        figure: FIGURE_EQUIVALENT_WORK.to_string(),
                        level: r.level.clone(),
                        ztun,
                        ztunnel,
                        ..Row::default()
                    });
                }
            }
            if r.figure == FIGURE_CPU && tunnelled {
                let multiple = |who| -> Vec<f64> {
                    match (r.median(who), floor) {
                        (Some(t), Some(f)) => ratio(t, f).into_iter().collect(),
                        _ => Vec::new(),
                    }
                };
                out.push(Row {
                    figure: "CPU per GB, multiple of the floor".to_string(),
                    level: r.level.clone(),
                    ztun: multiple(Through::Ztun),
                    ztunnel: multiple(Through::Ztunnel),
                    ..Row::default()
                });
            }
        }
        out
    }

    /// The floor's what-if curve for the connection figure `figure`: (work per end in µs,
    /// median rate) for the plain pair (work 0) and each `--floor-work-us` variant, by work.
    pub fn work_curve(&self, figure: &str) -> Vec<(f64, f64)> {
        let mut curve: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.level == "-")
            .filter_map(|r| {
                let work = if r.figure == figure {
                    0.0
                } else {
                    r.figure
                        .strip_prefix(figure)?
                        .strip_prefix(WORK_VARIANT_PREFIX)?
                        .strip_suffix(WORK_VARIANT_SUFFIX)?
                        .parse()
                        .ok()?
                };
                Some((work, r.median(Through::Floor)?))
            })
            .collect();
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        curve
    }

    /// The side-by-side table: medians, and ztun / ztunnel.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<50} {:>5} {:>11} {:>11} {:>11} {:>11} {:>8}",
            "figure (median)", "log", "direct TCP", "floor", "ztun", "ztunnel", "ztun/ztunnel"
        );
        let cell = |v: Option<f64>| match v {
            Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
            Some(v) => format!("{v:.2}"),
            None => "-".to_string(),
        };
        for r in self.rows.iter().chain(self.derived().iter()) {
            let _ = writeln!(
                s,
                "{:<50} {:>5} {:>11} {:>11} {:>11} {:>11} {:>8}",
                r.figure,
                r.level,
                cell(r.median(Through::Direct)),
                cell(r.median(Through::Floor)),
                cell(r.median(Through::Ztun)),
                cell(r.median(Through::Ztunnel)),
                r.ratio().map(|x| format!("{x:.2}x")).unwrap_or("-".into()),
            );
        }
        s
    }

    /// Every row with its samples, medians and ratio.
    pub fn to_json(&self) -> Value {
        let one = |r: &Row| {
            json!({
                "figure": r.figure, "log_level": r.level,
                "direct": r.direct, "floor": r.floor, "ztun": r.ztun, "ztunnel": r.ztunnel,
                "median": {
                    "direct": r.median(Through::Direct), "floor": r.median(Through::Floor),
                    "ztun": r.median(Through::Ztun), "ztunnel": r.median(Through::Ztunnel),
                },
                "ztun_over_ztunnel": r.ratio(),
            })
        };
        json!({
            "rows": self.rows.iter().map(one).collect::<Vec<_>>(),
            "derived": self.derived().iter().map(one).collect::<Vec<_>>(),
        })
    }
}

/// The CPU figure's name (the floor multiple is derived from it).
pub const FIGURE_CPU: &str = "CPU seconds per GB, both tunnels";
/// The connection-rate figure (its name goes on with the concurrency).
pub const FIGURE_CONN_RATE: &str = "connections/s (";
/// CPU per new connection, both tunnels or the floor's two relays (user + system, softirq
/// work done in their context included).
pub const FIGURE_CONN_TUNNELS: &str = "  CPU per connection, both tunnels (µs)";

/// A what-if variant of the floor's connection figure is named the figure, then this, the
/// work per end in µs, then [`WORK_VARIANT_SUFFIX`].
pub const WORK_VARIANT_PREFIX: &str = ", mux relays + ";
/// See [`WORK_VARIANT_PREFIX`].
pub const WORK_VARIANT_SUFFIX: &str = " µs per end";
/// A tunnel's connection rate as the work per end at which the floor's pair makes that rate.
pub const FIGURE_EQUIVALENT_WORK: &str = "connections/s, as the floor's work per end (µs)";

/// The work per end at which the `curve` ((work, rate) by work, as
/// [`Table::work_curve`] gives it) makes `rate`: interpolated between the two points around
/// it, linearly in time per connection (1 / rate), which is what work adds to. `None` outside
/// the curve: a rate above the pair's own, or below its slowest variant, is not extrapolated.
pub fn equivalent_work(curve: &[(f64, f64)], rate: f64) -> Option<f64> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    curve.windows(2).find_map(|w| {
        let ((w0, r0), (w1, r1)) = (w[0], w[1]);
        if !(r0 >= rate && rate >= r1 && r0 > r1 && r1 > 0.0) {
            return None;
        }
        let (t0, t1, t) = (1.0 / r0, 1.0 / r1, 1.0 / rate);
        Some(w0 + (w1 - w0) * (t - t0) / (t1 - t0))
    })
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, or `None` when `b` is not a positive finite number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b.is_finite() && b > 0.0 && a.is_finite()).then(|| a / b)
}

/// Packets and bytes the node's accounting chain saw on the inter-node link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// To port 15008 on the other node.
    pub hbone_out: Counter,
    /// From port 15008 on the other node.
    pub hbone_in: Counter,
    /// Everything else leaving over the link.
    pub other_out: Counter,
    /// Everything else arriving over the link.
    pub other_in: Counter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// One iptables rule's counters.
pub struct Counter {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched (IP packets, headers included).
    pub bytes: u64,
}

impl Counter {
    fn since(self, before: Counter) -> Counter {
        Counter {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
        }
    }
}

/// The iptables rules of the accounting chain, in the order [`parse_accounting`] reads them.
pub fn accounting_rules(chain: &str, link: &str) -> Vec<Vec<String>> {
    let rule = |s: String| s.split_whitespace().map(str::to_string).collect();
    vec![
        rule(format!(
            "-A {chain} -o {link} -p tcp --dport 15008 -j RETURN"
        )),
        rule(format!(
            "-A {chain} -i {link} -p tcp --sport 15008 -j RETURN"
        )),
        rule(format!("-A {chain} -o {link} -j RETURN")),
        rule(format!("-A {chain} -i {link} -j RETURN")),
    ]
}

impl LinkCounters {
    /// Packets counted on the link, both ways, every port.
    pub fn packets(&self) -> u64 {
        [self.hbone_out, self.hbone_in, self.other_out, self.other_in]
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// What was counted between `before` and `self`.
    pub fn since(&self, before: &LinkCounters) -> LinkCounters {
        LinkCounters {
            hbone_out: self.hbone_out.since(before.hbone_out),
            hbone_in: self.hbone_in.since(before.hbone_in),
            other_out: self.other_out.since(before.other_out),
            other_in: self.other_in.since(before.other_in),
        }
    }
}

/// Parses `iptables -nvxL <chain>` output of the chain built from [`accounting_rules`].
pub fn parse_accounting(text: &str) -> anyhow::Result<LinkCounters> {
    let mut counters = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(p), Some(b)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Header lines ("Chain ...", "pkts bytes target ...") do not start with numbers.
        if let (Ok(packets), Ok(bytes)) = (p.parse::<u64>(), b.parse::<u64>()) {
            counters.push(Counter { packets, bytes });
        }
    }
    match counters[..] {
        [hbone_out, hbone_in, other_out, other_in] => Ok(LinkCounters {
            hbone_out,
            hbone_in,
            other_out,
            other_in,
        }),
        _ => bail!(
            "accounting chain: expected 4 rules, found {}: {text:?}",
            counters.len()
        ),
    }
}

/// The path a measurement claims to have taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Plain TCP (direct or through the plain relays): nothing to or from 15008.
    Plain,
    /// Through two tunnels: only HBONE (port 15008) on the node link.
    Hbone,
}

/// Whether the link counters during one measurement show the claimed path. Through the
/// tunnels: the link carried nothing but port 15008, and at least the `app_bytes` the far
/// end received went out to 15008. Plain: at least `app_bytes` left over the link outside
/// 15008, and less than that went to or came from 15008 (the tunnels' keepalives may cross
/// the link meanwhile, their data cannot). `app_bytes` counts what the far end received
/// (bytes still queued when a sender stops never cross the link).
pub fn check_path(kind: PathKind, seen: &LinkCounters, app_bytes: u64) -> Result<(), String> {
    match kind {
        PathKind::Hbone => {
            let other = seen.other_out.packets + seen.other_in.packets;
            if other > 0 {
                return Err(format!(
                    "the node link carried {other} packets ({} bytes) other than HBONE (15008) \
                     during a tunnelled run",
                    seen.other_out.bytes + seen.other_in.bytes
                ));
            }
            if seen.hbone_out.bytes < app_bytes {
                return Err(format!(
                    "only {} bytes went to port 15008 for {app_bytes} bytes the far end received",
                    seen.hbone_out.bytes
                ));
            }
        }
        PathKind::Plain => {
            let hbone = seen.hbone_out.bytes + seen.hbone_in.bytes;
            if hbone >= app_bytes {
                return Err(format!(
                    "{hbone} bytes to or from port 15008 during a plain TCP run of {app_bytes} \
                     bytes"
                ));
            }
            if seen.other_out.bytes < app_bytes {
                return Err(format!(
                    "only {} bytes left over the node link for {app_bytes} bytes the far end \
                     received",
                    seen.other_out.bytes
                ));
            }
        }
    }
    Ok(())
}

/// What iperf3 reported for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    /// Bits per second received.
    pub bits_per_second: f64,
    /// Bytes the client sent.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
}

/// Parses `iperf3 -c ... -J` output.
pub fn parse_iperf(text: &str) -> anyhow::Result<Iperf> {
    let v: Value = serde_json::from_str(text).with_context(|| format!("iperf3 output: {text}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bytes = |k: &str| end[k]["bytes"].as_f64().map(|b| b as u64);
    Ok(Iperf {
        bits_per_second: end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3: no end.sum_received.bits_per_second")?,
        bytes_sent: bytes("sum_sent").context("iperf3: no end.sum_sent.bytes")?,
        bytes_received: bytes("sum_received").context("iperf3: no end.sum_received.bytes")?,
    })
}

/// The three load averages from `/proc/loadavg` text.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// Busy clock ticks of the whole machine from `/proc/stat`'s first (`cpu`) line: every field
/// but idle and iowait.
pub fn parse_busy_ticks(text: &str) -> Option<u64> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already inside user and nice.
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_refuses_zero_and_non_finite_denominators() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, f64::NAN), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }

    #[test]
    fn table_medians_ratio_and_derived_rows() {
        let mut t = Table::default();
        for (d, z, r) in [(10.0, 30.0, 40.0), (12.0, 20.0, 50.0), (11.0, 25.0, 45.0)] {
            t.add("warn", "p50 latency (µs)", Through::Direct, d);
            t.add("warn", "p50 latency (µs)", Through::Ztun, z);
            t.add("warn", "p50 latency (µs)", Through::Ztunnel, r);
        }
        t.add("-", FIGURE_CPU, Through::Floor, 0.5);
        t.add("warn", FIGURE_CPU, Through::Ztun, 1.0);
        t.add("warn", FIGURE_CPU, Through::Ztunnel, 2.0);
        t.add("info", FIGURE_CPU, Through::Ztun, 3.0);
        let row = t.row("warn", "p50 latency (µs)").unwrap();
        assert_eq!(row.median(Through::Direct), Some(11.0));
        assert_eq!(row.ratio(), Some(25.0 / 45.0));
        assert_eq!(t.row("info", FIGURE_CPU).unwrap().ratio(), None);
        let derived = t.derived();
        let added = derived
            .iter()
            .find(|r| r.figure == "p50 added latency (µs)")
            .unwrap();
        assert_eq!(added.ztun, vec![14.0]);
        assert_eq!(added.ztunnel, vec![34.0]);
        let floor = derived
            .iter()
            .find(|r| r.figure.contains("multiple of the floor") && r.level == "warn")
            .unwrap();
        assert_eq!(
            (floor.ztun.clone(), floor.ztunnel.clone()),
            (vec![2.0], vec![4.0])
        );
        // The floor serves every level; no tunnel, no multiple.
        let info = derived.iter().find(|r| r.level == "info").unwrap();
        assert_eq!(
            (info.ztun.clone(), info.ztunnel.clone()),
            (vec![6.0], vec![])
        );
        assert!(!derived.iter().any(|r| r.level == "-"));
        assert!(!derived.iter().any(|r| r.figure.contains("floor's")));

        // The floor's relays measured against direct TCP at level `-`: their added latency,
        // and the tunnels' added latency at every level as a multiple of it.
        t.add("-", "p50 latency (µs)", Through::Direct, 9.0);
        t.add("-", "p50 latency (µs)", Through::Floor, 16.0);
        let derived = t.derived();
        let floor_added = derived
            .iter()
            .find(|r| r.figure == "p50 added latency (µs)" && r.level == "-")
            .unwrap();
        assert_eq!(floor_added.floor, vec![7.0]);
        // A variant of the figure is measured against the figure's own direct median.
        t.add(
            "-",
            "p50 latency (µs), event-loop relays",
            Through::Floor,
            20.0,
        );
        let derived = t.derived();
        let variant = derived
            .iter()
            .find(|r| r.figure == "p50 added latency (µs), event-loop relays")
            .unwrap();
        assert_eq!(
            (variant.level.as_str(), variant.floor.clone()),
            ("-", vec![11.0])
        );
        let multiple = derived
            .iter()
            .find(|r| r.figure == "p50 added latency, multiple of the floor's")
            .unwrap();
        assert_eq!(multiple.level, "warn");
        assert_eq!(
            (multiple.ztun.clone(), multiple.ztunnel.clone()),
            (vec![2.0], vec![34.0 / 7.0])
        );
        // Connections against the multiplexing pair measured at level `-`.
        let rate = "connections/s (16 concurrent)";
        t.add("-", rate, Through::Floor, 10_000.0);
        t.add("-", FIGURE_CONN_TUNNELS, Through::Floor, 50.0);
        t.add("warn", rate, Through::Ztun, 8_000.0);
        t.add("warn", rate, Through::Ztunnel, 5_000.0);
        t.add("warn", FIGURE_CONN_TUNNELS, Through::Ztun, 100.0);
        t.add("warn", FIGURE_CONN_TUNNELS, Through::Ztunnel, 150.0);
        t.add("info", rate, Through::Direct, 20_000.0);
        let derived = t.derived();
        let find = |figure: &str, level: &str| find_in(&derived, figure, level);
        assert_eq!(
            find("connections/s, fraction of the floor's", "warn"),
            Some((vec![0.8], vec![0.5]))
        );
        assert_eq!(
            find(
                "CPU per connection, both tunnels, multiple of the floor's",
                "warn"
            ),
            Some((vec![2.0], vec![3.0]))
        );
        // A level where no tunnel was measured gets no fraction.
        assert_eq!(find("connections/s, fraction of the floor's", "info"), None);
        // No what-if curve, no equivalent work.
        assert_eq!(find(FIGURE_EQUIVALENT_WORK, "warn"), None);
        // The what-if curve: 10 000/s with no work (100 µs a connection), 6 250/s with 20 µs
        // per end (160 µs), 4 000/s with 50 (250 µs). ztun's 8 000/s (125 µs) is 5/12 of
        // the way from the first point's time to the second's; ztunnel's 5 000/s (200 µs)
        // 4/9 of the way from the second to the third.
        for (work, floor_rate) in [(50.0, 4_000.0), (20.0, 6_250.0)] {
            let figure = format!("{rate}{WORK_VARIANT_PREFIX}{work}{WORK_VARIANT_SUFFIX}");
            t.add("-", &figure, Through::Floor, floor_rate);
        }
        assert_eq!(
            t.work_curve(rate),
            vec![(0.0, 10_000.0), (20.0, 6_250.0), (50.0, 4_000.0)]
        );
        let (ztun, ztunnel) = find_in(&t.derived(), FIGURE_EQUIVALENT_WORK, "warn").unwrap();
        assert!((ztun[0] - 20.0 * 5.0 / 12.0).abs() < 1e-9, "{ztun:?}");
        assert!(
            (ztunnel[0] - (20.0 + 30.0 * 4.0 / 9.0)).abs() < 1e-9,
            "{ztunnel:?}"
        );
        // Outside the curve: faster than the pair, slower than its slowest variant.
        let curve = t.work_curve(rate);
        assert_eq!(equivalent_work(&curve, 12_000.0), None);
        assert_eq!(equivalent_work(&curve, 3_000.0), None);
        assert_eq!(equivalent_work(&curve, 10_000.0), Some(0.0));

        let text = t.render();
        assert!(text.contains("0.56x"), "{text}");
        assert!(text.contains("p50 added latency"), "{text}");
        let j = t.to_json();
        assert_eq!(j["rows"][0]["median"]["ztunnel"], 45.0);
    }

    /// The ztun and ztunnel samples of the derived row `figure` at `level`.
    fn find_in(derived: &[Row], figure: &str, level: &str) -> Option<(Vec<f64>, Vec<f64>)> {
        derived
            .iter()
            .find(|r| r.figure == figure && r.level == level)
            .map(|r| (r.ztun.clone(), r.ztunnel.clone()))
    }

    const CHAIN: &str = "Chain ZTL-BENCH (1 references)
    pkts      bytes target     prot opt in     out     source               destination
     120   900000 RETURN     6    --  *      eth0    0.0.0.0/0            0.0.0.0/0            tcp dpt:15008
      80     5000 RETURN     6    --  eth0   *       0.0.0.0/0            0.0.0.0/0            tcp spt:15008
       0        0 RETURN     0    --  *      eth0    0.0.0.0/0            0.0.0.0/0
       2      120 RETURN     0    --  eth0   *       0.0.0.0/0            0.0.0.0/0
";

    #[test]
    fn parses_the_accounting_chain() {
        let c = parse_accounting(CHAIN).unwrap();
        assert_eq!(
            c.hbone_out,
            Counter {
                packets: 120,
                bytes: 900_000
            }
        );
        assert_eq!(
            c.hbone_in,
            Counter {
                packets: 80,
                bytes: 5000
            }
        );
        assert_eq!(
            c.other_in,
            Counter {
                packets: 2,
                bytes: 120
            }
        );
        assert!(parse_accounting("Chain X\n pkts bytes target\n 1 2 RETURN\n").is_err());
        let rules = accounting_rules("ZTL-BENCH", "eth0");
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0].join(" "),
            "-A ZTL-BENCH -o eth0 -p tcp --dport 15008 -j RETURN"
        );
    }

    #[test]
    fn hbone_path_needs_only_15008_and_the_bytes() {
        let before = parse_accounting(CHAIN).unwrap();
        let mut after = before;
        after.hbone_out.packets += 10;
        after.hbone_out.bytes += 70_000;
        let seen = after.since(&before);
        assert_eq!(check_path(PathKind::Hbone, &seen, 64_000), Ok(()));
        // Fewer bytes to 15008 than the client sent: the data went some other way.
        assert!(check_path(PathKind::Hbone, &seen, 80_000).is_err());
        // Any other packet on the link: plaintext (or something else) crossed it.
        let mut leak = after;
        leak.other_out.packets += 1;
        leak.other_out.bytes += 60;
        let err = check_path(PathKind::Hbone, &leak.since(&before), 64_000).unwrap_err();
        assert!(err.contains("other than HBONE"), "{err}");
        // The same counters do not pass for a plain path.
        assert!(check_path(PathKind::Plain, &seen, 64_000).is_err());
    }

    #[test]
    fn plain_path_needs_no_15008_and_the_bytes() {
        let seen = LinkCounters {
            other_out: Counter {
                packets: 50,
                bytes: 100_000,
            },
            other_in: Counter {
                packets: 40,
                bytes: 3000,
            },
            ..LinkCounters::default()
        };
        assert_eq!(check_path(PathKind::Plain, &seen, 90_000), Ok(()));
        assert!(check_path(PathKind::Plain, &seen, 200_000).is_err());
        assert!(check_path(PathKind::Hbone, &seen, 0).is_err());
        // A keepalive on a pooled tunnel meanwhile is fine; the data through 15008 is not.
        let mut ping = seen;
        ping.hbone_out = Counter {
            packets: 1,
            bytes: 69,
        };
        assert_eq!(check_path(PathKind::Plain, &ping, 90_000), Ok(()));
        ping.hbone_out = Counter {
            packets: 60,
            bytes: 95_000,
        };
        assert!(check_path(PathKind::Plain, &ping, 90_000).is_err());
    }

    #[test]
    fn parses_iperf_json_and_errors() {
        let ok = r#"{"end":{"sum_sent":{"bytes":1000,"bits_per_second":8000.0},
                     "sum_received":{"bytes":990,"bits_per_second":7920.0}}}"#;
        assert_eq!(
            parse_iperf(ok).unwrap(),
            Iperf {
                bits_per_second: 7920.0,
                bytes_sent: 1000,
                bytes_received: 990
            }
        );
        let err = parse_iperf(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(parse_iperf("not json").is_err());
        assert!(parse_iperf(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn parses_the_machine_busy_ticks() {
        let stat = "cpu  100 5 40 900 7 3 2 1 50 0\ncpu0 50 2 20 450 3 1 1 0 25 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 5 + 40 + 3 + 2 + 1));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_busy_ticks("cpu 1 2 3\n"), None);
        assert_eq!(parse_busy_ticks(""), None);
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(
            parse_loadavg("2.01 2.18 1.92 4/105 7780\n"),
            Some([2.01, 2.18, 1.92])
        );
        assert_eq!(parse_loadavg("x"), None);
    }
}
