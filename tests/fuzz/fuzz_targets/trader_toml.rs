//! libFuzzer on the `trader_toml` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("trader_toml") {
        (target.run)(data);
    }
});
