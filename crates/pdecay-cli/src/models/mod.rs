//! The networks: the image classifiers (MLP, CNN, ResNets) and the character-level GPT, and sampling
//! text from a GPT.

pub mod classifier;
pub mod gpt;
pub mod kind;
pub mod memory;
pub mod resnet;
pub mod sampling;
pub mod sparse;

pub use classifier::{Classifier, Cnn, Mlp};
pub use gpt::{Gpt, GptConfig};
pub use kind::ModelKind;
pub use memory::MemoryNeed;
pub use resnet::{ResNet, ResNetConfig};
pub use sparse::SparseCandidate;
