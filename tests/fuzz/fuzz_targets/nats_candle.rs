//! libFuzzer on the `nats_candle` target of `engine::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = engine::fuzz::target("nats_candle") {
        (target.run)(data);
    }
});
