//! The networks: the image classifiers (MLP, CNN) and the character-level GPT, and sampling
//! text from a GPT.

pub mod classifier;
pub mod gpt;
pub mod kind;
pub mod memory;
pub mod sampling;

pub use classifier::{Classifier, Cnn, Mlp};
pub use gpt::{Gpt, GptConfig};
pub use kind::ModelKind;
pub use memory::MemoryNeed;
