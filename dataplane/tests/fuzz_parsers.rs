//! Fuzz targets for every parser of untrusted bytes in the data plane (NSH
//! header, NHAM metadata, NSH-over-Ethernet decapsulation, 5-tuple
//! extraction for the classifier).
//!
//! Under `cargo test` bolero runs each target over its seed corpus
//! (`tests/__fuzz__/<target>/corpus/`) and a few thousand generated inputs.
//! With a fuzzing engine installed, the same targets run coverage-guided:
//! `cargo bolero test --package nham-dataplane <target>`.
//!
//! Each target asserts more than "no panic": a header that parses must
//! re-emit to bytes that parse to the same value.

use nham_dataplane::classifier::{decapsulate, Classifier, FlowKey, Rule};
use nham_dataplane::nsh::{NshPacket, NshRepr};

#[test]
fn nsh_header() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let Ok(packet) = NshPacket::new_checked(bytes) else {
            return;
        };
        let repr = NshRepr::parse(&packet).expect("a checked packet parses");
        let _ = packet.nham_metadata();
        assert_eq!(repr.nham_metadata(), packet.nham_metadata());
        assert!(packet.header_len() <= bytes.len());
        let mut out = vec![0u8; repr.header_len()];
        let n = repr.emit(&mut out).expect("a parsed header re-emits");
        let again = NshRepr::parse(&NshPacket::new_checked(&out[..n]).expect("re-emitted parses"))
            .expect("re-emitted parses");
        assert_eq!(again, repr);
    });
}

#[test]
fn ethernet_frame() {
    let mut classifier = Classifier::new(vec![
        Rule {
            proto: Some(17),
            dst_ports: Some(53..=53),
            ..Rule::any(1)
        },
        Rule {
            src: Some("10.0.0.0/8".parse().unwrap()),
            ..Rule::any(2)
        },
    ])
    .unwrap();
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = decapsulate(bytes);
        let key = FlowKey::from_ethernet(bytes);
        if let Some(fast) = FlowKey::from_ethernet_fast(bytes) {
            assert_eq!(
                FlowKey::from_ethernet_general(bytes),
                Ok(fast),
                "fast path disagrees"
            );
        }
        let class = classifier.classify(bytes);
        assert_eq!(key.is_ok(), class.is_ok());
    });
}
