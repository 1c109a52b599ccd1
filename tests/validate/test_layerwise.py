"""The layer-at-a-time reference (used for the 4B / 8B) equals the whole-model reference."""

from __future__ import annotations

from qexport.validate.layerwise import LayerwiseReference
from tests.conftest import cosines
from tests.texts import MIXED


def test_layerwise_equals_full_reference(tiny_artifact, tiny_reference):
    texts = MIXED[:5]
    lw = LayerwiseReference("random:qwen3-tiny", tokenizer=str(tiny_artifact))
    task = "Given a web search query, retrieve relevant passages that answer the query"
    assert cosines(lw.embed(texts), tiny_reference.embed(texts)).min() >= 0.99999
    assert (
        cosines(
            lw.embed(texts[:2], instruction=task), tiny_reference.embed(texts[:2], instruction=task)
        ).min()
        >= 0.99999
    )
