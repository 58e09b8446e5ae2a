"""The `twinjax` command line.

```
twinjax run                           # the main job: the twin loop on the embedded study
twinjax run my_twin_study.yaml --out results/
twinjax simulate                      # time-activity curves of the embedded default study
twinjax simulate my_study.yaml --out results/
twinjax templates                     # the published model library
twinjax nuclide Ac-225                # half-life, energies, decay chain
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="twinjax",
    help=(
        "twinjax: differentiable, probabilistic digital twins for nuclear oncology.\n\n"
        "A twin is a mechanistic model of one patient (whole-body PBPK of a radiopharmaceutical). "
        "Start with `twinjax run`, the main job: the digital-twin loop on the embedded default "
        "study (a synthetic [177Lu]Lu-PSMA-617 patient: cycle-1 scans -> calibrate -> forecast "
        "the scenario library -> recommend cycle 2 -> its scans -> update -> recommend cycle 3)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


def _check_writable(out: Path) -> None:
    """Fail before any computation, and before the JAX-heavy modules are imported, if `out`
    cannot be created or written: a run must not compute for minutes and then lose its
    results."""
    from ._errors import InputError
    from ._files import check_writable_folder

    try:
        check_writable_folder(out, "--out")
    except InputError as err:
        _fail(err)


@app.command()
def run(
    study: Annotated[
        Path | None,
        typer.Argument(help="Twin study YAML. Default: the embedded synthetic PSMA-617 study."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("twinjax-out"),
) -> None:
    """The main job: run the digital-twin loop of a study and write summary.json, posteriors,
    the twin file, figures and report.md."""
    _check_writable(out)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ._errors import InputError, OutputError, SolverError
    from .loop import load_twin_study, run_loop
    from .report import write_loop_outputs

    try:
        spec = load_twin_study(study).spec  # validate everything before any computation
        steps = 4 * spec.treatment.decisions + 1
        console.print(
            f"twin study [bold]{spec.name}[/]: template [bold]{spec.template}[/], "
            f"{spec.treatment.decisions} decision point(s), synthetic patient "
            f"{spec.patient.patient_id!r}"
        )
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
        ) as bar:  # fmt: skip
            task = bar.add_task("starting", total=steps)

            def progress(message: str) -> None:
                bar.update(task, description=message, advance=1)

            result = run_loop(study, progress=progress)
            bar.update(task, description="writing outputs", advance=1)
            written = write_loop_outputs(result, out)
            bar.update(task, description="done", completed=steps)
    except (InputError, OutputError, SolverError) as err:
        _fail(err)
    table = Table(title="recommendations (synthetic patient)")
    for col in ("after cycle", "convergence", "recommended next activity", "basis"):
        table.add_column(col)
    for d in result.decisions:
        conv = d["convergence"]
        rec = d["recommended"]
        table.add_row(
            str(d["after_cycle"]),
            "n/a" if conv is None else conv["verdict"],
            f"cycle {rec['cycle']}: {rec['activity_MBq'] / 1000:.2f} GBq at {rec['time_h']:g} h",
            rec["basis"],
        )
    Console().print(table)
    console.print(f"wall time {result.wall_time_s:.0f} s")
    for p in written:
        console.print(f"wrote {p}")


@app.command()
def simulate(
    study: Annotated[
        Path | None,
        typer.Argument(help="Study YAML (template, schedule, times). Default: the embedded study."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("twinjax-out"),
) -> None:
    """Simulate a study and write time-activity curves (tacs.csv, tacs.png), TIAs and a summary."""
    _check_writable(out)
    from ._errors import InputError, OutputError, SolverError
    from .study import load_study, run_simulation, write_simulation

    try:
        spec, tpl, schedule, _ = load_study(study)  # validate everything before solving
        console.print(
            f"study [bold]{spec.name}[/]: template [bold]{tpl.name}[/] ({tpl.nuclide}), "
            f"{schedule.n_administrations} administration(s)"
        )
        with console.status("compiling and solving the model ..."):
            result = run_simulation(study)
        written = write_simulation(result, out)
    except (InputError, OutputError, SolverError) as err:
        _fail(err)
    table = Table(title="time-integrated activity (to infinity)")
    table.add_column("region")
    table.add_column("TIA (MBq h)", justify="right")
    table.add_column("per administered activity (h)", justify="right")
    total = float(result.schedule.activity_MBq.sum())
    for roi in result.rois:
        v = result.roi_tia(roi)
        table.add_row(roi, f"{v:,.0f}", f"{v / total:.3f}")
    Console().print(table)
    for p in written:
        console.print(f"wrote {p}")


@app.command()
def calibrate(
    patient: Annotated[
        Path, typer.Argument(help="Patient manifest YAML (covariates, administrations).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Time-activity CSV (patient_id, roi, time_h, activity_MBq)."
        ),
    ],
    template: Annotated[str, typer.Option(help="Template name or YAML path.")] = "psma617_reduced",
    method: Annotated[str, typer.Option(help="nuts, svi, map or laplace.")] = "nuts",
    cv: Annotated[float, typer.Option(help="Measurement CV of every region (lognormal).")] = 0.2,
    calibration_cv: Annotated[
        float, typer.Option(help="CV of the per-scan calibration factor.")
    ] = 0.05,
    chains: Annotated[int, typer.Option(help="NUTS chains.")] = 4,
    warmup: Annotated[int, typer.Option(help="NUTS warm-up iterations per chain.")] = 500,
    samples: Annotated[int, typer.Option(help="NUTS draws per chain (or guide draws).")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("twinjax-out"),
) -> None:
    """Calibrate a twin to one patient's scans: posterior.nc, summary.json and fit.png."""
    _check_writable(out)
    from ._errors import InputError, OutputError, SolverError
    from .calibrate import calibrate_patient, write_calibration

    try:
        with console.status(f"calibrating ({method}) ..."):
            post, tpl, pat, _, dropped = calibrate_patient(
                patient,
                data,
                template=template,
                method=method,
                cv=cv,
                calibration_cv=calibration_cv,
                num_chains=chains,
                num_warmup=warmup,
                num_samples=samples,
                seed=seed,
                progress_bar=method == "nuts",
            )
        if dropped:
            console.print(f"regions not in template {tpl.name!r}, not used: {', '.join(dropped)}")
        written = write_calibration(post, tpl, pat, out)
    except (InputError, OutputError, SolverError) as err:
        _fail(err)
    if post.diagnostics is not None:
        colour = "green" if post.diagnostics.verdict == "ok" else "yellow"
        console.print(f"convergence: [{colour}]{post.diagnostics.verdict}[/]")
        for m in post.diagnostics.messages:
            console.print(f"  - {m}")
    table = Table(title=f"posterior of {pat.patient_id} ({tpl.name}, {method})")
    for col in ("quantity", "median", "5 %", "95 %"):
        table.add_column(col, justify="right")
    for name, row in post.summary().items():
        table.add_row(name, f"{row['q50']:.4g}", f"{row['q5']:.4g}", f"{row['q95']:.4g}")
    Console().print(table)
    for p in written:
        console.print(f"wrote {p}")


@app.command()
def forecast(
    posterior: Annotated[Path, typer.Argument(help="Posterior netCDF (from `twinjax calibrate`).")],
    scenarios: Annotated[Path, typer.Argument(help="Scenario YAML (regions, scenarios).")],
    template: Annotated[
        str | None, typer.Option(help="Template name or YAML path (default: the posterior's).")
    ] = None,
    draws: Annotated[int, typer.Option(help="Posterior draws used.")] = 200,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("twinjax-out"),
) -> None:
    """Forecast dose, BED, NTCP and TCP of treatment scenarios: forecast.json, forecast.png."""
    _check_writable(out)
    from ._errors import InputError, OutputError, SolverError
    from .forecast_cli import run_forecast

    try:
        with console.status("forecasting ..."):
            written = run_forecast(posterior, scenarios, out, template=template, max_draws=draws)
    except (InputError, OutputError, SolverError) as err:
        _fail(err)
    doc = json.loads(written[0].read_text())
    table = Table(title="forecast: median [90 % interval]")
    for col in ("scenario", "region", "dose (Gy)", "BED (Gy)"):
        table.add_column(col)
    for s, regions in doc["summary"].items():
        for r, q in regions.items():
            cell = {
                k: f"{q[k]['median']:.3g} [{q[k]['lower']:.3g}, {q[k]['upper']:.3g}]"
                for k in ("dose_Gy", "bed_Gy")
            }
            table.add_row(s, r, cell["dose_Gy"], cell["bed_Gy"])
    Console().print(table)
    for p in written:
        console.print(f"wrote {p}")


@app.command()
def templates() -> None:
    """List the published models shipped with twinjax."""
    from .models.library import list_templates, load_template

    table = Table(title="twinjax model library (configs/templates)")
    for col in ("name", "kind", "nuclide", "title"):
        table.add_column(col)
    for name in list_templates():
        t = load_template(name)
        table.add_row(name, t.spec.kind, t.nuclide, t.spec.title)
    Console().print(table)


@app.command()
def nuclide(
    name: Annotated[str, typer.Argument(help="e.g. Lu-177, 177Lu, Ac-225, Tc-99m")],
) -> None:
    """Show a radionuclide's half-life, energies per decay and decay chain (ICRP-107)."""
    from . import nuclide as lookup
    from ._errors import InputError

    try:
        n = lookup(name)
    except InputError as err:
        _fail(err)
    chain = n.chain
    table = Table(title=f"{n.name}: T1/2 = {n.half_life_h:.6g} h")
    for col in (
        "member",
        "T1/2 (h)",
        "decays per parent decay",
        "non-penetrating (MeV)",
        "penetrating (MeV)",
        "alpha (MeV)",
    ):
        table.add_column(col, justify="right")
    for m, y in zip(chain.members, chain.decays_per_parent_decay, strict=True):
        table.add_row(
            m.name,
            f"{m.half_life_h:.4g}",
            f"{y:.4f}",
            f"{m.nonpenetrating_energy_MeV:.4f}",
            f"{m.penetrating_energy_MeV:.4f}",
            f"{m.alpha_energy_MeV:.4f}",
        )
    Console().print(table)
    if len(chain.members) > 1:
        Console().print(
            f"chain in secular equilibrium: {chain.energy_per_parent_decay_MeV():.3f} MeV "
            f"non-penetrating, {chain.energy_per_parent_decay_MeV('alpha'):.3f} MeV alpha "
            "per parent decay"
        )


@app.command()
def images(
    study: Annotated[Path, typer.Argument(help="Imaging study YAML (images, masks, nuclide).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write.")] = Path("tacs.csv"),
) -> None:
    """SPECT/PET images + region masks -> time-activity CSV (h after administration, MBq)."""
    from ._errors import InputError, OutputError
    from .imaging_cli import run_images

    try:
        with Console().status("reading images ..."):
            tacs = run_images(study, out)
    except (InputError, OutputError) as err:
        _fail(err)
    rois = ", ".join(dict.fromkeys(tacs.data.roi))
    Console().print(f"{len(tacs.data.roi)} rows ({rois}) of {tacs.data.patient_id} -> {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
