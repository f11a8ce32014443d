"""Peak memory of the default fit against a hand-written loop of the same model.

Each contender runs in a fresh Python process of its own and reports that process's peak
resident memory (``VmHWM``), so none inherits another's allocations:

- ``imports``: ``import torch, lightning, mtl_lightning`` and nothing else (what every other row
  pays before it starts);
- ``hand-written PyTorch loop``: the default CNN and heads (``MultiTaskModule``'s modules called
  as a plain ``nn.Module``), the default synthetic speech data, AdamW, one epoch of the summed
  loss;
- ``bare LightningModule + Trainer``: the same model and loss in a LightningModule that does
  nothing else, one epoch under a Trainer with Lightning's defaults (progress bar, checkpoint,
  TensorBoard logger);
- ``python -m mtl_lightning fit``: the README's main job as written, ``--trainer.max_epochs 1``
  (validation, metrics, attackers, probes, summary and checkpoints included).

The ratio is each row's peak over the hand loop's; the note gives the part above the imports.
Run: ``python -m benchmarks.peak_memory`` or, with the others, ``python -m benchmarks``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PEAK = """
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

#: each contender's program; it prints its peak (MiB) as its last line
PROGRAMS: dict[str, str] = {
    "imports": _PEAK + "import torch, lightning, mtl_lightning\nprint(_peak())",
    "hand-written PyTorch loop": _PEAK
    + """
import torch
from benchmarks.lightning_overhead import _hand_step, _model, make_data
data = make_data("cnn", tiny=TINY)
data.setup("fit")
model = _model(data, validate=False).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for batch in data.train_dataloader():
    _hand_step(model, optimizer, batch)
print(_peak())
""",
    "bare LightningModule + Trainer": _PEAK
    + """
import lightning.pytorch as pl
from benchmarks.lightning_overhead import BareModule, make_data
data = make_data("cnn", tiny=TINY)
pl.Trainer(max_epochs=1, limit_val_batches=0, default_root_dir=OUT).fit(BareModule(data), data)
print(_peak())
""",
    "python -m mtl_lightning fit": _PEAK
    + """
import runpy, sys
sys.argv = ["mtl_lightning", "fit", "--trainer.max_epochs", "1", *EXTRA]
try:
    runpy.run_module("mtl_lightning", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    if stop.code:
        raise
print(_peak())
""",
}

#: the CLI's arguments for a seconds-long smoke run (``--tiny``)
TINY_FIT = ["--data.per_pair", "2", "--data.per_pair_eval", "1", "--data.n_mels", "16",
            "--data.frames", "16"]  # fmt: skip


def peak_mib(name: str, tiny: bool = False) -> float:
    """The peak resident memory (MiB) of contender ``name``'s own process."""
    with tempfile.TemporaryDirectory() as out:
        header = f"TINY = {tiny!r}\nOUT = {out!r}\nEXTRA = {TINY_FIT if tiny else []!r}\n"
        done = subprocess.run(
            [sys.executable, "-c", header + PROGRAMS[name]],
            cwd=out,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"},
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: each contender's peak RSS and its ratio to the hand
    loop's."""
    peaks = {name: peak_mib(name, tiny) for name in PROGRAMS}
    hand, imports = peaks["hand-written PyTorch loop"], peaks["imports"]
    return [
        {
            "benchmark": "peak_memory",
            "setting": name,
            "value": round(peak, 1),
            "unit": "MiB peak RSS",
            "ratio": round(peak / hand, 3),
            "note": f"{peak - imports:.0f} MiB above the imports; own process, one epoch",
        }
        for name, peak in peaks.items()
    ]


def main() -> None:
    print(json.dumps(run("--tiny" in sys.argv), indent=1))


if __name__ == "__main__":
    main()
