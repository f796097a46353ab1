"""Files whose header alone is hostile, wherever a file is opened before the bad-file check has
judged it, or without it (data.check_images=false): a bad file with its reason, never a crash.

bomb.png claims 30000 x 30000 pixels, over twice Pillow's limit, where Image.open raises
DecompressionBombError (no OSError): it used to end a default `trainer train` in a traceback from
the pixel cache's window pass (geometry.file_window). huge.png is in the band where Pillow only
warns, and decodes it whole (1.9 GB) unless told not to. thin.png is 1 x 5000 pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from tests.image_corpus import BAD, write_corpus
from trainer.config import DataConfig
from trainer.data.layout import DataError
from trainer.data.pipelines import decode, pil, pixelcache
from trainer.data.pipelines.geometry import MAX_ASPECT, file_window
from trainer.data.transforms import Preprocessing, eval_transform
from trainer.evaluation.predict import _PathDataset

PRE = Preprocessing(32, 37, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
HEADERS = ["bomb.png", "huge.png", "thin.png"]


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_corpus(tmp_path / "a")


def test_the_window_pass_gives_an_over_limit_header_the_square_without_a_warning(folder):
    square = file_window(str(folder / "dot.png"), 37, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's DecompressionBombWarning line
        for name in ("bomb.png", "huge.png"):
            assert file_window(str(folder / name), 37, 32) == square


def test_the_pixel_cache_reports_hostile_headers_as_bad_files(folder, tmp_path):
    paths = [str(folder / name) for name in ["rgba.png", *HEADERS, "banner.png"]]
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    cache = pixelcache.build(paths, PRE, cfg, workers=1, say=lambda line: None)
    reasons = {Path(p).name: reason for p, reason in cache.bad.items()}
    assert set(reasons) == set(HEADERS)
    assert all(reasons[name].startswith(BAD[name]) for name in HEADERS), reasons
    # the row width is the widest window (the 10:1 banner's, capped at 3:2), not a resized side
    assert cache.pixels.shape[1:] == (37, math.floor(37 * MAX_ASPECT), 3)


def test_the_pil_and_decode_pipelines_without_the_check_stop_at_the_bomb_in_one_line(folder):
    path = str(folder / "bomb.png")
    with pytest.raises(DataError, match="bomb.png: unreadable image"):
        pil._ApplyTransform(eval_transform(PRE))._load(path)
    files = decode.EncodedFiles([path], PRE)
    assert files.extent(0) == (37, 37)  # the header pass: the square
    with pytest.raises(DataError, match="bomb.png: unreadable image"):
        files.read(0)


@pytest.mark.parametrize("name", HEADERS)
def test_predict_refuses_them_from_the_header_with_scans_reason(folder, name):
    item = _PathDataset([str(folder / name)], PRE)[0]
    assert item["ok"] == 0 and item["error"].startswith(BAD[name])
