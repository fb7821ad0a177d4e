"""The ONNX runtimes (IMGSEARCH_RUNTIME=onnx|onnx-int8) on tiny checkpoints: float32 equals torch,
int8 passes its quality check and a broken export is refused, exports are cached and made once,
int8 embeddings are a model of their own, and a real Celery worker embeds with int8 end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import onnx as onnx_lib
import pytest
import redis
from onnx import numpy_helper

from imgsearch import Catalog
from imgsearch.embed import onnx
from imgsearch.embed.model import Embedder
from imgsearch.errors import ConfigurationError, InvalidImage, ModelUnavailable
from imgsearch.settings import Settings
from tests.helpers import Workers, clean_environment, wait_until

SAMPLES = Path(__file__).parents[2] / "imgsearch" / "samples" / "images"
TEXTS = ["a red shoe", "a blue leather bag", "white cotton shirt with buttons"]
REDIS_URL = "redis://127.0.0.1:6379/0"


def truncated_jpeg() -> bytes:
    """A JPEG cut in half: its header passes the upload's check, its decoding fails in the worker."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((300, 300), 40).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()[: len(out.getvalue()) // 2]


def exports(home: Path) -> list[Path]:
    """The export folders under ``home`` (beside them: the remembered digests)."""
    return [path for path in (home / "onnx").iterdir() if path.is_dir()]


def pictures() -> list[bytes]:
    return [f.read_bytes() for f in sorted(SAMPLES.glob("*.png"))[:6]]


@pytest.mark.parametrize("family", ["tiny_siglip", "tiny_clip"])
def test_float32_export_equals_torch(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    checkpoint = str(request.getfixturevalue(family))
    torch_embedder = Embedder(checkpoint)
    onnx_embedder = Embedder(checkpoint, runtime="onnx", home=tmp_path)
    a, b = torch_embedder.embed_images(pictures()), onnx_embedder.embed_images(pictures())
    assert np.abs(np.stack(a) - np.stack(b)).max() < 1e-4  # type: ignore[arg-type]
    assert np.abs(torch_embedder.embed_texts(TEXTS) - onnx_embedder.embed_texts(TEXTS)).max() < 1e-4
    assert onnx_embedder.logit_params() == pytest.approx(torch_embedder.logit_params())
    assert onnx_embedder.quality is not None and onnx_embedder.quality.image_min > 0.9999
    assert (onnx_embedder.device, onnx_embedder.dtype, onnx_embedder.runtime) == ("cpu", "float32", "onnx")


def test_siglip2_is_refused_clearly(tiny_siglip2: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"support siglip, clip checkpoints; .* is 'siglip2'"):
        Embedder(str(tiny_siglip2), runtime="onnx", home=tmp_path).load()


def test_int8_passes_its_check_and_keeps_bad_images_apart(tiny_siglip: Path, tmp_path: Path) -> None:
    embedder = Embedder(f"{tiny_siglip}@onnx-int8", home=tmp_path)
    results = embedder.embed_images([*pictures()[:2], b"not an image", b""])
    assert isinstance(results[2], InvalidImage) and "not a recognised image" in str(results[2])
    assert isinstance(results[3], InvalidImage)
    reference = Embedder(str(tiny_siglip)).embed_images(pictures()[:2])
    for ours, theirs in zip(results[:2], reference, strict=True):
        assert float(np.dot(ours, theirs)) > 0.99  # type: ignore[arg-type]
    quality = embedder.quality
    assert quality is not None and quality.runtime == "onnx-int8"
    assert quality.passes(0.99) and quality.images == 42 and quality.texts == len(onnx.CALIBRATION_TEXTS)
    assert embedder.dtype == "int8" and embedder.dim == 32
    (folder,) = exports(tmp_path)
    recorded = json.loads((folder / "check-onnx-int8.json").read_text())
    assert recorded["image_min"] == pytest.approx(quality.image_min)


def _corrupt_a_scale(path: Path) -> None:
    """Multiply the first weight scale of the int8 model by 50: a broken quantization."""
    model = onnx_lib.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name.endswith("_scale") and tensor.data_type == onnx_lib.TensorProto.FLOAT:
            values = numpy_helper.to_array(tensor) * 50
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
            break
    else:
        raise AssertionError("no scale in the int8 model")
    onnx_lib.save(model, str(path))


def test_a_broken_export_is_refused_naming_the_figures(tiny_siglip: Path, tmp_path: Path) -> None:
    Embedder(f"{tiny_siglip}@onnx-int8", home=tmp_path).load()
    (folder,) = exports(tmp_path)
    for tower in ("image", "text"):
        _corrupt_a_scale(folder / f"{tower}-int8.onnx")
    with pytest.raises(
        ModelUnavailable, match=r"onnx-int8 runtime is refused .* images min 0\.\d+ .* below "
    ):
        Embedder(f"{tiny_siglip}@onnx-int8", home=tmp_path).load()
    # the threshold is a setting: the same export passes a looser one (and is checked afresh once)
    lenient = Embedder(f"{tiny_siglip}@onnx-int8", home=tmp_path, min_cosine=0.01)
    lenient.load()
    assert lenient.quality is not None and lenient.quality.image_min < 0.99


def test_int8_never_mixes_with_float32(tiny_siglip: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"must not mix .* `imgsearch reembed --model .*@onnx-int8`"):
        Embedder(str(tiny_siglip), runtime="onnx-int8", home=tmp_path)
    with pytest.raises(ConfigurationError, match="runtime must be one of torch, onnx, onnx-int8"):
        Embedder(str(tiny_siglip), runtime="tensorrt", home=tmp_path)
    # the name decides: a torch setting still runs an int8 model with int8
    assert Embedder(f"{tiny_siglip}@onnx-int8", runtime="torch", home=tmp_path).runtime == "onnx-int8"


EXPORT_ONCE = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    from imgsearch.embed.model import Embedder
    embedder = Embedder(sys.argv[1], runtime="onnx", home=Path(sys.argv[2]))
    embedder.load()
    print("dim", embedder.embed_texts(["a red shoe"]).shape[1])
    """
)


def test_digests_are_remembered_until_a_file_changes(tiny_siglip: Path, tmp_path: Path) -> None:
    """A worker start doesn't read the checkpoint again to find its export folder: the digest is
    remembered by the files' stat, and a changed file is hashed again."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_siglip, checkpoint)
    old = time.time() - 60

    def settle(path: Path) -> None:  # as if written a minute ago: recent files are never remembered
        os.utime(path, (old, old))

    for file in checkpoint.iterdir():
        settle(file)
    cache = tmp_path / "onnx" / onnx.DIGESTS
    fresh = checkpoint / "config.json"
    fresh.touch()  # just written: hashed, not remembered
    assert onnx.checkpoint_hash(checkpoint, cache) == onnx.checkpoint_hash(checkpoint)
    assert not cache.exists()
    settle(fresh)
    real = onnx.checkpoint_hash(checkpoint)
    assert onnx.checkpoint_hash(checkpoint, cache) == real and cache.exists()
    # served from the cache while no file changed: a planted value comes back unread
    planted = {key: "f" * 64 for key in json.loads(cache.read_text())}
    cache.write_text(json.dumps(planted))
    assert onnx.checkpoint_hash(checkpoint, cache) == "f" * 64
    # a changed file (size and mtime) is hashed again, and so is a file of the same size rewritten
    config = checkpoint / "config.json"
    config.write_text(config.read_text() + " ")
    settle(config)
    changed = onnx.checkpoint_hash(checkpoint)
    assert changed != real and onnx.checkpoint_hash(checkpoint, cache) == changed
    weights = next(checkpoint.glob("*.safetensors"))
    os.utime(weights, ns=(0, 0))
    assert onnx.checkpoint_hash(checkpoint, cache) == changed  # same contents, recomputed
    assert len(json.loads(cache.read_text())) == 3
    # one file's digest the same way; an unreadable cache only costs the computation
    assert onnx.file_hash(config, cache) == onnx.file_hash(config)
    cache.write_text("not json")
    assert onnx.file_hash(config, cache) == onnx.file_hash(config)


def test_exports_are_cached_and_made_once_by_concurrent_workers(tiny_siglip: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORT_ONCE, str(tiny_siglip), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all("dim 32" in out for out in outputs)
    logs = "\n".join(outputs)
    assert logs.count("imgsearch.embed.onnx exported") == 1, logs
    (folder,) = exports(tmp_path)
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.onnx")}
    again = subprocess.run(
        [sys.executable, "-c", EXPORT_ONCE, str(tiny_siglip), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "exported" not in again.stderr + again.stdout
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.onnx")} == stamps
    # another checkpoint is another export: the folder is keyed by the checkpoint's content
    other = tmp_path / "copy"
    shutil.copytree(tiny_siglip, other)
    config = json.loads((other / "config.json").read_text())
    config["logit_scale_init_value"] = 1.5
    (other / "config.json").write_text(json.dumps(config))
    Embedder(str(other), runtime="onnx", home=tmp_path).load()
    assert len(exports(tmp_path)) == 2


def test_model_check_prints_both_runtimes(tiny_siglip: Path, tmp_path: Path) -> None:
    env = clean_environment()
    env.update(IMGSEARCH_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    (tmp_path / "home").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "imgsearch", "model", "check", str(tiny_siglip)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"checkpoint {tiny_siglip}; threshold 0.99")
    assert lines[1].startswith("onnx       ok: onnx: images min 1.0000")
    assert lines[2].startswith("onnx-int8  ok: onnx-int8: images min 0.99")
    strict = subprocess.run(
        [sys.executable, "-m", "imgsearch", "model", "check", str(tiny_siglip), "--runtime", "onnx-int8"],
        env={**env, "IMGSEARCH_RUNTIME_MIN_COSINE": "0.99999999"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert strict.returncode == 1 and "onnx-int8  refused: " in strict.stdout and "below" in strict.stdout


def test_a_celery_worker_embeds_with_int8(database_url: str, tiny_siglip: Path, tmp_path: Path) -> None:
    """A catalog on the int8 model: uploads become ready through a real worker started with
    --runtime onnx-int8, with the int8 embeddings."""
    queue = f"imgsearch-test-{uuid.uuid4().hex[:8]}"
    model = f"{tiny_siglip}@onnx-int8"
    home = tmp_path / "home"
    home.mkdir()
    env = clean_environment()
    env.update(
        IMGSEARCH_DATABASE_URL=database_url,
        IMGSEARCH_HOME=str(home),
        IMGSEARCH_REDIS_URL=REDIS_URL,
        IMGSEARCH_QUEUE=queue,
        IMGSEARCH_BATCH_SIZE="8",
        HF_HUB_OFFLINE="1",
        TMPDIR=str(tmp_path),
    )
    settings = Settings(redis_url=REDIS_URL, queue=queue, wake_workers=True, home=home)
    workers = Workers(env, tmp_path)
    try:
        with Catalog.open(database_url, model=model, settings=settings) as catalog:
            assert catalog.model == model
            ids = catalog.add_many(
                [
                    {"image": data, "tenant": "acme", "product_id": f"p{i}"}
                    for i, data in enumerate(pictures())
                ]
                + [{"image": truncated_jpeg(), "tenant": "acme", "product_id": "bad"}]
            )
            workers.start("--runtime", "onnx-int8")
            wait_until(
                lambda: catalog.get(ids[0]).state == "ready" and catalog.get(ids[-2]).state == "ready",
                120,
                workers,
                "int8 embeddings",
            )
            assert catalog.get(ids[-1]).state == "failed"
            expected = Embedder(model, home=home).embed_images(pictures()[:1])[0]
            hits = catalog.search(vector=expected, tenant="acme", k=1)
            assert hits[0].image_id == ids[0] and hits[0].distance < 1e-3
            assert "(onnx-int8, int8)" in workers.log_tail()
    finally:
        workers.stop_all()
        redis.Redis.from_url(REDIS_URL).delete(queue)


def test_a_catalog_switches_to_int8_without_downtime(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    """reembed backfills NAME@onnx-int8 beside the float32 model, activate switches; a worker
    told to run int8 on the float32 model refuses, naming the way to switch."""
    from tests.helpers import image_bytes, run_cli

    home = tmp_path / "home"
    home.mkdir()
    for i in range(4):
        (tmp_path / f"p{i}.png").write_bytes(image_bytes(200 + i))
    env = {
        "IMGSEARCH_DATABASE_URL": database_url,
        "IMGSEARCH_MODEL": str(tiny_siglip),
        "IMGSEARCH_HOME": str(home),
    }
    assert run_cli("ingest", *(str(tmp_path / f"p{i}.png") for i in range(4)), **env).returncode == 0
    refused = run_cli("worker", "--drain", "--runtime", "onnx-int8", **env)
    assert refused.returncode == 2 and "must not mix" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    backfill = run_cli("reembed", "--model", f"{tiny_siglip}@onnx-int8", "--activate", **env)
    assert backfill.returncode == 0, backfill.stderr
    assert "embedded 4, skipped 0" in backfill.stdout
    with Catalog.open(database_url, settings=Settings(home=home)) as catalog:
        assert catalog.model == f"{tiny_siglip}@onnx-int8" and catalog.dim == 32
        query = (tmp_path / "p2.png").read_bytes()
        hits = catalog.search(image=query, k=1)  # the query embedded by the int8 runtime too
        assert hits[0].distance < 1e-3
