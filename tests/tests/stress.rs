//! Cross-process seqlock stress: one writer process hammering a slot, reader
//! processes reading it one seqlock attempt at a time. Every record carries its
//! absolute index and a checksum, so a torn record is recognisable whether the
//! seqlock accepted it or not.

use harness::TestInstance;

#[test]
fn no_torn_read_is_accepted_and_the_race_really_happened() {
    let inst = TestInstance::new("stress");
    let out = inst.shmkline(&[
        "bench",
        "torn",
        "--json",
        "--readers",
        "2",
        "--millis",
        "1500",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench torn failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let field = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("field {k} in {report}"))
    };
    assert_eq!(field("readers"), 2);
    assert!(field("writes") > 0, "the writer wrote: {report}");
    assert!(field("attempts") > 0, "the readers read: {report}");
    assert_eq!(
        field("torn_accepted"),
        0,
        "a torn record was accepted: {report}"
    );
    // Proof the test exercised the race: some attempts overlapped a write, saw
    // a mixed record, and the seqlock rejected them.
    assert!(
        field("torn_rejected") > 0,
        "no torn read was ever observed: {report}"
    );
    assert!(field("rejected") >= field("torn_rejected"));
    inst.assert_clean();
}
