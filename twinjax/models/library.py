"""The published model library: templates of `configs/templates/*.yaml`, loaded and validated.

A template is a model structure plus population parameter values (typical values, i.e. medians),
their between-patient variability (lognormal CVs) and the source of every number.

```python
tpl = twinjax.load_template("psma617_lu177")
traj = twinjax.simulate(tpl.model, tpl.params, tpl.default_schedule(), times_h)
draws = tpl.sample_params(jax.random.key(0), 100)   # 100 virtual patients
```
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp

from .._config import TemplateSpec, read_yaml, to_canonical, validate
from .._errors import InputError
from .._resources import configs_dir
from ..nuclides import nuclide as _lookup
from ..schedule import Schedule
from ._expr import expr
from .compartmental import Binding, CompartmentalModel, SaturableTransfer, Transfer
from .pbpk import Organ, whole_body

__all__ = ["Template", "list_templates", "load_template"]


@dataclasses.dataclass(frozen=True)
class Template:
    """A loaded template. `params` are typical values (population medians) in canonical units
    (see `twinjax.units`); `cv` the lognormal between-patient CVs."""

    spec: TemplateSpec
    path: Path | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def nuclide(self) -> str:
        return _lookup(self.spec.nuclide).name

    @functools.cached_property
    def model(self) -> CompartmentalModel:
        """The [`CompartmentalModel`][] of a ``pbpk`` or ``compartmental`` template."""
        s = self.spec.model
        if s is None:
            raise InputError(
                f"template {self.name!r} (kind {self.spec.kind!r}) has no compartmental model; "
                "use twinjax.models.pet for PET kinetics templates"
            )
        if s.kind == "pbpk":
            organs = [Organ(**o.model_dump()) for o in s.organs]
            return whole_body(organs, circulation=s.circulation, release=s.release, name=self.name)
        return CompartmentalModel(
            compartments=tuple(s.compartments),
            dose_compartment=s.dose,
            transfers=tuple(Transfer(t.source, t.target, expr(t.rate)) for t in s.transfers),
            saturable=tuple(
                SaturableTransfer(t.source, t.target, t.vmax, t.km, t.volume) for t in s.saturable
            ),
            bindings=tuple(
                Binding(b.free, b.bound, b.k_on, b.capacity, b.volume) for b in s.bindings
            ),
            excreta=tuple(s.excreta),
            volumes=s.volumes,
            groups={g: tuple(m) for g, m in s.groups.items()},
            name=self.name,
        )

    @functools.cached_property
    def params(self) -> dict[str, jax.Array]:
        """Typical (median) parameter values in canonical units, derived ones included."""
        out = {
            k: jnp.asarray(p.median(f"{self.name}.parameters.{k}"))
            for k, p in self.spec.parameters.items()
        }
        return self.derive(out)

    @property
    def cv(self) -> dict[str, float]:
        """Between-patient lognormal CVs of the parameters that vary."""
        return {k: p.cv for k, p in self.spec.parameters.items() if p.cv is not None}

    def personalise(self, covariates: Mapping[str, float]) -> dict[str, jax.Array]:
        """Typical parameters of a patient: the template's ``covariates:`` formulas evaluated on
        the patient's covariates (e.g. ``weight_kg``, ``ct_volume_L_kidneys``; see
        `twinjax.imaging.io.Patient`) replace the population defaults; formulas whose
        covariates the patient lacks keep the default. Derived parameters are recomputed."""
        base = {k: jnp.asarray(p.median(k)) for k, p in self.spec.parameters.items()}
        for name, formula in self.spec.covariates.items():
            e = expr(formula)
            if all(c in covariates for c in e.names):
                base[name] = e({c: jnp.asarray(float(covariates[c])) for c in e.names})
        return self.derive(base)

    def derive(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Add the template's derived parameters (``derived:`` formulas of other parameters)."""
        out = dict(params)
        for k, formula in self.spec.derived.items():
            out[k] = expr(formula)(out)
        return out

    def sample_params(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """`n` virtual patients: each varying parameter lognormal around its typical value.

        ``log p ~ Normal(log median, sigma^2)`` with ``sigma^2 = ln(1 + cv^2)``; parameters
        without a CV are shared. Returns a dict of arrays of shape ``(n,)``.
        """
        base = {
            k: jnp.asarray(to_canonical(p.value, p.unit, k))
            for k, p in self.spec.parameters.items()
        }
        keys = jax.random.split(key, max(len(self.cv), 1))
        out = {k: jnp.broadcast_to(v, (n,)) for k, v in base.items()}
        for sub, (k, cv) in zip(keys, sorted(self.cv.items()), strict=False):
            sigma = math.sqrt(math.log1p(cv * cv))
            out[k] = base[k] * jnp.exp(sigma * jax.random.normal(sub, (n,)))
        return {k: jnp.broadcast_to(v, (n,)) for k, v in self.derive(out).items()}

    def input_function(self):
        """The arterial input function of a PET kinetics template (a `FengInput`)."""
        from .pet import FengInput

        f = self.spec.input_function
        if f is None:
            raise InputError(f"template {self.name!r} has no input_function")
        v = {
            k: to_canonical(p.value, p.unit, f"{self.name}.input_function.{k}")
            for k, p in f.items()
        }
        return FengInput(
            v["A1"], v["A2"], v["A3"], v["lambda1"], v["lambda2"], v["lambda3"], v.get("tau", 0.0)
        )

    def pet_tissue_curve(self, times_h, params: Mapping[str, jax.Array] | None = None):
        """PET tissue concentration of a ``pet_1tcm``/``pet_2tcm`` template at `times_h` (h)."""
        from .pet import one_tissue, two_tissue

        p = dict(self.params if params is None else params)
        aif = self.input_function()
        vb = p.get("vb", 0.0)
        if self.spec.kind == "pet_1tcm":
            return one_tissue(times_h, p["K1"], p["k2"], aif, vb=vb)
        if self.spec.kind == "pet_2tcm":
            return two_tissue(times_h, p["K1"], p["k2"], p["k3"], p["k4"], aif, vb=vb)
        raise InputError(f"template {self.name!r} is of kind {self.spec.kind!r}, not a PET model")

    def roi(self, name: str) -> tuple[str, ...]:
        """Model groups whose activities sum to imaging region `name` (e.g. ``tumour``)."""
        if name in self.spec.rois:
            return tuple(self.spec.rois[name])
        self.model.group(name)  # raises with the known names if absent
        return (name,)

    @property
    def rois(self) -> tuple[str, ...]:
        return tuple(self.spec.rois) or self.model.group_names

    def default_schedule(self) -> Schedule:
        """One administration as the template's source describes it (e.g. 7.4 GBq)."""
        a = self.spec.default_administration
        if a is None:
            raise InputError(f"template {self.name!r} has no default_administration")
        return Schedule.single(
            a.activity_MBq,
            nuclide=self.nuclide,
            ligand_nmol=a.ligand_nmol,
            time_h=a.time_h,
            duration_h=a.duration_h,
        )


def _templates_dir() -> Path:
    return configs_dir() / "templates"


def list_templates() -> tuple[str, ...]:
    """Names of the templates shipped with twinjax."""
    return tuple(sorted(p.stem for p in _templates_dir().glob("*.yaml")))


@functools.cache
def _load(path: Path) -> Template:
    spec = validate(TemplateSpec, read_yaml(path), path.name)
    tpl = Template(spec=spec, path=path)
    if spec.model is not None:
        # Checked on the file's own numbers, before any conversion or array is built, so the
        # message can name the field as it is written (PET models may have a k4 of 0).
        for k, p in spec.parameters.items():
            if not p.value > 0:
                raise InputError(
                    f"{path.name}: parameters.{k}.value = {p.value!r} {p.unit}; allowed: a "
                    "finite value > 0 (model parameters are positive physical quantities)"
                )
        model = tpl.model
        missing = [n for n in model.parameter_names if n not in tpl.params]
        if missing:
            raise InputError(
                f"{path.name}: parameters {missing} are used by the model but not given; "
                "add them under 'parameters:' (value, unit, source)"
            )
        model.check_params(tpl.params)
        unknown = [k for k in spec.covariates if k not in spec.parameters]
        if unknown:
            raise InputError(
                f"{path.name}: covariates set {unknown}, which are not parameters of the template"
            )
        for roi, groups in spec.rois.items():
            for g in groups:
                try:
                    model.group(g)
                except InputError as err:
                    raise InputError(f"{path.name}: rois.{roi}: {err}") from None
    return tpl


def load_template(name_or_path: str | Path) -> Template:
    """Load a shipped template by name (see [`list_templates`][]) or a template YAML by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return _load(p.resolve())
    path = _templates_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = list_templates()
        close = difflib.get_close_matches(str(name_or_path), known, n=3)
        raise InputError(
            f"template {str(name_or_path)!r} is not known; "
            + (f"closest: {', '.join(close)}" if close else f"known: {', '.join(known)}")
        )
    return _load(path)
