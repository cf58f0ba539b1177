//! libFuzzer on the `ws_message` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("ws_message") {
        (target.run)(data);
    }
});
