//! Result lines (`name | figure | unit | floor | ratio`), percentiles and the run header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a benchmark is compared against.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    /// The floor's figure, in the same unit as the benchmark's.
    pub value: f64,
    /// Which floor (`relay`, `pipe`, `spawn`…).
    pub name: &'static str,
}

/// Prints one result line. `ratio` is figure / floor: for latencies lower is better, for
/// throughputs it is the fraction of the floor's throughput reached.
pub fn line(name: &str, placement: &str, figure: f64, unit: &str, floor: Option<Floor>) {
    let (floor_text, ratio) = match floor {
        Some(f) if f.value > 0.0 => (format!("{} ({})", fmt(f.value), f.name), format!("{:.2}", figure / f.value)),
        _ => ("-".to_owned(), "-".to_owned()),
    };
    println!("{name}@{placement} | {} | {unit} | {floor_text} | {ratio}", fmt(figure));
}

/// A benchmark that could not run, with the reason.
pub fn skipped(name: &str, placement: &str, why: &str) {
    println!("{name}@{placement} | skipped | - | - | - ({why})");
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Sorted samples.
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Sorts `v`; panics on no samples (a benchmark that measured nothing is a failure).
    pub fn new(mut v: Vec<Duration>) -> Self {
        assert!(!v.is_empty(), "no samples");
        v.sort_unstable();
        Samples(v)
    }

    /// The `p`-th percentile (nearest rank), in microseconds.
    pub fn pct_us(&self, p: f64) -> f64 {
        self.pct(p).as_secs_f64() * 1e6
    }

    /// The `p`-th percentile (nearest rank), in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        self.pct(p).as_secs_f64() * 1e3
    }

    fn pct(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// `nproc`, CPU model, kernel: from /proc, so pinning does not change them.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("nproc {nproc} | {model} | kernel {}", kernel.trim())
}

/// The 1-minute load average, and a warning when other work shares the machine.
pub fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one: f64 = text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let busy = if one > 0.5 { " (WARNING: the machine is busy; figures are unreliable)" } else { "" };
    format!("load average {one:.2}{busy}")
}

/// CPU seconds used by the whole machine (/proc/stat: user, nice, system, irq, softirq) and by this
/// process's reaped children (their descendants included): the difference over a run is what other
/// work took from the benchmark.
pub fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // Fields 1, 2, 3, 6, 7 of the `cpu` line (user, nice, system, irq, softirq), in USER_HZ ticks.
    let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum::<f64>() / 100.0;
    // SAFETY: getrusage only writes the struct it is given; all-zero is a valid `rusage`.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (busy, secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// What a feature costs on `execute`'s p50: the line `base_line` for the samples without it (the
/// floor, named `floor_name`), the line `with_line` for those with it, and a `# tag` note saying
/// whether the feature (`what`) stays within `target` (a fraction of the floor).
pub struct Overhead<'a> {
    /// Note tag (`i.catalog`).
    pub tag: &'a str,
    /// What adds the cost (`validation`).
    pub what: &'a str,
    /// Line name of the samples without it.
    pub base_line: &'a str,
    /// Line name of the samples with it.
    pub with_line: &'a str,
    /// The floor's name in the floor cell.
    pub floor_name: &'static str,
    /// The overhead allowed, as a fraction of the floor.
    pub target: f64,
}

impl Overhead<'_> {
    /// Prints the two p50 lines and the note.
    pub fn print(&self, placement: &str, without: &Samples, with: &Samples) {
        let (base, ours) = (without.pct_us(50.0), with.pct_us(50.0));
        line(self.base_line, placement, base, "us", None);
        line(self.with_line, placement, ours, "us", Some(Floor { value: base, name: self.floor_name }));
        let overhead = (ours - base) / base;
        let verdict = if overhead <= self.target { "within" } else { "OVER" };
        println!(
            "# {}@{placement}: {} adds {:.1} % to execute p50 ({verdict} the {:.0} % target)",
            self.tag,
            self.what,
            overhead * 100.0,
            self.target * 100.0
        );
    }
}
