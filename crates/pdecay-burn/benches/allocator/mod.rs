//! The `pdecay` binary's allocator, set up as the binary sets it (crates/pdecay-cli/src/main.rs),
//! so that the benches allocate as training does.

/// mimalloc: glibc's malloc hands each large buffer back to the kernel and faults it in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the kernel, unless `MIMALLOC_PURGE_DELAY` says otherwise.
pub fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called first in `main`, before any thread starts (mi_option_set is not
        // thread safe), with an option index and value mimalloc.h documents (-1: never purge).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
