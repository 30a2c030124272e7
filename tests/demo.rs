//! The README's first command, in-process: a whole call with a barge-in
//! through the real server and the local model peer, in both protocols.

use std::time::Duration;

use callbridge::audio::AudioMode;
use callbridge::config::Dialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_call_has_a_turn_and_a_barge_in_in_pcmu_mode() {
    let (report, side) = callbridge_sim::demo::run(
        Dialect::Ga,
        AudioMode::Pcmu,
        Duration::from_millis(1500),
        None,
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.turns >= 2, "{report}");
    assert_eq!(report.clears, 1, "{report}");
    assert_eq!(side.bargeins, 1);
    assert_eq!(side.truncations, 1);
    assert!(report.talk_over_stop.is_some(), "{report}");
    assert_eq!(report.close_code, Some(1000));
    assert!(side.frames_in > 500 && side.frames_out > 50, "{side:?}");
    // The caller heard answer audio, and both tracks cover the same timeline.
    assert!(report.bytes_heard > 8 * 2000, "{report}");
    assert_eq!(report.sent.len(), report.heard.len());
}

/// GPT-Live: the model yields by itself when talked over; the bridge sends
/// no `clear` and tells the model nothing about what was heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_call_over_gpt_live_has_a_turn_and_the_model_yields() {
    let (report, side) = callbridge_sim::demo::run(
        Dialect::Live,
        AudioMode::Pcmu,
        Duration::from_millis(1500),
        None,
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.turns >= 2, "{report}");
    assert_eq!(report.clears, 0, "{report}");
    assert_eq!(side.bargeins, 0);
    assert!(report.talk_over_stop.is_some(), "{report}");
    assert_eq!(report.close_code, Some(1000));
    assert!(report.bytes_heard > 8 * 2000, "{report}");
}
