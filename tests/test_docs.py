"""The Python examples of docs/*.md run as written, and give what the text says."""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from aetk import cli

DOCS = Path(__file__).parents[1] / "docs"


def run_blocks(name: str) -> dict:
    """One namespace for all of a page's blocks, as a reader pasting them into one session."""
    path = DOCS / name
    ns: dict = {}
    for code in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
        exec(compile(code, str(path), "exec"), ns)
    return ns


def test_geometry_examples_run_in_order() -> None:
    ns = run_blocks("geometry.md")
    fit = ns["fit"]  # the graph start's: never longer than the straight line
    assert bool((fit.length <= fit.line_length * (1 + 1e-6)).all())
    assert ns["D"].shape == (20, 20) and ns["D2"].shape == (20, 10)
    assert torch.allclose(ns["D"].diagonal(), torch.zeros(20))
    z_path, x_path = ns["z_path"], ns["x_path"]
    assert z_path.shape == (4, 10, 2) and x_path.shape == (4, 10, 64)
    assert torch.allclose(z_path[:, 0], ns["z_start"])
    assert torch.allclose(z_path[:, -1], ns["z_end"])
    assert ns["paths"].points.shape[0] == 4 and bool(ns["paths"].found.all())
    assert torch.allclose(ns["end"], ns["z_end"], atol=1e-3)  # the log map's shot comes back
    assert ns["path"].transported is not None and ns["v_t"].shape[0] == 4
    assert ns["centre"].shape == (2,) and ns["spray"].points.shape[-1] == 2
    assert ns["R"].shape == (20, 2, 2, 2, 2)
    assert torch.allclose(ns["k"], ns["K"], rtol=1e-3, atol=1e-5)  # sectional = Gaussian in 2-D
    assert ns["grid"].gaussian_curvature.shape == (64, 64)


def test_zarr_layout_example_reads_the_pipeline_stores(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli.main(["preprocess", "--source", "digits", "--n-samples", "200", "--transforms",
              "scale01", "--validation-fraction", "0.25", "--out", "data.zarr"])
    cli.main(["train", "--data", "data.zarr", "--model", "rhvae", "--likelihood", "bernoulli",
              "--hidden", "32", "--epochs", "1", "--batch-size", "32", "--options",
              '{"centroids": 16}', "--no-progress", "--checkpoint-dir", "ckpt",
              "--out", "model", "--history", "h.tsv"])
    latent = "results/latent/rhvae-bernoulli.zarr"
    cli.main(["encode", "--data", "data.zarr", "--model", "model", "--n-importance", "3",
              "--n-scored", "10", "--out", latent])
    cli.main(["geodesics", "--model", "model", "--latent", latent, "--n-pairs", "2",
              "--n-points", "8", "--grid-size", "9", "--spray", "0",
              "--out", "results/geodesics/rhvae-bernoulli.zarr"])
    ns = run_blocks("zarr-layout.md")
    assert ns["lat"].attrs["model"] == "rhvae"
    assert ns["val"].sizes["sample"] == 50 and ns["val"].elbo.attrs["units"] == "nats"
    assert ns["first"].shape == (64,)
    assert ns["geo"].log_volume.shape == (9, 9)
    plt.close("all")
