//! libFuzzer on the `ipc_frame` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("ipc_frame") {
        (target.run)(data);
    }
});
