"""The ``openfluoro`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="OpenFluoro: an open virtual fluoroscope.", no_args_is_help=True, add_completion=False)


def _fail(message: str) -> None:
    """Print a one-line error and exit non-zero (no traceback for bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load_scene(volume: Optional[Path]):
    """(MaterialVolume, isocentre, description) for a CT file/folder, or the built-in phantom."""
    from openfluoro.render.raycast import MaterialVolume
    from openfluoro.scene.volume import VolumeError, load_volume

    if volume is None:
        from openfluoro.scene.phantom import default_phantom

        phantom = default_phantom()
        iso = tuple(float(x) for x in phantom.landmarks.get("isocentre_lps_mm", (0.0, 0.0, 0.0)))
        return MaterialVolume.from_volume(phantom.volume), iso, "built-in lumbar phantom"
    try:
        vol = load_volume(volume)
    except VolumeError as exc:
        _fail(str(exc))
    return MaterialVolume.from_volume(vol), tuple(float(x) for x in vol.centre_lps_mm), str(volume)


def _write_snapshot(snap, out: Path) -> Path:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(snap.display).save(out)
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps(snap.sidecar, indent=2))
    return sidecar


@app.command()
def render(
    volume: Optional[Path] = typer.Argument(None, help="CT: DICOM folder, .nii/.nii.gz, .nrrd or .mha "
                                                       "(default: the built-in phantom)"),
    view: str = typer.Option("PA", help="PA, AP, lateral, lateral_left, lateral_right, LAO45, RAO45, LPO45, RPO45"),
    kvp: float = typer.Option(80.0, min=50.0, max=125.0, help="tube voltage"),
    ma: float = typer.Option(2.0, min=0.01, max=1000.0, help="tube current"),
    pulse_ms: float = typer.Option(50.0, min=0.1, max=1000.0, help="exposure time of the frame"),
    size: int = typer.Option(512, min=16, max=2048, help="image rows and columns"),
    field_mm: float = typer.Option(300.0, min=50.0, max=500.0, help="detector side length"),
    sid_mm: float = typer.Option(1000.0, help="source-to-image distance"),
    sod_mm: float = typer.Option(700.0, help="source-to-isocentre distance"),
    seed: int = typer.Option(0, help="noise seed"),
    output: Path = typer.Option(Path("frame.png"), "-o", "--output", help="PNG to write (plus a .json sidecar)"),
) -> None:
    """Render one fluoroscopy frame (bone dark, as on a clinical monitor) with a JSON sidecar of geometry and dose."""
    from openfluoro.fluoro.snapshot import render_snapshot

    mvol, iso, description = _load_scene(volume)
    try:
        snap = render_snapshot(mvol, view, iso, kvp=kvp, ma=ma, pulse_ms=pulse_ms, size_px=size,
                               field_mm=field_mm, sid_mm=sid_mm, sod_mm=sod_mm, seed=seed, source=description)
    except ValueError as exc:
        _fail(str(exc))
    sidecar = _write_snapshot(snap, output)
    typer.echo(f"{output}\n{sidecar}")


@app.command()
def demo(out: Path = typer.Option(Path("out"), help="folder for the demo frames")) -> None:
    """Render the demo: AP and lateral views of the built-in phantom to OUT/."""
    from openfluoro.fluoro.snapshot import render_snapshot

    mvol, iso, description = _load_scene(None)
    for view in ("AP", "lateral"):
        snap = render_snapshot(mvol, view, iso, size_px=512, source=description)
        png = out / f"demo_{view.lower()}.png"
        sidecar = _write_snapshot(snap, png)
        typer.echo(f"wrote {png} and {sidecar}")

if __name__ == "__main__":
    app()
