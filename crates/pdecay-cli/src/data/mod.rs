//! Data sets: Fashion-MNIST (or MNIST) from IDX files and the embedded subset; character-level
//! text for the GPT.

pub mod idx;
pub mod mnist;
pub mod text;

pub use mnist::ImageSplits;
