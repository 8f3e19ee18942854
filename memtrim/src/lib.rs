//! Returning freed heap memory to the OS.
//!
//! glibc keeps what a burst of work freed (a pull, an extraction) in its
//! arenas: one per thread that allocated, each holding its high-water mark
//! until something calls `malloc_trim`. A node agent that is idle between
//! rare loads should not keep paying for its busiest minute, so it calls
//! [`release_free_memory`] after each piece of work.

/// Gives free heap pages of every glibc arena back to the OS
/// (`malloc_trim(0)`: top-of-heap shrinking and `MADV_DONTNEED` on free
/// pages inside arenas). Returns whether any memory was released; always
/// `false` where the C library is not glibc (musl returns memory by itself).
pub fn release_free_memory() -> bool {
    trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arena
    // lists under their locks; it is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_pages_are_released() {
        // Many small blocks (below the mmap threshold, so on the heap), then
        // free all but the last: the freed pages stay with glibc until a trim.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4000]).collect();
        let last = blocks.pop();
        drop(blocks);
        assert!(release_free_memory(), "16 MiB freed, nothing released");
        assert!(last.is_some_and(|b| b.len() == 4000));
    }
}
