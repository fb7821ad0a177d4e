"""Query micro-batching (imgsearch/embed/batching.py): concurrent callers share one call, each
gets its own result or error, and an embedder's concurrent text and image queries equal the ones
computed alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch.embed.batching import LRUCache, MicroBatcher
from imgsearch.embed.model import Embedder
from imgsearch.errors import InvalidImage
from tests.helpers import image_bytes


def concurrently(count: int, work) -> list[object]:  # type: ignore[no-untyped-def]
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_items_share_calls_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int | BaseException]:
        calls.append(list(items))
        time.sleep(0.02)  # a forward pass: what arrives meanwhile goes into the next one
        return [ValueError(f"odd {i}") if i % 7 == 3 else i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, max_wait_seconds=0.005)
    results = concurrently(32, batcher.submit)
    for i, result in enumerate(results):
        if i % 7 == 3:
            assert isinstance(result, ValueError) and str(result) == f"odd {i}"
        else:
            assert result == i * 10
    assert sorted(item for call in calls for item in call) == list(range(32))
    assert len(calls) < 32 and max(len(call) for call in calls) <= 8
    assert (batcher.batches, batcher.items) == (len(calls), 32)
    batcher.close()


def test_a_failing_call_fails_its_batch_only_and_the_thread_goes_on() -> None:
    def run(items: list[str]) -> list[str]:
        if "boom" in items:
            raise RuntimeError("the model broke")
        return [item.upper() for item in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(run, max_size=1)
    with pytest.raises(RuntimeError, match="the model broke"):
        batcher.submit("boom")
    assert batcher.submit("fine") == "FINE"
    sizes: list[int] = []
    batcher.on_batch = sizes.append
    assert batcher.submit("again") == "AGAIN" and sizes == [1]
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("late")


def test_wrong_result_counts_and_settings_are_refused() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [], max_size=4)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        batcher.submit(1)
    batcher.close()
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_size=1, max_wait_seconds=-1)


def test_lru_cache() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # "b" was used least recently
    assert cache.get("b") is None and cache.get("c") == 3
    assert cache.info() == (2, 1, 2, 2)
    off: LRUCache[str, int] = LRUCache(0)
    off.put("a", 1)
    assert off.get("a") is None and off.info().currsize == 0


def test_embedder_batches_concurrent_queries_with_the_same_results(tiny_siglip: Path) -> None:
    alone = Embedder(str(tiny_siglip), device="cpu", query_batch_size=1, text_cache_size=0)
    together = Embedder(str(tiny_siglip), device="cpu", query_batch_size=16, query_batch_wait_ms=20)
    texts = [f"a photo of product {i}" for i in range(16)]
    expected = [alone.embed_text(t) for t in texts]
    assert alone.query_batches() == (16, 16)
    got = concurrently(16, lambda i: together.embed_text(texts[i]))
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine, reference, atol=2e-5)
    passes, queries = together.query_batches()
    assert queries == 16 and passes < 16
    assert together.text_cache_info().currsize == 16, "the batch filled the shared text cache"
    again = concurrently(16, lambda i: together.embed_text(texts[i]))
    assert together.query_batches() == (passes, 16), "cached texts need no forward pass"
    np.testing.assert_allclose(again[3], expected[3], atol=2e-5)

    pictures = [image_bytes(i, size=(40, 30)) for i in range(6)] + [b"not an image"]
    reference_images = alone.embed_images(pictures)
    results = concurrently(len(pictures), lambda i: together.embed_image(pictures[i]))
    for result, reference in zip(results[:-1], reference_images[:-1], strict=True):
        np.testing.assert_allclose(result, reference, atol=2e-5)  # type: ignore[arg-type]
    assert isinstance(results[-1], InvalidImage), "a bad image fails its own caller alone"
    alone.close()
    together.close()
