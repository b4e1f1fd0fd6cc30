//! Notification and interrupt suppression of a split virtqueue: the avail/used flags
//! (VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY) and, when VIRTIO_RING_F_EVENT_IDX is
//! negotiated, the `used_event`/`avail_event` indices that replace them.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes};

use super::{ChainError, Queue, AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY};
use crate::memory::GuestMem;

/// Whether an index moving from `old` to `new` passed `event` (virtio 1.x
/// `vring_need_event`): the other side asked to hear about entry `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Queue {
    /// Switches to EVENT_IDX suppression (the driver accepted VIRTIO_RING_F_EVENT_IDX).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether EVENT_IDX suppression is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Whether the driver has made chains available that the device has not taken.
    pub fn has_available(&self, mem: &GuestMem) -> Result<bool, ChainError> {
        Ok(self.read_u16(mem, self.avail.unchecked_add(2))? != self.next_avail)
    }

    /// Asks the driver not to notify while the device drains the queue. With EVENT_IDX the
    /// `avail_event` the device last wrote is left behind, which has the same effect.
    pub fn disable_notify(&mut self, mem: &GuestMem) -> Result<(), ChainError> {
        if self.event_idx {
            return Ok(());
        }
        self.write_used_u16(mem, 0, USED_F_NO_NOTIFY)
    }

    /// Asks for a notification of the next chain the driver makes available, then checks
    /// again (after a full fence) whether one already is: `true` means the device must keep
    /// draining, since the driver may have seen notifications still suppressed.
    pub fn enable_notify(&mut self, mem: &GuestMem) -> Result<bool, ChainError> {
        if self.event_idx {
            let at = 4 + 8 * self.size as u64;
            self.write_used_u16(mem, at, self.next_avail)?;
        } else {
            self.write_used_u16(mem, 0, 0)?;
        }
        fence(Ordering::SeqCst);
        self.has_available(mem)
    }

    /// Whether the driver wants an interrupt for the used buffers published since the last
    /// call: the avail ring's NO_INTERRUPT flag, or with EVENT_IDX whether the used index
    /// passed `used_event`.
    pub fn needs_interrupt(&mut self, mem: &GuestMem) -> bool {
        fence(Ordering::SeqCst);
        if self.event_idx {
            let (old, new) = (self.signalled_used, self.next_used);
            self.signalled_used = new;
            let at = self.avail.unchecked_add(4 + 2 * self.size as u64);
            return self
                .read_u16(mem, at)
                .map(|event| need_event(event, new, old))
                .unwrap_or(true);
        }
        self.read_u16(mem, self.avail)
            .map(|f| f & AVAIL_F_NO_INTERRUPT == 0)
            .unwrap_or(true)
    }

    fn write_used_u16(&self, mem: &GuestMem, offset: u64, v: u16) -> Result<(), ChainError> {
        let at = self.used.unchecked_add(offset);
        mem.write_obj(v, at).map_err(|_| ChainError::UsedRing(at.0))
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::testdriver::Driver;

    fn used_flags(d: &Driver) -> u16 {
        d.mem.read_obj(GuestAddress(d.used)).unwrap()
    }

    #[test]
    fn need_event_follows_the_spec_formula_across_wraparound() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(0, 2, 1));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(9, 8, 3));
        assert!(need_event(u16::MAX, 1, u16::MAX - 1));
        assert!(!need_event(3, 3, 3));
    }

    #[test]
    fn flags_suppress_notifications_while_draining_and_recheck_on_enable() {
        let mut d = Driver::new(8);
        let mut q = d.queue();
        let buf = d.alloc(16, 0);
        q.disable_notify(&d.mem).unwrap();
        assert_eq!(used_flags(&d), USED_F_NO_NOTIFY);
        d.push_chain(&[(buf, 16, false)]);
        // A chain arrived while notifications were off: enabling must report it.
        assert!(q.enable_notify(&d.mem).unwrap());
        assert_eq!(used_flags(&d), 0);
        assert!(q.pop(&d.mem).unwrap().is_some());
        assert!(!q.has_available(&d.mem).unwrap());
        q.disable_notify(&d.mem).unwrap();
        assert!(!q.enable_notify(&d.mem).unwrap());
        assert_eq!(used_flags(&d), 0);
    }

    #[test]
    fn event_idx_publishes_avail_event_and_leaves_the_flags_alone() {
        let mut d = Driver::new(8);
        let mut q = d.queue();
        q.set_event_idx(true);
        assert!(q.event_idx());
        let buf = d.alloc(16, 0);
        d.push_chain(&[(buf, 16, false)]);
        d.push_chain(&[(buf, 16, false)]);
        q.disable_notify(&d.mem).unwrap();
        assert_eq!(used_flags(&d), 0);
        assert!(q.pop(&d.mem).unwrap().is_some());
        assert!(q.pop(&d.mem).unwrap().is_some());
        assert!(!q.enable_notify(&d.mem).unwrap());
        let avail_event: u16 = d.mem.read_obj(GuestAddress(d.used + 4 + 8 * 8)).unwrap();
        assert_eq!(avail_event, 2);
    }

    #[test]
    fn interrupts_follow_no_interrupt_or_used_event() {
        let d = Driver::new(8);
        let mut q = d.queue();
        q.add_used(&d.mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&d.mem));
        d.mem
            .write_obj(AVAIL_F_NO_INTERRUPT, GuestAddress(d.avail))
            .unwrap();
        q.add_used(&d.mem, 0, 0).unwrap();
        assert!(!q.needs_interrupt(&d.mem));

        // EVENT_IDX ignores the flag: interrupt only when used passes used_event.
        let mut q = d.queue();
        q.set_event_idx(true);
        let used_event = GuestAddress(d.avail + 4 + 2 * 8);
        d.mem.write_obj(1u16, used_event).unwrap();
        q.push_used(&d.mem, 0, 0).unwrap();
        q.publish_used(&d.mem).unwrap();
        assert!(
            !q.needs_interrupt(&d.mem),
            "used 0 -> 1 has not passed entry 1"
        );
        q.add_used(&d.mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&d.mem), "used 1 -> 2 passed entry 1");
        q.add_used(&d.mem, 0, 0).unwrap();
        assert!(!q.needs_interrupt(&d.mem), "already told about entry 1");
    }
}
