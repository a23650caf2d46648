//! Fuzz target for the one parser of untrusted bytes in the control plane:
//! the heartbeat between `nhamd`s (`cluster::heartbeat`), which any host on
//! the underlay can send. Under `cargo test` bolero runs it over generated
//! inputs; with a fuzzing engine installed it runs coverage-guided
//! (`cargo bolero test --package nham-control --test fuzz_heartbeat`).
//!
//! A heartbeat that parses must re-emit to the bytes it was read from (up
//! to its length: trailing bytes are ignored; so are unknown flag bits).

use nham_control::cluster::heartbeat::{Heartbeat, HeartbeatPacket, LEAVING};

#[test]
fn heartbeat() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let Ok(packet) = HeartbeatPacket::new_checked(bytes) else {
            return;
        };
        let _ = (packet.incarnation(), packet.seq());
        let Ok(hb) = Heartbeat::parse(&packet) else {
            return;
        };
        let out = hb.emit().expect("a parsed heartbeat re-emits");
        // The same bytes, but for flag bits this version ignores.
        assert_eq!(&bytes[..5], &out[..5]);
        assert_eq!(bytes[5] & LEAVING, out[5]);
        assert_eq!(&bytes[6..out.len()], &out[6..]);
        assert_eq!(Heartbeat::from_bytes(&out), Ok(hb));
    });
}
