//! The guest's memory budget inside wasmtime: all its linear memories and tables together may not
//! grow beyond the container's memory limit (less what the process itself needs), so
//! `memory.grow` returns -1 inside the guest before the kernel's OOM killer would act.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use wasmtime::ResourceLimiter;

/// The budget's limit, changeable while the guest runs (an in-place pod resize).
#[derive(Debug, Clone)]
pub struct MemoryLimit(Arc<AtomicU64>);

impl MemoryLimit {
    pub fn new(limit: Option<u64>) -> MemoryLimit {
        MemoryLimit(Arc::new(AtomicU64::new(limit.unwrap_or(u64::MAX))))
    }

    /// Sets the limit; `None` removes it. Memory already in use is kept even above a lowered
    /// limit; only further growth is refused.
    pub fn set(&self, limit: Option<u64>) {
        self.0.store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The limit in bytes, `None` without one.
    pub fn get_bytes(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            l => Some(l),
        }
    }

    fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            l => Some(usize::try_from(l).unwrap_or(usize::MAX)),
        }
    }
}

/// Bytes a table element is charged: one pointer, as wasmtime stores funcrefs and externrefs.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// A [`ResourceLimiter`] over the sum of every memory and table of one store, or of several
/// stores drawing from one total ([`Budget::share`]: the instances of an HTTP server).
#[derive(Debug)]
pub struct Budget {
    /// No limit: only the modules' own maximums (and the 4 GiB of wasm32) apply.
    limit: MemoryLimit,
    /// What every budget sharing this total uses.
    used: Arc<AtomicUsize>,
    /// This budget's part of `used`, given back when it is dropped.
    mine: usize,
    /// Set when a growth was refused because of the budget (not because of a module's own
    /// maximum): the guest ran out of memory, whatever it does next.
    exhausted: bool,
}

impl Budget {
    pub fn new(limit: MemoryLimit) -> Budget {
        Budget {
            limit,
            used: Arc::new(AtomicUsize::new(0)),
            mine: 0,
            exhausted: false,
        }
    }

    /// Another budget drawing from the same total under the same limit.
    pub fn share(&self) -> Budget {
        Budget {
            limit: self.limit.clone(),
            used: self.used.clone(),
            mine: 0,
            exhausted: false,
        }
    }

    /// The limit, to change while the guest runs.
    pub fn limit(&self) -> MemoryLimit {
        self.limit.clone()
    }

    /// Whether a growth was refused for lack of budget.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let extra = desired.saturating_sub(current);
        let limit = self.limit.get();
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.checked_add(extra)?;
                limit.is_none_or(|l| total <= l).then_some(total)
            });
        match taken {
            Ok(_) => self.mine += extra,
            Err(_) => self.exhausted = true,
        }
        taken.is_ok()
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.used.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

impl ResourceLimiter for Budget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut budget = Budget::new(MemoryLimit::new(Some(100 * 8)));
        assert!(budget.memory_growing(0, 400, None).unwrap());
        assert!(budget.table_growing(0, 50, None).unwrap());
        assert!(!budget.exhausted());
        // 400 + 400 used; 8 more bytes would go over.
        assert!(!budget.memory_growing(400, 408, None).unwrap());
        assert!(budget.exhausted());
    }

    #[test]
    fn a_module_maximum_is_not_exhaustion() {
        let mut budget = Budget::new(MemoryLimit::new(Some(1 << 20)));
        assert!(!budget.memory_growing(0, 2 << 16, Some(1 << 16)).unwrap());
        assert!(!budget.exhausted());
        let mut unlimited = Budget::new(MemoryLimit::new(None));
        assert!(unlimited.memory_growing(0, usize::MAX / 2, None).unwrap());
    }

    #[test]
    fn shared_budgets_draw_from_one_total_and_give_it_back() {
        let total = Budget::new(MemoryLimit::new(Some(1000)));
        let mut a = total.share();
        let mut b = total.share();
        assert!(a.memory_growing(0, 600, None).unwrap());
        assert!(!b.memory_growing(0, 600, None).unwrap());
        assert!(b.memory_growing(0, 400, None).unwrap());
        drop(a);
        assert_eq!(total.used.load(Ordering::Acquire), 400);
        assert!(b.memory_growing(400, 1000, None).unwrap());
        assert!(!b.memory_growing(1000, 1001, None).unwrap());
    }

    #[test]
    fn the_limit_can_change_while_running() {
        let limit = MemoryLimit::new(Some(1000));
        let mut budget = Budget::new(limit.clone());
        assert!(budget.memory_growing(0, 1000, None).unwrap());
        assert!(!budget.memory_growing(1000, 1500, None).unwrap());
        limit.set(Some(2000));
        assert!(budget.memory_growing(1000, 1500, None).unwrap());
        limit.set(Some(100));
        assert!(!budget.memory_growing(1500, 1501, None).unwrap());
        limit.set(None);
        assert!(budget.memory_growing(1500, 1 << 30, None).unwrap());
    }
}
