"""The pieces of the quantization passes: fp8 weight encoding, subgraph-aware ordering, eval-set files, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hmexport.errors import InputError
from hmexport.quantize.evalset import load_eval_set
from hmexport.quantize.passes import FP8_MAX, fp8_weight, toposort


def test_fp8_weight_scales_each_column_to_its_amax():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 8)).astype(np.float32) * np.array([1e-3, 0.1, 1, 10, 100, 1, 1, 1], np.float32)
    w[5, 6] = 40.0  # an outlier: ORT's std-based fp8 scale refuses it; amax scaling keeps it exactly
    bits, scale = fp8_weight(w)
    assert bits.dtype == np.uint8 and scale.shape == (8,)
    back = bits.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    np.testing.assert_allclose(np.abs(back).max(axis=0), np.abs(w).max(axis=0), rtol=1e-6)
    assert np.all(np.abs(back - w) <= np.abs(w) * 2**-4 + scale * 2**-9)  # e4m3: 3 mantissa bits; subnormals at the bottom
    assert np.abs(bits.view(ml_dtypes.float8_e4m3fn).astype(np.float32)).max() == FP8_MAX
    zero = fp8_weight(np.zeros((4, 2), np.float32))
    assert np.all(zero[1] == 1.0) and np.all(zero[0] == 0)


def test_toposort_orders_by_subgraph_captures():
    """An If whose branch reads a value made later at the top level (as onnxruntime's quantizers leave it) is moved after it."""
    branch = lambda name, op: helper.make_graph([helper.make_node(op, ["x2"], [f"{name}_out"])], name, [],  # noqa: E731
                                               [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then", "Neg"), else_branch=branch("else", "Abs")),
        helper.make_node("Add", ["x", "x"], ["x2"], name="double"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    fixed = toposort(model)
    onnx.checker.check_model(fixed)
    assert [n.name for n in fixed.graph.node] == ["double", "if"]
    out = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": np.array([1, -2], np.float32), "cond": np.array(True)})
    np.testing.assert_array_equal(out[0], [-2, 4])


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_eval_set_format_and_errors(tmp_path):
    _write(tmp_path / "fx" / "eval" / "eval.jsonl", [{"task": "kv", "input_ids": [1, 5], "answer_ids": [7]}, {"input_ids": [1], "answer_ids": [3, 4], "images": []}])
    es = load_eval_set(tmp_path / "fx")  # a fixture directory holding eval/
    assert es.name == "fx" and es.tasks == ["all", "kv"] and es.examples[1].answer_ids == [3, 4]
    assert load_eval_set(tmp_path / "fx" / "eval").name == "fx"
    cases = [
        ("{not json", "eval.jsonl:1: not valid JSON"),
        ({"input_ids": [1, "a"], "answer_ids": [2]}, "eval.jsonl:1: input_ids: expected a list of token ids"),
        ({"input_ids": [1], "answer_ids": []}, "eval.jsonl:1: answer_ids: expected at least one token id"),
        ({"input_ids": [1], "answer_ids": [2], "images": ["missing.png"]}, "eval.jsonl:1: images: file\\(s\\) not found"),
    ]
    for row, message in cases:
        _write(tmp_path / "bad" / "eval.jsonl", [row])
        with pytest.raises(InputError, match=message):
            load_eval_set(tmp_path / "bad")
    with pytest.raises(InputError, match="no eval.jsonl here or in"):
        load_eval_set(tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hmexport.cli.app", *args], capture_output=True, text=True)


def test_cli_quantize_and_validate(bundles, tmp_path):
    out = tmp_path / "int8"
    r = _cli("quantize", str(bundles["jamba-dense"]), "--precision", "int8", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["quantization"]["precision"] == "int8" and info["accuracy"]["agreement"]["tokens"] == 64
    r = _cli("validate", str(out))
    assert r.returncode == 0, r.stderr
    assert "top-1 agreement with fp32" in r.stdout and "no task accuracy measured" in r.stdout
    r = _cli("quantize", str(bundles["jamba-dense"]), "--precision", "int5", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--precision: expected one of int8, int4, fp8, got 'int5'" in r.stderr
    r = _cli("inspect", str(out))
    assert r.returncode == 0 and "int8" in r.stdout and "embedding float32" in r.stdout
