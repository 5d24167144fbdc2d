//! A corrupt compile-cache entry: hello's entry cut to many sizes, from 0 bytes to one short
//! of the whole file, and the whole file with bytes flipped. Every start must print hello's
//! greeting (the entry refused and compiled again), and leave only `*.cwasm` files.

use super::guests;
use super::node::{self, Baseline};
use super::report::{Section, spread};
use crate::containerd::{Containerd, RUNTIME, wait_for};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const GREETING: &str = "Hello from WebAssembly!\n";

/// `ctr run --rm` of hello; its wall time.
fn run_hello(c: &Containerd, image: &str, id: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, image, id])?;
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != GREETING {
        bail!(
            "{} {stdout:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// The corruptions of `full`: (label, bytes).
fn variants(full: &[u8]) -> Vec<(String, Vec<u8>)> {
    let len = full.len();
    let mut sizes: Vec<usize> = vec![0, 1, 16, 64, 4096];
    sizes.extend((1..=16).map(|k| len * k / 17));
    sizes.push(len - 1);
    sizes.sort_unstable();
    sizes.dedup();
    let mut out: Vec<(String, Vec<u8>)> = sizes
        .into_iter()
        .filter(|n| *n < len)
        .map(|n| (format!("{n} bytes"), full[..n].to_vec()))
        .collect();
    let flipped = |label: &str, at: &[usize]| {
        let mut bytes = full.to_vec();
        for i in at {
            bytes[*i] ^= 0xff;
        }
        (format!("full, flipped {label}"), bytes)
    };
    out.push(flipped("byte 0", &[0]));
    out.push(flipped("byte 64", &[64]));
    out.push(flipped(&format!("byte {} (middle)", len / 2), &[len / 2]));
    out.push(flipped("the last byte", &[len - 1]));
    if let Some(code) = code_offset(full) {
        out.push(flipped(
            &format!("byte {code} (the first of the machine code)"),
            &[code],
        ));
        out.push(flipped(
            &format!("byte {} (in the machine code)", code + 16),
            &[code + 16],
        ));
    }
    let spread: Vec<usize> = (0..16)
        .map(|k| k * len / 16 + 7)
        .filter(|i| *i < len)
        .collect();
    out.push(flipped("16 bytes spread over the file", &spread));
    out
}

/// The file offset of the first executable section of an ELF64 file (wasmtime's `.text`).
fn code_offset(elf: &[u8]) -> Option<usize> {
    let u16_at =
        |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?) as usize);
    let u64_at =
        |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?) as usize);
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return None;
    }
    let (table, size, count) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?);
    (0..count).find_map(|k| {
        let header = table + k * size;
        let executable = u64_at(header + 8)? & 0x4 != 0; // SHF_EXECINSTR
        let (offset, len) = (u64_at(header + 24)?, u64_at(header + 32)?);
        (executable && len > 16 && offset + 16 < elf.len()).then_some(offset)
    })
}

pub fn corrupt_entries(c: &Containerd, s: &mut Section) -> Result<()> {
    let image = c.import_example("hello")?;
    let digest: String = Sha256::digest(guests::hello()?)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = std::process::id();
    let first = run_hello(c, &image, &format!("cache-first-{tag}")).context("first start")?;
    let baseline = Baseline::take(c);
    let entry = node::cache_entries(c)
        .into_iter()
        .find(|e| {
            e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&digest))
        })
        .context("no compile-cache entry for hello after its first start")?;
    let full = std::fs::read(&entry)?;
    let cached = run_hello(c, &image, &format!("cache-hit-{tag}"))?;
    let (mut starts, mut recompiled, mut kept) = (Vec::new(), 0, Vec::new());
    let all = variants(&full);
    for (k, (label, bytes)) in all.iter().enumerate() {
        std::fs::write(&entry, bytes)?;
        let id = format!("cache-{k}-{tag}");
        match run_hello(c, &image, &id) {
            Ok(took) => starts.push(took),
            // Defect 2: a full-length entry with flipped bytes is loaded as it is.
            Err(err) if label.starts_with("full, flipped") => {
                s.known(2, format!("entry {label}: start failed: {err:#}"))
            }
            Err(err) => s.fail(format!("entry {label}: start failed: {err:#}")),
        }
        match std::fs::read(&entry) {
            Ok(now) if now == full => recompiled += 1,
            Ok(now) if now == *bytes => kept.push(label.clone()),
            Ok(now) => s.fail(format!(
                "entry {label}: now {} bytes, neither the corrupt nor the compiled file",
                now.len()
            )),
            Err(err) => s.fail(format!("entry {label}: no entry after the start: {err}")),
        }
        let ids = [id];
        let settled = wait_for(Duration::from_secs(5), || {
            baseline
                .leftovers(c, &ids, &ids, &[])
                .is_empty()
                .then_some(())
        });
        if settled.is_none() {
            s.leaks(
                &format!("entry {label}"),
                baseline.leftovers(c, &ids, &ids, &[]),
            );
        }
    }
    let (flipped, cut): (Vec<String>, Vec<String>) = kept
        .iter()
        .cloned()
        .partition(|label| label.starts_with("full, flipped"));
    if !cut.is_empty() {
        s.fail(format!(
            "a truncated entry was loaded instead of compiled again: {}",
            cut.join("; ")
        ));
    }
    if !flipped.is_empty() {
        s.known(
            2,
            format!(
                "a corrupt entry was loaded and run instead of compiled again: {}",
                flipped.join("; ")
            ),
        );
    }
    s.row("hello's entry", format!("{} bytes", full.len()));
    s.row(
        "corrupt entries tried",
        format!(
            "{} ({} cut sizes, {} with flipped bytes)",
            all.len(),
            all.iter().filter(|v| !v.0.starts_with("full")).count(),
            all.iter().filter(|v| v.0.starts_with("full")).count()
        ),
    );
    s.row("started and printed the greeting", starts.len());
    s.row(
        "entry compiled again (identical to the original)",
        recompiled,
    );
    s.row(
        "corrupt entry kept and loaded",
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join("; ")
        },
    );
    s.row(
        "`ctr run --rm` first start (compile) / cached",
        format!(
            "{:.1} / {:.1} ms",
            first.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3
        ),
    );
    s.row(
        "`ctr run --rm` over a corrupt entry (median / p99 / max)",
        spread(&starts),
    );
    Ok(())
}
