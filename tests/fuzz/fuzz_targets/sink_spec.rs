//! libFuzzer on the `sink_spec` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("sink_spec") {
        (target.run)(data);
    }
});
