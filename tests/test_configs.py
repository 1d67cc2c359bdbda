"""The bundled example specs in configs/: each imports, builds, and returns per-example losses of shape [batch].

least_squares is also checked against its closed form (docs/science.md §5, V2): the empirical B_simple of its fixed
sample at the initial weights, from exact per-example gradients g_i = x_i (x_iᵀw0 − y_i), is 26 within 3%.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import default_collate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECS = sorted(CONFIGS.glob("*.py"))
TRAINING = CONFIGS / "train.yaml"  # a training config for `bsprof check --training-config`, not a measure preset
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if p != TRAINING)


def load_spec(path: Path):
    name = f"_bsprof_config_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _mnist_missing() -> bool:
    mod = load_spec(CONFIGS / "mnist_mlp.py")
    folder = mod.data_dir()
    return not all((folder / f).is_file() for f in (mod.IMAGES, mod.LABELS))


def test_configs_exist():
    names = {p.stem for p in SPECS}
    assert {"least_squares", "digits_mlp", "digits_cnn", "char_transformer", "mnist_mlp"} <= names
    assert {"digits_mlp", "least_squares", "char_transformer"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_builds_and_returns_per_example_losses(path: Path):
    if path.stem == "mnist_mlp" and _mnist_missing():
        pytest.skip("MNIST test set not available (set BSPROF_MNIST_DIR)")
    mod = load_spec(path)
    first = mod.__doc__.strip().splitlines()[0]
    assert first.startswith(f"bsprof measure configs/{path.name}"), first
    torch.manual_seed(0)
    model = mod.model()
    assert isinstance(model, torch.nn.Module)
    data = mod.dataset()
    assert len(data) > 4
    collate = getattr(mod, "collate", default_collate)
    batch = collate([data[i] for i in (0, 1, len(data) // 2, len(data) - 1)])
    losses = mod.loss(model, batch)
    assert losses.shape == (4,)
    assert torch.isfinite(losses).all()
    losses.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if hasattr(mod, "optimizer"):
        assert isinstance(mod.optimizer(model.parameters()), torch.optim.Optimizer)


def test_mnist_missing_data_message(tmp_path, monkeypatch):
    mod = load_spec(CONFIGS / "mnist_mlp.py")
    monkeypatch.setenv("BSPROF_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(mod, "_DATA", None)
    from bsprof.errors import DataError

    with pytest.raises(DataError, match="MNIST test set not found") as info:
        mod.dataset()
    assert "t10k-images-idx3-ubyte.gz" in info.value.hint and "BSPROF_MNIST_DIR" in info.value.hint


def test_a_spec_error_keeps_its_own_fix_and_a_missing_file_gets_a_path_hint(tmp_path, monkeypatch):
    """configs/mnist_mlp.py's missing data: the CLI said "fix: fix dataset() in the spec file" under a message that
    held the real fix (a new user's trial). A BsprofError the spec raises keeps its fix; a FileNotFoundError's fix
    names the path and where a relative one is looked up."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    monkeypatch.setenv("BSPROF_MNIST_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["measure", str(CONFIGS / "mnist_mlp.py"), "--steps", "0", "-o", str(tmp_path / "o")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "fix: download the MNIST test set files" in out and "fix dataset()" not in out
    spec = tmp_path / "spec.py"
    spec.write_text("import torch\ndef model():\n    return torch.nn.Linear(2, 1)\n"
                    "def dataset():\n    return torch.load('no_such_file.pt')\n"
                    "def loss(model, batch):\n    return (model(batch[0]).squeeze(-1) - batch[1]) ** 2\n")
    r = CliRunner().invoke(app, ["measure", str(spec), "--steps", "0", "-o", str(tmp_path / "o2")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "raised FileNotFoundError" in out and "check the path dataset() reads" in out


def test_least_squares_initial_weights():
    mod = load_spec(CONFIGS / "least_squares.py")
    w0 = mod.model().weight.detach().reshape(-1)
    assert (w0 - mod.W_STAR).square().sum().item() == mod.DELTA_SQ == 1.0
    assert mod.b_simple_closed_form() == 26.0
    assert mod.D + 1 + mod.D * mod.SIGMA2 / mod.DELTA_SQ == 26.0
    # halfway to w*: |Δ|² = 0.25, so d + 1 + dσ²/|Δ|² = 21 + 20·0.25/0.25 = 41
    assert mod.b_simple_closed_form(mod.W_STAR + 0.5 * (w0 - mod.W_STAR)) == pytest.approx(41.0)


def test_least_squares_empirical_b_simple_matches_closed_form():
    mod = load_spec(CONFIGS / "least_squares.py")
    data = mod.dataset()
    n = 200_000
    x = torch.stack([data[i][0] for i in range(n)]).double()
    y = torch.stack([data[i][1] for i in range(n)]).double()
    w0 = mod.model().weight.detach().reshape(-1).double()
    g = x * (x @ w0 - y).unsqueeze(1)  # exact per-example gradients of ½(xᵀw − y)²
    mean = g.mean(0)
    trace_sigma = (g - mean).square().sum(1).sum() / (n - 1)
    b_simple = (trace_sigma / mean.square().sum()).item()
    assert b_simple == pytest.approx(26.0, rel=0.03)
    # and the loss agrees with the closed-form gradient
    model = mod.model()
    batch = default_collate([data[i] for i in range(8)])
    mod.loss(model, batch).mean().backward()
    torch.testing.assert_close(model.weight.grad.reshape(-1).double(), g[:8].mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_parses(path: Path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("#") and "bsprof measure" in first
    assert f"configs/{path.stem}.py" in first and f"--config configs/{path.name}" in first
    options = yaml.safe_load(text)
    assert isinstance(options, dict)
    allowed = {"steps", "batch_size", "lr", "measure_every", "rel_error", "seed", "method", "max_examples",
               "max_seconds"}
    assert set(options) <= allowed, set(options) - allowed
    assert (CONFIGS / f"{path.stem}.py").is_file()


def test_the_bundled_training_config_has_the_keys_the_docs_name():
    """README and docs/ci.md run `bsprof check ... --training-config configs/train.yaml --batch-key
    trainer.batch_size` (the lr found at optim.lr)."""
    options = yaml.safe_load(TRAINING.read_text())
    assert isinstance(options["trainer"]["batch_size"], int) and isinstance(options["optim"]["lr"], float)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    """yaml's message says `in "<unicode string>", line 2`: the file's name stands there instead."""
    from bsprof.config import read_yaml
    from bsprof.errors import ConfigError

    bad = tmp_path / "run.yaml"
    bad.write_text("steps: 10\nbatch_size: [32\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(bad)
    assert "<unicode string>" not in str(err.value) and f'in {bad}, line' in str(err.value)
