//! G.711 (ITU-T Rec. G.711) A-law and µ-law: direct A ↔ µ conversion by 256-entry tables, and
//! conversion to and from 16-bit linear PCM.
//!
//! The A ↔ µ tables follow G.711's own conversion tables (Tables 3 and 4: µ → A and A → µ, by
//! magnitude; the sign is carried over), not a decode-and-re-encode, so a call translated by the
//! relay sounds as it would through a carrier's transcoder. The linear conversions follow the
//! reference behaviour of ITU-T G.191's G.711 module: 13-bit (A) and 14-bit (µ) values left-justified
//! in 16 bits, encoding by truncation, negative values by one's complement (so -1 encodes as the
//! negative zero code).
//!
//! Everything here is a table or a few shifts; [`translate`] works in place and allocates nothing.

/// The two G.711 laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// A-law (PCMA, static payload type 8).
    A,
    /// µ-law (PCMU, static payload type 0).
    Mu,
}

impl Law {
    /// The law of an SDP encoding name (`PCMA` / `PCMU`, any case).
    pub fn from_encoding(name: &str) -> Option<Law> {
        if name.eq_ignore_ascii_case("PCMA") {
            Some(Law::A)
        } else if name.eq_ignore_ascii_case("PCMU") {
            Some(Law::Mu)
        } else {
            None
        }
    }

    /// The RFC 3551 static payload type of the law.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Law::A => 8,
            Law::Mu => 0,
        }
    }
}

/// G.711 Table 4 (A → µ) by magnitude: index = A-law magnitude code (0 = smallest, i.e. the
/// character after undoing the even-bit inversion, sign removed), value = µ-law magnitude code.
const A_TO_MU_MAGNITUDE: [u8; 128] = [
    1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, //
    24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 33, 33, 34, 34, 35, 35, //
    36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 48, 49, 49, //
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 64, //
    65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, //
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, //
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, //
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, //
];

/// G.711 Table 3 (µ → A) by magnitude: index = µ-law magnitude code (0 = smallest), value = A-law
/// magnitude code.
const MU_TO_A_MAGNITUDE: [u8; 128] = [
    0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, //
    8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, //
    24, 26, 28, 30, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, //
    45, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, //
    63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, //
    79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, //
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, //
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, //
];

// Byte layout: an A-law byte is sign (1 = positive) + 7 magnitude bits with the even bits inverted
// (XOR 0x55); a µ-law byte is sign (1 = positive) + 7 magnitude bits all inverted.

const fn alaw_magnitude(a: u8) -> (bool, u8) {
    let positive = a & 0x80 != 0;
    (positive, (a ^ 0x55) & 0x7f)
}

const fn alaw_from(positive: bool, magnitude: u8) -> u8 {
    (if positive { 0x80 } else { 0 } | magnitude) ^ 0x55
}

const fn mulaw_magnitude(u: u8) -> (bool, u8) {
    let positive = u & 0x80 != 0;
    (positive, !u & 0x7f)
}

const fn mulaw_from(positive: bool, magnitude: u8) -> u8 {
    (if positive { 0x80 } else { 0 }) | (!magnitude & 0x7f)
}

const fn build_a_to_mu() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let (positive, m) = alaw_magnitude(i as u8);
        t[i] = mulaw_from(positive, A_TO_MU_MAGNITUDE[m as usize]);
        i += 1;
    }
    t
}

const fn build_mu_to_a() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let (positive, m) = mulaw_magnitude(i as u8);
        t[i] = alaw_from(positive, MU_TO_A_MAGNITUDE[m as usize]);
        i += 1;
    }
    t
}

const fn alaw_decode(a: u8) -> i16 {
    let (positive, m) = alaw_magnitude(a);
    let segment = m >> 4;
    let step = (m & 0x0f) as i32;
    // Reconstruction at the middle of the interval, 13 bits left-justified.
    let v = if segment == 0 {
        (step << 4) + 8
    } else {
        ((step << 4) + 0x108) << (segment - 1)
    };
    (if positive { v } else { -v }) as i16
}

const fn mulaw_decode(u: u8) -> i16 {
    let (positive, m) = mulaw_magnitude(u);
    let segment = m >> 4;
    let step = (m & 0x0f) as i32;
    // 14 bits left-justified: ((2·step + 33)·2^segment − 33)·4.
    let v = (((step << 3) + 0x84) << segment) - 0x84;
    (if positive { v } else { -v }) as i16
}

const fn build_decode(law: Law) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match law {
            Law::A => alaw_decode(i as u8),
            Law::Mu => mulaw_decode(i as u8),
        };
        i += 1;
    }
    t
}

/// A-law byte → µ-law byte (G.711 Table 4).
pub static A_TO_MU: [u8; 256] = build_a_to_mu();
/// µ-law byte → A-law byte (G.711 Table 3).
pub static MU_TO_A: [u8; 256] = build_mu_to_a();
/// A-law byte → 16-bit linear.
pub static A_TO_LINEAR: [i16; 256] = build_decode(Law::A);
/// µ-law byte → 16-bit linear.
pub static MU_TO_LINEAR: [i16; 256] = build_decode(Law::Mu);

/// One A-law byte to µ-law.
pub fn alaw_to_ulaw(a: u8) -> u8 {
    A_TO_MU[usize::from(a)]
}

/// One µ-law byte to A-law.
pub fn ulaw_to_alaw(u: u8) -> u8 {
    MU_TO_A[usize::from(u)]
}

/// One A-law byte to linear.
pub fn alaw_to_linear(a: u8) -> i16 {
    A_TO_LINEAR[usize::from(a)]
}

/// One µ-law byte to linear.
pub fn ulaw_to_linear(u: u8) -> i16 {
    MU_TO_LINEAR[usize::from(u)]
}

/// Linear to A-law: the 13 most significant bits, truncated; negative values by one's complement.
pub fn linear_to_alaw(x: i16) -> u8 {
    let positive = x >= 0;
    let mut ix = (if positive { x } else { !x }) as u16 >> 4;
    // ix is the 11-bit magnitude (0..=2047) in units of 16.
    let magnitude = if ix <= 15 {
        ix as u8
    } else {
        let mut segment = 1u16;
        while ix > 31 {
            ix >>= 1;
            segment += 1;
        }
        ((segment << 4) | (ix - 16)) as u8
    };
    alaw_from(positive, magnitude)
}

/// Linear to µ-law: the 14 most significant bits, biased by 33, truncated; negative values by
/// one's complement; clipped at the largest code.
pub fn linear_to_ulaw(x: i16) -> u8 {
    let positive = x >= 0;
    let mag = (if positive { x } else { !x }) as u16 >> 2;
    let biased = (mag + 33).min(0x1fff);
    // The segment is the position of the leading one above bit 5.
    let mut segment = 0u16;
    let mut i = biased >> 6;
    while i != 0 {
        segment += 1;
        i >>= 1;
    }
    let step = (biased >> (segment + 1)) & 0x0f;
    mulaw_from(positive, ((segment << 4) | step) as u8)
}

/// Translates G.711 samples in place from one law to the other (a no-op when `from == to`).
pub fn translate(from: Law, to: Law, samples: &mut [u8]) {
    let table = match (from, to) {
        (Law::A, Law::Mu) => &A_TO_MU,
        (Law::Mu, Law::A) => &MU_TO_A,
        _ => return,
    };
    for s in samples {
        *s = table[usize::from(*s)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G.711 Table 1 (A-law), from the standard's definition: the character's bit 1 is the sign
    /// (1 = positive), the even bits are inverted for transmission, then 3 bits of segment s and
    /// 4 bits of interval m; the decoder output is 2m+1 in segment 0 and (2m+33)·2^(s−1) above, in
    /// units where the overload point is 4096 (×8 in 16 bits).
    fn g711_table1(code: u8) -> i32 {
        let ch = code ^ 0b0101_0101;
        let (s, m) = (i32::from((ch >> 4) & 7), i32::from(ch & 15));
        let y = if s == 0 {
            2 * m + 1
        } else {
            (2 * m + 33) << (s - 1)
        };
        if code & 0x80 != 0 { 8 * y } else { -8 * y }
    }

    /// G.711 Table 2 (µ-law): all bits inverted for transmission; the decoder output is
    /// (2m+33)·2^s − 33 in units where the overload point is 8159 (×4 in 16 bits).
    fn g711_table2(code: u8) -> i32 {
        let ch = !code;
        let (s, m) = (i32::from((ch >> 4) & 7), i32::from(ch & 15));
        let y = ((2 * m + 33) << s) - 33;
        if code & 0x80 != 0 { 4 * y } else { -4 * y }
    }

    /// The magnitude code (0 = smallest) and sign of a character, per law.
    fn magnitude(law: Law, code: u8) -> (bool, u8) {
        match law {
            Law::A => (code & 0x80 != 0, (code ^ 0x55) & 0x7f),
            Law::Mu => (code & 0x80 != 0, !code & 0x7f),
        }
    }

    /// G.711 Table 4 (A → µ), written as the standard's ranges of magnitude codes.
    fn g711_table4(a: u8) -> u8 {
        match a {
            0..=7 => 2 * a + 1,
            8..=23 => a + 8,
            24..=31 => 32 + (a - 24) / 2,
            32..=43 => a + 4,
            44..=47 => 48 + (a - 44) / 2,
            48..=61 => a + 2,
            62..=63 => 64,
            64..=79 => a + 1,
            _ => a,
        }
    }

    /// G.711 Table 3 (µ → A), as ranges of magnitude codes.
    fn g711_table3(u: u8) -> u8 {
        match u {
            0..=15 => u / 2,
            16..=31 => u - 8,
            32..=35 => 24 + 2 * (u - 32),
            36..=47 => u - 4,
            48 => 45,
            49 => 47,
            50..=63 => u - 2,
            64..=79 => u - 1,
            80 => 79,
            _ => u,
        }
    }

    fn step(law: Law, code: u8) -> i32 {
        let (_, m) = magnitude(law, code);
        let s = i32::from(m >> 4);
        match law {
            Law::A => 16 << (s - 1).max(0),
            Law::Mu => 8 << s,
        }
    }

    #[test]
    fn decoding_matches_g711_tables_1_and_2_for_all_256_codes() {
        for c in 0..=255u8 {
            assert_eq!(
                i32::from(alaw_to_linear(c)),
                g711_table1(c),
                "A-law {c:#04x}"
            );
            assert_eq!(
                i32::from(ulaw_to_linear(c)),
                g711_table2(c),
                "µ-law {c:#04x}"
            );
        }
    }

    #[test]
    fn a_to_mu_and_mu_to_a_match_g711_tables_3_and_4_for_all_256_codes() {
        for c in 0..=255u8 {
            let (pos, m) = magnitude(Law::A, c);
            let u = alaw_to_ulaw(c);
            assert_eq!(
                magnitude(Law::Mu, u),
                (pos, g711_table4(m)),
                "A {c:#04x} → µ {u:#04x}"
            );
            let (pos, m) = magnitude(Law::Mu, c);
            let a = ulaw_to_alaw(c);
            assert_eq!(
                magnitude(Law::A, a),
                (pos, g711_table3(m)),
                "µ {c:#04x} → A {a:#04x}"
            );
        }
    }

    #[test]
    fn conversions_stay_within_one_step_of_the_source_level() {
        // The laws' overload points: A 4096·8, µ 8159·4 in 16 bits.
        for c in 0..=255u8 {
            let a_as_mu = f64::from(g711_table1(c)) * 32636.0 / 32768.0;
            let u = alaw_to_ulaw(c);
            let err = (f64::from(g711_table2(u)) - a_as_mu).abs();
            assert!(
                err <= f64::from(step(Law::Mu, u)),
                "A {c:#04x} → µ {u:#04x}: off by {err}"
            );
            let mu_as_a = f64::from(g711_table2(c)) * 32768.0 / 32636.0;
            let a = ulaw_to_alaw(c);
            let err = (f64::from(g711_table1(a)) - mu_as_a).abs();
            assert!(
                err <= f64::from(step(Law::A, a)),
                "µ {c:#04x} → A {a:#04x}: off by {err}"
            );
        }
    }

    #[test]
    fn known_pairs_from_g711_and_g191() {
        // Silence, extremes, and the negative-zero codes.
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!((alaw_to_linear(0xD5), alaw_to_linear(0x55)), (8, -8));
        assert_eq!(
            (alaw_to_linear(0xAA), alaw_to_linear(0x2A)),
            (32256, -32256)
        );
        assert_eq!((ulaw_to_linear(0xFF), ulaw_to_linear(0x7F)), (0, 0));
        assert_eq!(
            (ulaw_to_linear(0x80), ulaw_to_linear(0x00)),
            (32124, -32124)
        );
        // Segment boundaries (16-bit): A-law segment 1 starts at 256; µ-law segment 1 starts at 132.
        assert_eq!(linear_to_alaw(255), 0xD5 ^ 0x0F);
        assert_eq!(linear_to_alaw(256), 0xD5 ^ 0x10);
        assert_eq!(alaw_to_linear(0xD5 ^ 0x10), 264);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        // A ↔ µ: silence, extremes.
        assert_eq!(alaw_to_ulaw(0xD5), 0xFE);
        assert_eq!(alaw_to_ulaw(0x55), 0x7E);
        assert_eq!(ulaw_to_alaw(0xFF), 0xD5);
        assert_eq!(ulaw_to_alaw(0x7F), 0x55);
        assert_eq!(alaw_to_ulaw(0xAA), 0x80);
        assert_eq!(ulaw_to_alaw(0x80), 0xAA);
        assert_eq!(alaw_to_ulaw(0x2A), 0x00);
        assert_eq!(ulaw_to_alaw(0x00), 0x2A);
    }

    #[test]
    fn encoding_every_16_bit_value_lands_in_its_decision_interval() {
        for x in i16::MIN..=i16::MAX {
            for law in [Law::A, Law::Mu] {
                let (code, level) = match law {
                    Law::A => (linear_to_alaw(x), g711_table1(linear_to_alaw(x))),
                    Law::Mu => (linear_to_ulaw(x), g711_table2(linear_to_ulaw(x))),
                };
                let max = match law {
                    Law::A => 32256,
                    Law::Mu => 32124,
                };
                let x = i32::from(x);
                let half = step(law, code) / 2;
                // Truncation of a one's-complement magnitude: at most half a step plus one unit away;
                // beyond the last level the code clips.
                if x.abs() < max {
                    assert!(
                        (level - x).abs() <= half + 1,
                        "{law:?} {x} → {code:#04x} ({level})"
                    );
                } else {
                    assert_eq!(level.abs(), max, "{law:?} {x} clips");
                }
                assert!(x >= 0 || level <= 0, "{law:?} {x}: sign");
            }
        }
    }

    #[test]
    fn every_code_re_encodes_to_itself() {
        for c in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "A {c:#04x}");
            // µ-law's negative zero decodes to 0, which encodes as positive zero.
            let want = if c == 0x7F { 0xFF } else { c };
            assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), want, "µ {c:#04x}");
        }
    }

    #[test]
    fn translate_in_place() {
        let mut buf = [0xD5, 0x55, 0xAA, 0x2A];
        translate(Law::A, Law::Mu, &mut buf);
        assert_eq!(buf, [0xFE, 0x7E, 0x80, 0x00]);
        translate(Law::Mu, Law::A, &mut buf);
        assert_eq!(buf, [0xD5, 0x55, 0xAA, 0x2A]);
        translate(Law::A, Law::A, &mut buf);
        assert_eq!(buf, [0xD5, 0x55, 0xAA, 0x2A]);
        assert_eq!(Law::from_encoding("pcma"), Some(Law::A));
        assert_eq!(Law::from_encoding("PCMU"), Some(Law::Mu));
        assert_eq!(Law::from_encoding("G722"), None);
        assert_eq!(Law::A.static_payload_type(), 8);
    }
}
