//! The soak's Markdown report: one section per step, with its counts and times and every
//! failure (a leak, a wrong exit code, an unclear error) spelled out.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Failures printed per section; the rest are counted.
const SHOWN: usize = 25;

pub struct Section {
    pub title: String,
    pub rows: Vec<(String, String)>,
    pub failures: Vec<String>,
    /// Findings of a known, documented defect (docs/reliability.md): reported, not failed on,
    /// so a regression anywhere else still fails the run.
    pub known: Vec<String>,
    pub took: Duration,
}

impl Section {
    pub fn new(title: &str) -> Section {
        Section {
            title: title.into(),
            rows: Vec::new(),
            failures: Vec::new(),
            known: Vec::new(),
            took: Duration::ZERO,
        }
    }

    pub fn row(&mut self, what: impl Into<String>, value: impl ToString) {
        self.rows.push((what.into(), value.to_string()));
    }

    pub fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("soak: FAIL {}: {what}", self.title);
        self.failures.push(what);
    }

    /// Records a finding of known defect `defect` (numbered as in docs/reliability.md).
    pub fn known(&mut self, defect: u32, what: impl Into<String>) {
        let what = format!("known defect {defect}: {}", what.into());
        eprintln!("soak: KNOWN {}: {what}", self.title);
        self.known.push(what);
    }

    /// Records `step`'s leftovers, one failure each.
    pub fn leaks(&mut self, step: &str, leftovers: Vec<String>) {
        for l in leftovers {
            self.fail(format!("{step}: left behind: {l}"));
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        let _ = writeln!(
            out,
            "## {} — {verdict} ({:.1} s)\n",
            self.title,
            self.took.as_secs_f64()
        );
        if !self.rows.is_empty() {
            out.push_str("| what | value |\n|---|---|\n");
            for (what, value) in &self.rows {
                let _ = writeln!(out, "| {what} | {value} |");
            }
            out.push('\n');
        }
        if !self.known.is_empty() {
            let _ = writeln!(out, "Known defects seen ({}):\n", self.known.len());
            for k in self.known.iter().take(SHOWN) {
                let _ = writeln!(out, "- {k}");
            }
            out.push('\n');
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "Failures ({}):\n", self.failures.len());
            for f in self.failures.iter().take(SHOWN) {
                let _ = writeln!(out, "- {}", f.replace('\n', " "));
            }
            if self.failures.len() > SHOWN {
                let _ = writeln!(out, "- … and {} more", self.failures.len() - SHOWN);
            }
            out.push('\n');
        }
        out
    }
}

/// Runs `f` as section `title`: its wall time, and an error it returns as a failure (the
/// step could not go on).
pub fn run(title: &str, f: impl FnOnce(&mut Section) -> anyhow::Result<()>) -> Section {
    eprintln!("soak: {title}");
    let mut s = Section::new(title);
    let t0 = Instant::now();
    if let Err(err) = f(&mut s) {
        s.fail(format!("aborted: {err:#}"));
    }
    s.took = t0.elapsed();
    eprintln!(
        "soak: {title}: {} in {:.1} s",
        if s.passed() { "pass" } else { "FAIL" },
        s.took.as_secs_f64()
    );
    s
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// `median / p99 / max` of `v` in ms (empty: `-`).
pub fn spread(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "{} / {} / {} ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    )
}

/// `bytes` in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_p99_max() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(spread(&v), "51.0 / 99.0 / 100.0 ms");
        assert_eq!(spread(&[]), "-");
    }

    #[test]
    fn a_section_with_a_failure_fails_and_says_why() {
        let mut s = Section::new("t");
        assert!(s.passed());
        s.leaks("step", vec!["mount /x".into()]);
        assert!(!s.passed());
        assert!(s.markdown().contains("- step: left behind: mount /x"));
    }
}
