"""Trimmed text (B x L, L < 77) gives the same embeddings as padding to 77, in torch and in ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from crisis_tool.export.graphs import TextEncoderGraph
from crisis_tool.export.onnx_export import export_graph
from crisis_tool.export.validate import open_session
from crisis_tool.runtime.model_spec import TEXT_GRAPH
from crisis_tool.runtime.tokenizer import ClipTokenizer

TEXTS = [
    "Flooding on Main St, families evacuated #HurricaneHarvey",
    "ok",
    "Red Cross volunteers distributing water and blankets at the shelter tonight, please donate if you can",
]


@pytest.fixture(scope="module")
def tiny_clip():
    from crisis_tool.clip_loader import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("crisis-tiny", "none")


@pytest.fixture(scope="module")
def tokenizer(tiny_clip) -> ClipTokenizer:
    return ClipTokenizer(tiny_clip.vocab_path, context_length=77)


@pytest.fixture(scope="module")
def text_graph(tiny_clip, tokenizer, tmp_path_factory):
    module = TextEncoderGraph(tiny_clip.model, tokenizer.eot_token_id).eval()
    path = tmp_path_factory.mktemp("text") / "text_encoder.onnx"
    export_graph(module, TEXT_GRAPH, path, {"D": tiny_clip.embed_dim, "eot": tokenizer.eot_token_id})
    return module, open_session(path)


def _reference(tiny_clip, ids77: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tiny_clip.model.encode_text(torch.from_numpy(ids77)).numpy()


def test_trimmed_equals_padded_in_torch_and_onnxruntime(tiny_clip, tokenizer, text_graph):
    module, session = text_graph
    padded = tokenizer(TEXTS)
    trimmed = tokenizer.tokenize(TEXTS, trim=True)
    assert trimmed.shape[1] < 77 and np.array_equal(padded[:, : trimmed.shape[1]], trimmed)
    ref = _reference(tiny_clip, padded)
    with torch.no_grad():
        torch_trimmed = module(torch.from_numpy(trimmed)).numpy()
        torch_padded = module(torch.from_numpy(padded)).numpy()
    ort_trimmed = session.run(None, {"input_ids": trimmed})[0]
    ort_padded = session.run(None, {"input_ids": padded})[0]
    for out in (torch_trimmed, torch_padded, ort_trimmed, ort_padded):
        assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("length", [1, 2, 9, 40, 76, 77])
def test_every_length_in_range(tiny_clip, tokenizer, text_graph, length):
    """Rows whose EOT sits at the last kept position, for L from 1 (a lone EOT) to 77."""
    rng = np.random.default_rng(length)
    ids = np.zeros((3, 77), dtype=np.int64)
    for row in range(3):
        n = max(1, length - row)  # the longest row is exactly `length` tokens
        ids[row, : n - 1] = rng.integers(1, tokenizer.sot_token_id, size=n - 1)
        if n > 1:
            ids[row, 0] = tokenizer.sot_token_id
        ids[row, n - 1] = tokenizer.eot_token_id
    ref = _reference(tiny_clip, ids)
    out = text_graph[1].run(None, {"input_ids": ids[:, :length]})[0]
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-5
