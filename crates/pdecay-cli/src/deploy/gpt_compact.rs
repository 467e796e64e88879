//! `pdecay compact` for a GPT: remove the MLP units and attention heads that cannot change
//! the output.
//!
//! An MLP unit `j` of a block adds `gelu(c_fc[j]·x + b_fc[j]) · c_proj[:, j]` to the residual
//! stream. It adds nothing when its `c_proj` column is zero. When its `c_fc` row is zero it
//! adds the constant `gelu(b_fc[j]) · c_proj[:, j]`: nothing without a bias, otherwise folded
//! into `c_proj`'s bias. Either way the unit goes, with its `c_fc` row and bias and its
//! `c_proj` column.
//!
//! A head adds `c_proj[:, head] · (softmax(q·kᵀ/√d) · v)`. It adds nothing when its `c_proj`
//! columns are zero. When its value rows of `c_attn` are zero, `v` is its bias for every
//! position, and attention weights sum to one, so the head adds the constant
//! `c_proj[:, head] · b_v`, folded into `c_proj`'s bias. Either way the head's query, key and
//! value rows and its `c_proj` columns go. "Zero" is exactly 0.0, as pWD leaves dead weights.
//! The result is a `compact` file (fewer heads and units per block, recorded in its
//! `blocks` metadata) that pdecay's decoder runs; nanoGPT's fixed-size blocks cannot load it.

use anyhow::{Context, Result, ensure};
use pdecay::kernel::gelu;

use super::gpt_file::{BlockShape, GptFile};
use super::model_file::{Format, ModelTensor, Stored};

/// What [`compact_gpt`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct GptCompaction {
    /// Heads and MLP units per block before.
    pub before: Vec<BlockShape>,
    /// And after.
    pub after: Vec<BlockShape>,
    /// Parameters before.
    pub params_before: usize,
    /// And after.
    pub params_after: usize,
}

/// A row-major matrix being cut.
struct Matrix {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

impl Matrix {
    fn row_is_zero(&self, r: usize) -> bool {
        self.values[r * self.cols..(r + 1) * self.cols]
            .iter()
            .all(|&v| v == 0.0)
    }

    fn column_is_zero(&self, c: usize) -> bool {
        (0..self.rows).all(|r| self.values[r * self.cols + c] == 0.0)
    }

    fn column(&self, c: usize) -> impl Iterator<Item = f32> + '_ {
        (0..self.rows).map(move |r| self.values[r * self.cols + c])
    }

    fn keep_rows(&self, keep: &[usize]) -> Self {
        let values = keep
            .iter()
            .flat_map(|&r| {
                self.values[r * self.cols..(r + 1) * self.cols]
                    .iter()
                    .copied()
            })
            .collect();
        Self {
            rows: keep.len(),
            cols: self.cols,
            values,
        }
    }

    fn keep_columns(&self, keep: &[usize]) -> Self {
        let values = (0..self.rows)
            .flat_map(|r| keep.iter().map(move |&c| self.values[r * self.cols + c]))
            .collect();
        Self {
            rows: self.rows,
            cols: keep.len(),
            values,
        }
    }
}

/// The tensors of `file` by name, cut and folded in place.
struct Tensors<'a> {
    file: &'a GptFile,
    out: Vec<ModelTensor>,
}

impl Tensors<'_> {
    fn matrix(&self, name: &str) -> Result<Matrix> {
        let t = self
            .file
            .tensor(name)
            .with_context(|| format!("the GPT file lacks {name}"))?;
        Ok(Matrix {
            rows: t.shape[0],
            cols: t.shape[1],
            values: t.dense(),
        })
    }

    fn vector(&self, name: &str) -> Option<Vec<f32>> {
        self.file.tensor(name).map(ModelTensor::dense)
    }

    fn put(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        let t = self
            .out
            .iter_mut()
            .find(|t| t.name == name)
            .expect("every name comes from the file");
        t.shape = shape;
        t.stored = Stored::Dense(values);
    }
}

/// `file` without the heads and MLP units that cannot change its output (see the module docs).
pub fn compact_gpt(file: &GptFile) -> Result<(GptFile, GptCompaction)> {
    let file = file.with_format(Format::Dense);
    let c = file.sizes();
    let head = c.width / c.heads;
    let mut tensors = Tensors {
        file: &file,
        out: file.tensors.clone(),
    };
    let mut after = Vec::new();
    for (n, shape) in file.blocks.iter().enumerate() {
        let h = format!("transformer.h.{n}");
        // attention heads
        let (attn, proj) = (format!("{h}.attn.c_attn"), format!("{h}.attn.c_proj"));
        let qkv = tensors.matrix(&format!("{attn}.weight"))?;
        let out = tensors.matrix(&format!("{proj}.weight"))?;
        let mut qkv_bias = tensors.vector(&format!("{attn}.bias"));
        let mut out_bias = tensors.vector(&format!("{proj}.bias"));
        let kept = shape.heads * head;
        ensure!(
            qkv.rows == 3 * kept && out.cols == kept,
            "{attn} does not match its blocks metadata"
        );
        let mut heads = Vec::new();
        for k in 0..shape.heads {
            let cols: Vec<usize> = (k * head..(k + 1) * head).collect();
            let silent = cols.iter().all(|&c| out.column_is_zero(c));
            let constant = cols.iter().all(|&c| qkv.row_is_zero(2 * kept + c));
            if silent {
                continue;
            }
            if constant {
                // v = b_v at every position: the head adds c_proj[:, head]·b_v
                if let (Some(b), Some(ob)) = (&qkv_bias, &mut out_bias) {
                    for &c in &cols {
                        let bv = b[2 * kept + c];
                        for (o, w) in ob.iter_mut().zip(out.column(c)) {
                            *o += w * bv;
                        }
                    }
                }
                continue;
            }
            heads.push(k);
        }
        let dims = |heads: &[usize]| -> Vec<usize> {
            heads
                .iter()
                .flat_map(|&k| k * head..(k + 1) * head)
                .collect()
        };
        let kept_cols = dims(&heads);
        let rows: Vec<usize> = (0..3)
            .flat_map(|part| kept_cols.iter().map(move |&c| part * kept + c))
            .collect();
        let new_qkv = qkv.keep_rows(&rows);
        let new_out = out.keep_columns(&kept_cols);
        tensors.put(
            &format!("{attn}.weight"),
            vec![new_qkv.rows, new_qkv.cols],
            new_qkv.values,
        );
        tensors.put(
            &format!("{proj}.weight"),
            vec![new_out.rows, new_out.cols],
            new_out.values,
        );
        if let Some(b) = qkv_bias.take() {
            let cut: Vec<f32> = rows.iter().map(|&r| b[r]).collect();
            tensors.put(&format!("{attn}.bias"), vec![cut.len()], cut);
        }
        // MLP units
        let (fc, fc_proj) = (format!("{h}.mlp.c_fc"), format!("{h}.mlp.c_proj"));
        let up = tensors.matrix(&format!("{fc}.weight"))?;
        let down = tensors.matrix(&format!("{fc_proj}.weight"))?;
        let up_bias = tensors.vector(&format!("{fc}.bias"));
        let mut down_bias = tensors.vector(&format!("{fc_proj}.bias"));
        ensure!(
            up.rows == shape.hidden && down.cols == shape.hidden,
            "{fc} does not match its blocks metadata"
        );
        let mut units = Vec::new();
        for j in 0..shape.hidden {
            if down.column_is_zero(j) {
                continue;
            }
            if up.row_is_zero(j) {
                let a = gelu(up_bias.as_ref().map_or(0.0, |b| b[j]));
                if a == 0.0 {
                    continue;
                }
                if let Some(db) = &mut down_bias {
                    for (o, w) in db.iter_mut().zip(down.column(j)) {
                        *o += a * w;
                    }
                    continue;
                }
            }
            units.push(j);
        }
        let (new_up, new_down) = (up.keep_rows(&units), down.keep_columns(&units));
        tensors.put(
            &format!("{fc}.weight"),
            vec![new_up.rows, new_up.cols],
            new_up.values,
        );
        tensors.put(
            &format!("{fc_proj}.weight"),
            vec![new_down.rows, new_down.cols],
            new_down.values,
        );
        if let Some(b) = up_bias {
            let cut: Vec<f32> = units.iter().map(|&j| b[j]).collect();
            tensors.put(&format!("{fc}.bias"), vec![cut.len()], cut);
        }
        if let Some(b) = out_bias {
            tensors.put(&format!("{proj}.bias"), vec![b.len()], b);
        }
        if let Some(b) = down_bias {
            tensors.put(&format!("{fc_proj}.bias"), vec![b.len()], b);
        }
        after.push(BlockShape {
            heads: heads.len(),
            hidden: units.len(),
        });
    }
    let compacted = GptFile {
        format: Format::Compact,
        blocks: after.clone(),
        tensors: tensors.out,
        ..file.clone()
    };
    let report = GptCompaction {
        before: file.blocks.clone(),
        after,
        params_before: file.params(),
        params_after: compacted.params(),
    };
    Ok((compacted, report))
}
