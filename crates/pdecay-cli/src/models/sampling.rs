//! Text from a GPT: `prompt` continued one character at a time, drawn from the softmax of the
//! last position's logits (temperature, top-k), as nanoGPT's `generate`.

use anyhow::{Result, ensure};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::gpt::{Gpt, tokens_tensor};
use crate::data::text::Vocabulary;

/// Generation settings of `pdecay sample`.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Characters to generate.
    pub tokens: usize,
    /// Logits are divided by this (> 0).
    pub temperature: f64,
    /// Only the `top_k` most likely characters are drawn from (0: all).
    pub top_k: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// `prompt` continued by `sampling.tokens` characters drawn from `model`; `emit` gets each
/// character as soon as it is drawn (to stream it).
pub fn sample(
    model: &Gpt,
    vocab: &Vocabulary,
    block_size: usize,
    prompt: &str,
    sampling: &Sampling,
    emit: &mut dyn FnMut(&str),
) -> Result<String> {
    check_temperature(sampling)?;
    let mut context = prompt_tokens(vocab, prompt)?;
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    for _ in 0..sampling.tokens {
        let window = &context[context.len().saturating_sub(block_size)..];
        let x: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let t = x.len();
        let logits = model
            .forward(tokens_tensor(x, 1, t, &device))
            .slice([0..1, t - 1..t, 0..vocab.len()])
            .reshape([vocab.len()])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the logits: {e:?}"))?;
        let chosen = draw(&logits, sampling, &mut rng);
        context.push(chosen as u32);
        emit(&vocab.decode(&[chosen as u32]));
    }
    let generated: Vec<u32> = context[context.len() - sampling.tokens..].to_vec();
    Ok(format!("{prompt}{}", vocab.decode(&generated)))
}

/// A token drawn from `softmax(logits / temperature)`, restricted to the `top_k` largest
/// logits (all when 0): one uniform draw of `rng` walked along the cumulative weights.
pub fn draw(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> usize {
    use rand::Rng;
    let mut scaled: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, l as f64 / sampling.temperature))
        .collect();
    if sampling.top_k > 0 && sampling.top_k < scaled.len() {
        scaled.sort_by(|a, b| b.1.total_cmp(&a.1));
        scaled.truncate(sampling.top_k);
    }
    let top = scaled.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled.iter().map(|p| (p.1 - top).exp()).collect();
    let mut draw = rng.random::<f64>() * weights.iter().sum::<f64>();
    let mut chosen = scaled[scaled.len() - 1].0;
    for (p, w) in scaled.iter().zip(&weights) {
        if draw < *w {
            chosen = p.0;
            break;
        }
        draw -= w;
    }
    chosen
}

/// `sampling`'s temperature, checked: a finite number > 0.
pub fn check_temperature(sampling: &Sampling) -> Result<()> {
    ensure!(
        sampling.temperature > 0.0 && sampling.temperature.is_finite(),
        "--temperature must be a finite number > 0, got {}",
        sampling.temperature
    );
    Ok(())
}

/// The tokens of `prompt`; an empty prompt starts from a newline as nanoGPT's does (or from
/// token 0 when the text had none).
pub fn prompt_tokens(vocab: &Vocabulary, prompt: &str) -> Result<Vec<u32>> {
    let mut context: Vec<u32> = vocab.encode(prompt)?;
    if context.is_empty() {
        context.push(
            vocab
                .encode("\n")
                .ok()
                .and_then(|t| t.first().copied())
                .unwrap_or(0),
        );
    }
    Ok(context)
}
