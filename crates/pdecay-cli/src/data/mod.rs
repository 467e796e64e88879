//! Data sets: Fashion-MNIST (or MNIST) from IDX files, and the embedded subset.

pub mod idx;
pub mod mnist;

pub use mnist::ImageSplits;
