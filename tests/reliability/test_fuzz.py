"""Property-based fuzzing of the readers: either a valid result or a ProcaError, never another exception.

Covers the image/label decoders (random bytes, random PNGs of every colour type and bit depth), the
label-info reader (random JSON documents, random pickles of plain types) and the ``--set`` override
parser of :mod:`proca.config`. Example counts are bounded so the folder stays fast.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca.config import config_keys
from proca.errors import ConfigError, DataError

# PROCA_FUZZ_EXAMPLES=1000 for a longer hunt; 40 keep the folder fast
FUZZ = settings(
    max_examples=int(os.environ.get("PROCA_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> allowed bit depths and channels
COLOR_TYPES = {0: ((1, 2, 4, 8, 16), 1), 2: ((8, 16), 3), 3: ((1, 2, 4, 8), 1), 4: ((8, 16), 2), 6: ((8, 16), 4)}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@st.composite
def png_files(draw: st.DrawFn) -> bytes:
    """A syntactically valid PNG of a random colour type, bit depth, size and content (palette may be short)."""
    color = draw(st.sampled_from(sorted(COLOR_TYPES)))
    depths, channels = COLOR_TYPES[color]
    depth = draw(st.sampled_from(depths))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    row_bytes = (width * channels * depth + 7) // 8
    pixels = draw(st.binary(min_size=height * row_bytes, max_size=height * row_bytes))
    raw = b"".join(b"\x00" + pixels[r * row_bytes : (r + 1) * row_bytes] for r in range(height))
    body = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if color == 3:
        entries = draw(st.integers(1, 2**depth))
        body += _chunk(b"PLTE", draw(st.binary(min_size=3 * entries, max_size=3 * entries)))
    body += _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    return PNG_SIGNATURE + body


def _file(data: bytes, suffix: str = ".png") -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return Path(name)


def _decode_everything(path: Path) -> None:
    """Run every reader on ``path``; each must return a well-formed result or raise DataError."""
    from proca.data._decode import LabelDecoder, read_label_ids, read_rgb
    from proca.data.classes import CITYSCAPES_19, SYNTHIA_16

    try:
        rgb = read_rgb(path)
        assert rgb.dtype.is_floating_point is False and rgb.ndim == 3 and rgb.shape[0] == 3
    except DataError:
        pass
    decoders = [
        LabelDecoder(CITYSCAPES_19.lookup_table("gtav"), "gtav", num_classes=19),
        LabelDecoder(SYNTHIA_16.lookup_table("synthia"), "synthia", num_classes=16),
        LabelDecoder(np.arange(256, dtype=np.uint8), "trainid", num_classes=19),
    ]
    for raw in ("gtav", "synthia"):
        try:
            ids = read_label_ids(path, raw)
            assert ids.ndim == 2
        except DataError:
            pass
    for decoder in decoders:
        try:
            train = decoder(path)
        except DataError:
            continue
        assert train.ndim == 2 and train.dtype == np.uint8
        assert set(np.unique(train).tolist()) <= {*range(decoder.num_classes), 255}


@FUZZ
@given(st.one_of(st.binary(max_size=256), st.binary(max_size=200).map(lambda b: PNG_SIGNATURE + b)))
def test_random_bytes_as_png(data: bytes) -> None:
    path = _file(data)
    try:
        _decode_everything(path)
    finally:
        path.unlink()


@FUZZ
@given(png_files(), st.data())
def test_random_png_modes_and_bit_depths(png: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.one_of(st.just(len(png)), st.integers(0, len(png))))  # sometimes truncated
    path = _file(png[:cut])
    try:
        _decode_everything(path)
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------- label info

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
label_rows = (
    st.fixed_dictionaries(
        {"file": json_values, "classes": json_values},
        optional={"pixels": json_values},
    )
    | json_values
)


def _read(data: bytes) -> None:
    from proca.data.label_info import LabelInfo, read_label_info

    path = _file(data, ".json")
    try:
        info = read_label_info(path)
    except DataError:
        return
    finally:
        path.unlink()
    assert isinstance(info, LabelInfo)
    assert all(isinstance(f, str) for f in info.files)
    info.class_to_files(19)  # usable by the sampler


@FUZZ
@given(json_values)
def test_label_info_random_json(doc: object) -> None:
    _read(json.dumps(doc).encode())


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "schema": st.just("proca.label_info"),
            "schema_version": st.just(1),
            "files": st.lists(label_rows, max_size=4),
        },
        optional={"num_classes": json_values, "skipped": json_values, "class_set": json_values},
    )
)
def test_label_info_random_rows(doc: dict) -> None:
    _read(json.dumps(doc).encode())


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 30), children, max_size=4)
        | st.frozensets(st.integers(-3, 30) | st.text(max_size=3), max_size=4)
    ),
    max_leaves=12,
)
release_like = st.tuples(
    st.lists(st.lists(st.text(max_size=5) | st.integers(0, 3), max_size=3), max_size=20),
    st.dictionaries(st.text(max_size=5) | st.integers(0, 3), plain, max_size=4),
)


@FUZZ
@given(st.one_of(plain, release_like), st.sampled_from([0, 2, 4, 5]))
def test_label_info_random_pickles(obj: object, protocol: int) -> None:
    _read(pickle.dumps(obj, protocol=protocol))


# ------------------------------------------------------------------------------------- --set

keys = st.one_of(
    st.sampled_from(sorted(config_keys())),
    st.lists(st.text(st.characters(codec="ascii"), max_size=6), min_size=1, max_size=3).map(".".join),
)
values = st.one_of(
    st.sampled_from(["1", "0", "-1", "0.5", "1e9", ".inf", ".nan", "null", "true", "[1, 2]", "[512, 1024]", "{}"]),
    st.sampled_from(["{iters: 3}", "{a: 1}", "[", "{", "'x", "!!python/name:os.system", "deeplabv2_resnet18"]),
    json_values.map(json.dumps),
    st.text(max_size=10),
)


@FUZZ
@given(st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=12), max_size=4))
def test_set_overrides_give_a_config_or_config_error(overrides: list[str]) -> None:
    from proca.config import TrainConfig, resolve_config

    try:
        cfg = resolve_config("gtav", overrides=overrides)
    except ConfigError as err:
        assert str(err)
        if not any("\n" in item for item in overrides):  # the message echoes the item as given
            assert "\n" not in str(err).strip()
        return
    assert isinstance(cfg, TrainConfig)
