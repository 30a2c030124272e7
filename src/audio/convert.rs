//! Offline conversion (`callbridge audio convert IN OUT [--rate HZ]`) through
//! the same transcoders and resamplers a call uses, so a file converted here
//! sounds exactly like what the model hears or the caller gets.
//!
//! Formats are chosen by extension: `.ulaw` is raw μ-law at 8 kHz, mono;
//! `.wav` is 16-bit PCM mono at 8000 or 24000 Hz. Resampled output is not
//! trimmed: like a call, it starts with the resampler's 2.5 ms delay and
//! ends with the flushed tail (so 24 kHz → 8 kHz turns n samples into
//! ⌈n / 3⌉ + 20, and 8 kHz → 24 kHz turns n into 3n + 60).

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::resample::{Downsampler, Upsampler};
use super::{g711, AudioMode, InboundTranscoder, OutboundTranscoder};

/// Why a conversion failed; each message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: unknown extension (expected .ulaw or .wav)", path.display())]
    UnknownExtension { path: PathBuf },
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: no audio (empty input)", path.display())]
    Empty { path: PathBuf },
    #[error("{}: not a readable WAV file: {cause}", path.display())]
    NotWav { path: PathBuf, cause: hound::Error },
    #[error("{}: WAV is not mono (channels={channels}); only mono is supported", path.display())]
    Channels { path: PathBuf, channels: u16 },
    #[error(
        "{}: WAV has {bits}-bit {} samples; only 16-bit integer PCM is supported",
        path.display(),
        if *float { "float" } else { "integer" }
    )]
    SampleFormat {
        path: PathBuf,
        bits: u16,
        float: bool,
    },
    #[error("{}: unsupported sample rate {rate} Hz (only 8000 and 24000)", path.display())]
    SampleRate { path: PathBuf, rate: u32 },
    #[error("{}: truncated WAV: header says {expected} samples, found {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u32,
        found: usize,
    },
    #[error("--rate {rate}: unsupported sample rate (only 8000 and 24000)")]
    RateArgument { rate: u32 },
    #[error("{}: --rate {rate} does not apply to .ulaw output (always 8000 Hz)", path.display())]
    RateForUlaw { path: PathBuf, rate: u32 },
    #[error("{}: cannot write: {cause}", path.display())]
    Write { path: PathBuf, cause: hound::Error },
}

/// What a conversion did, for the CLI to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertReport {
    pub in_samples: usize,
    pub out_samples: usize,
    pub in_rate: u32,
    pub out_rate: u32,
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |n: usize, rate: u32| n as f64 / f64::from(rate);
        write!(
            f,
            "{} samples at {} Hz ({:.3} s) -> {} samples at {} Hz ({:.3} s)",
            self.in_samples,
            self.in_rate,
            secs(self.in_samples, self.in_rate),
            self.out_samples,
            self.out_rate,
            secs(self.out_samples, self.out_rate)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ulaw,
    Wav,
}

fn kind(path: &Path) -> Result<Kind, ConvertError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("ulaw") => Ok(Kind::Ulaw),
        Some("wav") => Ok(Kind::Wav),
        _ => Err(ConvertError::UnknownExtension {
            path: path.to_owned(),
        }),
    }
}

fn supported_rate(rate: u32) -> bool {
    rate == 8000 || rate == 24_000
}

enum Audio {
    Ulaw(Vec<u8>),
    Pcm { rate: u32, samples: Vec<i16> },
}

impl Audio {
    fn len(&self) -> usize {
        match self {
            Audio::Ulaw(codes) => codes.len(),
            Audio::Pcm { samples, .. } => samples.len(),
        }
    }

    fn rate(&self) -> u32 {
        match self {
            Audio::Ulaw(_) => 8000,
            Audio::Pcm { rate, .. } => *rate,
        }
    }
}

fn read(path: &Path, kind: Kind) -> Result<Audio, ConvertError> {
    let bytes = std::fs::read(path).map_err(|cause| ConvertError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let empty = || ConvertError::Empty {
        path: path.to_owned(),
    };
    if bytes.is_empty() {
        return Err(empty());
    }
    if kind == Kind::Ulaw {
        return Ok(Audio::Ulaw(bytes));
    }

    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|cause| ConvertError::NotWav {
            path: path.to_owned(),
            cause,
        })?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(ConvertError::Channels {
            path: path.to_owned(),
            channels: spec.channels,
        });
    }
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(ConvertError::SampleFormat {
            path: path.to_owned(),
            bits: spec.bits_per_sample,
            float: spec.sample_format == hound::SampleFormat::Float,
        });
    }
    if !supported_rate(spec.sample_rate) {
        return Err(ConvertError::SampleRate {
            path: path.to_owned(),
            rate: spec.sample_rate,
        });
    }
    let expected = reader.len();
    // A short data chunk shows up either as a read error or as an early end.
    let samples: Vec<i16> = reader.into_samples::<i16>().map_while(Result::ok).collect();
    if samples.len() != expected as usize {
        return Err(ConvertError::Truncated {
            path: path.to_owned(),
            expected,
            found: samples.len(),
        });
    }
    if samples.is_empty() {
        return Err(empty());
    }
    Ok(Audio::Pcm {
        rate: spec.sample_rate,
        samples,
    })
}

fn pcm_from_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn pcm_to_le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn to_ulaw(audio: Audio) -> Vec<u8> {
    match audio {
        Audio::Ulaw(codes) => codes,
        Audio::Pcm {
            rate: 8000,
            samples,
        } => {
            let mut codes = Vec::with_capacity(samples.len());
            g711::encode_into(&samples, &mut codes);
            codes
        }
        Audio::Pcm { samples, .. } => {
            let mut outbound = OutboundTranscoder::new(AudioMode::Pcm16);
            // Whole samples by construction, so the odd-length error cannot occur.
            let mut codes = outbound
                .transcode(&pcm_to_le(&samples))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            codes.extend_from_slice(outbound.flush());
            codes
        }
    }
}

fn to_pcm(audio: Audio, out_rate: u32) -> Vec<i16> {
    match (audio, out_rate) {
        (Audio::Ulaw(codes), 8000) => {
            let mut samples = Vec::with_capacity(codes.len());
            g711::decode_into(&codes, &mut samples);
            samples
        }
        (Audio::Ulaw(codes), _) => {
            let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
            let mut samples = pcm_from_le(inbound.transcode(&codes));
            samples.extend(pcm_from_le(inbound.flush()));
            samples
        }
        (Audio::Pcm { rate, samples }, out) if rate == out => samples,
        (Audio::Pcm { samples, .. }, 24_000) => {
            let mut up = Upsampler::new();
            let mut out = Vec::with_capacity(3 * samples.len() + Upsampler::DELAY_SAMPLES_24K);
            up.process(&samples, &mut out);
            up.flush(&mut out);
            out
        }
        (Audio::Pcm { samples, .. }, _) => {
            let mut down = Downsampler::new();
            let mut out =
                Vec::with_capacity(samples.len() / 3 + 1 + Downsampler::DELAY_SAMPLES_24K);
            down.process(&samples, &mut out);
            down.flush(&mut out);
            out
        }
    }
}

fn write_wav(path: &Path, rate: u32, samples: &[i16]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)?;
    let mut samples_writer = writer.get_i16_writer(samples.len() as u32);
    for &s in samples {
        samples_writer.write_sample(s);
    }
    samples_writer.flush()?;
    writer.finalize()
}

/// Converts `input` to `output` (formats by extension). `rate` picks the
/// output rate of a `.wav` output (default: the input's rate; `.ulaw` input
/// counts as 8000). All checks run before `output` is created, so a failed
/// conversion leaves no half-written file behind.
pub fn convert(
    input: &Path,
    output: &Path,
    rate: Option<u32>,
) -> Result<ConvertReport, ConvertError> {
    let in_kind = kind(input)?;
    let out_kind = kind(output)?;
    match (out_kind, rate) {
        (Kind::Ulaw, Some(rate)) if rate != 8000 => {
            return Err(ConvertError::RateForUlaw {
                path: output.to_owned(),
                rate,
            })
        }
        (Kind::Wav, Some(rate)) if !supported_rate(rate) => {
            return Err(ConvertError::RateArgument { rate })
        }
        _ => {}
    }

    let audio = read(input, in_kind)?;
    let (in_samples, in_rate) = (audio.len(), audio.rate());
    let write_error = |cause| ConvertError::Write {
        path: output.to_owned(),
        cause,
    };
    let (out_samples, out_rate) = match out_kind {
        Kind::Ulaw => {
            let codes = to_ulaw(audio);
            std::fs::write(output, &codes).map_err(|e| write_error(hound::Error::IoError(e)))?;
            (codes.len(), 8000)
        }
        Kind::Wav => {
            let out_rate = rate.unwrap_or(in_rate);
            let samples = to_pcm(audio, out_rate);
            write_wav(output, out_rate, &samples).map_err(write_error)?;
            (samples.len(), out_rate)
        }
    };
    Ok(ConvertReport {
        in_samples,
        out_samples,
        in_rate,
        out_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::measure::sine;

    fn write_wav_with(path: &Path, spec: hound::WavSpec, samples: usize) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..samples {
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(n as f32 / 1e4).unwrap(),
                (_, 8) => w.write_sample((n % 100) as i8).unwrap(),
                _ => w.write_sample((n % 1000) as i16).unwrap(),
            }
        }
        w.finalize().unwrap();
    }

    fn spec(channels: u16, rate: u32, bits: u16, format: hound::SampleFormat) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        }
    }

    fn mono16(rate: u32) -> hound::WavSpec {
        spec(1, rate, 16, hound::SampleFormat::Int)
    }

    fn read_wav(path: &Path) -> (u32, Vec<i16>) {
        let r = hound::WavReader::open(path).unwrap();
        let rate = r.spec().sample_rate;
        (rate, r.into_samples::<i16>().map(Result::unwrap).collect())
    }

    fn err(input: &Path, output: &Path, rate: Option<u32>) -> String {
        let e = convert(input, output, rate).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        msg
    }

    #[test]
    fn ulaw_to_wav_8k_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.ulaw"), dir.path().join("out.wav"));
        let codes: Vec<u8> = (0..=255).collect();
        std::fs::write(&input, &codes).unwrap();
        let report = convert(&input, &output, None).unwrap();
        assert_eq!(
            report,
            ConvertReport {
                in_samples: 256,
                out_samples: 256,
                in_rate: 8000,
                out_rate: 8000
            }
        );
        let (rate, samples) = read_wav(&output);
        assert_eq!(rate, 8000);
        let expected: Vec<i16> = codes.iter().map(|&c| g711::decode(c)).collect();
        assert_eq!(samples, expected);
        assert_eq!(
            report.to_string(),
            "256 samples at 8000 Hz (0.032 s) -> 256 samples at 8000 Hz (0.032 s)"
        );

        // And back: every code except negative zero survives.
        let back = dir.path().join("back.ulaw");
        convert(&output, &back, None).unwrap();
        let mut expected = codes.clone();
        expected[0x7F] = 0xFF;
        assert_eq!(std::fs::read(&back).unwrap(), expected);
    }

    #[test]
    fn ulaw_to_wav_24k_and_back_uses_the_call_path() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ulaw");
        let mut codes = Vec::new();
        g711::encode_into(&sine(440.0, 8000, 8000.0, 1600), &mut codes);
        std::fs::write(&input, &codes).unwrap();

        let wav = dir.path().join("model.wav");
        let report = convert(&input, &wav, Some(24_000)).unwrap();
        assert_eq!(
            (report.out_samples, report.out_rate),
            (3 * 1600 + 60, 24_000)
        );
        let mut inbound = InboundTranscoder::new(AudioMode::Pcm16);
        let mut expected = pcm_from_le(inbound.transcode(&codes));
        expected.extend(pcm_from_le(inbound.flush()));
        assert_eq!(read_wav(&wav), (24_000, expected));

        let back = dir.path().join("caller.ulaw");
        let report = convert(&wav, &back, None).unwrap();
        assert_eq!(
            (report.in_rate, report.out_samples, report.out_rate),
            (24_000, 1600 + 40, 8000)
        );

        let wav8k = dir.path().join("caller.wav");
        let report = convert(&wav, &wav8k, Some(8000)).unwrap();
        assert_eq!(report.out_samples, 1600 + 40);
        let (_, down) = read_wav(&wav8k);
        let via_ulaw: Vec<u8> = down.iter().map(|&s| g711::encode(s)).collect();
        assert_eq!(std::fs::read(&back).unwrap(), via_ulaw);
    }

    #[test]
    fn same_format_copies() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.ulaw");
        std::fs::write(&input, [1, 2, 3]).unwrap();
        let out = dir.path().join("b.ulaw");
        convert(&input, &out, Some(8000)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), [1, 2, 3]);

        let wav = dir.path().join("a.WAV");
        write_wav_with(&wav, mono16(24_000), 500);
        let copy = dir.path().join("b.wav");
        convert(&wav, &copy, None).unwrap();
        assert_eq!(read_wav(&copy), read_wav(&wav));
    }

    #[test]
    fn wav_8k_to_24k_upsamples() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.wav"), dir.path().join("out.wav"));
        write_wav_with(&input, mono16(8000), 100);
        let report = convert(&input, &output, Some(24_000)).unwrap();
        assert_eq!((report.in_samples, report.out_samples), (100, 360));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let ulaw = p("ok.ulaw");
        std::fs::write(&ulaw, [0xFF; 160]).unwrap();

        let msg = err(&p("in.mp3"), &p("out.wav"), None);
        assert!(
            msg.contains("in.mp3") && msg.contains("unknown extension"),
            "{msg}"
        );
        let msg = err(&ulaw, &p("out"), None);
        assert!(msg.contains("unknown extension"), "{msg}");

        let stereo = p("stereo.wav");
        write_wav_with(&stereo, spec(2, 8000, 16, hound::SampleFormat::Int), 100);
        let msg = err(&stereo, &p("o.ulaw"), None);
        assert!(
            msg.contains("stereo.wav") && msg.contains("channels=2"),
            "{msg}"
        );

        let float = p("float.wav");
        write_wav_with(&float, spec(1, 8000, 32, hound::SampleFormat::Float), 100);
        let msg = err(&float, &p("o.ulaw"), None);
        assert!(
            msg.contains("float.wav") && msg.contains("32-bit float"),
            "{msg}"
        );

        let eight = p("eight.wav");
        write_wav_with(&eight, spec(1, 8000, 8, hound::SampleFormat::Int), 100);
        let msg = err(&eight, &p("o.ulaw"), None);
        assert!(msg.contains("8-bit integer"), "{msg}");

        let rate = p("16k.wav");
        write_wav_with(&rate, mono16(16_000), 100);
        let msg = err(&rate, &p("o.ulaw"), None);
        assert!(msg.contains("16k.wav") && msg.contains("16000 Hz"), "{msg}");

        let empty = p("empty.ulaw");
        std::fs::write(&empty, []).unwrap();
        let msg = err(&empty, &p("o.wav"), None);
        assert!(
            msg.contains("empty.ulaw") && msg.contains("no audio"),
            "{msg}"
        );
        let empty_wav = p("empty.wav");
        write_wav_with(&empty_wav, mono16(8000), 0);
        assert!(matches!(
            convert(&empty_wav, &p("o.ulaw"), None),
            Err(ConvertError::Empty { .. })
        ));

        let truncated = p("truncated.wav");
        write_wav_with(&truncated, mono16(8000), 1000);
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 501]).unwrap();
        let msg = err(&truncated, &p("o.ulaw"), None);
        assert!(
            msg.contains("truncated.wav") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(msg.contains("1000 samples"), "{msg}");

        let garbage = p("garbage.wav");
        std::fs::write(&garbage, b"not a wav file").unwrap();
        let msg = err(&garbage, &p("o.ulaw"), None);
        assert!(
            msg.contains("garbage.wav") && msg.contains("not a readable WAV"),
            "{msg}"
        );

        let msg = err(&ulaw, &p("o.wav"), Some(16_000));
        assert!(msg.contains("--rate 16000"), "{msg}");
        let out = p("o.ulaw");
        let msg = err(&ulaw, &out, Some(24_000));
        assert!(
            msg.contains("o.ulaw") && msg.contains("--rate 24000"),
            "{msg}"
        );
        assert!(!out.exists(), "no output on a failed conversion");

        let msg = err(&p("missing.ulaw"), &p("o.wav"), None);
        assert!(
            msg.contains("missing.ulaw") && msg.contains("cannot read"),
            "{msg}"
        );
    }
}
