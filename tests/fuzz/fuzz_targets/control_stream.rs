//! libFuzzer on the `control_stream` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("control_stream") {
        (target.run)(data);
    }
});
