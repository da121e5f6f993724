"""examples/notebook.ipynb still runs, and shows what the README says it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from .notebook_kit import read_outputs

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat "
                               "(pip install -e '.[test]' or '.[notebook]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient "
                               "(pip install -e '.[test]' or '.[notebook]')")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel "
                    "(pip install -e '.[test]' or '.[notebook]')")

EXAMPLE = Path(__file__).parent.parent / "examples" / "notebook.ipynb"


def test_the_example_notebook_runs_and_shows_each_cell_its_output():
    nb = nbformat.read(EXAMPLE, as_version=4)
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLE.parent)}}).execute()
    cells = read_outputs(nb.cells)
    assert [c.errors for c in cells if c.errors] == []
    by_source = {c.source.splitlines()[0]: co for c, co in zip(
        [c for c in nb.cells if c.cell_type == "code"], cells, strict=True)}
    waited = by_source["mesh.wait()"]
    assert waited.results == ["[0, 0, 0, 1]"]
    assert "rank 3 exited with code 1" in waited.notes
    assert any(mesh == "" and rank == 3 and text.startswith("RuntimeError: rank 3")
               for mesh, rank, _, text in waited.lines)
    # The blocking cell got lines while it slept, and a summary display.
    slept = by_source["time.sleep(1.0)"]
    assert slept.lines and len(slept.displays) == 1
    stopped = by_source["lmnb.set_cell_timeout(1)"]
    assert any(n.startswith("tick: end of cell: no answer from rank 1 within 1 s")
               for n in stopped.notes)
    assert by_source["ticker.stop()"].results == ["[-15, -15]"]
