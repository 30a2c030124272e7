//! Prints the measured quality of the 8 kHz ⇄ 24 kHz resamplers (the numbers
//! the README quotes; the unit tests in `audio::resample` assert the bars).
//!
//! `cargo run --release --example resampler_report [STEP_HZ]` (default 10 Hz).

use callbridge::audio::measure::resampler_report;

fn main() {
    let step = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| *s > 0 && s % 10 == 0)
        .unwrap_or(10);
    println!("{}", resampler_report(f64::from(step)));
}
