//! libFuzzer on the `config` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("config") {
        (target.run)(data);
    }
});
