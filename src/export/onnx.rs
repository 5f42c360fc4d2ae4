//! The ONNX export: the graph's layers as ONNX operators (opset 17, IR version 8), the weights
//! as float32 initializers, the input `z` of shape (N, latent) and the output `images` of
//! shape (N, C, H, W) with a symbolic batch N, and the metadata in `metadata_props`
//! (onnxruntime: `session.get_modelmeta().custom_metadata_map`).
//!
//! Opset 17 is the newest that every current runtime takes (onnxruntime since 1.11,
//! TensorRT 8.6+, OpenVINO). Operators: Gemm, Relu, Tanh, Reshape, Slice, ConvTranspose, and
//! Mul, ReduceMean (axes as an attribute, as before opset 18), Add, Sqrt, Div for pixel norm.

use super::graph::{Graph, Layer};
use super::onnx_proto::*;
use super::Metadata;
use anyhow::{Context, Result};
use prost::Message;
use std::path::Path;

/// The default-domain operator set the model imports.
pub const OPSET: i64 = 17;
/// The IR version of ONNX 1.12, which introduced opset 17.
pub const IR_VERSION: i64 = 8;
pub const INPUT: &str = "z";
pub const OUTPUT: &str = "images";

pub fn write(graph: &Graph, meta: &Metadata, out: &Path) -> Result<String> {
    let model = model(graph, meta)?;
    crate::fsutil::write_atomic(out, &model.encode_to_vec()).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(format!("ONNX opset {OPSET} (IR version {IR_VERSION}; input {INPUT:?} (N, {}), output {OUTPUT:?}; metadata in metadata_props)", graph.latent))
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attribute_type::INTS), ints: values.to_vec(), ..Default::default() }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attribute_type::INT), i: Some(value), ..Default::default() }
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn float_tensor(name: &str, t: &tch::Tensor) -> Result<TensorProto> {
    let values = crate::hostread::vec_f32(t)?;
    Ok(TensorProto {
        dims: t.size(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    })
}

fn value_info(name: &str, dims: &[Option<i64>], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension { value: Some(d.map_or_else(|| DimensionValue::DimParam("N".into()), DimensionValue::DimValue)) })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: Some(data_type::FLOAT), shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: Some(doc.into()),
    }
}

fn node(op: &str, name: String, input: Vec<String>, output: String, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto { input, output: vec![output], name: Some(name), op_type: Some(op.into()), attribute }
}

/// The ModelProto of `graph`.
fn model(graph: &Graph, meta: &Metadata) -> Result<ModelProto> {
    let mut nodes = Vec::new();
    let mut initializers: Vec<TensorProto> = graph.weights.iter().map(|(n, t)| float_tensor(n, t)).collect::<Result<_>>()?;
    let mut x = INPUT.to_string();
    let last = graph.layers.len() - 1;
    for (i, layer) in graph.layers.iter().enumerate() {
        let y = if i == last { OUTPUT.to_string() } else { format!("x{}", i + 1) };
        let w = |name: &str| vec![x.clone(), format!("{name}.weight"), format!("{name}.bias")];
        let n = match layer {
            Layer::PixelNorm { eps } => {
                // x / sqrt(mean over channels of x^2 + eps): five nodes.
                let t = |s: &str| format!("pixel_norm{i}.{s}");
                initializers.push(TensorProto {
                    dims: vec![],
                    data_type: Some(data_type::FLOAT),
                    name: Some(t("eps")),
                    raw_data: Some((*eps as f32).to_le_bytes().to_vec()),
                });
                nodes.push(node("Mul", t("square"), vec![x.clone(), x.clone()], t("x2"), vec![]));
                nodes.push(node("ReduceMean", t("mean"), vec![t("x2")], t("ms"), vec![ints("axes", &[1]), int("keepdims", 1)]));
                nodes.push(node("Add", t("add_eps"), vec![t("ms"), t("eps")], t("ms_eps"), vec![]));
                nodes.push(node("Sqrt", t("sqrt"), vec![t("ms_eps")], t("rms"), vec![]));
                node("Div", t("div"), vec![x.clone(), t("rms")], y.clone(), vec![])
            }
            Layer::Linear { name, .. } => node("Gemm", name.clone(), w(name), y.clone(), vec![int("transB", 1)]),
            Layer::ConvTranspose2d { name, kernel, stride, padding, output_padding, .. } => node(
                "ConvTranspose",
                name.clone(),
                w(name),
                y.clone(),
                vec![
                    ints("kernel_shape", &[*kernel, *kernel]),
                    ints("strides", &[*stride, *stride]),
                    ints("pads", &[*padding; 4]),
                    ints("output_padding", &[*output_padding, *output_padding]),
                    ints("dilations", &[1, 1]),
                    int("group", 1),
                ],
            ),
            Layer::Relu => node("Relu", format!("relu{i}"), vec![x.clone()], y.clone(), vec![]),
            Layer::Tanh => node("Tanh", format!("tanh{i}"), vec![x.clone()], y.clone(), vec![]),
            Layer::Reshape { shape } => {
                let s = format!("reshape{i}.shape");
                let mut full = vec![-1];
                full.extend_from_slice(shape);
                initializers.push(int64_tensor(&s, &full));
                node("Reshape", format!("reshape{i}"), vec![x.clone(), s], y.clone(), vec![])
            }
            Layer::Crop { height, width } => {
                let names = ["starts", "ends", "axes"].map(|p| format!("crop{i}.{p}"));
                initializers.push(int64_tensor(&names[0], &[0, 0]));
                initializers.push(int64_tensor(&names[1], &[*height, *width]));
                initializers.push(int64_tensor(&names[2], &[2, 3]));
                let mut input = vec![x.clone()];
                input.extend(names);
                node("Slice", format!("crop{i}"), input, y.clone(), vec![])
            }
        };
        nodes.push(n);
        x = y;
    }
    let [c, h, w] = graph.image;
    let graph_proto = GraphProto {
        node: nodes,
        name: Some(format!("gandist_{}_generator", graph.arch)),
        initializer: initializers,
        doc_string: Some(format!("gandist generator: {}", meta.summary())),
        input: vec![value_info(INPUT, &[None, Some(graph.latent)], "standard normal noise, float32")],
        output: vec![value_info(OUTPUT, &[None, Some(c), Some(h), Some(w)], "images, NCHW, float32 in [-1, 1]")],
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("gandist".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        model_version: Some(meta.step as i64),
        doc_string: Some(format!("gandist generator: {}", meta.summary())),
        graph: Some(graph_proto),
        metadata_props: meta
            .to_string_map()
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding reads back (prost) with one node per layer, chained input to output, every
    /// node input an initializer or an earlier output, and the weights' values unchanged.
    /// (The DCGAN family's pixel norm is five nodes; tests/export_cli.rs runs that graph.)
    #[test]
    fn the_model_is_one_chained_node_per_layer() {
        tch::manual_seed(2);
        let g = crate::model::Generator::new(crate::config::Arch::Paper, 2, 4, crate::model::ImageShape { channels: 3, side: 28 }, tch::Device::Cpu).unwrap();
        let graph = crate::export::graph::of(&g);
        let meta = Metadata::new(&graph, 7, true, "ck".into());
        let bytes = model(&graph, &meta).unwrap().encode_to_vec();
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        let gp = m.graph.unwrap();
        assert_eq!(gp.node.len(), graph.layers.len());
        let mut known: Vec<String> = gp.initializer.iter().map(|t| t.name.clone().unwrap()).collect();
        known.push(INPUT.into());
        for n in &gp.node {
            for i in &n.input {
                assert!(known.contains(i), "node {:?} reads {i}, which nothing defines", n.name);
            }
            known.push(n.output[0].clone());
        }
        assert_eq!(gp.node.last().unwrap().output, vec![OUTPUT.to_string()]);
        let w = gp.initializer.iter().find(|t| t.name.as_deref() == Some("deconv3.weight")).unwrap();
        assert_eq!(w.dims, vec![2, 3, 5, 5]);
        let first = f32::from_le_bytes(w.raw_data.as_ref().unwrap()[..4].try_into().unwrap());
        assert_eq!(first, g.params.get("deconv3.weight").flatten(0, -1).double_value(&[0]) as f32);
        let props: std::collections::BTreeMap<String, String> = m.metadata_props.into_iter().map(|p| (p.key.unwrap(), p.value.unwrap())).collect();
        assert_eq!(Metadata::from_string_map(&props).unwrap(), meta);
    }
}
