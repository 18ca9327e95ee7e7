//! Random bytes straight from the kernel's CSPRNG (`getrandom(2)`).
//!
//! AWS-LC's own generator seeds itself on first use from CPU-jitter entropy as well as the
//! kernel, which costs 70-150 ms of CPU in every new process (measured on the CI machines,
//! where clock reads are slow). A one-shot CLI command pays that on every run, for entropy the
//! kernel already provides: the kernel generator is the source `os.urandom` and pyca's key
//! generation use too. Nonces come from a pool refilled in bulk (see `aead`), so the system
//! call is amortised on the hot path.

use aws_lc_rs::error::Unspecified;

/// Fills `buf` with random bytes from the kernel, retrying on interruption.
///
/// # Errors
/// [`Unspecified`] if the kernel refuses (no CSPRNG available); never returns partial output.
pub fn fill(buf: &mut [u8]) -> Result<(), Unspecified> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes owned by this call;
        // getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Unspecified);
        }
        // A positive count never exceeds the requested length (getrandom(2)).
        done += usize::try_from(n).map_err(|_| Unspecified)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn fills_every_byte_and_differs_between_calls() {
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        // 4 KiB of kernel randomness with no zero byte in any 512-byte window would be absurd;
        // an untouched buffer is all zeros.
        assert!(a.chunks(512).all(|w| w.iter().any(|&x| x != 0)));
    }

    #[test]
    fn empty_and_large_buffers() {
        fill(&mut []).unwrap();
        let mut big = vec![0u8; 1 << 20];
        fill(&mut big).unwrap();
        assert!(big.iter().filter(|&&x| x == 0).count() < 1 << 14);
    }
}
