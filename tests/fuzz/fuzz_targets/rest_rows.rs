//! libFuzzer on the `rest_rows` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("rest_rows") {
        (target.run)(data);
    }
});
