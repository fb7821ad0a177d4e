"""Embedding: model names and dimensions, loading, preprocessing, batching.

Only :mod:`imgsearch.embed.registry` is torch-free; the rest imports torch and transformers
(the ``worker`` extra) and is loaded lazily.
"""
