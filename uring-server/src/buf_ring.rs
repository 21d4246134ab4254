//! A provided-buffer ring (io_uring 5.19+): buffers the kernel picks from for multishot
//! receives, owned here and handed back once their bytes are consumed.

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group the workers' receives select from.
pub(crate) const BUF_GROUP: u16 = 1;

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for receives.
pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    mask: u16,
    tail: u16,
    bufs: Vec<u8>,
    size: usize,
}

impl BufRing {
    pub(crate) fn new(uring: &IoUring, count: u16, size: usize) -> std::io::Result<BufRing> {
        debug_assert!(count.is_power_of_two());
        let ring_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping, page aligned as the kernel requires; owned by
        // the returned value, which unmaps it on drop after unregistering it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: ptr.cast(),
            ring_len,
            mask: count - 1,
            tail: 0,
            bufs: vec![0u8; usize::from(count) * size],
            size,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        // SAFETY: the ring memory stays mapped until `drop`, which runs after the ring that
        // uses it is gone (`UringBackend` declares the ring before the buffers, so it drops
        // first, and only after `finish` reaped every operation), or unregisters first in
        // `probe`.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ptr as u64, count, BUF_GROUP, 0)?;
        }
        Ok(br)
    }

    /// Hands buffer `bid` back to the kernel (visible after `publish`).
    pub(crate) fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: idx < count, inside the mapping; the kernel reads only entries behind the
        // published tail, and this one is ahead of it until `publish`.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.bufs[usize::from(bid) * self.size..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the mapping; the kernel reads it
        // concurrently, so it is written through an atomic with release ordering, after the
        // entries it exposes.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    pub(crate) fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.bufs[start..start + len.min(self.size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is not used after this.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}
