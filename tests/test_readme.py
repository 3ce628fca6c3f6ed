"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_examples_run_in_order(tmp_path, monkeypatch) -> None:
    """One namespace for all blocks, as a reader pasting them into one session."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for code in BLOCKS:
        exec(compile(code, str(README), "exec"), ns)
    h = ns["history"]  # the ten-line example learns something
    assert h.val_loss.iloc[-1] < h.val_loss.iloc[0]
    assert (tmp_path / "vae-digits" / "config.json").exists()
    fit = ns["fit"]  # the geometry example: never longer than the straight line
    assert bool((fit.length <= fit.line_length * (1 + 1e-6)).all())
    assert ns["grid"].log_volume.shape == (50, 50)
    assert ns["K"].shape == (5,) and bool(ns["K"].isfinite().all())
    assert ns["R"].shape == (5, 2, 2, 2, 2)
    assert ns["kmap"].gaussian_curvature.shape == (50, 50)
    assert ns["new_digits"].shape == (8, 64) and bool(ns["new_digits"].isfinite().all())
    assert ns["digits"].shape == (8, 64)
