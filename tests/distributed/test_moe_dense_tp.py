"""`--moe-dense-tp-size 1`: an MoE model's dense MLP layers replicated, the tokens scattered over
the attention-TP group around them (tessera.layers.communicator), and the captured sizes kept to
multiples of that group (tessera.compilation.capture_sizes).

The TP runs are CPU gloo engines in fresh processes (tests/moe_dense_tp_driver.py) with the
piecewise graph enforced, on a tiny Qwen3-MoE whose layers are sparse, dense, dense, sparse,
dense: a dense layer after a full stream, one after a scattered stream, a sparse layer after a
scattered stream, and a dense last layer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hf_models import save_tiny_model

from tessera.compilation import capture_sizes as capture_sizes_module
from tessera.config import EngineConfig, GraphConfig, ParallelConfig

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(TESTS, "moe_dense_tp_driver.py")
ROOT = os.path.dirname(TESTS)
# 3 is not a multiple of 2 or 4: the rule drops it, so a 1-token prefill pads to 8
PCG = {"moe_dense_tp_size": 1, "enforce_piecewise_cuda_graph": True,
       "piecewise_cuda_graph_tokens": [3, 8, 16]}


def run_driver(model: str, tp: int, out: str, engine: dict, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, DRIVER, model, str(tp), out, json.dumps(engine),
                           *extra], capture_output=True, text=True, check=False, timeout=240,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("moe-dense") / "m"),
                           "qwen3_moe_dense_runs")


@pytest.fixture(scope="module")
def tp1(model, tmp_path_factory):
    return run_driver(model, 1, str(tmp_path_factory.mktemp("tp1") / "tp1.pt"), {})


@pytest.mark.parametrize("tp", [2, 4])
def test_scattered_dense_layers_with_pcg_equal_tp1(model, tp1, tmp_path, tp):
    """Prefills of 7, 11 and 1 tokens through the compiled pieces (padded to 8, 16, 8) and
    decodes of 2, 3 and 4 requests eagerly (padded inside the communicator when not a
    multiple): every logit equals TP=1's."""
    got = run_driver(model, tp, str(tmp_path / "tpn.pt"), PCG)
    assert "error" not in got, got["error"]
    assert got["capture_sizes"] == [8, 16] and got["replays"] == 3
    # the trunk (up to layer 4's attention) splits at attention only; the scatter and gather
    # ops are inside the pieces: layers 1 and 2 reduce-scatter their attention output, layers
    # 2 and 3 gather their normed input and layer 3 its residual; all-reduces: the embedding,
    # the attention output of layers 0, 3 and 4, the MoE blocks of layers 0 and 3
    assert got["splitting_pieces"] == 5
    assert got["piece_ops"] == sorted(["tessera::tp_reduce_scatter"] * 2
                                      + ["tessera::tp_all_gather_tokens"] * 3
                                      + ["tessera::tp_all_reduce"] * 6)
    assert len(got["logits"]) == len(tp1["logits"]) == 6
    for step, (ours, ref) in enumerate(zip(got["logits"], tp1["logits"])):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_without_the_capture_size_rule_a_graph_size_breaks_the_reduce_scatter(model, tmp_path):
    """The same run with the multiples rule off keeps size 3: the 1-token prefill pads to 3,
    which the compiled pieces cannot split over two ranks."""
    got = run_driver(model, 2, str(tmp_path / "bad.pt"), PCG, "unfiltered")
    assert got["capture_sizes"] == [3, 8, 16]
    assert "reduce-scatter of 3 rows over a tensor-parallel group of 2" in got["error"]
    assert len(got["logits"]) == 4  # the steps before it ran
    assert got["rank_exit_codes"] == [1]  # rank 1 failed the same way, nothing hung


def test_dense_layers_are_replicated_and_the_plan_follows_the_layers(model, monkeypatch):
    """Built as rank 1 of 2 with --moe-dense-tp-size 1 (on the meta device: shapes only)."""
    from tessera.distributed import parallel_state, tensor_parallel_as
    from tessera.models.loader import load_model_config
    from tessera.models.registry import get_model_class

    config = load_model_config(model)
    monkeypatch.setattr(parallel_state, "_moe_dense_tp_size", 1)
    with tensor_parallel_as(1, 2), torch.device("meta"):
        lm = get_model_class(config.architecture)(config, torch.float32)
    layers = lm.model.layers
    plan = [(c.input_scattered, c.mlp_scattered, c.mlp_replicated)
            for c in (layer.comm for layer in layers)]
    assert plan == [(False, False, False), (False, True, True), (True, True, True),
                    (True, False, False), (False, False, True)]
    for i in (1, 2, 4):  # dense: whole weights on every rank
        assert layers[i].mlp.gate_up_proj.weight.shape == (2 * 128, 64)
        assert layers[i].mlp.down_proj.weight.shape == (64, 128)
    assert layers[0].mlp.w13_weight.shape == (8, 2 * 32 // 2, 64)  # experts stay sharded
    assert layers[0].self_attn.qkv_proj.num_heads == 2  # attention stays sharded
    assert [layer.self_attn.o_proj.reduce_results for layer in layers] == [
        True, False, False, True, True]
    # unset: every layer sharded, nothing scattered
    monkeypatch.setattr(parallel_state, "_moe_dense_tp_size", None)
    with tensor_parallel_as(1, 2), torch.device("meta"):
        lm = get_model_class(config.architecture)(config, torch.float32)
    assert lm.model.layers[1].mlp.gate_up_proj.weight.shape == (128, 64)
    assert not any(layer.comm.input_scattered or layer.comm.mlp_scattered
                   for layer in lm.model.layers)


@pytest.mark.parametrize("value", [2, 4, 0])
def test_only_1_or_unset_is_accepted(value):
    with pytest.raises(ValueError, match=f"--moe-dense-tp-size {value} is not supported"):
        EngineConfig.from_kwargs(model_path="tiny-qwen3-moe", tp_size=4,
                                 moe_dense_tp_size=value).resolve()
    EngineConfig.from_kwargs(model_path="tiny-qwen3-moe", tp_size=4,
                             moe_dense_tp_size=1).resolve()


def test_decode_graph_batch_sizes_are_multiples_of_attn_tp():
    from tessera.runner.cuda_graph_runner import decode_graph_batch_sizes

    scattered = ParallelConfig(tp_size=4, moe_dense_tp_size=1)
    sizes = decode_graph_batch_sizes(GraphConfig(cuda_graph_max_bs=48), 256, scattered)
    assert sizes == [4, 8, 12, 16, 24, 32, 40, 48]
    # the largest batch (3 requests) pads into a graph of 4
    assert decode_graph_batch_sizes(GraphConfig(), 3, scattered) == [4]
    assert decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[1, 2, 4, 6, 8]), 16,
                                    scattered) == [4, 8]
    # unscattered layouts keep the grid
    assert decode_graph_batch_sizes(GraphConfig(), 3, ParallelConfig(tp_size=4)) == [1, 2, 3]
    with pytest.raises(ValueError, match="no decode CUDA graph batch size is a multiple of 4") \
            as info:
        decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[1, 2, 6]), 16, scattered)
    assert "--moe-dense-tp-size" in str(info.value) and "--cuda-graph-bs" in str(info.value)


def test_the_rule_can_be_turned_off_inside_the_code_only(monkeypatch):
    graph = GraphConfig(piecewise_cuda_graph_tokens=[3, 8, 16])
    parallel = ParallelConfig(tp_size=2, moe_dense_tp_size=1)
    assert capture_sizes_module.capture_sizes(graph, parallel) == [8, 16]
    monkeypatch.setattr(capture_sizes_module, "KEEP_SCATTER_MULTIPLES", False)
    assert capture_sizes_module.capture_sizes(graph, parallel) == [3, 8, 16]
