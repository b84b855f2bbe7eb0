//! Message buffers kept across messages.
//!
//! A message arrives in pieces of unknown total size; growing its buffer as it comes
//! copies the bytes received so far at every reallocation (about three times a 1 MiB
//! message, growing by a quarter), and a fresh buffer's pages are faulted in and zeroed
//! by the kernel. Postfix opens one connection per message, so a buffer per connection
//! would not help; instead every DATA phase takes the buffer a finished message gave
//! back, and in steady traffic no message reallocates or touches a new page.
//!
//! What is kept is bounded: at most [`POOL_BYTES`] of capacity in all, no buffer larger
//! than [`POOL_BUFFER_MAX`] (messages beyond it are rare and grow as before), and the
//! pool is emptied once a whole [`IDLE_RELEASE`] period went by without a message, so an
//! idle relay gives the memory back. Peak memory stays bounded by the concurrency cap:
//! a buffer is only created when none is spare, i.e. for a message in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Most capacity the pool keeps in all.
pub const POOL_BYTES: usize = 64 << 20;

/// Largest buffer the pool keeps.
pub const POOL_BUFFER_MAX: usize = 4 << 20;

/// A pool unused for this long is emptied.
pub const IDLE_RELEASE: Duration = Duration::from_secs(60);

/// Spare message buffers, the most recently given back last.
#[derive(Debug, Default)]
pub struct BufferPool {
    spare: Mutex<Spare>,
    /// A buffer was taken since the last [`BufferPool::release_if_idle`].
    used: AtomicBool,
}

#[derive(Debug, Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    /// Sum of the buffers' capacities.
    bytes: usize,
}

/// The pool of the DATA phases of this process (SMTP and LMTP).
pub static MESSAGE_BUFFERS: BufferPool = BufferPool::new();

impl BufferPool {
    pub const fn new() -> BufferPool {
        BufferPool {
            spare: Mutex::new(Spare {
                buffers: Vec::new(),
                bytes: 0,
            }),
            used: AtomicBool::new(false),
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        // The guarded data is consistent after every statement: a panic elsewhere
        // cannot leave it half-updated.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty buffer: the most recently given back one, or a new one without capacity.
    pub fn take(&self) -> Vec<u8> {
        self.used.store(true, Ordering::Relaxed);
        let mut spare = self.spare();
        match spare.buffers.pop() {
            Some(buffer) => {
                spare.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// Keeps `buffer` (emptied) for a later message, unless it is too large or the pool
    /// is full; then it is freed.
    pub fn give_back(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0 || capacity > POOL_BUFFER_MAX {
            return;
        }
        buffer.clear();
        let mut spare = self.spare();
        if spare.bytes + capacity <= POOL_BYTES {
            spare.bytes += capacity;
            spare.buffers.push(buffer);
        }
    }

    /// Frees every spare buffer if none was taken since the previous call; returns how
    /// many bytes of capacity were freed.
    pub fn release_if_idle(&self) -> usize {
        if self.used.swap(false, Ordering::Relaxed) {
            return 0;
        }
        let buffers = {
            let mut spare = self.spare();
            spare.bytes = 0;
            std::mem::take(&mut spare.buffers)
        };
        buffers.iter().map(Vec::capacity).sum()
    }

    /// Capacity kept in all.
    pub fn spare_bytes(&self) -> usize {
        self.spare().bytes
    }

    /// Buffers kept.
    pub fn spare_buffers(&self) -> usize {
        self.spare().buffers.len()
    }
}

/// Empties [`MESSAGE_BUFFERS`] after every [`IDLE_RELEASE`] period without a message;
/// runs until dropped.
pub async fn release_idle_buffers() {
    let mut ticks = tokio::time::interval(IDLE_RELEASE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let freed = MESSAGE_BUFFERS.release_if_idle();
        if freed > 0 {
            tracing::debug!("freed {freed} bytes of idle message buffers");
        }
    }
}

/// A message's buffer that goes back to its pool when dropped.
#[derive(Debug)]
pub struct Recycled {
    pub buffer: Vec<u8>,
    pool: &'static BufferPool,
}

impl BufferPool {
    /// `buffer`, given back to this pool when dropped.
    pub fn recycled(&'static self, buffer: Vec<u8>) -> Recycled {
        Recycled { buffer, pool: self }
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_taken_again_empty_with_its_capacity() {
        let pool = BufferPool::new();
        assert_eq!(
            pool.take().capacity(),
            0,
            "an empty pool gives a new buffer"
        );
        let mut buffer = Vec::with_capacity(100_000);
        buffer.extend_from_slice(b"message");
        let pointer = buffer.as_ptr();
        pool.give_back(buffer);
        assert_eq!(pool.spare_buffers(), 1);
        assert!(pool.spare_bytes() >= 100_000);
        let again = pool.take();
        assert_eq!(again.as_ptr(), pointer, "the same allocation");
        assert!(again.is_empty());
        assert!(again.capacity() >= 100_000);
        assert_eq!((pool.spare_buffers(), pool.spare_bytes()), (0, 0));
    }

    #[test]
    fn the_last_given_back_is_taken_first() {
        let pool = BufferPool::new();
        pool.give_back(Vec::with_capacity(1000));
        pool.give_back(Vec::with_capacity(2000));
        assert!(pool.take().capacity() >= 2000);
        assert!(pool.take().capacity() >= 1000);
    }

    #[test]
    fn too_large_buffers_are_not_kept() {
        let pool = BufferPool::new();
        pool.give_back(Vec::with_capacity(POOL_BUFFER_MAX + 1));
        pool.give_back(Vec::new());
        assert_eq!((pool.spare_buffers(), pool.spare_bytes()), (0, 0));
    }

    #[test]
    fn the_pool_keeps_at_most_its_byte_budget() {
        let pool = BufferPool::new();
        // Not a divisor of the budget, so some room is left for a smaller one.
        let each = POOL_BUFFER_MAX - 1000;
        for _ in 0..POOL_BYTES / each + 5 {
            pool.give_back(Vec::with_capacity(each));
        }
        assert!(pool.spare_bytes() <= POOL_BYTES);
        assert!(
            pool.spare_bytes() > POOL_BYTES - each,
            "{}",
            pool.spare_bytes()
        );
        // A smaller buffer still fits into what is left.
        let before = pool.spare_buffers();
        pool.give_back(Vec::with_capacity(POOL_BYTES - pool.spare_bytes()));
        assert_eq!(pool.spare_buffers(), before + 1);
        assert!(pool.spare_bytes() <= POOL_BYTES);
    }

    #[test]
    fn an_idle_pool_is_emptied_a_used_one_kept() {
        let pool = BufferPool::new();
        pool.give_back(pool.take());
        pool.give_back(Vec::with_capacity(5000));
        // Taken from since the last check: kept.
        assert_eq!(pool.release_if_idle(), 0);
        assert_eq!(pool.spare_buffers(), 1);
        // Not taken from since: emptied.
        assert!(pool.release_if_idle() >= 5000);
        assert_eq!((pool.spare_buffers(), pool.spare_bytes()), (0, 0));
    }

    #[test]
    fn recycled_buffers_return_to_their_pool() {
        static POOL: BufferPool = BufferPool::new();
        let buffer = Vec::<u8>::with_capacity(123_457);
        let pointer = buffer.as_ptr();
        let recycled = POOL.recycled(buffer);
        assert_eq!(POOL.spare_buffers(), 0);
        drop(recycled);
        let again = POOL.take();
        assert_eq!(again.as_ptr(), pointer);
    }
}
