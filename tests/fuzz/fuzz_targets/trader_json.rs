//! libFuzzer on the `trader_json` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("trader_json") {
        (target.run)(data);
    }
});
