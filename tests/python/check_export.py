"""Reads gandist's exports and sample folders with the tools users load them with, and prints
what it found as JSON for the Rust tests to judge (tests/export_cli.rs).

    check_export.py CHECKS.json

CHECKS.json is a list of checks; the output is a list of reports in the same order (a report
is {"error": ...} when its check raised):

    {"kind": "torchscript"|"onnx"|"safetensors", "file", "z", "ref", "other"}
        runs the exported file on the noise z (.npy), reports the largest difference to ref
        (gandist's own output for z) and to other (the other weights' output: a comparison
        that can fail), and the metadata the file carries, read as each runtime exposes it.
    {"kind": "png-dir", "file": DIR, "ref"}
        loads DIR with pytorch-fid's own file listing and image loading, reports how many
        images it found and the largest difference to ref's pixels, in levels of 255.
"""

import json
import sys

import numpy as np


def diffs(out, ref, other):
    out = np.asarray(out, dtype=np.float64)
    return {
        "shape": list(out.shape),
        "max_diff": float(np.abs(out - ref).max()),
        "max_diff_other": float(np.abs(out - other).max()),
    }


def main():
    # One process for every check, so that torch is imported once.
    checks = json.load(open(sys.argv[1]))
    reports = []
    for c in checks:
        try:
            if c["kind"] == "png-dir":
                reports.append(png_dir(c["file"], c["ref"]))
            else:
                reports.append(export(c["kind"], c["file"], *(np.load(c[k]) for k in ("z", "ref", "other"))))
        except Exception as e:  # reported per check: one failure does not hide the others
            reports.append({"error": f"{type(e).__name__}: {e}"})
    print(json.dumps(reports))


def export(kind, path, z, ref, other):
    assert z.dtype == np.float32
    report = {}
    if kind == "torchscript":
        import torch

        extra = {"gandist.json": ""}
        g = torch.jit.load(path, _extra_files=extra)
        report["metadata"] = json.loads(extra["gandist.json"])
        with torch.no_grad():
            out = g(torch.from_numpy(z)).numpy()
    elif kind == "onnx":
        import onnx
        import onnxruntime as ort

        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        report["opset"] = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        report["ir_version"] = model.ir_version
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        report["inputs"] = [[i.name, i.shape] for i in session.get_inputs()]
        report["outputs"] = [[o.name, o.shape] for o in session.get_outputs()]
        report["metadata"] = dict(session.get_modelmeta().custom_metadata_map)
        out = session.run(None, {"z": z})[0]
    elif kind == "safetensors":
        import torch
        from safetensors.torch import load_file

        import gandist_generator

        meta = gandist_generator.read_metadata(path)
        g = gandist_generator.GandistGenerator(**meta)
        # Strict: every tensor of the file is a parameter of the module and the other way round.
        result = g.load_state_dict(load_file(path), strict=True)
        report["missing"], report["unexpected"] = list(result.missing_keys), list(result.unexpected_keys)
        report["state_dict"] = sorted(g.state_dict())
        report["metadata"] = meta
        g2 = gandist_generator.load(path)
        with torch.no_grad():
            out = g(torch.from_numpy(z)).numpy()
            report["load_agrees"] = bool(np.array_equal(g2(torch.from_numpy(z)).numpy(), out))
    else:
        raise ValueError(f"unknown check {kind!r}")
    report.update(diffs(out, ref, other))
    return report


def png_dir(folder, ref_path):
    import pathlib

    import torch
    import torchvision.transforms as TF
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS, ImagePathDataset

    # pytorch-fid's own listing (fid_score.compute_statistics_of_path) and loading.
    path = pathlib.Path(folder)
    files = sorted([file for ext in IMAGE_EXTENSIONS for file in path.glob("*.{}".format(ext))])
    dataset = ImagePathDataset(files, transforms=TF.ToTensor())
    images = torch.stack([dataset[i] for i in range(len(dataset))]).numpy()
    ref = np.load(ref_path)
    # gandist's pixels: round((x + 1) * 127.5); ToTensor divides by 255. A grey sample is
    # read as RGB with three equal channels.
    want = np.clip(np.round((ref.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.int64)
    if want.shape[1] == 1:
        want = np.repeat(want, 3, axis=1)
    got = np.round(images.astype(np.float64) * 255.0).astype(np.int64)
    report = {"count": len(files), "names": [f.name for f in files[:2]] + [files[-1].name], "shape": list(images.shape)}
    report["max_diff_levels"] = int(np.abs(got - want).max()) if got.shape == want.shape else None
    return report


if __name__ == "__main__":
    main()
