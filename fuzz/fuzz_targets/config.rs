//! The config loader: TOML text over the compiled-in defaults, then validation, then what start-up
//! derives from it without touching the network or files (the log URL, the SSRF guard's ranges,
//! the start-up warnings). Whatever the text, the outcome is a `Config` or an error naming the
//! key, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ssf_hub::config::Config::from_toml(text) {
        let _ = config.log_url();
        let _ = config.risks();
        let _ = ssf_hub::guard::Guard::new(&config.delivery.allow_private_targets);
    }
});
