//! Message ids for one node's writer: UUIDv7s that only ever go up, and that jump past every id
//! this node has seen from another writer (a hybrid logical clock). So a node whose clock runs
//! behind still numbers its next message after everything it has already pushed, and catch-up
//! cursors stay meaningful across nodes.
//!
//! Layout of the 128 bits, high to low: 48-bit Unix milliseconds, version 7, then 74 bits split
//! into a 58-bit counter and a 16-bit writer tag. The counter starts at a random point in each
//! new millisecond and counts up within it; the tag keeps two writers that jumped to the same
//! point apart. Comparing ids compares (milliseconds, counter), the order the writer made them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::domain::MessageId;

const COUNTER_BITS: u32 = 58;
const TAG_BITS: u32 = 16;
const COUNTER_MAX: u128 = (1 << COUNTER_BITS) - 1;
/// A fresh millisecond starts the counter below this, leaving room to count up in it.
const COUNTER_START_RANGE: u64 = 1 << 40;

pub struct Sequencer {
    tag: u16,
    /// The last (millisecond, counter) handed out or seen.
    last: Mutex<(u64, u128)>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    pub fn new() -> Self {
        Self {
            tag: random_u64() as u16,
            last: Mutex::new((0, 0)),
        }
    }

    #[cfg(test)]
    fn with_tag(tag: u16) -> Self {
        Self {
            tag,
            last: Mutex::new((0, 0)),
        }
    }

    /// The next id: greater than every id this sequencer made or observed.
    pub fn next(&self) -> MessageId {
        let now = now_ms();
        let mut last = crate::sync::lock(&self.last);
        *last = if now > last.0 {
            (now, u128::from(random_u64() % COUNTER_START_RANGE))
        } else if last.1 < COUNTER_MAX {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        encode(last.0, last.1, self.tag)
    }

    /// Another writer made `id`: every id from now on is greater.
    pub fn observe(&self, id: MessageId) {
        let seen = decode(id);
        let mut last = crate::sync::lock(&self.last);
        if seen > *last {
            *last = seen;
        }
    }
}

fn encode(ms: u64, counter: u128, tag: u16) -> MessageId {
    let rest = (counter << TAG_BITS) | u128::from(tag);
    // 74 bits of `rest`: the top 12 go in rand_a, the low 62 in rand_b.
    let value = (u128::from(ms & 0xffff_ffff_ffff) << 80)
        | (0x7 << 76)
        | ((rest >> 62) << 64)
        | (0b10 << 62)
        | (rest & ((1 << 62) - 1));
    MessageId::from(Uuid::from_u128(value))
}

/// The (millisecond, counter) of any UUIDv7, ours or not.
fn decode(id: MessageId) -> (u64, u128) {
    let value = id.as_uuid().as_u128();
    let ms = (value >> 80) as u64;
    let rest = (((value >> 64) & 0xfff) << 62) | (value & ((1 << 62) - 1));
    (ms, rest >> TAG_BITS)
}

/// The smallest id of the millisecond `age` ago: every message stored since sorts after it.
pub fn first_id_since(age: Duration) -> MessageId {
    let ms = now_ms().saturating_sub(age.as_millis() as u64);
    MessageId::from(Uuid::from_u128(u128::from(ms) << 80))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without the OS's randomness the tag and start point are merely less spread out.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_uuidv7_and_only_go_up() {
        let sequencer = Sequencer::new();
        let ids: Vec<MessageId> = (0..10_000).map(|_| sequencer.next()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert!(
            texts.windows(2).all(|w| w[0] < w[1]),
            "text sorts like the id"
        );
        for id in &ids {
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert_eq!(id.as_uuid().get_variant(), uuid::Variant::RFC4122);
        }
    }

    #[test]
    fn jumps_past_what_another_writer_made() {
        let ahead = Sequencer::with_tag(1);
        // A writer whose clock runs an hour ahead.
        *ahead.last.lock().expect("lock") = (now_ms() + 3_600_000, 5);
        let theirs = ahead.next();
        let ours = Sequencer::with_tag(2);
        ours.observe(theirs);
        let next = ours.next();
        assert!(next > theirs);
        assert_ne!(next, ahead.next(), "tags keep writers apart");
    }

    #[test]
    fn decode_reads_what_encode_wrote() {
        assert_eq!(
            decode(encode(1_790_000_000_123, 42, 7)),
            (1_790_000_000_123, 42)
        );
        // A plain UUIDv7 from elsewhere decodes to its own millisecond.
        let foreign = MessageId::new();
        assert!(decode(foreign).0 >= now_ms() - 1000);
    }
}
