//! One policy for poisoned locks. A thread that panicked while holding a lock leaves the data as
//! its last complete update (every critical section here is a single insert, remove or
//! assignment), so the data is recovered and used, and the poisoning is logged once: reading a
//! poisoned lock as "nothing there" would silently stop whatever depends on it.

use std::sync::{Mutex, MutexGuard, Once, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

fn recovered<G>(poisoned: PoisonError<G>) -> G {
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        tracing::error!("a thread panicked while holding a lock; its data is kept and used");
    });
    poisoned.into_inner()
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(recovered)
}

pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(recovered)
}

pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_its_data() {
        let shared = std::sync::Arc::new(Mutex::new(vec![1]));
        let holder = shared.clone();
        let _ = std::thread::spawn(move || {
            let mut data = holder.lock().expect("lock");
            data.push(2);
            panic!("poison it");
        })
        .join();
        assert!(shared.is_poisoned());
        assert_eq!(*lock(&shared), vec![1, 2]);
    }
}
