//! A backend's table of per-connection I/O state, indexed by the core's connection keys (the
//! core allocates keys; a backend only mirrors them, so the two can never disagree).

/// Values by connection key.
#[derive(Debug)]
pub struct ByKey<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for ByKey<T> {
    fn default() -> Self {
        ByKey { slots: Vec::new() }
    }
}

impl<T> ByKey<T> {
    /// Stores `value` for `key`, which must be free.
    pub fn insert(&mut self, key: usize, value: T) {
        if self.slots.len() <= key {
            self.slots.resize_with(key + 1, || None);
        }
        debug_assert!(self.slots[key].is_none(), "key {key} is in use");
        self.slots[key] = Some(value);
    }

    /// The value for `key`.
    pub fn get(&self, key: usize) -> Option<&T> {
        self.slots.get(key).and_then(Option::as_ref)
    }

    /// The value for `key`, mutably.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    /// Takes `key`'s value out.
    pub fn remove(&mut self, key: usize) -> Option<T> {
        self.slots.get_mut(key).and_then(Option::take)
    }

    /// Every key with a value, and the value.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}
