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


def _load_patient(volume: Optional[Path]):
    """The patient for a CT file/folder, or the built-in phantom when ``volume`` is None."""
    from openfluoro.scene.patient import load_patient, patient_from_phantom
    from openfluoro.scene.volume import VolumeError

    if volume is None:
        from openfluoro.scene.phantom import default_phantom

        return patient_from_phantom(default_phantom())
    try:
        return load_patient(volume)
    except VolumeError as exc:
        _fail(str(exc))


def _load_scene(volume: Optional[Path]):
    """(MaterialVolume, isocentre, description) for a CT file/folder, or the built-in phantom."""
    from openfluoro.render.raycast import MaterialVolume

    patient = _load_patient(volume)
    return MaterialVolume.from_volume(patient.volume), patient.isocentre_lps_mm, patient.description


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

procedure_app = typer.Typer(help="Scripted procedures on the built-in phantom (or a CT with landmarks).",
                            no_args_is_help=True)
app.add_typer(procedure_app, name="procedure")


def _fresh_output(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        _fail(f"{out}: output folder is not empty; choose a new one (nothing was overwritten)")


@procedure_app.command("lumbar-puncture")
def procedure_lumbar_puncture(
    level: str = typer.Option("L3-L4", help="interspace: L2-L3, L3-L4 or L4-L5"),
    pps: float = typer.Option(7.5, help="pulse rate: 30 (continuous), 15, 7.5, 3.75 or 1"),
    seed: int = typer.Option(0, help="noise and opening-pressure seed"),
    volume: Optional[Path] = typer.Option(None, help="CT with needle landmarks (default: the built-in phantom)"),
    output: Path = typer.Option(Path("run_lp"), "-o", "--output", help="output folder"),
) -> None:
    """AP localisation, needle advance under pulsed fluoro to CSF return, lateral confirmation."""
    from openfluoro import procedures
    from openfluoro.fluoro.session import SessionError

    _fresh_output(output)
    try:
        result = procedures.lumbar_puncture(_load_patient(volume), output, level, pps, seed=seed, progress=typer.echo)
    except (SessionError, ValueError) as exc:
        _fail(str(exc))
    _report_procedure(result)


@procedure_app.command("decompression")
def procedure_decompression(
    distraction_mm: float = typer.Option(2.0, help="planned opening of each lumbar interspace, mm"),
    pps: float = typer.Option(3.75, help="pulse rate of the monitoring fluoro"),
    seed: int = typer.Option(0, help="noise seed"),
    volume: Optional[Path] = typer.Option(None, help="labelled CT (default: the built-in phantom)"),
    output: Path = typer.Option(Path("run_decompression"), "-o", "--output", help="output folder"),
) -> None:
    """Lateral baseline, traction ramped to the planned distraction, hold, release."""
    from openfluoro import procedures
    from openfluoro.fluoro.session import SessionError

    _fresh_output(output)
    try:
        result = procedures.decompression(_load_patient(volume), output, distraction_mm, pps, seed=seed,
                                          progress=typer.echo)
    except (SessionError, ValueError) as exc:
        _fail(str(exc))
    _report_procedure(result)


def _report_procedure(result) -> None:
    o = result.outcome
    typer.echo(f"frames: {o['frames']}  Ka,r {o['dose']['ka_r_mgy']:.2f} mGy  KAP {o['dose']['kap_gy_cm2']:.3f} Gy cm2  "
               f"fluoro time {o['dose']['fluoro_time_s']:.1f} s")
    for path in (result.run_folder, result.cine, result.dose_summary, result.summary):
        typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()
