//! The guest's memory budget inside wasmtime: all its linear memories and tables together may not
//! grow beyond the container's memory limit (less what the process itself needs), so
//! `memory.grow` returns -1 inside the guest before the kernel's OOM killer would act.

use wasmtime::ResourceLimiter;

/// Bytes a table element is charged: one pointer, as wasmtime stores funcrefs and externrefs.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// A [`ResourceLimiter`] over the sum of every memory and table of one store.
#[derive(Debug, Default)]
pub struct Budget {
    /// `None`: no budget (the modules' own maximums and the 4 GiB of wasm32 still apply).
    limit: Option<usize>,
    used: usize,
    /// Set when a growth was refused because of the budget (not because of a module's own
    /// maximum): the guest ran out of memory, whatever it does next.
    exhausted: bool,
}

impl Budget {
    pub fn new(limit: Option<u64>) -> Budget {
        Budget {
            limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            ..Budget::default()
        }
    }

    /// Whether a growth was refused for lack of budget.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let extra = desired.saturating_sub(current);
        let Some(limit) = self.limit else {
            return true;
        };
        match self.used.checked_add(extra) {
            Some(total) if total <= limit => {
                self.used = total;
                true
            }
            _ => {
                self.exhausted = true;
                false
            }
        }
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
        let mut budget = Budget::new(Some(100 * 8));
        assert!(budget.memory_growing(0, 400, None).unwrap());
        assert!(budget.table_growing(0, 50, None).unwrap());
        assert!(!budget.exhausted());
        // 400 + 400 used; 8 more bytes would go over.
        assert!(!budget.memory_growing(400, 408, None).unwrap());
        assert!(budget.exhausted());
    }

    #[test]
    fn a_module_maximum_is_not_exhaustion() {
        let mut budget = Budget::new(Some(1 << 20));
        assert!(!budget.memory_growing(0, 2 << 16, Some(1 << 16)).unwrap());
        assert!(!budget.exhausted());
        let mut unlimited = Budget::new(None);
        assert!(unlimited.memory_growing(0, usize::MAX, None).unwrap());
    }
}
