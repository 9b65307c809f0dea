"""Safety of what is saved and loaded: the code beside a model is the package's own, weights are safetensors,
and nothing in the package unpickles data without weights_only=True."""

import re
from pathlib import Path

import pytest

import postformer.modeling as modeling

PACKAGE = Path(modeling.__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["modeling_postformer.py", "configuration_postformer.py", "generation_postformer.py"])
def test_the_code_saved_beside_a_model_is_exactly_the_packages_own(model_dir, name):
    # trust_remote_code runs this file: it must be what the package ships, byte for byte, not a rewritten copy.
    assert (model_dir / name).read_bytes() == (PACKAGE / "modeling" / name).read_bytes()


def test_a_saved_model_holds_no_pickle(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))], names


def test_the_package_never_unpickles_without_weights_only():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
