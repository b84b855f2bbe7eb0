//! The "HTTPS unsupported" cache: MX hosts that took a message over SMTP recently, so the
//! HTTPS attempt is skipped for them (filtermail-latest.md §7.4).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Host names with the instant their entry expires; expired entries are dropped when
/// looked up and swept on every insertion, so the map holds only the last TTL's hosts.
#[derive(Debug)]
pub(crate) struct HttpsUnsupported {
    /// How long an entry lives.
    ttl: Duration,
    /// Host → expiry.
    entries: Mutex<HashMap<String, Instant>>,
}

impl HttpsUnsupported {
    pub fn new(ttl: Duration) -> HttpsUnsupported {
        HttpsUnsupported {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `host` is in the cache (and not expired).
    pub fn contains(&self, host: &str) -> bool {
        let mut entries = self.lock();
        match entries.get(host) {
            Some(&expiry) if expiry > Instant::now() => true,
            Some(_) => {
                entries.remove(host);
                false
            }
            None => false,
        }
    }

    /// Puts `host` in the cache for the TTL.
    pub fn insert(&self, host: &str) {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, expiry| *expiry > now);
        entries.insert(host.to_owned(), now + self.ttl);
    }

    /// Removes `host`.
    pub fn remove(&self, host: &str) {
        self.lock().remove(host);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_removed() {
        let cache = HttpsUnsupported::new(Duration::from_secs(60));
        assert!(!cache.contains("mx.example.org"));
        cache.insert("mx.example.org");
        assert!(cache.contains("mx.example.org"));
        cache.remove("mx.example.org");
        assert!(!cache.contains("mx.example.org"));

        let expired = HttpsUnsupported::new(Duration::ZERO);
        expired.insert("mx.example.org");
        assert!(!expired.contains("mx.example.org"));
        assert!(expired.lock().is_empty());
    }
}
