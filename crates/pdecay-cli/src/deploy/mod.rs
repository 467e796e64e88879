//! Deployment: a run's model as a safetensors file (dense, sparse CSR, or compacted), and the
//! sparse CPU inference engines that run it.

pub mod compact;
pub mod gpt_compact;
pub mod gpt_file;
pub mod gpt_infer;
pub mod infer;
pub mod model_file;
