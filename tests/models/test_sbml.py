"""SBML import/export: analytic solutions of imported models, exact round trips of the PSMA
templates, and refusals that name the offending element."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import lambertw

import twinjax
from twinjax import InputError, Schedule, load_template, simulate
from twinjax.models.sbml import read_sbml, write_sbml

libsbml = pytest.importorskip("libsbml")

LU177 = twinjax.nuclides.nuclide("Lu-177")


def _unit(model, uid, *parts):
    """Unit definition `uid` from (kind, exponent, scale, multiplier) parts."""
    ud = model.createUnitDefinition()
    ud.setId(uid)
    for kind, exponent, scale, multiplier in parts:
        u = ud.createUnit()
        u.setKind(kind)
        u.setExponent(exponent)
        u.setScale(scale)
        u.setMultiplier(multiplier)


def _reaction(model, rid, reactant, product, formula, local=()):
    r = model.createReaction()
    r.setId(rid)
    r.setReversible(False)
    if (model.getLevel(), model.getVersion()) == (3, 1):
        r.setFast(False)
    refs = [(r.createReactant(), reactant)] + ([(r.createProduct(), product)] if product else [])
    for ref, sid in refs:
        ref.setSpecies(sid)
        ref.setStoichiometry(1.0)
        if model.getLevel() == 3:
            ref.setConstant(True)
    law = r.createKineticLaw()
    for pid, value, units in local:
        lp = law.createLocalParameter() if model.getLevel() == 3 else law.createParameter()
        lp.setId(pid)
        lp.setValue(value)
        lp.setUnits(units)
    law.setMath(libsbml.parseL3Formula(formula))
    return r


def _param(model, pid, value, units, constant=True):
    p = model.createParameter()
    p.setId(pid)
    if value is not None:
        p.setValue(value)
    p.setUnits(units)
    p.setConstant(constant)


def two_compartment_sbml() -> str:
    """Level 3 V1, in minutes, millilitres and micromoles: concentrations C (central) and P
    (peripheral), clearance CL = CLr + CLnr (an assignment rule) through a function definition,
    intercompartmental clearance Qd a local parameter, distribution written reversibly."""
    doc = libsbml.SBMLDocument(3, 1)
    m = doc.createModel()
    m.setId("two_cmt")
    _unit(m, "minute", (libsbml.UNIT_KIND_SECOND, 1, 0, 60.0))
    _unit(m, "umol", (libsbml.UNIT_KIND_MOLE, 1, -6, 1.0))
    _unit(m, "mL", (libsbml.UNIT_KIND_LITRE, 1, -3, 1.0))
    _unit(
        m,
        "mL_per_min",
        (libsbml.UNIT_KIND_LITRE, 1, -3, 1.0),
        (libsbml.UNIT_KIND_SECOND, -1, 0, 60.0),
    )
    m.setTimeUnits("minute")
    m.setSubstanceUnits("umol")
    m.setExtentUnits("umol")
    m.setVolumeUnits("mL")
    for cid, size in (("central", 5000.0), ("peripheral", 10000.0)):
        c = m.createCompartment()
        c.setId(cid)
        c.setSize(size)
        c.setSpatialDimensions(3)
        c.setConstant(True)
    for sid, cid in (("C", "central"), ("P", "peripheral")):
        s = m.createSpecies()
        s.setId(sid)
        s.setCompartment(cid)
        s.setInitialConcentration(0.0)
        s.setHasOnlySubstanceUnits(False)
        s.setBoundaryCondition(False)
        s.setConstant(False)
    _param(m, "CLr", 10.0, "mL_per_min")
    _param(m, "CLnr", 5.0, "mL_per_min")
    _param(m, "CL", None, "mL_per_min", constant=False)
    rule = m.createAssignmentRule()
    rule.setVariable("CL")
    rule.setMath(libsbml.parseL3Formula("CLr + CLnr"))
    f = m.createFunctionDefinition()
    f.setId("flow")
    f.setMath(libsbml.parseL3Formula("lambda(q, c, q * c)"))
    _reaction(m, "elimination", "C", None, "flow(CL, C)")
    _reaction(m, "distribution", "C", "P", "Qd * (C - P)", local=[("Qd", 50.0, "mL_per_min")])
    return libsbml.writeSBMLToString(doc)


def michaelis_menten_sbml() -> str:
    """Level 2 V4 with 'substance' redefined as nmol and 'time' as hour: one compartment of 2 L,
    Michaelis-Menten elimination in concentration form V * Vmax * S / (Km + S) into urine."""
    doc = libsbml.SBMLDocument(2, 4)
    m = doc.createModel()
    m.setId("mm")
    _unit(m, "substance", (libsbml.UNIT_KIND_MOLE, 1, -9, 1.0))
    _unit(m, "time", (libsbml.UNIT_KIND_SECOND, 1, 0, 3600.0))
    _unit(m, "nM", (libsbml.UNIT_KIND_MOLE, 1, -9, 1.0), (libsbml.UNIT_KIND_LITRE, -1, 0, 1.0))
    _unit(
        m,
        "nM_per_h",
        (libsbml.UNIT_KIND_MOLE, 1, -9, 1.0),
        (libsbml.UNIT_KIND_LITRE, -1, 0, 1.0),
        (libsbml.UNIT_KIND_SECOND, -1, 0, 3600.0),
    )
    c = m.createCompartment()
    c.setId("body")
    c.setSize(2.0)
    c.setUnits("litre")
    for sid in ("S", "urine"):
        s = m.createSpecies()
        s.setId(sid)
        s.setCompartment("body")
        s.setInitialConcentration(0.0)
    _param(m, "Vmax", 20.0, "nM_per_h")
    _param(m, "Km", 10.0, "nM")
    _reaction(m, "saturable_clearance", "S", "urine", "body * Vmax * S / (Km + S)")
    return libsbml.writeSBMLToString(doc)


# ---------------------------------------------------------------- imported models vs analytic
@pytest.fixture(scope="module")
def two_cmt():
    return read_sbml(two_compartment_sbml(), radioactive=["C", "P"], nuclide="Lu-177", dose="C")


def test_units_and_structure_of_imported_two_compartment_model(two_cmt):
    t = two_cmt
    # mL/min -> L/h is x0.06; mL -> L x1e-3; the assignment rule is a derived parameter.
    assert float(t.params["CLr"]) == pytest.approx(0.6, rel=1e-14)
    assert float(t.params["CL"]) == pytest.approx(0.9, rel=1e-14)
    assert float(t.params["distribution_Qd"]) == pytest.approx(3.0, rel=1e-14)
    assert float(t.params["central"]) == pytest.approx(5.0, rel=1e-14)
    assert t.spec.parameters["CLr"].unit == "L/h"
    assert t.spec.parameters["central"].unit == "L"
    assert "CL" in t.spec.derived
    m = t.model
    assert m.compartments == ("C", "P", "eliminated")
    assert m.excreta == ("eliminated",)
    assert m.is_linear
    # Reversible distribution: two first-order transfers, rates Q/V1 and Q/V2 (1/h).
    a = np.asarray(m.transfer_matrix(t.params))
    np.testing.assert_allclose(a[1, 0], 3.0 / 5.0, rtol=1e-14)
    np.testing.assert_allclose(a[0, 1], 3.0 / 10.0, rtol=1e-14)
    np.testing.assert_allclose(a[2, 0], 0.9 / 5.0, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(m.compartment_volumes(t.params))[:2], [5.0, 10.0])


def test_two_compartment_bolus_matches_biexponential(two_cmt):
    k10, k12, k21 = 0.9 / 5.0, 3.0 / 5.0, 3.0 / 10.0
    s = k10 + k12 + k21
    alpha = 0.5 * (s + np.sqrt(s * s - 4.0 * k10 * k21))
    beta = 0.5 * (s - np.sqrt(s * s - 4.0 * k10 * k21))
    times = np.array([0.25, 1.0, 3.0, 8.0, 24.0, 72.0])
    dose_nmol = 50.0
    a1 = dose_nmol * ((alpha - k21) * np.exp(-alpha * times) + (k21 - beta) * np.exp(-beta * times))
    a1 /= alpha - beta
    a2 = dose_nmol * k12 * (np.exp(-beta * times) - np.exp(-alpha * times)) / (alpha - beta)
    schedule = Schedule.single(3000.0, nuclide="Lu-177", ligand_nmol=dose_nmol)
    tr = simulate(two_cmt.model, two_cmt.params, schedule, jnp.asarray(times))
    np.testing.assert_allclose(np.asarray(tr.ligand_nmol[:, 0]), a1, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(tr.ligand_nmol[:, 1]), a2, rtol=1e-8)
    # Physical decay is the engine's: the labelled fraction is exp(-lambda t) everywhere.
    hot0 = 3000.0 / LU177.mbq_per_nmol
    decay = np.exp(-LU177.decay_constant_per_h * times)
    np.testing.assert_allclose(
        np.asarray(tr.hot_nmol[:, 0]), a1 * hot0 / dose_nmol * decay, rtol=1e-8
    )


def test_michaelis_menten_elimination_matches_lambert_w():
    """Level 2 V4 import; dC/dt = -Vmax C / (Km + C) has C(t) = Km W(C0/Km exp((C0 - Vmax t)/Km))
    (Schnell & Mendoza 1997, J Theor Biol 187:207)."""
    t = read_sbml(michaelis_menten_sbml(), radioactive={"*": "Lu-177"}, dose="S", excreta=["urine"])
    m = t.model
    assert len(m.saturable) == 1 and not m.transfers
    assert m.excreta == ("urine",)
    vmax, km, volume, dose_nmol = 20.0, 10.0, 2.0, 100.0
    times = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    c0 = dose_nmol / volume
    c = km * np.real(lambertw(c0 / km * np.exp((c0 - vmax * times) / km)))
    schedule = Schedule.single(1000.0, nuclide="Lu-177", ligand_nmol=dose_nmol)
    tr = simulate(m, t.params, schedule, jnp.asarray(times), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(np.asarray(tr.ligand_nmol[:, 0]), volume * c, rtol=1e-8)
    np.testing.assert_allclose(
        np.asarray(tr.ligand_nmol.sum(axis=1)), np.full(times.shape, dose_nmol), rtol=1e-9
    )


# ---------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def reduced_round_trip(tmp_path_factory):
    tpl = load_template("psma617_reduced")
    path = write_sbml(tpl, tmp_path_factory.mktemp("sbml") / "psma617_reduced.xml")
    return tpl, path, read_sbml(path)


def test_written_sbml_is_valid(reduced_round_trip):
    _, path, _ = reduced_round_trip
    doc = libsbml.readSBMLFromFile(str(path))
    doc.checkConsistency()
    errors = [
        doc.getError(i).getMessage()
        for i in range(doc.getNumErrors())
        if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR
    ]
    assert errors == []
    assert (doc.getLevel(), doc.getVersion()) == (3, 2)
    assert doc.getModel().getNumReactions() == len(tpl_processes(load_template("psma617_reduced")))


def tpl_processes(tpl):
    m = tpl.model
    return m.transfers + m.saturable + m.bindings


def test_reduced_template_round_trip_is_exact(reduced_round_trip):
    tpl, _, back = reduced_round_trip
    assert back.model == tpl.model  # every compartment, process and expression
    assert back.nuclide == tpl.nuclide
    assert back.spec.rois == tpl.spec.rois
    assert back.cv == tpl.cv
    assert set(back.params) == set(tpl.params)
    for k in tpl.params:
        assert float(back.params[k]) == float(tpl.params[k]), k
    times = jnp.array([0.5, 4.0, 24.0, 96.0, 336.0])
    a = simulate(tpl.model, tpl.params, tpl.default_schedule(), times)
    b = simulate(back.model, back.params, back.default_schedule(), times)
    np.testing.assert_allclose(np.asarray(b.hot_nmol), np.asarray(a.hot_nmol), rtol=1e-10, atol=0)
    np.testing.assert_allclose(np.asarray(b.tia_MBqh), np.asarray(a.tia_MBqh), rtol=1e-10)


def test_pbpk_template_round_trip_structure(tmp_path):
    tpl = load_template("psma617_pbpk")
    back = read_sbml(write_sbml(tpl, tmp_path / "pbpk.xml"))
    assert back.model == tpl.model
    assert {k: float(v) for k, v in back.params.items()} == {
        k: float(v) for k, v in tpl.params.items()
    }


def test_model_with_params_round_trip_and_sample_params(tmp_path, linear_template_path):
    tpl = load_template(linear_template_path)
    path = write_sbml(tpl.model, tmp_path / "linear.xml", params=tpl.params, nuclide="Lu-177")
    back = read_sbml(path, cv={"CL": 0.3})
    assert back.model.transfers == tpl.model.transfers
    assert back.cv == {"CL": 0.3}
    import jax

    draws = back.sample_params(jax.random.key(0), 4)
    assert draws["CL"].shape == (4,)


# ---------------------------------------------------------------- refusals
def _edit(text: str, edit) -> str:
    doc = libsbml.readSBMLFromString(text)
    edit(doc.getModel())
    return libsbml.writeSBMLToString(doc)


def test_malformed_xml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.xml"
    p.write_text(two_compartment_sbml().replace("</listOfSpecies>", "", 1))
    with pytest.raises(InputError, match=r"broken\.xml.*line \d+"):
        read_sbml(p, radioactive=["*"], nuclide="Lu-177", dose="C")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: _event(m), "dose_event"),
        (
            lambda m: (
                m.getReaction("elimination")
                .getKineticLaw()
                .setMath(libsbml.parseL3Formula("piecewise(CL * C, CL > 1, 0)"))
            ),
            r"elimination.*piecewise",
        ),
        (
            lambda m: (
                m.getReaction("elimination")
                .getKineticLaw()
                .setMath(libsbml.parseL3Formula("CL * C * P / (P + C)"))
            ),
            r"elimination.*allowed: first-order",
        ),
        (lambda m: _rate_rule(m), r"rate rule of 'CLr'"),
        (lambda m: _param(m, "T", 300.0, "kelvin"), r"'kelvin'"),
        (lambda m: m.getSpecies("P").setInitialConcentration(1.0), r"species 'P'.*allowed: 0"),
    ],
    ids=["event", "piecewise", "second-order", "rate-rule", "kelvin", "initial-amount"],
)
def test_unsupported_constructs_are_refused_by_name(edit, match):
    text = _edit(two_compartment_sbml(), edit)
    with pytest.raises(InputError, match=match):
        read_sbml(text, radioactive=["C", "P"], nuclide="Lu-177", dose="C")


def _event(m):
    e = m.createEvent()
    e.setId("dose_event")
    e.setUseValuesFromTriggerTime(True)
    trigger = e.createTrigger()
    trigger.setInitialValue(False)
    trigger.setPersistent(True)
    trigger.setMath(libsbml.parseL3Formula("time > 1"))
    a = e.createEventAssignment()
    a.setVariable("CLr")
    a.setMath(libsbml.parseL3Formula("1"))


def _rate_rule(m):
    m.getParameter("CLr").setConstant(False)
    r = m.createRateRule()
    r.setVariable("CLr")
    r.setMath(libsbml.parseL3Formula("0.1"))


def test_species_not_marked_radioactive_is_named():
    with pytest.raises(InputError, match=r"reaction 'distribution'.*'P' is not marked"):
        read_sbml(two_compartment_sbml(), radioactive=["C"], nuclide="Lu-177", dose="C")
    with pytest.raises(InputError, match=r"pattern 'L_hot_\*' matches no species"):
        read_sbml(two_compartment_sbml(), radioactive=["L_hot_*"], nuclide="Lu-177", dose="C")
    with pytest.raises(InputError, match="one nuclide"):
        read_sbml(two_compartment_sbml(), radioactive={"C": "Lu-177", "P": "Ac-225"}, dose="C")


def test_unsupported_level_is_refused():
    doc = libsbml.SBMLDocument(2, 1)
    doc.createModel().setId("old")
    with pytest.raises(InputError, match="Level 2 Version 1 is not supported"):
        read_sbml(libsbml.writeSBMLToString(doc), radioactive=[], nuclide="Lu-177", dose="x")


def test_drop_reactions_is_listed_in_notes():
    t = read_sbml(
        two_compartment_sbml(),
        radioactive=["C", "P"],
        nuclide="Lu-177",
        dose="C",
        drop_reactions=["elimination"],
    )
    assert "elimination" in t.spec.notes
    assert "eliminated" not in t.model.compartments


def test_missing_libsbml_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "libsbml", None)
    with pytest.raises(ImportError, match=r'pip install "twinjax\[sbml\]"'):
        read_sbml("<sbml/>", radioactive=["*"], nuclide="Lu-177")
