"""Generate ``twinjax/data/nuclides.json`` from its sources.

Sources (both are data libraries on PyPI, pinned in ``pyproject.toml`` under the ``data`` extra):

- ``radioactivedecay`` 0.6.1, dataset ``icrp107_ame2020_nubase2020``: half-lives, decay modes,
  progeny and branching fractions (ICRP Publication 107, 2008).
- ``icrp107-database`` 0.0.3 (OpenGATE): the ICRP Publication 107 emission lists (energy in MeV,
  yield per decay) by radiation type.

For each nuclide we store the mean energy emitted per decay (MeV), split by radiation type, and the
chain of radioactive progeny (``nuclides.json``); and, for the absorbed-fraction models of
``twinjax.dosimetry``, the emission lists themselves (``emissions.json``): beta branches (mean
energy, yield) with the endpoint of the beta spectrum, discrete electrons (internal conversion and
Auger), photons (gamma and X-ray) and alphas with their recoils. Lines below ``MIN_LINE_MEV``
MeV per decay (energy x yield) are dropped; their total is stored per nuclide as ``dropped_MeV``.  Nuclides with half-lives above ``STABLE_ABOVE_YEARS`` are treated as
stable chain ends (e.g. Bi-209, Tc-99): over therapy time scales they deposit no energy.

Run from the repository root:  ``python scripts/generate_nuclide_data.py``
``tests/test_nuclides.py`` regenerates both tables in memory and compares them with the shipped files.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

#: Parents of the chains twinjax ships (theranostic and PET nuclides).
PARENTS = (
    "Lu-177",
    "Tb-161",
    "Y-90",
    "I-131",
    "Ac-225",
    "Pb-212",
    "F-18",
    "Ga-68",
    "Cu-64",
    "Tc-99m",
    "In-111",
    "Ho-166",
    "Ra-223",
    "Zr-89",
)
#: Longer-lived nuclides are treated as stable chain ends.
STABLE_ABOVE_YEARS = 1.0e6

#: ICRP-107 radiation types that deposit their energy locally (range << organ size).
NON_PENETRATING = ("alpha", "alpha recoil", "beta-", "beta+", "IE", "auger")
#: Radiation types that travel centimetres in tissue.
PENETRATING = ("gamma", "X", "annihilation")

#: Emission lines carrying less energy per decay (MeV) are dropped from ``emissions.json``.
MIN_LINE_MEV = 1e-7

_TIME_TO_H = {
    "us": 1.0 / 3.6e9,
    "ms": 1.0 / 3.6e6,
    "s": 1.0 / 3600.0,
    "m": 1.0 / 60.0,
    "h": 1.0,
    "d": 24.0,
    "y": 24.0 * 365.2422,
}


def _emission_means(name: str) -> dict[str, float]:
    import icrp107_database

    path = Path(icrp107_database.__file__).parent / "icrp107" / f"{name}.json"
    data = json.loads(json.loads(path.read_text()))
    out = {}
    for kind in NON_PENETRATING + PENETRATING:
        lines = data["emissions"].get(kind, [])
        out[kind] = float(math.fsum(e * y for e, y in lines))
    return out


def _icrp107(name: str) -> dict:
    import icrp107_database

    path = Path(icrp107_database.__file__).parent / "icrp107" / f"{name}.json"
    return json.loads(json.loads(path.read_text()))


def _lines(data: dict, kinds: tuple[str, ...]) -> tuple[list[list[float]], float]:
    """Lines of `kinds` sorted by energy, and the energy per decay of the dropped ones."""
    lines, dropped = [], 0.0
    for kind in kinds:
        for e, y in data["emissions"].get(kind, []):
            if e * y >= MIN_LINE_MEV:
                lines.append([float(e), float(y)])
            else:
                dropped += e * y
    return sorted(lines), dropped


def build_emissions(names) -> dict:
    """Emission lists of `names` from ICRP-107 (see module docs)."""
    out = {}
    for name in names:
        data = _icrp107(name)
        beta, d_beta = _lines(data, ("beta-", "beta+"))
        spectrum = data["emissions"].get("b-spectra", [])
        electrons, d_e = _lines(data, ("IE", "auger"))
        photons, d_p = _lines(data, ("gamma", "X", "annihilation"))
        alphas, d_a = _lines(data, ("alpha",))
        recoils, d_r = _lines(data, ("alpha recoil",))
        out[name] = {
            "beta_branches": beta,
            "beta_endpoint_MeV": float(spectrum[-1][0]) if spectrum else None,
            "electrons": electrons,
            "photons": photons,
            "alphas": alphas,
            "recoils": recoils,
            "dropped_MeV": float(d_beta + d_e + d_p + d_a + d_r),
        }
    return {
        "source": "ICRP Publication 107 (2008) emission lists, via icrp107-database 0.0.3",
        "units": "energy MeV, yield per decay",
        "min_line_MeV": MIN_LINE_MEV,
        "nuclides": out,
    }


def build_table() -> dict:
    import radioactivedecay as rd

    nuclides: dict[str, dict] = {}

    def visit(name: str) -> None:
        if name in nuclides:
            return
        nuc = rd.Nuclide(name)
        half_life_h = nuc.half_life("h")
        if not math.isfinite(half_life_h) or half_life_h > STABLE_ABOVE_YEARS * _TIME_TO_H["y"]:
            return
        daughters = []
        for child, bf, mode in zip(
            nuc.progeny(), nuc.branching_fractions(), nuc.decay_modes(), strict=True
        ):
            if child == "SF" or bf <= 0.0:
                continue
            child_nuc = rd.Nuclide(child)
            hl = child_nuc.half_life("h")
            radioactive = math.isfinite(hl) and hl <= STABLE_ABOVE_YEARS * _TIME_TO_H["y"]
            daughters.append(
                {
                    "name": child,
                    "branching": float(bf),
                    "mode": mode,
                    "radioactive": bool(radioactive),
                }
            )
        energies = _emission_means(name)
        nuclides[name] = {
            "half_life_h": float(half_life_h),
            "daughters": daughters,
            "energy_MeV": energies,
        }
        for d in daughters:
            if d["radioactive"]:
                visit(d["name"])

    for parent in PARENTS:
        visit(parent)
    return {
        "source": (
            "ICRP Publication 107 (2008): half-lives and branching via radioactivedecay 0.6.1 "
            "(dataset icrp107_ame2020_nubase2020); emissions via icrp107-database 0.0.3"
        ),
        "stable_above_years": STABLE_ABOVE_YEARS,
        "non_penetrating": list(NON_PENETRATING),
        "penetrating": list(PENETRATING),
        "nuclides": dict(sorted(nuclides.items())),
    }


def main() -> int:
    data = Path(__file__).resolve().parents[1] / "twinjax" / "data"
    table = build_table()
    (data / "nuclides.json").write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    emissions = build_emissions(table["nuclides"])
    (data / "emissions.json").write_text(json.dumps(emissions, separators=(",", ":")) + "\n")
    print(f"wrote {len(table['nuclides'])} nuclides to {data}/nuclides.json and emissions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
