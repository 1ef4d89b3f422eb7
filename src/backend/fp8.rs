//! FP8 (OCP formats E4M3FN and E5M2) encode/decode, used by the KV cache on every backend.
//!
//! E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities, max 448, NaN = 0x7F/0xFF.
//! E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits, IEEE-like, max finite 57344.
//! Encoding rounds to nearest even and saturates to the largest finite value (the KV cache
//! stores values pre-divided by a scale chosen so they fit, so saturation only guards
//! rounding at the edge).

use super::DType;

pub const E4M3_MAX: f32 = 448.0;
pub const E5M2_MAX: f32 = 57344.0;

pub fn max_finite(dtype: DType) -> f32 {
    match dtype {
        DType::F8E4M3 => E4M3_MAX,
        DType::F8E5M2 => E5M2_MAX,
        _ => f32::MAX,
    }
}

pub fn decode(dtype: DType, b: u8) -> f32 {
    match dtype {
        DType::F8E5M2 => decode_e5m2(b),
        _ => decode_e4m3(b),
    }
}

pub fn encode(dtype: DType, v: f32) -> u8 {
    match dtype {
        DType::F8E5M2 => encode_generic(v, 5, 2, E5M2_MAX),
        _ => encode_generic(v, 4, 3, E4M3_MAX),
    }
}

pub fn decode_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

pub fn decode_e5m2(b: u8) -> f32 {
    // E5M2 is the top byte of an IEEE f16.
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// Round-to-nearest-even encoding of `v` into a 1-e-m float with bias 2^(e-1)-1,
/// saturating at `max`.
fn encode_generic(v: f32, ebits: u32, mbits: u32, max: f32) -> u8 {
    if v.is_nan() {
        return if ebits == 4 { 0x7F } else { 0x7E };
    }
    let sign: u8 = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs().min(max);
    let bias = (1i32 << (ebits - 1)) - 1;
    let min_normal_exp = 1 - bias;
    // Quantum at this magnitude.
    let e = if a == 0.0 {
        min_normal_exp
    } else {
        (a.log2().floor() as i32).max(min_normal_exp)
    };
    let quantum = 2f32.powi(e - mbits as i32);
    let q = a / quantum;
    let mut r = q.round();
    if (q - q.floor() - 0.5).abs() < f32::EPSILON * q.max(1.0) && r % 2.0 != 0.0 {
        r -= 1.0; // ties to even
    }
    let mut val = r * quantum;
    if val > max {
        val = max;
    }
    // Re-derive fields from the rounded value (rounding may carry into the exponent).
    if val == 0.0 {
        return sign;
    }
    let e2 = (val.log2().floor() as i32).max(min_normal_exp);
    let (exp_field, man) = if val < 2f32.powi(min_normal_exp) {
        (
            0u32,
            (val / 2f32.powi(min_normal_exp - mbits as i32)).round() as u32,
        )
    } else {
        let m = (val / 2f32.powi(e2) - 1.0) * (1 << mbits) as f32;
        ((e2 + bias) as u32, m.round() as u32)
    };
    sign | ((exp_field << mbits) as u8) | (man as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_round_trips_every_finite_code() {
        for b in 0u8..=255 {
            let v = decode_e4m3(b);
            if v.is_nan() {
                continue;
            }
            let back = encode(DType::F8E4M3, v);
            // 0x80 is -0.0, which encodes back to -0.0.
            assert_eq!(
                decode_e4m3(back).to_bits(),
                v.to_bits(),
                "code {b:#x} value {v}"
            );
        }
    }

    #[test]
    fn e5m2_round_trips_every_finite_code() {
        for b in 0u8..=255 {
            let v = decode_e5m2(b);
            if !v.is_finite() {
                continue;
            }
            let back = encode(DType::F8E5M2, v);
            assert_eq!(
                decode_e5m2(back).to_bits(),
                v.to_bits(),
                "code {b:#x} value {v}"
            );
        }
    }

    #[test]
    fn e4m3_known_values_and_saturation() {
        assert_eq!(decode_e4m3(0x7E), 448.0);
        assert_eq!(encode(DType::F8E4M3, 1000.0), 0x7E);
        assert_eq!(encode(DType::F8E4M3, 1.0), 0x38);
        assert_eq!(decode_e4m3(encode(DType::F8E4M3, -2.5)), -2.5);
        // 1.0625 lies halfway between 1.0 and 1.125: ties to even gives 1.0.
        assert_eq!(decode_e4m3(encode(DType::F8E4M3, 1.0625)), 1.0);
    }

    #[test]
    fn relative_error_is_within_half_ulp() {
        let mut x = 0.013f32;
        while x < 400.0 {
            let e = decode_e4m3(encode(DType::F8E4M3, x));
            assert!(((e - x) / x).abs() <= 1.0 / 16.0 + 1e-6, "{x} -> {e}");
            let e = decode_e5m2(encode(DType::F8E5M2, x));
            assert!(((e - x) / x).abs() <= 1.0 / 8.0 + 1e-6, "{x} -> {e}");
            x *= 1.37;
        }
    }
}
