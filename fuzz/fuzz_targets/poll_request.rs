//! RFC 8936 poll request bodies (`ack`, `setErrs`, `maxEvents`, `returnImmediately`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ssf_hub::delivery::poll::parse_request(data);
});
