//! libFuzzer on the `replay_csv` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("replay_csv") {
        (target.run)(data);
    }
});
