//! Which CPUs the shards' executors run on (`cpuset`, `--cpuset`): shard
//! `i` on the `i`-th CPU of the list, wrapping when there are more shards
//! than CPUs. Without a list, shard `i` runs on CPU `i` (wrapping). An
//! operator keeps the broker off cores that serve interrupts or other
//! programs; a benchmark keeps a standby off its primary's cores.

use std::fmt;

/// Largest CPU number accepted: far above any machine, so a typo such as
/// "0-40000" is refused rather than expanded.
const CPU_MAX: usize = 4095;

/// A non-empty list of CPUs, in the order shards take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    /// Parses "0,2-3,6": single CPUs and inclusive ranges, comma-separated,
    /// no CPU twice.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("cpuset {text:?}: {why}");
        let mut cpus = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (first.trim(), last.trim()),
                None => (part, part),
            };
            let number = |value: &str| {
                value.parse::<usize>().map_err(|_| bad(format!("{part:?} is not a CPU number or a range A-B")))
            };
            let (first, last) = (number(first)?, number(last)?);
            if first > last || last > CPU_MAX {
                return Err(bad(format!("{part:?} is not a range of CPUs 0..={CPU_MAX}")));
            }
            for cpu in first..=last {
                if cpus.contains(&cpu) {
                    return Err(bad(format!("CPU {cpu} appears twice")));
                }
                cpus.push(cpu);
            }
        }
        Ok(Self(cpus))
    }

    /// Refuses CPUs this process may not run on (offline, or outside its
    /// affinity mask): glommio would fail to pin there.
    pub fn check_allowed(&self) -> Result<(), String> {
        let allowed = allowed_cpus().map_err(|error| format!("reading this process's CPUs: {error}"))?;
        match self.0.iter().find(|cpu| !allowed.contains(cpu)) {
            Some(cpu) => {
                Err(format!("cpuset {self}: this process may not run on CPU {cpu} (it may run on {allowed:?})"))
            }
            None => Ok(()),
        }
    }

    /// The CPU shard `shard` runs on.
    pub fn cpu_for(&self, shard: u32) -> usize {
        self.0[shard as usize % self.0.len()]
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus: Vec<String> = self.0.iter().map(usize::to_string).collect();
        formatter.write_str(&cpus.join(","))
    }
}

/// The CPUs this process's affinity mask allows.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain bits; all zeros is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is the set's own, so the
    // kernel writes within `set`.
    let status = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` reads bit `cpu` of `set`, and `cpu` stays below
    // the set's size in bits.
    Ok((0..bits).filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_and_shards_wrap_around_them() {
        let set = CpuSet::parse("1, 3-4").expect("parsed");
        assert_eq!(set, CpuSet(vec![1, 3, 4]));
        assert_eq!([0, 1, 2, 3].map(|shard| set.cpu_for(shard)), [1, 3, 4, 1]);
        assert_eq!(set.to_string(), "1,3,4");
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "not a CPU number"),
            ("1,,2", "not a CPU number"),
            ("a", "not a CPU number"),
            ("3-1", "not a range"),
            ("0-40000", "not a range"),
            ("1,1", "appears twice"),
            ("0-2,2", "appears twice"),
        ] {
            let error = CpuSet::parse(text).expect_err(text);
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_cpu_outside_the_affinity_mask_is_refused() {
        let allowed = allowed_cpus().expect("affinity");
        assert!(!allowed.is_empty());
        assert_eq!(CpuSet::parse(&allowed[0].to_string()).expect("parsed").check_allowed(), Ok(()));
        let error = CpuSet::parse(&CPU_MAX.to_string()).expect("parsed").check_allowed().expect_err("CPU 4095");
        assert!(error.contains("may not run on CPU 4095"), "{error}");
    }
}
