//! G.711 μ-law, the codec of Twilio Media Streams (8 kHz, one byte per sample).
//!
//! Both directions are table lookups so the per-sample cost is one load: the
//! bridge runs this on every sample of every call. The tables are computed at
//! compile time from the classic reference algorithm (Sun Microsystems'
//! `g711.c`: bias 0x84, clip 32635), and the unit tests check them against an
//! independent segment-search implementation for every input.

/// The bias the reference adds to the magnitude so that every segment starts
/// on a power of two, which makes the segment number a leading-zero count.
const BIAS: i32 = 0x84;
/// Largest magnitude that still fits in the top segment once biased (32635 + 0x84 = 0x7FFF).
const CLIP: i32 = 32635;

/// μ-law code → linear sample, per the reference `ulaw2linear`.
static DECODE: [i16; 256] = build_decode();

/// Linear sample (indexed by its bit pattern as `u16`) → μ-law code.
///
/// 64 KiB instead of a smaller `sample >> 2` table because the reference
/// works on the full 16-bit magnitude: negative samples that share `x >> 2`
/// can still encode differently, and bit-exactness is the requirement.
static ENCODE: [u8; 65536] = build_encode();

const fn decode_reference(code: u8) -> i16 {
    let u = !code;
    let mut t = (((u & 0x0F) as i32) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    let value = if u & 0x80 != 0 { BIAS - t } else { t - BIAS };
    value as i16
}

/// The reference encoder, with the segment found by counting leading zeros
/// rather than by table search (same result; cheaper for the compile-time
/// evaluator, which builds 65,536 entries).
const fn encode_reference(sample: i16) -> u8 {
    let (magnitude, mask) = if sample < 0 {
        (-(sample as i32), 0x7F_u8)
    } else {
        (sample as i32, 0xFF_u8)
    };
    let magnitude = if magnitude > CLIP { CLIP } else { magnitude };
    let biased = (magnitude + BIAS) as u32; // 0x84..=0x7FFF
                                            // Segment s covers biased values in [0x80 << s, 0x100 << s).
    let segment = (31 - biased.leading_zeros()) - 7;
    let mantissa = (biased >> (segment + 3)) & 0x0F;
    ((segment << 4) as u8 | mantissa as u8) ^ mask
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

const fn build_encode() -> [u8; 65536] {
    let mut table = [0u8; 65536];
    let mut bits = 0;
    while bits < 65536 {
        table[bits] = encode_reference(bits as u16 as i16);
        bits += 1;
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
    ENCODE[sample as u16 as usize]
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

    /// Sun `g711.c` `linear2ulaw`, written the classic way (segment search
    /// over `seg_end`) and independently of the table builder above.
    fn linear2ulaw(pcm: i16) -> u8 {
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

    /// Sun `g711.c` `ulaw2linear`.
    fn ulaw2linear(u_val: u8) -> i16 {
        let u = i32::from(!u_val);
        let mut t = ((u & 0x0F) << 3) + 0x84;
        t <<= (u & 0x70) >> 4;
        (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
    }

    #[test]
    fn encode_is_bit_exact_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(encode(s), linear2ulaw(s), "sample {s}");
        }
    }

    #[test]
    fn decode_is_bit_exact_for_every_code() {
        for c in 0..=255u8 {
            assert_eq!(decode(c), ulaw2linear(c), "code {c:#04x}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(encode(0), 0xFF);
        assert_eq!(encode(-1), 0x7F);
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
            // 0x7F (negative zero) decodes to 0, which encodes as 0xFF.
            if c == 0x7F {
                assert_eq!(back, 0xFF);
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
