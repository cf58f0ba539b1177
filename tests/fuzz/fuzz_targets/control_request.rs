//! libFuzzer on the `control_request` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("control_request") {
        (target.run)(data);
    }
});
