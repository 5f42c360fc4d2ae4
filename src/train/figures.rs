//! One update's figures: what the host learns of an update at a sync step. They are packed on
//! the device into one float32 vector when the update is queued (so that a sync step reads
//! every pending update in one host read) and unpacked into typed values when it is read.
//! `Layout::pack` and `Layout::unpack` are side by side and read the same layout, which the
//! host knows from the loss it built.

use crate::sink::record::{ClipReport, Term};
use tch::{Kind, Tensor};

/// A value reduced with an update's gradient (so identical on every rank): a loss term, or
/// one of the critic's diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Term(Term),
    /// Mean D(real) - mean D(fake).
    Wasserstein,
    /// Mean L2 norm of the critic's input gradient at the penalty's points.
    PenaltyGradNorm,
}

/// What an update's packed figures hold, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The values reduced with the gradient, in the reduction's order (the total first).
    pub reduced: Vec<Scalar>,
    /// The parameter terms (added to the reduced gradient) and their weights.
    pub param_terms: Vec<(Term, f64)>,
    /// The network's parameters: one gradient norm each.
    pub params: usize,
}

/// An update's figures on the device.
pub struct DeviceFigures {
    /// 1.0 when some rank saw a non-finite gradient (the update is skipped), else 0.0; [1].
    pub skipped: Tensor,
    /// The global norm before any clipping, after it, and 1.0 when clipping changed the
    /// gradient; 0-dim.
    pub norm_before: Tensor,
    pub norm_after: Tensor,
    pub clipped: Tensor,
    /// `Layout::reduced`'s values; [reduced].
    pub reduced: Tensor,
    /// `Layout::param_terms`' unweighted values; 0-dim each.
    pub param_terms: Vec<Tensor>,
    /// Each parameter's reduced-gradient L2 norm before clipping; [params].
    pub per_param: Tensor,
}

/// An update's figures as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub skipped: bool,
    pub clip: ClipReport,
    pub reduced: Vec<(Scalar, f64)>,
    /// Each parameter term with its weight and unweighted value.
    pub param_terms: Vec<(Term, f64, f64)>,
    pub per_param: Vec<f32>,
}

/// skipped, norm before, norm after, clipped.
const HEADER: usize = 4;

impl Layout {
    /// The packed vector's length.
    pub fn len(&self) -> usize {
        HEADER + self.reduced.len() + self.param_terms.len() + self.params
    }

    /// [skipped, norm before, norm after, clipped, reduced.., parameter terms.., per-parameter
    /// norms..], one small copy: the pending record keeps no view of the large reduced buffer.
    pub fn pack(&self, f: DeviceFigures) -> Tensor {
        debug_assert_eq!(f.param_terms.len(), self.param_terms.len());
        let mut parts = vec![f.skipped, f.norm_before.view([1]), f.norm_after.view([1]), f.clipped.view([1]), f.reduced];
        parts.extend(f.param_terms.iter().map(|v| v.to_kind(Kind::Float).view([1])));
        parts.push(f.per_param);
        Tensor::cat(&parts, 0)
    }

    /// The typed figures of a vector `pack` made (as read from the device).
    pub fn unpack(&self, v: &[f32]) -> Figures {
        assert_eq!(v.len(), self.len(), "figures of another layout");
        let (header, rest) = v.split_at(HEADER);
        let (reduced, rest) = rest.split_at(self.reduced.len());
        let (terms, per_param) = rest.split_at(self.param_terms.len());
        Figures {
            skipped: header[0] > 0.0,
            clip: ClipReport { norm_before: header[1] as f64, norm_after: header[2] as f64, clipped: header[3] > 0.0 },
            reduced: self.reduced.iter().zip(reduced).map(|(s, x)| (*s, *x as f64)).collect(),
            param_terms: self.param_terms.iter().zip(terms).map(|((t, w), x)| (*t, *w, *x as f64)).collect(),
            per_param: per_param.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// Every value lands where unpack reads it.
    #[test]
    fn pack_and_unpack_agree() {
        let layout = Layout {
            reduced: vec![Scalar::Term(Term::Total), Scalar::Term(Term::Adversarial), Scalar::Wasserstein],
            param_terms: vec![(Term::L2, 0.5), (Term::HistAvg, 3.0)],
            params: 2,
        };
        let f = DeviceFigures {
            skipped: t(&[0.0]),
            norm_before: t(&[4.0]).view([]),
            norm_after: t(&[2.0]).view([]),
            clipped: t(&[1.0]).view([]),
            reduced: t(&[1.5, -0.5, 0.25]),
            param_terms: vec![t(&[7.0]).view([]), Tensor::from_slice(&[8.0f64]).view([])],
            per_param: t(&[0.125, 9.0]),
        };
        let packed = layout.pack(f);
        assert_eq!(packed.size(), vec![layout.len() as i64]);
        let v: Vec<f32> = Vec::try_from(&packed).unwrap();
        let got = layout.unpack(&v);
        assert_eq!(
            got,
            Figures {
                skipped: false,
                clip: ClipReport { norm_before: 4.0, norm_after: 2.0, clipped: true },
                reduced: vec![(Scalar::Term(Term::Total), 1.5), (Scalar::Term(Term::Adversarial), -0.5), (Scalar::Wasserstein, 0.25)],
                param_terms: vec![(Term::L2, 0.5, 7.0), (Term::HistAvg, 3.0, 8.0)],
                per_param: vec![0.125, 9.0],
            }
        );
        let mut skipped = v.clone();
        skipped[0] = 1.0;
        assert!(layout.unpack(&skipped).skipped);
    }
}
