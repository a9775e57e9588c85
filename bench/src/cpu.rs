//! CPU time of server processes, from `/proc/PID/stat`: the processes a
//! benchmark names (`name=pid`), and every PostgreSQL and RabbitMQ process
//! there is, found by name.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

/// CPU time of the processes that serve the load.
pub(crate) struct Processes {
    named: Vec<(String, u32)>,
    tick: f64,
}

/// CPU time by process name.
pub(crate) struct Cpu(BTreeMap<String, Duration>);

impl Cpu {
    pub(crate) fn minus(&self, before: &Cpu) -> BTreeMap<String, Duration> {
        self.0
            .iter()
            .map(|(name, after)| {
                let before = before.0.get(name).copied().unwrap_or_default();
                (name.clone(), after.saturating_sub(before))
            })
            .collect()
    }
}

impl Processes {
    pub(crate) fn new(specs: &[String]) -> anyhow::Result<Self> {
        let mut named = Vec::new();
        for spec in specs {
            let (name, pid) = spec
                .split_once('=')
                .with_context(|| format!("--process {spec}: name=pid"))?;
            named.push((name.replace('-', "_"), pid.parse()?));
        }
        let tick = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0);
        Ok(Self { named, tick })
    }

    /// User plus system CPU of each named process, and of every
    /// `postgres` and `beam.smp` (RabbitMQ) process there is.
    pub(crate) fn cpu(&self) -> anyhow::Result<Cpu> {
        let mut spent: BTreeMap<String, Duration> = BTreeMap::new();
        for (name, pid) in &self.named {
            let ticks =
                ticks(*pid).with_context(|| format!("reading the CPU of {name} ({pid})"))?;
            *spent.entry(name.clone()).or_default() += self.duration(ticks);
        }
        for entry in std::fs::read_dir("/proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let name = match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                Ok(comm) if comm.trim() == "postgres" => "postgres",
                Ok(comm) if comm.trim() == "beam.smp" => "rabbitmq",
                _ => continue,
            };
            if let Some(ticks) = ticks(pid) {
                *spent.entry(name.to_owned()).or_default() += self.duration(ticks);
            }
        }
        Ok(Cpu(spent))
    }

    fn duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.tick)
    }
}

/// `utime + stime` of a process, in clock ticks.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it
    // start at the state (field 3), so utime (14) and stime (15) are the
    // 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
