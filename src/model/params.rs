//! An ordered set of named parameters whose storage is one flat buffer, so that the
//! optimizer, gradient clipping and the all-reduce each touch one tensor.

use tch::{Device, Kind, Tensor};

pub struct ParamSet {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    /// Leaf tensors that require grad; each is a view into `flat`.
    pub tensors: Vec<Tensor>,
    /// All parameters, concatenated in order.
    pub flat: Tensor,
}

/// Collects parameters before they are bound to a flat buffer.
pub struct ParamBuilder {
    device: Device,
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

impl ParamBuilder {
    pub fn new(device: Device) -> Self {
        ParamBuilder { device, names: Vec::new(), tensors: Vec::new() }
    }

    /// A parameter drawn from U(-bound, bound), PyTorch's default for layers.
    pub fn uniform(&mut self, name: &str, shape: &[i64], bound: f64) {
        let t = Tensor::empty(shape, (Kind::Float, Device::Cpu)).uniform_(-bound, bound);
        self.names.push(name.to_string());
        self.tensors.push(t);
    }

    /// Moves everything into one flat buffer on the device and makes each parameter a view of it.
    pub fn build(self) -> ParamSet {
        let shapes: Vec<Vec<i64>> = self.tensors.iter().map(|t| t.size()).collect();
        let flat = Tensor::cat(&self.tensors.iter().map(|t| t.flatten(0, -1)).collect::<Vec<_>>(), 0)
            .to_device(self.device);
        ParamSet::on_flat(self.names, shapes, flat)
    }
}

impl ParamSet {
    /// Parameters named and shaped as given, each a view of `flat` (which it takes as storage).
    fn on_flat(names: Vec<String>, shapes: Vec<Vec<i64>>, flat: Tensor) -> ParamSet {
        let device = flat.device();
        let mut tensors = Vec::with_capacity(shapes.len());
        let mut offset = 0;
        for shape in &shapes {
            let numel: i64 = shape.iter().product();
            let mut p = Tensor::zeros([0], (Kind::Float, device)).set_requires_grad(true);
            p.set_data(&flat.narrow(0, offset, numel).view(shape.as_slice()));
            tensors.push(p);
            offset += numel;
        }
        ParamSet { names, shapes, tensors, flat }
    }

    /// A copy with storage of its own (same names, shapes and values); draws nothing.
    pub fn copy(&self) -> ParamSet {
        let flat = tch::no_grad(|| self.flat.detach().copy());
        ParamSet::on_flat(self.names.clone(), self.shapes.clone(), flat)
    }

    /// The same parameters (the same tensors, not copies): a second handle on this set, for a
    /// network's training state beside its model.
    pub fn share(&self) -> ParamSet {
        ParamSet { names: self.names.clone(), shapes: self.shapes.clone(), tensors: self.tensors.iter().map(|t| t.shallow_clone()).collect(), flat: self.flat.shallow_clone() }
    }

    /// Each parameter's part of `flat`, a buffer laid out like this set's (a gradient, a
    /// moment, an average), as named views.
    pub fn views<'a>(&'a self, flat: &'a Tensor) -> impl Iterator<Item = (&'a str, Tensor)> + 'a {
        self.names.iter().zip(&self.shapes).zip(self.offsets()).map(move |((name, shape), (o, n))| {
            (name.as_str(), flat.detach().narrow(0, o, n).view(shape.as_slice()))
        })
    }

    pub fn numel(&self) -> i64 {
        self.flat.numel() as i64
    }

    pub fn get(&self, name: &str) -> &Tensor {
        let i = self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no parameter {name}"));
        &self.tensors[i]
    }

    /// Element ranges of each parameter within the flat buffer.
    pub fn offsets(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::with_capacity(self.shapes.len());
        let mut off = 0;
        for s in &self.shapes {
            let n: i64 = s.iter().product();
            out.push((off, n));
            off += n;
        }
        out
    }

    /// L2 norm of each layer's part of a flat gradient laid out like `flat`, layers in order of
    /// first appearance (a layer groups the parameters that `layer_of` maps to one name, e.g.
    /// conv1.weight and conv1.bias). One host copy for all layers.
    pub fn layer_norms(&self, flat_grad: &Tensor) -> Result<Vec<(String, f64)>, tch::TchError> {
        let per_param = crate::hostread::vec_f32(&self.param_norms(flat_grad))?;
        Ok(self.group_layers(&per_param))
    }

    /// The L2 norm of each parameter's part of a flat gradient, on the device (one value per
    /// parameter, in order).
    pub fn param_norms(&self, flat_grad: &Tensor) -> Tensor {
        let parts: Vec<Tensor> = self.offsets().iter().map(|&(o, n)| flat_grad.narrow(0, o, n).norm()).collect();
        Tensor::stack(&parts, 0)
    }

    /// Per-layer norms from per-parameter ones (as `param_norms` orders them).
    pub fn group_layers(&self, per_param: &[f32]) -> Vec<(String, f64)> {
        let mut layers: Vec<(String, f64)> = Vec::new();
        for (name, &norm) in self.names.iter().zip(per_param) {
            let layer = super::layer_of(name);
            let sq = (norm as f64) * (norm as f64);
            match layers.iter_mut().find(|(l, _)| l == layer) {
                Some((_, acc)) => *acc += sq,
                None => layers.push((layer.to_string(), sq)),
            }
        }
        layers.into_iter().map(|(l, sq)| (l, sq.sqrt())).collect()
    }

    /// Concatenates per-parameter gradients into one flat tensor (missing ones as zeros).
    pub fn flatten_grads(&self, grads: &[Tensor]) -> Tensor {
        let parts: Vec<Tensor> = grads
            .iter()
            .zip(&self.tensors)
            .map(|(g, p)| if g.defined() { g.flatten(0, -1) } else { p.zeros_like().flatten(0, -1) })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Overwrites all parameters from a flat tensor of the same length.
    pub fn load_flat(&self, values: &Tensor) {
        let mut flat = self.flat.shallow_clone();
        tch::no_grad(|| flat.copy_(values));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer norms of a gradient with known entries, against sums of squares by hand, and
    /// their root sum of squares against the global norm.
    #[test]
    fn layer_norms_of_known_slices() {
        let mut b = ParamBuilder::new(Device::Cpu);
        b.uniform("a.weight", &[2, 2], 1.0);
        b.uniform("a.bias", &[1], 1.0);
        b.uniform("b.weight", &[3], 1.0);
        let p = b.build();
        // a: [1, 2, 3, 4] and [5]; b: [0, 3, 4].
        let g = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 0.0, 3.0, 4.0]);
        let n = p.layer_norms(&g).unwrap();
        assert_eq!(n.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert!((n[0].1 - 55f64.sqrt()).abs() < 1e-6, "{n:?}");
        assert!((n[1].1 - 5.0).abs() < 1e-6, "{n:?}");
        // A shared set is the same parameters: a write through one is seen by the other.
        let shared = p.share();
        tch::no_grad(|| {
            let _ = shared.tensors[2].shallow_clone().fill_(7.0);
        });
        assert_eq!(p.get("b.weight").double_value(&[0]), 7.0);
        assert_eq!(p.flat.double_value(&[5]), 7.0);
        let global = crate::hostread::scalar(&g.norm());
        let rss = n.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
        assert!((rss - global).abs() < 1e-5 * global, "{rss} vs {global}");
    }
}
