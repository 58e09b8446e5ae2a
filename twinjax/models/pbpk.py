"""Whole-body PBPK models of radioligands, built from a list of organs.

The structure follows the receptor-ligand PBPK models of the Glatting/Kletting group for
somatostatin and PSMA ligands (Kletting et al. 2016, PLoS ONE 11:e0162303; Begum et al. 2018,
J Nucl Med 59:929) and their SBML re-implementation by Fele-Paranj et al. 2024 (EJNMMI Radiopharm
Chem 9:6). Every organ *o* has

- a **vascular** plasma space ``o.vascular`` (volume ``fv_o * V_o``) perfused with plasma flow
  ``Q_o``; organs with ``drains_to`` (spleen, GI) drain into another organ's vascular space
  (the portal vein into the liver), the others into venous plasma;
- an **interstitial** space ``o.interstitial`` (volume ``fi_o * V_o``) exchanging with the vascular
  space through the permeability-surface product ``PS_o`` (L/h);
- if receptor-positive, a **receptor-bound** space ``o.bound`` with ``R_o * V_o`` nmol of sites
  (``R_o`` in nmol per L of organ), association ``k_on`` (L/(nmol h)), dissociation
  ``k_on * K_D`` (``K_D`` in nmol/L), and an **internalised** space ``o.internalised`` filled at
  ``lambda_int`` (1/h) and emptied at the organ's release rate ``lambda_rel_o`` (1/h), back into
  the interstitium (``release="interstitial"``) or out of the body into ``released``
  (``release="sink"``, the released radiometabolites being excreted);
- optionally **glomerular filtration** (kidneys), as in Fele-Paranj et al. 2024: ligand is
  filtered from the vascular plasma into the interstitial (filtrate) space with clearance
  ``f_filt * GFR`` (L/h; ``f_filt`` is the sieving/unbound fraction); a fraction ``f_exc`` of the
  filtrate goes to ``urine`` and the rest is reabsorbed into a tubular pool ``o.tubular``
  (volume ``ft_o * V_o``) that returns it to the vascular space;
- optionally **hepatobiliary clearance** (liver): ``CL_bile`` (L/h) from the interstitium to
  ``faeces``.

Circulation: ``"arteriovenous"`` has arterial and venous plasma (``V_art``, ``V_ven``) with the
lungs in between (they receive the whole plasma output); ``"single"`` has one well-mixed plasma
pool ``V_plasma``. Organs with ``vascular=False`` (reduced models) exchange their interstitium with
the plasma pool directly.

Hot (labelled) and cold (unlabelled) ligand compete for the same receptors; the engine
([`twinjax.models.simulate`][]) handles both and physical decay. All flows are *plasma* flows
(blood flow x (1 - haematocrit)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from .._errors import InputError
from ._expr import expr
from .compartmental import Binding, CompartmentalModel, Transfer

__all__ = ["Organ", "whole_body"]


@dataclasses.dataclass(frozen=True)
class Organ:
    """One organ (or lumped tissue, or tumour) of a whole-body PBPK model.

    **Fields:** `name` (also the prefix of its compartments and parameters); `receptor`: has
    target receptors; `vascular`: has its own vascular space (``False`` in reduced models);
    `drains_to`: organ whose vascular space receives this organ's outflow (portal circulation);
    `permeable`: exchanges ligand between vascular and interstitial space through ``PS_o``
    (``False`` e.g. for the brain, or for kidneys whose interstitium is fed by filtration only);
    `filtration`: glomerular filtration with tubular reabsorption; `biliary`: hepatobiliary
    excretion. The organ named ``lungs`` sits between venous and arterial plasma in an
    arteriovenous circulation.
    """

    name: str
    receptor: bool = False
    vascular: bool = True
    permeable: bool = True
    drains_to: str | None = None
    filtration: bool = False
    biliary: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise InputError(
                f"organ name {self.name!r} is invalid; allowed: letters, digits and underscores"
            )


def whole_body(
    organs: Sequence[Organ],
    *,
    circulation: Literal["arteriovenous", "single"] = "arteriovenous",
    release: Literal["interstitial", "sink"] = "interstitial",
    name: str = "pbpk",
) -> CompartmentalModel:
    """Build a whole-body receptor PBPK [`CompartmentalModel`][] from `organs`.

    Parameters (all positive): per organ ``Q_o`` (L/h), ``V_o`` (L), ``fv_o``, ``fi_o`` (-),
    ``PS_o`` (L/h) if permeable; receptor organs ``R_o`` (nmol/L), ``lambda_rel_o`` (1/h);
    globally ``k_on`` (L/(nmol h)), ``K_D`` (nmol/L), ``lambda_int`` (1/h) when any organ is
    receptor-positive; ``GFR`` (L/h), ``f_filt``, ``f_exc`` (-) and ``ft_o`` (-) with
    filtration; ``CL_bile`` (L/h) with biliary excretion; ``V_art``, ``V_ven`` (L) or
    ``V_plasma`` (L) for the circulation.
    """
    if release not in ("interstitial", "sink"):
        raise InputError(f"release = {release!r}; allowed: 'interstitial' or 'sink'")
    organs = tuple(organs)
    names = [o.name for o in organs]
    if len(set(names)) != len(names):
        raise InputError(f"organs: names {names} repeat; allowed: unique names")
    if circulation not in ("arteriovenous", "single"):
        raise InputError(f"circulation = {circulation!r}; allowed: 'arteriovenous' or 'single'")
    by_name = {o.name: o for o in organs}
    av = circulation == "arteriovenous"
    if av and ("lungs" not in by_name or not by_name["lungs"].vascular):
        raise InputError(
            "an arteriovenous circulation needs an organ named 'lungs' with a vascular space"
        )
    for o in organs:
        if o.drains_to is not None:
            target = by_name.get(o.drains_to)
            if target is None or not target.vascular or not o.vascular or target.drains_to:
                raise InputError(
                    f"organ {o.name!r}: drains_to = {o.drains_to!r} must name another organ of "
                    "the model that has a vascular space and drains to plasma itself"
                )

    art = "plasma.arterial" if av else "plasma"
    ven = "plasma.venous" if av else "plasma"
    comps: list[str] = ["plasma.arterial", "plasma.venous"] if av else ["plasma"]
    volumes: dict[str, object] = (
        {"plasma.arterial": "V_art", "plasma.venous": "V_ven"} if av else {"plasma": "V_plasma"}
    )
    transfers: list[Transfer] = []
    bindings: list[Binding] = []
    excreta: list[str] = []
    groups: dict[str, list[str]] = {"plasma": list(comps)}

    def add(c: str, volume=None) -> str:
        comps.append(c)
        groups.setdefault(c.split(".", 1)[0], []).append(c)
        if volume is not None:
            volumes[c] = volume
        return c

    systemic = [o for o in organs if not (av and o.name == "lungs")]
    for o in organs:
        n = o.name
        vol_v = expr(f"fv_{n} * V_{n}")
        vol_i = expr(f"fi_{n} * V_{n}")
        vasc = add(f"{n}.vascular", vol_v) if o.vascular else art
        has_interstitium = o.permeable or o.receptor or o.filtration or o.biliary
        inter = add(f"{n}.interstitial", vol_i) if has_interstitium else None
        if o.permeable:
            # a reduced organ (no vascular space) exchanges with the plasma pool directly
            transfers.append(Transfer(vasc, inter, expr(f"PS_{n}") / volumes[vasc]))
            transfers.append(Transfer(inter, vasc if o.vascular else ven, expr(f"PS_{n}") / vol_i))
        if o.receptor:
            bound = add(f"{n}.bound")
            internal = add(f"{n}.internalised")
            bindings.append(Binding(inter, bound, "k_on", f"R_{n} * V_{n}", vol_i))
            transfers.append(Transfer(bound, inter, "k_on * K_D"))
            transfers.append(Transfer(bound, internal, "lambda_int"))
            if release == "sink":
                if "released" not in comps:
                    add("released")
                    excreta.append("released")
                transfers.append(Transfer(internal, "released", f"lambda_rel_{n}"))
            else:
                transfers.append(Transfer(internal, inter, f"lambda_rel_{n}"))
        if o.filtration:
            if "urine" not in comps:
                add("urine")
                excreta.append("urine")
            tub = add(f"{n}.tubular", expr(f"ft_{n} * V_{n}"))
            clearance = expr("f_filt * GFR")
            reabsorbed = clearance * (1 - expr("f_exc"))
            transfers.append(Transfer(vasc, inter, clearance / volumes[vasc]))
            transfers.append(Transfer(inter, "urine", clearance * expr("f_exc") / vol_i))
            transfers.append(Transfer(inter, tub, reabsorbed / vol_i))
            transfers.append(Transfer(tub, vasc, reabsorbed / volumes[tub]))
        if o.biliary:
            if "faeces" not in comps:
                add("faeces")
                excreta.append("faeces")
            transfers.append(Transfer(inter, "faeces", expr("CL_bile") / vol_i))

    # Perfusion. Outflow of an organ's vascular space carries its own flow plus what drains in.
    for o in organs:
        if not o.vascular:
            continue
        n = o.name
        vasc = f"{n}.vascular"
        vol_v = volumes[vasc]
        if av and n == "lungs":
            for s in systemic:  # the lungs receive the whole plasma output (sum of organ flows)
                if s.drains_to is None and s.vascular:
                    transfers.append(
                        Transfer(ven, vasc, expr(_total_flow(s, organs)) / volumes[ven])
                    )
                    transfers.append(Transfer(vasc, art, expr(_total_flow(s, organs)) / vol_v))
            continue
        if o.drains_to is None:
            transfers.append(Transfer(art, vasc, expr(f"Q_{n}") / volumes[art]))
            transfers.append(Transfer(vasc, ven, expr(_total_flow(o, organs)) / vol_v))
        else:
            transfers.append(Transfer(art, vasc, expr(f"Q_{n}") / volumes[art]))
            transfers.append(Transfer(vasc, f"{o.drains_to}.vascular", expr(f"Q_{n}") / vol_v))

    body = [c for c in comps if c not in excreta]
    group_items = [(g, tuple(m)) for g, m in groups.items() if g not in excreta]
    group_items.append(("whole_body", tuple(body)))
    return CompartmentalModel(
        compartments=tuple(comps),
        dose_compartment=ven,
        transfers=tuple(transfers),
        bindings=tuple(bindings),
        excreta=tuple(excreta),
        volumes=tuple(volumes.items()),
        groups=tuple(group_items),
        name=name,
    )


def _total_flow(o: Organ, organs: Sequence[Organ]) -> str:
    """Plasma flow leaving organ `o`: its own plus that of the organs draining into it."""
    terms = [f"Q_{o.name}"] + [f"Q_{p.name}" for p in organs if p.drains_to == o.name]
    return "(" + " + ".join(terms) + ")"
