"""The committed notebooks are the build of their .py sources, without outputs."""

from _nbrun import builder, nbformat


def test_notebooks_are_built_from_their_sources_without_outputs():
    build = builder()
    sources = build.sources()
    assert [p.stem for p in sources] == [
        "01_bayesian_calibration",
        "02_uncertainty_study",
        "03_gpu_cohort_experiment",
        "04_tissue_twin",
    ]
    for src in sources:
        committed = src.with_suffix(".ipynb")
        assert committed.read_text() == build.render(build.build(src)), (
            f"{committed.name} is stale: run python notebooks/_build.py"
        )
        nb = nbformat.read(committed, as_version=4)
        assert nb.metadata.kernelspec.name == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
        text = src.read_text()
        assert 'jax.config.update("jax_enable_x64", True)' in text
        assert 'os.environ.get("TWINJAX_NOTEBOOK_SMALL"' in text
