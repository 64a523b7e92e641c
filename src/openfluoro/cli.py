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
    kvp: Optional[float] = typer.Option(None, min=50.0, max=125.0,
                                        help="tube voltage (default: chosen by the dose-rate control)"),
    ma: Optional[float] = typer.Option(None, min=0.01, max=1000.0,
                                       help="tube current (default: the dose-rate control's, x4 as for a spot)"),
    pulse_ms: float = typer.Option(10.0, min=0.1, max=1000.0, help="exposure time of the frame"),
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


# --------------------------------------------------------------------------- io: export, send, igtl


def _io_errors():
    """The exceptions the io commands turn into a one-line message."""
    from openfluoro.fluoro.record import RecordingError
    from openfluoro.io.dicom_common import ExportError
    from openfluoro.io.igtl import IgtlError
    from openfluoro.io.pacs import PacsError

    return (ExportError, RecordingError, PacsError, IgtlError, OSError)


def _load_recording(run_dir: Path):
    from openfluoro.io.dicom_common import load_run

    loaded = load_run(run_dir)
    for w in loaded.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    return loaded


def _export_all(loaded, dicom: Optional[Path], rdsr: bool, cine: bool, out: Optional[Path], xa: bool,
                deidentify: bool, cine_formats: list[str], overlay: bool, legacy_codes: bool) -> list[Path]:
    from openfluoro.io.cine import export_cine
    from openfluoro.io.dicom_common import ExportContext
    from openfluoro.io.dicom_rf import export_images
    from openfluoro.io.rdsr import export_rdsr

    ctx = ExportContext.for_run(loaded.run, deidentify=deidentify)
    for w in ctx.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    base = dicom if dicom is not None else out
    written: list[Path] = []
    images = []
    if dicom is not None:
        images = export_images(loaded, dicom, sop="XA" if xa else "RF", context=ctx)
        written += [im.path for im in images]
    if rdsr:
        written.append(export_rdsr(loaded, base, context=ctx, images=images, legacy_codes=legacy_codes))
    if cine:
        written += [c.path for c in export_cine(loaded, base / "cine", formats=cine_formats, overlay=overlay)]
    return written


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="recorded run folder (run.json, frames.raw, frames.jsonl)"),
    dicom: Optional[Path] = typer.Option(None, "--dicom", help="write DICOM images (one multi-frame object per "
                                                                "run, one per spot) into this folder"),
    rdsr: bool = typer.Option(False, "--rdsr", help="write the X-Ray Radiation Dose SR (rdsr.dcm)"),
    cine: bool = typer.Option(False, "--cine", help="write cine loops (OUT/cine/: MP4 per run, PNG per spot)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for --rdsr/--cine when --dicom is not given"),
    xa: bool = typer.Option(False, "--xa", help="X-Ray Angiographic objects instead of Radiofluoroscopic"),
    deidentify: bool = typer.Option(False, "--deidentify", help="de-identified objects (no name, ID or dates)"),
    cine_format: list[str] = typer.Option(["mp4"], "--cine-format", help="mp4, gif or png (repeatable)"),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="burn frame counter, time, kV/mA into cine"),
    legacy_codes: bool = typer.Option(False, "--rdsr-legacy-codes",
                                      help="retired SRT filter-material codes some RDSR readers expect"),
) -> None:
    """Export a recorded run: DICOM RF/XA images, the radiation dose SR, cine loops."""
    if dicom is None and not rdsr and not cine:
        _fail("nothing to export: give --dicom OUT, --rdsr and/or --cine")
    if dicom is None and out is None:
        _fail("--rdsr/--cine need an output folder: give --dicom OUT or --out OUT")
    try:
        loaded = _load_recording(run_dir)
        written = _export_all(loaded, dicom, rdsr, cine, out, xa, deidentify, cine_format, overlay, legacy_codes)
    except _io_errors() as exc:
        _fail(str(exc))
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("send")
def send_cmd(
    source: Path = typer.Argument(..., help="recorded run folder (exported on the fly) or a folder of .dcm files"),
    pacs: str = typer.Option(..., "--pacs", help="PACS address host:port"),
    aet: str = typer.Option("OPENFLUORO", "--aet", help="our (calling) AE title"),
    called_aet: str = typer.Option(..., "--called-aet", help="the PACS's (called) AE title"),
    xa: bool = typer.Option(False, "--xa", help="send X-Ray Angiographic instead of Radiofluoroscopic objects"),
    deidentify: bool = typer.Option(False, "--deidentify", help="send de-identified objects"),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="seconds to wait for the PACS"),
) -> None:
    """C-STORE a run's images and dose report (or exported .dcm files) to a PACS."""
    import tempfile

    from openfluoro.io.pacs import Pacs, send

    try:
        target = Pacs.from_address(pacs, called_aet, aet, timeout)
        if (source / "run.json").exists() or not source.is_dir():
            loaded = _load_recording(source)
            with tempfile.TemporaryDirectory(prefix="openfluoro-send-") as tmp:
                files = _export_all(loaded, Path(tmp), True, False, None, xa, deidentify, [], False, False)
                result = send(files, target)
        else:
            files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".dcm")
            if not files:
                _fail(f"{source}: neither a recorded run (no run.json) nor a folder of .dcm files")
            result = send(files, target)
    except _io_errors() as exc:
        _fail(str(exc))
    for w in result.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"sent {len(result.sent)} object(s) to {target.called_aet} at {target.where}")


@app.command("igtl")
def igtl_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="recorded run folder to replay"),
    port: int = typer.Option(18944, "--port", min=1, max=65535, help="OpenIGTLink port"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    speed: float = typer.Option(1.0, "--speed", min=0.01, help="replay speed (1 = the recorded frame rate)"),
    loop: bool = typer.Option(False, "--loop", help="replay until interrupted"),
    wait: float = typer.Option(0.0, "--wait", min=0.0, help="seconds to wait for a client before replaying"),
) -> None:
    """Serve frames (IMAGE) and the needle tip (TRANSFORM) over OpenIGTLink, e.g. to 3D Slicer."""
    if run_dir is None:
        _fail("give a recorded run folder to replay (live sessions stream through the Python API)")
    from openfluoro.io.igtl import replay

    def progress(frame, clients: int) -> None:
        if frame.index % 25 == 0:
            typer.echo(f"frame {frame.index} (t {frame.time_s:.2f} s) -> {clients} client(s)")

    try:
        loaded = _load_recording(run_dir)
        typer.echo(f"OpenIGTLink on {host}:{port}: replaying {len(loaded.run)} frame(s) of {run_dir}")
        n = replay(loaded.run, port, host, speed=speed, loop=loop, wait_for_client_s=wait, on_frame=progress)
    except KeyboardInterrupt:
        typer.echo("stopped")
        return
    except _io_errors() as exc:
        _fail(str(exc))
    typer.echo(f"sent {n} frame(s)")


@app.command("console")
def console_cmd(
    volume: Optional[Path] = typer.Option(None, "--volume", help="CT to load: DICOM folder, .nii/.nii.gz, .nrrd or "
                                                                 ".mha (default: the built-in phantom)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 opens it to the network)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port (0: any free port)"),
    token: Optional[str] = typer.Option(None, "--token", help="access token (default: a new random one, printed)"),
    overlay: str = typer.Option("detected", "--overlay",
                                help="guidance overlay: 'detected' (the guidance detectors on the frames) or "
                                     "'truth' (the simulator's ground truth, for teaching)"),
) -> None:
    """The live console: a fluoroscopy workstation in the browser (prints its URL with the access token)."""
    from openfluoro.console.server import serve
    from openfluoro.scene.volume import VolumeError

    if token is not None and len(token) < 8:
        _fail("--token: use at least 8 characters")
    if overlay not in ("detected", "truth"):
        _fail(f"--overlay: use 'detected' or 'truth', got {overlay!r}")
    try:
        serve(volume=volume, host=host, port=port, token=token, overlay_source=overlay,
              echo=lambda m: typer.echo(m, err=m.startswith("warning")))
    except VolumeError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc}")
    except KeyboardInterrupt:
        typer.echo("console stopped")


@app.command("phantom")
def phantom_cmd(
    output: Path = typer.Option(Path("phantom.nii.gz"), "-o", "--output",
                                help="CT to write (.nii.gz); X_labels.nii.gz and X_landmarks.json go next to it"),
    bmi: float = typer.Option(25.0, help="body-mass index, 17-45 (sets the skin-to-thecal-sac depth)"),
    seed: int = typer.Option(0, help="natural-variation seed (same parameters + seed = same volume)"),
    voxel_mm: float = typer.Option(0.75, "--voxel-mm", help="isotropic voxel size, 0.4-2.0 mm"),
    lordosis_deg: float = typer.Option(45.0, "--lordosis-deg", help="L1-S1 lordosis, 0-80 deg"),
    scoliosis_deg: float = typer.Option(0.0, "--scoliosis-deg", help="lumbar Cobb angle, 0-40 deg"),
    disc_degeneration: float = typer.Option(0.0, "--disc-degeneration", help="0 (healthy) to 1 (severe)"),
    bone_density: float = typer.Option(1.0, "--bone-density", help="0.4-1.3 x healthy cancellous bone"),
    vertebra_scale: float = typer.Option(1.0, "--vertebra-scale", help="0.8-1.2 x average vertebral size"),
    sex: str = typer.Option("M", help="M or F"),
) -> None:
    """Generate the procedural lumbar-spine phantom: CT, label map and landmarks (LPS mm, origin at L3)."""
    from openfluoro.scene.phantom import PhantomParams, PhantomParamsError, make_phantom

    try:
        params = PhantomParams(voxel_mm=voxel_mm, bmi=bmi, lordosis_deg=lordosis_deg, scoliosis_deg=scoliosis_deg,
                               disc_degeneration=disc_degeneration, bone_density=bone_density,
                               vertebra_scale=vertebra_scale, sex=sex.upper(), seed=seed)  # type: ignore[arg-type]
    except PhantomParamsError as exc:
        _fail(str(exc))
    try:
        written = make_phantom(params).save(output)
    except OSError as exc:
        _fail(f"{output}: {exc}")
    for path in written.values():
        typer.echo(str(path))


@app.command()
def replay(
    run: Path = typer.Argument(..., help="recorded run folder (holds run.json, frames.raw, signal.f16)"),
    output: Path = typer.Option(Path("replay.mp4"), "-o", "--output", help="cine to write (.mp4 or .gif)"),
    recursive_strength: float = typer.Option(0.75, help="temporal filter strength (0 = off)"),
    edge_amount: float = typer.Option(0.5, help="edge enhancement"),
    invert: bool = typer.Option(False, help="bone bright instead of dark"),
) -> None:
    """Replay a recorded run through the image chain with other settings, to a cine."""
    from openfluoro.fluoro.chain import ChainSettings, ImageChain
    from openfluoro.fluoro.record import RecordingError, read_run
    from openfluoro.fluoro.record import replay as replay_run
    from openfluoro.io.cine import write_gif, write_mp4

    try:
        rec = read_run(run)
        settings = ChainSettings(recursive_strength=recursive_strength, edge_amount=edge_amount, invert=invert)
        frames = list(replay_run(rec, ImageChain(settings)))
    except (RecordingError, ValueError) as exc:
        _fail(str(exc))
    if not frames:
        _fail(f"{run}: the run holds no complete frame")
    fps = rec.metadata[0]["exposure"]["pulse_rate_pps"] or 7.5
    writer = write_gif if output.suffix.lower() == ".gif" else write_mp4
    typer.echo(f"wrote {writer(frames, output, fps)} ({len(frames)} frames)")


# --------------------------------------------------------------------------- evaluate (guidance accuracy)

evaluate_app = typer.Typer(help="Measure accuracy against the simulator's ground truth.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("guidance")
def evaluate_guidance_cmd(
    cases: int = typer.Option(20, "--cases", min=1, help="number of seeded cases (phantoms never used in development)"),
    seed: int = typer.Option(0, "--seed", help="seed of the case generator"),
    volume: Optional[Path] = typer.Option(None, "--volume", help="evaluate on this CT instead of phantoms"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="label map of the CT (TotalSegmentator 'total' ids)"),
    label_offset_k: int = typer.Option(0, "--label-offset-k", min=0, help="first CT slice the label map covers"),
    levels: Optional[Path] = typer.Option(None, "--levels", help="JSON of the CT's interspace centres (LPS mm) read "
                                                                 "from the CT, for levels its labels lack"),
    size: int = typer.Option(512, "--size", min=128, max=2048, help="detector rows and columns"),
    voxel_mm: float = typer.Option(1.5, "--voxel-mm", min=0.75, max=2.0, help="phantom voxel size"),
    quiet: bool = typer.Option(False, "--quiet", help="no per-case progress lines"),
) -> None:
    """Run the guidance (needle, levels, interspaces, depth, decompression) on rendered frames
    and print its accuracy; the last line is machine-readable."""
    from openfluoro.guidance import evaluate as ev

    progress = None if quiet else typer.echo
    try:
        if volume is None:
            if labels is not None or levels is not None:
                _fail("--labels and --levels need --volume")
            _, table, summary = ev.evaluate_guidance(cases, seed, progress=progress, size_px=size, voxel_mm=voxel_mm)
        else:
            from openfluoro.scene.volume import VolumeError

            try:
                _, table, summary = ev.evaluate_volume(volume, labels, label_offset_k, cases, seed,
                                                       progress=progress, size_px=size, levels_path=levels)
            except VolumeError as exc:
                _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(table)
    typer.echo(ev.last_line(summary))


if __name__ == "__main__":
    app()
