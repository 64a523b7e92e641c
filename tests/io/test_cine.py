"""Cine export: MP4 read back with ffmpeg, GIF and PNG with Pillow; overlays burned in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from openfluoro.io.cine import default_overlay, export_cine
from openfluoro.io.dicom_common import ExportError, load_run


def test_mp4_gif_png_per_run(procedure, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg not installed")
    run = load_run(procedure).run
    files = export_cine(procedure, tmp_path / "cine", formats=("mp4", "gif", "png"))
    names = sorted(f.path.name for f in files)
    assert names == ["run000_fluoro000.gif", "run000_fluoro000.mp4", "run000_fluoro000_png",
                     "run001_fluoro001.gif", "run001_fluoro001.mp4", "run001_fluoro001_png", "run002_spot002.png"]
    by = {f.path.name: f for f in files}
    # MP4: H.264, 12 frames at the run's 7.5 pulses/s
    reader = imageio_ffmpeg.read_frames(str(by["run000_fluoro000.mp4"].path))      # rgb24
    meta = next(reader)
    decoded = [np.frombuffer(b, np.uint8).reshape(64, 64, 3)[..., 0] for b in reader]
    assert meta["codec"] == "h264" and meta["fps"] == pytest.approx(7.5) and meta["size"] == (64, 64)
    assert len(decoded) == 12
    # lossy, but close to the recorded pixels
    assert np.mean(np.abs(decoded[5].astype(int) - run.pixels[5].astype(int))) < 12
    # GIF: 10 frames at 15/s -> 70 ms (GIF's 10 ms steps), looping
    gif = Image.open(by["run001_fluoro001.gif"].path)
    assert gif.n_frames == 10 and gif.info["duration"] == 70 and gif.info.get("loop") == 0
    # PNG: lossless copies of the recorded frames
    pngs = sorted(by["run001_fluoro001_png"].path.iterdir())
    assert len(pngs) == 10
    for n, p in enumerate(pngs):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), run.pixels[12 + n])
    np.testing.assert_array_equal(np.asarray(Image.open(by["run002_spot002.png"].path)), run.pixels[22])
    assert not [p for p in (tmp_path / "cine").rglob(".*")], "temporary files left behind"


def test_overlay_is_burned_in_at_the_corners_only(tmp_path, make_run):
    make_run(tmp_path / "run")
    run = load_run(tmp_path / "run").run
    files = export_cine(tmp_path / "run", tmp_path / "cine", formats=("png",), overlay=True)
    frame0 = np.asarray(Image.open(sorted(files[0].path.iterdir())[0]))
    diff = frame0 != run.pixels[0]
    assert diff.any()
    rows = np.nonzero(diff.any(axis=1))[0]
    assert rows.min() < 16 or rows.max() > 48          # text boxes at the top and bottom
    assert not diff[24:40, :].any()                     # the middle of the image is untouched


def test_custom_overlay_callback(tmp_path, make_run):
    make_run(tmp_path / "run")
    seen = []

    def mark(image, meta, n, summary):
        seen.append((n, meta["index"], summary.kind))
        image.putpixel((0, 0), 255)
        return image

    export_cine(tmp_path / "run", tmp_path / "cine", formats=("png",), overlay=mark)
    assert [s[0] for s in seen if s[2] == "fluoro"][:3] == [0, 1, 2]
    assert callable(default_overlay)


def test_sixteen_bit_recordings(tmp_path, make_run):
    make_run(tmp_path / "run", dtype="uint16")
    run = load_run(tmp_path / "run").run
    files = export_cine(tmp_path / "run", tmp_path / "cine", formats=("png", "gif"))
    png = Image.open(sorted(next(f for f in files if f.path.is_dir()).path.iterdir())[0])
    np.testing.assert_array_equal(np.asarray(png), run.pixels[0])        # 16-bit PNG, lossless


def test_bad_format(procedure, tmp_path):
    with pytest.raises(ExportError, match="cine formats"):
        export_cine(procedure, tmp_path / "c", formats=("avi",))
