//! Side-by-side timing the layer benches share: two variants called in turn, so that drift in
//! the machine's load hits both alike, and their medians.

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median times of `step(false)` and `step(true)` over `repeats` alternated calls, after one
/// warm-up call of each.
pub fn alternated(repeats: usize, step: impl Fn(bool) -> f64) -> [f64; 2] {
    let (_, _) = (step(false), step(true));
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        times[0].push(step(false));
        times[1].push(step(true));
    }
    times.map(median)
}
