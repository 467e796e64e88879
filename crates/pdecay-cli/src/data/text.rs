//! Character-level text data: the vocabulary of a UTF-8 file, the 90% / 10% train / validation
//! split by characters, and seeded random windows of `block_size + 1` characters.

use std::path::Path;

use anyhow::{Result, bail, ensure};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The characters of a text, sorted; a character's token is its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// Every distinct character, ascending.
    pub chars: Vec<char>,
}

impl Vocabulary {
    /// The distinct characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Tokens of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.chars.binary_search(&c).map(|i| i as u32).map_err(|_| {
                    anyhow::anyhow!("the character {c:?} is not in the training text's vocabulary")
                })
            })
            .collect()
    }

    /// The text of `tokens` (tokens outside the vocabulary are skipped).
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .filter_map(|&t| self.chars.get(t as usize))
            .collect()
    }
}

/// A text file, tokenised and split.
#[derive(Debug, Clone)]
pub struct TextData {
    /// The vocabulary of the whole file.
    pub vocab: Vocabulary,
    /// The first 90% of the characters.
    pub train: Vec<u32>,
    /// The last 10%.
    pub val: Vec<u32>,
    /// Where the text came from.
    pub source: String,
}

/// Share of the characters that train (the rest validates).
const TRAIN_SHARE: f64 = 0.9;

impl TextData {
    /// Tokenises `text`; each split must hold at least one window of `block_size + 1`.
    pub fn from_text(text: &str, block_size: usize, source: &str) -> Result<Self> {
        let vocab = Vocabulary::from_text(text);
        let tokens = vocab.encode(text)?;
        let cut = (tokens.len() as f64 * TRAIN_SHARE) as usize;
        let (train, val) = tokens.split_at(cut);
        let window = block_size + 1;
        ensure!(
            train.len() >= window && val.len() >= window,
            "{source} has {} characters: too few for a window of block_size + 1 = {window} characters in both the training part (90%, {}) and the validation part (10%, {}); use a longer text or a smaller --block-size",
            tokens.len(),
            train.len(),
            val.len()
        );
        Ok(Self {
            vocab,
            train: train.to_vec(),
            val: val.to_vec(),
            source: source.to_string(),
        })
    }

    /// Reads a UTF-8 text file.
    pub fn load(path: &Path, block_size: usize) -> Result<Self> {
        let bytes = super::read_bounded(path, "text file")?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => bail!(
                "{} is not UTF-8 text (invalid byte at offset {}); give a plain UTF-8 text file",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        };
        Self::from_text(&text, block_size, &path.display().to_string())
    }
}

/// `batch` random windows of `tokens`: inputs and next-character targets, each
/// `[batch, block_size]` row-major.
pub fn random_windows(
    tokens: &[u32],
    block_size: usize,
    batch: usize,
    rng: &mut impl Rng,
) -> (Vec<i64>, Vec<i64>) {
    assert!(
        tokens.len() > block_size,
        "a split holds at least one window"
    );
    let (mut inputs, mut targets) = (
        Vec::with_capacity(batch * block_size),
        Vec::with_capacity(batch * block_size),
    );
    for _ in 0..batch {
        let start = rng.random_range(0..tokens.len() - block_size);
        let window = &tokens[start..start + block_size + 1];
        inputs.extend(window[..block_size].iter().map(|&t| t as i64));
        targets.extend(window[1..].iter().map(|&t| t as i64));
    }
    (inputs, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_vocabulary_is_sorted_and_the_split_is_90_10() {
        let data = TextData::from_text("abcabcabcabcabcabcabcabcabcabc", 2, "t").unwrap();
        assert_eq!(data.vocab.chars, ['a', 'b', 'c']);
        assert_eq!((data.train.len(), data.val.len()), (27, 3));
        assert_eq!(data.train[..4], [0, 1, 2, 0]);
    }

    #[test]
    fn windows_are_contiguous_and_targets_shift_by_one() {
        let tokens: Vec<u32> = (0..100).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let (x, y) = random_windows(&tokens, 8, 4, &mut rng);
        for row in 0..4 {
            let (x, y) = (&x[row * 8..row * 8 + 8], &y[row * 8..row * 8 + 8]);
            for i in 0..8 {
                assert_eq!(y[i], x[i] + 1);
                if i > 0 {
                    assert_eq!(x[i], x[i - 1] + 1);
                }
            }
        }
        let again = random_windows(&tokens, 8, 4, &mut StdRng::seed_from_u64(1));
        assert_eq!(again, (x, y), "seeded");
    }

    #[test]
    fn short_and_non_utf8_texts_are_clear_errors() {
        let message = TextData::from_text("hello world", 8, "tiny.txt")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("tiny.txt") && message.contains("block_size"),
            "{message}"
        );
        let dir = std::env::temp_dir().join(format!("pdecay-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let latin1 = dir.join("latin1.txt");
        std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
        let message = format!("{:#}", TextData::load(&latin1, 2).unwrap_err());
        assert!(
            message.contains("not UTF-8") && message.contains("offset 3"),
            "{message}"
        );
        let missing = format!(
            "{:#}",
            TextData::load(&dir.join("nope.txt"), 2).unwrap_err()
        );
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn the_tokenizer_round_trips(text in "\\PC{1,200}") {
            let vocab = Vocabulary::from_text(&text);
            let tokens = vocab.encode(&text).unwrap();
            prop_assert_eq!(vocab.decode(&tokens), text);
            prop_assert!(tokens.iter().all(|&t| (t as usize) < vocab.len()));
        }
    }
}
