"""`dap-hvd export --out FILE` writes only what it may: never over an existing file or its .json
sidecar without --force; its errors are its own ("export", not "evaluate")."""

import json

import torch

from dap_hvd.cli import main
from dap_hvd.models import build_model


def _checkpoint(path):
    """A checkpoint in the trainer's format (model weights + the JSON state export reads)."""
    meta = dict(epoch=3, model="resnet_small", classes=[f"c{i}" for i in range(4)], history=[{"top1": 0.5}],
                config={"data": {"image_size": 32}})
    torch.save({"model": build_model("resnet_small", 4).state_dict(), "state": json.dumps(meta)}, path)
    return path


def test_export_never_overwrites_without_force(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "epoch-0003.pt")
    dst, sidecar = tmp_path / "important.txt", tmp_path / "important.txt.json"
    dst.write_text("mine")
    sidecar.write_text('{"mine": 1}')
    assert main(["export", str(ckpt), "--out", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dap-hvd export: error: --out: ") and "--force" in err[0]
    assert dst.read_text() == "mine" and sidecar.read_text() == '{"mine": 1}'
    sidecar_only = tmp_path / "w.pt"
    (tmp_path / "w.pt.json").write_text("mine")  # the sidecar alone is protected too
    assert main(["export", str(ckpt), "--out", str(sidecar_only)]) == 2 and not sidecar_only.exists()
    capsys.readouterr()
    assert main(["export", str(ckpt), "--out", str(dst), "--force"]) == 0
    assert set(torch.load(dst, weights_only=True)) == set(build_model("resnet_small", 4).state_dict())
    assert json.loads(sidecar.read_text())["epoch"] == 3


def test_export_errors_say_export(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dap-hvd export: error: ") and "evaluate" not in err, err
