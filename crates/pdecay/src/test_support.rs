//! Helpers the unit tests share.

/// Uniform floats in `[0, 1)` from a xorshift generator seeded with `seed`: deterministic, so
/// a proptest case replays from its seed.
pub(crate) fn uniforms(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `a` equals `b` element by element up to summation order (1e-4 relative, for sums of a few
/// hundred terms of order 1).
pub(crate) fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}[{i}]: {x} against {y}"
        );
    }
}
