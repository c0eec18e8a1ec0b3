//! The standard `process_*` metrics every Prometheus client exports (CPU, memory, file
//! descriptors, start time), read from `/proc/self` at each scrape. Elsewhere than Linux
//! there is no `/proc`, and nothing is exported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub start_time_seconds: f64,
    pub open_fds: i64,
    pub max_fds: i64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = read() else { return Ok(()) };
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            Counter,
        )?;
        ConstCounter::new(r.cpu_seconds).encode(m)?;
        let m = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            Gauge,
        )?;
        ConstGauge::new(r.start_time_seconds).encode(m)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let m = encoder.encode_descriptor(name, help, None, Gauge)?;
            ConstGauge::new(value).encode(m)?;
        }
        Ok(())
    }
}

/// This process, now (None where `/proc/self` cannot be read).
pub fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = i64::try_from(rustix::param::clock_ticks_per_second()).ok()?;
    let page = i64::try_from(rustix::param::page_size()).ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
    parse(&stat, &boot, ticks, page, open_fds, max_fds)
}

/// A reading from the text of `/proc/self/stat` and `/proc/stat`.
pub fn parse(
    stat: &str,
    proc_stat: &str,
    ticks: i64,
    page: i64,
    open_fds: i64,
    max_fds: i64,
) -> Option<Reading> {
    if ticks <= 0 || page <= 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // fields are counted from the last `)`, which is field 2's end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    let boot_time = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    let t = ticks as f64;
    Some(Reading {
        cpu_seconds: (num(14)? + num(15)?) / t,
        virtual_bytes: num(23)? as i64,
        resident_bytes: num(24)? as i64 * page,
        start_time_seconds: boot_time + num(22)? / t,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_from_the_end_of_the_command_name() {
        // A command name with spaces and parentheses cannot shift the fields.
        let stat = "4242 (flux (medic) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 9 0 12345 104857600 5000 18446744073709551615";
        let r = parse(stat, "cpu 1 2 3\nbtime 1700000000\n", 100, 4096, 12, 1024).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.virtual_bytes, 104_857_600);
        assert_eq!(r.resident_bytes, 5000 * 4096);
        assert_eq!(r.start_time_seconds, 1_700_000_123.45);
        assert_eq!((r.open_fds, r.max_fds), (12, 1024));
        assert_eq!(parse("garbage", "btime 1", 100, 4096, 0, 0), None);
        assert_eq!(parse(stat, "no boot time", 100, 4096, 0, 0), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let r = read().expect("/proc/self on Linux");
        assert!(r.resident_bytes > 1 << 20, "{r:?}");
        assert!(r.open_fds >= 3 && r.max_fds >= r.open_fds, "{r:?}");
        let now = jiff::Timestamp::now().as_second() as f64;
        assert!(r.start_time_seconds <= now + 1.0 && r.start_time_seconds > now - 86_400.0);
    }
}
