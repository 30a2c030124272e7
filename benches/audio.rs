//! Per-frame cost of everything the audio path does to one 20 ms frame
//! (160 μ-law samples at 8 kHz, 480 PCM16 samples at 24 kHz).
//!
//! `cargo bench --bench audio`; each result is the time for one frame.

use std::hint::black_box;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callbridge::audio::measure::sine;
use callbridge::audio::resample::{Downsampler, Upsampler};
use callbridge::audio::{g711, AudioMode, InboundTranscoder, OutboundTranscoder};
use criterion::{criterion_group, criterion_main, Criterion};

fn frames(c: &mut Criterion) {
    let pcm8k = sine(440.0, 8000, 9000.0, 160);
    let pcm24k = sine(440.0, 24_000, 9000.0, 480);
    let mut ulaw = Vec::new();
    g711::encode_into(&pcm8k, &mut ulaw);
    let pcm24k_bytes: Vec<u8> = pcm24k.iter().flat_map(|s| s.to_le_bytes()).collect();
    let ulaw_b64 = STANDARD.encode(&ulaw);
    assert_eq!((pcm24k_bytes.len(), ulaw_b64.len()), (960, 216));

    let mut g = c.benchmark_group("frame_20ms");

    let mut samples = Vec::with_capacity(480);
    g.bench_function("ulaw_decode_160", |b| {
        b.iter(|| {
            samples.clear();
            g711::decode_into(black_box(&ulaw), &mut samples);
            black_box(&samples);
        })
    });

    let mut codes = Vec::with_capacity(160);
    g.bench_function("ulaw_encode_160", |b| {
        b.iter(|| {
            codes.clear();
            g711::encode_into(black_box(&pcm8k), &mut codes);
            black_box(&codes);
        })
    });

    let mut up = Upsampler::new();
    g.bench_function("resample_up_160_to_480", |b| {
        b.iter(|| {
            samples.clear();
            up.process(black_box(&pcm8k), &mut samples);
            black_box(&samples);
        })
    });

    let mut down = Downsampler::new();
    g.bench_function("resample_down_480_to_160", |b| {
        b.iter(|| {
            samples.clear();
            down.process(black_box(&pcm24k), &mut samples);
            black_box(&samples);
        })
    });

    let mut text = String::with_capacity(1280);
    g.bench_function("base64_encode_960_bytes", |b| {
        b.iter(|| {
            text.clear();
            STANDARD.encode_string(black_box(&pcm24k_bytes), &mut text);
            black_box(&text);
        })
    });

    let mut bytes = Vec::with_capacity(160);
    g.bench_function("base64_decode_216_chars", |b| {
        b.iter(|| {
            bytes.clear();
            STANDARD
                .decode_vec(black_box(&ulaw_b64), &mut bytes)
                .expect("valid base64");
            black_box(&bytes);
        })
    });

    let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
    g.bench_function("inbound_transcode_160_to_960_bytes", |b| {
        b.iter(|| black_box(inbound.transcode(black_box(&ulaw)).len()))
    });

    let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
    g.bench_function("outbound_transcode_960_to_160_bytes", |b| {
        b.iter(|| {
            black_box(
                outbound
                    .transcode(black_box(&pcm24k_bytes))
                    .map(<[u8]>::len),
            )
        })
    });

    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
