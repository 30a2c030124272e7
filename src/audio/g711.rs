//! G.711 μ-law, the codec of Twilio Media Streams (8 kHz, one byte per sample).
//!
//! Both directions are table lookups so the per-sample cost is one load: the
//! bridge runs this on every sample of every call. The tables are computed at
//! compile time and follow the ITU-T G.191 software tool library (the G.711
//! reference implementation, `ulaw_compress` / `ulaw_expand`).
//!
//! The encoder differs from the widely copied Sun Microsystems `g711.c`
//! (`linear2ulaw`) for negative samples: G.191 takes the one's complement
//! (`!x`, i.e. `-x - 1`) as the magnitude where Sun takes `-x`. The two
//! disagree at exactly 127 inputs, the negative samples whose magnitude sits
//! on a decision threshold: `x = 132 - ((16 + k) << (s + 3))` for every
//! segment `s` in 0..8 and step `k` in 0..16 except `(0, 0)`, i.e. −4, −12,
//! −20, …, −31612. There Sun's code is one step further from zero than
//! G.191's; every other input, and all of decoding, is identical. The unit
//! tests compute G.191 independently and prove both claims for every input.
//!
//! The one's complement makes the encoder depend only on `x >> 2` (the 14-bit
//! sample G.711 specifies: `!x >> 2 == !(x >> 2)`), so the encode table has
//! 16,384 entries, indexed by the sample's top 14 bits.

/// The bias of the μ-law segments in 16-bit units (33 in G.191's 14-bit
/// units): it makes every segment start on a power of two.
const BIAS: i32 = 0x84;

/// μ-law code → linear sample, per G.191 `ulaw_expand` (identical to Sun's
/// `ulaw2linear`).
static DECODE: [i16; 256] = build_decode();

/// The sample's top 14 bits (its bit pattern as `u16`, shifted right by 2)
/// → μ-law code.
static ENCODE: [u8; 16384] = build_encode();

const fn decode_reference(code: u8) -> i16 {
    let u = !code;
    let mut t = (((u & 0x0F) as i32) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    let value = if u & 0x80 != 0 { BIAS - t } else { t - BIAS };
    value as i16
}

/// G.191 `ulaw_compress` for one sample, with the segment found by counting
/// leading zeros rather than by G.191's shift loop (same result; cheaper for
/// the compile-time evaluator).
const fn encode_reference(sample: i16) -> u8 {
    // 14-bit magnitude: one's complement for negative samples, as G.191 does.
    let (magnitude, sign) = if sample < 0 {
        ((!sample) >> 2, 0x00_u8)
    } else {
        (sample >> 2, 0x80_u8)
    };
    let mut biased = magnitude as u32 + (BIAS as u32 >> 2); // 33..=8224
    if biased > 0x1FFF {
        biased = 0x1FFF;
    }
    // Segment s covers biased values in [0x20 << s, 0x40 << s).
    let segment = (31 - biased.leading_zeros()) - 5;
    let mantissa = (biased >> (segment + 1)) & 0x0F;
    (((segment << 4) as u8 | mantissa as u8) ^ 0x7F) | sign
}

const fn build_decode() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = decode_reference(code as u8);
        code += 1;
    }
    table
}

const fn build_encode() -> [u8; 16384] {
    let mut table = [0u8; 16384];
    let mut index = 0;
    while index < 16384 {
        // The smallest sample with these top 14 bits stands for all four.
        table[index] = encode_reference((index << 2) as u16 as i16);
        index += 1;
    }
    table
}

/// Decodes one μ-law code to a linear 16-bit sample.
#[inline]
pub fn decode(code: u8) -> i16 {
    DECODE[code as usize]
}

/// Encodes one linear 16-bit sample to μ-law.
#[inline]
pub fn encode(sample: i16) -> u8 {
    ENCODE[(sample as u16 >> 2) as usize]
}

/// Appends the decoded samples to `out`, so callers can reuse one buffer per call.
pub fn decode_into(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| decode(c)));
}

/// Appends the encoded codes to `out`, so callers can reuse one buffer per call.
pub fn encode_into(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| encode(s)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ITU-T G.191 `ulaw_compress`, written from its description and
    /// independently of the table builder above: the 16-bit sample is taken
    /// as 14 bits (`>> 2`), negative samples by their one's complement, 33
    /// added, clipped to 0x1FFF, the segment found by shifting, and the code
    /// assembled from the inverted segment and mantissa nibbles.
    fn ulaw_compress(linear: i16) -> u8 {
        let x = i32::from(linear);
        let mut absno = if x < 0 {
            ((!x) >> 2) + 33
        } else {
            (x >> 2) + 33
        };
        if absno > 0x1FFF {
            absno = 0x1FFF;
        }
        let mut i = absno >> 6;
        let mut segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high_nibble = 0x08 - segno;
        let low_nibble = 0x0F - ((absno >> segno) & 0x0F);
        let mut log = (high_nibble << 4) | low_nibble;
        if x >= 0 {
            log |= 0x80;
        }
        log as u8
    }

    /// ITU-T G.191 `ulaw_expand`: sign from bit 7, exponent and mantissa
    /// from the complemented code, half a quantization step added, the bias
    /// (4 × 33) removed.
    fn ulaw_expand(log: u8) -> i16 {
        let sign = if log < 0x80 { -1 } else { 1 };
        let complement = i32::from(!log);
        let exponent = (complement >> 4) & 0x07;
        let segment = exponent + 1;
        let mantissa = complement & 0x0F;
        let step = 4 << segment;
        (sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
    }

    /// Sun `g711.c` `linear2ulaw` (magnitude `-x`, bias 0x84, clip 32635),
    /// kept to pin down exactly where G.191 differs from it.
    fn sun_linear2ulaw(pcm: i16) -> u8 {
        const SEG_END: [i32; 8] = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF];
        let mut pcm_val = i32::from(pcm);
        let mask: i32;
        if pcm_val < 0 {
            pcm_val = -pcm_val;
            mask = 0x7F;
        } else {
            mask = 0xFF;
        }
        if pcm_val > 32635 {
            pcm_val = 32635;
        }
        pcm_val += 0x84;
        let mut seg = 0;
        while seg < 8 && pcm_val > SEG_END[seg] {
            seg += 1;
        }
        if seg >= 8 {
            return (0x7F ^ mask) as u8;
        }
        let uval = ((seg as i32) << 4) | ((pcm_val >> (seg + 3)) & 0xF);
        (uval ^ mask) as u8
    }

    #[test]
    fn encode_matches_g191_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(encode(s), ulaw_compress(s), "sample {s}");
        }
    }

    #[test]
    fn decode_matches_g191_for_every_code() {
        for c in 0..=255u8 {
            assert_eq!(decode(c), ulaw_expand(c), "code {c:#04x}");
        }
    }

    #[test]
    fn differs_from_sun_exactly_at_the_127_negative_thresholds() {
        let differing: Vec<i16> = (i16::MIN..=i16::MAX)
            .filter(|&s| encode(s) != sun_linear2ulaw(s))
            .collect();
        // Every decision threshold of the biased magnitude, (16 + k) << (s + 3),
        // but the first (0x80, below any biased value), as a negative sample.
        let mut thresholds: Vec<i16> = (0..8)
            .flat_map(|seg: i32| (0..16).map(move |k: i32| (16 + k) << (seg + 3)))
            .filter(|&b| b != 0x80)
            .map(|b| (0x84 - b) as i16)
            .collect();
        thresholds.sort_unstable();
        assert_eq!(differing, thresholds);
        assert_eq!(differing.len(), 127);
        assert_eq!((differing[0], differing[126]), (-31612, -4));
        for &s in &differing {
            // Sun rounds the threshold away from zero: one code step louder.
            assert_eq!(sun_linear2ulaw(s), encode(s) - 1, "sample {s}");
            assert!(decode(sun_linear2ulaw(s)) < decode(encode(s)), "sample {s}");
        }
    }

    #[test]
    fn symmetric_about_minus_one_half() {
        // The one's complement makes x and -x-1 differ only in the sign bit.
        for x in 0..=i16::MAX {
            assert_eq!(encode(x) ^ 0x80, encode(-x - 1), "sample {x}");
        }
    }

    #[test]
    fn known_values() {
        // G.191 encodes zero as positive zero (0xFF), and -1..=-4 as
        // negative zero (0x7F); both decode to 0.
        assert_eq!(encode(0), 0xFF);
        assert_eq!(encode(3), 0xFF);
        assert_eq!(encode(4), 0xFE);
        assert_eq!(encode(-1), 0x7F);
        assert_eq!(encode(-4), 0x7F);
        assert_eq!(sun_linear2ulaw(-4), 0x7E);
        assert_eq!(encode(-5), 0x7E);
        assert_eq!(encode(i16::MAX), 0x80);
        assert_eq!(encode(i16::MIN), 0x00);
        assert_eq!(decode(0xFF), 0);
        assert_eq!(decode(0x7F), 0);
        assert_eq!(decode(0x80), 32124);
        assert_eq!(decode(0x00), -32124);
    }

    #[test]
    fn decoded_values_re_encode_to_themselves() {
        for c in 0..=255u8 {
            let back = encode(decode(c));
            // 0x7F (negative zero) decodes to 0, which G.191 encodes as 0xFF.
            if c == 0x7F {
                assert_eq!(back, 0xFF);
                assert_eq!(ulaw_compress(ulaw_expand(c)), 0xFF);
            } else {
                assert_eq!(back, c, "code {c:#04x}");
            }
        }
    }

    #[test]
    fn slice_helpers_append() {
        let mut pcm = vec![7];
        decode_into(&[0xFF, 0x80], &mut pcm);
        assert_eq!(pcm, [7, 0, 32124]);
        let mut codes = vec![1];
        encode_into(&[0, i16::MIN], &mut codes);
        assert_eq!(codes, [1, 0xFF, 0x00]);
    }
}
