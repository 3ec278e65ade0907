//! Every decoder of a bus message, fed arbitrary bytes: a body from the queue is
//! untrusted (any agent, or anyone with the broker's credentials, can publish one).
//! No input may panic, and whatever decodes must encode and decode again.

#![no_main]

use aios_crds::bus::{MemoryNote, Message, TaskCancel, TaskDispatch, TaskEvent};
use libfuzzer_sys::fuzz_target;

fn check<M: Message + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let encoded = message.encode().expect("a decoded message encodes");
        if let Err(err) = M::decode(&encoded) {
            panic!("{} decoded, encoded, then failed to decode: {err}: {message:?}", M::KIND);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<TaskDispatch>(data);
    check::<TaskEvent>(data);
    check::<TaskCancel>(data);
    check::<MemoryNote>(data);
});
