//! Unique region names (PROTOCOL.md 4.12): a server keys buffer mappings by path string, so
//! two clients must never announce the same buffer path. Go's pid-only prefix collides across
//! PID namespaces; we add 64 random bits.

use std::fmt::Write;

/// `{prefix}_{pid}_{16 hex digits of randomness}`.
pub fn unique_prefix(prefix: &str) -> String {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let mut random = [0u8; 8];
    // getrandom only fails on exotic kernels; fall back to the clock so names stay unique
    // enough rather than failing session creation.
    if rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        random = nanos.to_le_bytes();
    }
    let mut out = format!("{prefix}_{pid}_");
    for b in random {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unique_prefix;

    #[test]
    fn two_prefixes_from_one_process_differ_and_carry_the_pid() {
        let a = unique_prefix("/dev/shm/shmlink");
        let b = unique_prefix("/dev/shm/shmlink");
        assert_ne!(a, b);
        let pid = std::process::id().to_string();
        assert!(a.starts_with(&format!("/dev/shm/shmlink_{pid}_")), "{a}");
        assert_eq!(a.len(), "/dev/shm/shmlink_".len() + pid.len() + 1 + 16);
    }
}
